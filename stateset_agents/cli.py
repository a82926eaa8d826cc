"""The ``stateset-agents`` command line.

    stateset-agents envs list                 environments and scenario counts per split
    stateset-agents envs validate PATH|NAME   check a pack: schema, references, reference solutions
    stateset-agents chat --env ID [--scenario ID] [--model PATH|URL] [--as agent|user]
                                              play one episode and print it
    stateset-agents demo                      play one scripted conversation per domain
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .errors import StatesetError

__all__ = ["main"]


def _envs_list(args: argparse.Namespace, console: Console) -> int:
    from .envs import load_pack, registered_envs

    table = Table(title="Conversation environments")
    for col in ("id", "pack", "train", "test", "tools"):
        table.add_column(col)
    for env_id, kwargs in sorted(registered_envs().items()):
        pack = load_pack(kwargs["pack"])
        table.add_row(env_id, pack.name, str(len(pack.split("train"))), str(len(pack.split("test"))),
                      str(len(pack.tools)))
    console.print(table)
    return 0


def _envs_validate(args: argparse.Namespace, console: Console) -> int:
    from .envs.validation_report import validate_pack

    pack, checks = validate_pack(args.pack)
    bad = [c for c in checks if not c.ok]
    for c in bad:
        o = c.outcome
        console.print(f"[red]FAIL[/] {c.scenario_id}: score={o['score']:.2f} goal={o['goal_reached']} "
                      f"state_diff={o['state_diff']} facts={o['facts_told']} forbidden={o['forbidden_actions']} "
                      f"ended_by={o['ended_by']}", soft_wrap=True)
    n_test = sum(c.split == "test" for c in checks)
    console.print(f"pack {pack.name!r}: {len(checks)} scenarios ({len(checks) - n_test} train, {n_test} test), "
                  f"{len(pack.tools)} tools; reference solutions scoring 1.0: {len(checks) - len(bad)}/{len(checks)}",
                  soft_wrap=True)
    return 1 if bad else 0


def _chat(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    import gymnasium as gym

    from .chat import load_model, play_chat

    env = gym.make(args.env, scenario=args.scenario, split="all").unwrapped
    model = None if args.as_ == "agent" else load_model(args.model, model_name=args.model_name)
    try:
        asyncio.run(play_chat(env, model=model, human=args.as_, seed=args.seed, console=console,
                              max_new_tokens=args.max_new_tokens))
    finally:
        env.close()
    return 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import play_demo

    play_demo(console, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stateset-agents", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    envs = sub.add_parser("envs", help="list and validate conversation environments")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True)
    envs_sub.add_parser("list", help="environments and scenario counts").set_defaults(func=_envs_list)
    v = envs_sub.add_parser("validate", help="check a pack and replay its reference solutions")
    v.add_argument("pack", help="a pack folder (with pack.yaml) or a built-in pack name")
    v.set_defaults(func=_envs_validate)
    chat = sub.add_parser("chat", help="play one episode: the model, or you, as the agent or the user")
    chat.add_argument("--env", default="stateset/CustomerService-v0", help="a registered environment id")
    chat.add_argument("--scenario", default=None, help="scenario id (default: drawn with --seed)")
    chat.add_argument("--model", default=None, help="model folder or OpenAI-compatible URL (default: SmolLM2)")
    chat.add_argument("--model-name", default="default", help="model name sent to an OpenAI-compatible URL")
    chat.add_argument("--as", dest="as_", choices=["agent", "user"], default=None,
                      help="type the agent's turns (agent) or the customer's (user) yourself")
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.set_defaults(func=_chat)
    demo = sub.add_parser("demo", help="play one scripted conversation per domain")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return int(args.func(args, console))
    except StatesetError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
