"""The ``stateset-agents`` command line.

    stateset-agents envs list                 environments and scenario counts per split
    stateset-agents envs validate PATH|NAME   check a pack: schema, references, reference solutions, audit
    stateset-agents envs audit PATH|NAME      play degenerate policies; fail if any solves a scenario
    stateset-agents chat --env ID [--scenario ID] [--model PATH|URL] [--as agent|user]
                                              play one episode and print it
    stateset-agents demo                      play one scripted conversation per domain
    stateset-agents train CONFIG [--resume]   train with SFT, GRPO or Training-Free GRPO (its `algorithm`)
    stateset-agents recipe CONFIG [--check]   run stages (SFT, RFT, GRPO) in order, then the held-out table
    stateset-agents report RUN_DIR            plot a run's reward components over steps (RUN_DIR/plot.png) and write
                                              RUN_DIR/report.html (curves, before/after, every eval transcript)
    stateset-agents show FILE [--scenario ID] [--failed] [--step N] [--diff OTHER]
                                              print transcripts (*.transcripts.jsonl), side by side with --diff
    stateset-agents eval --env NAME [--k 4] [--json OUT]
                                              success rate, reward, pass@k and pass^k on a split
    stateset-agents serve [--model default|PATH|RUN_DIR] [--port 8000]
                                              OpenAI-compatible chat, conversations, training jobs, metrics
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.text import Text

from .cli_commands import (
    cmd_chat,
    cmd_demo,
    cmd_envs_audit,
    cmd_envs_list,
    cmd_envs_validate,
    cmd_eval,
    cmd_recipe,
    cmd_report,
    cmd_serve,
    cmd_show,
    cmd_train,
)
from .errors import StatesetError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stateset-agents", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_envs, _add_chat_and_demo, _add_train_and_recipe, _add_report_and_show, _add_eval, _add_serve):
        add(sub)
    return parser


def _add_envs(sub: Any) -> None:
    envs = sub.add_parser("envs", help="list and validate conversation environments")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True)
    envs_sub.add_parser("list", help="environments and scenario counts").set_defaults(func=cmd_envs_list)
    v = envs_sub.add_parser("validate", help="check a pack and replay its reference solutions")
    v.add_argument("pack", help="a pack folder (with pack.yaml) or a built-in pack name")
    v.add_argument("--no-audit", action="store_true", help="skip the degenerate-policy audit")
    au = envs_sub.add_parser("audit", help="play degenerate policies on a pack; exit 1 if any games the judge")
    au.add_argument("pack", help="a pack folder (with pack.yaml) or a built-in pack name")
    au.set_defaults(func=cmd_envs_audit, no_audit=False)
    for p in (v, au):
        p.add_argument("--split", choices=["train", "test", "all"], default="all", help="scenarios to audit")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds (default 0 1 2)")
        p.add_argument("--json", default=None, metavar="OUT", help="also write the audit report as JSON")
    v.set_defaults(func=cmd_envs_validate)


def _add_chat_and_demo(sub: Any) -> None:
    chat = sub.add_parser("chat", help="play one episode: the model, or you, as the agent or the user")
    chat.add_argument("--env", default="stateset/CustomerService-v0",
                      help="a registered environment id, a built-in pack name or a pack folder")
    chat.add_argument("--scenario", default=None, help="scenario id (default: drawn with --seed)")
    chat.add_argument("--model", default=None, help="model folder or OpenAI-compatible URL (default: SmolLM2)")
    chat.add_argument("--model-name", default="default", help="model name sent to an OpenAI-compatible URL")
    chat.add_argument("--as", dest="as_", choices=["agent", "user"], default=None,
                      help="type the agent's turns (agent) or the customer's (user) yourself")
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--experiences", default=None, metavar="PATH",
                      help="an experience library (Training-Free GRPO's experiences.json; a path or fsspec URL) "
                      "injected into the agent's prompt")
    chat.set_defaults(func=cmd_chat)
    demo = sub.add_parser("demo", help="play one scripted conversation per domain")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)


def _add_train_and_recipe(sub: Any) -> None:
    train = sub.add_parser("train", help="train from a YAML config (SFT, GRPO or Training-Free GRPO)")
    train.add_argument("config", help="YAML config (see examples/customer_service.yaml)")
    train.add_argument("--output-dir", default=None, help="run folder (overrides the config's output_dir)")
    train.add_argument("--max-steps", type=int, default=None, help="overrides the config's max_steps")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.set_defaults(func=cmd_train)
    rc = sub.add_parser("recipe", help="run training stages in order (SFT, RFT, GRPO), each from the last one's "
                        "weights, and print the held-out table of every stage (docs/training.md, 'The recipe')")
    rc.add_argument("config", help="recipe YAML (see examples/recipe_customer_service.yaml)")
    rc.add_argument("--check", action="store_true", help="validate the recipe and list its stages; run nothing")
    rc.set_defaults(func=cmd_recipe)


def _add_report_and_show(sub: Any) -> None:
    report = sub.add_parser("report", help="plot a run's reward and components over steps; write its HTML report")
    report.add_argument("run_dir", help="a run folder with metrics.jsonl")
    report.add_argument("--out", default=None, help="PNG path (default RUN_DIR/plot.png)")
    report.add_argument("--html", default=None, metavar="PATH", help="the self-contained HTML page: curves, "
                        "before/after, every evaluation transcript (default RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)
    show = sub.add_parser("show", help="print transcripts (*.transcripts.jsonl written by eval --json and train)")
    show.add_argument("file", help="a transcripts file, e.g. RUN_DIR/eval_after.transcripts.jsonl")
    show.add_argument("--scenario", default=None, help="only this scenario id")
    show.add_argument("--step", type=int, default=None, help="only this training step (of a training run's "
                      "RUN_DIR/train_transcripts.jsonl; with --diff, in both files)")
    show.add_argument("--failed", action="store_true", help="only failed episodes (with --diff: pairs where "
                      "either side failed)")
    show.add_argument("--diff", default=None, metavar="OTHER", help="a second transcripts file (e.g. the after "
                      "evaluation): print the episodes paired by scenario and trial, side by side")
    show.set_defaults(func=cmd_show)


def _add_eval(sub: Any) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: success rate, reward, pass@k and pass^k per domain")
    ev.add_argument("--env", nargs="+", default=["customer_service"],
                    help="one or more pack names, pack folders or registered env ids")
    ev.add_argument("--model", default="default", help="'default' (SmolLM2), a model folder, or an "
                    "OpenAI-compatible URL")
    ev.add_argument("--model-name", default="default", help="model name sent to an OpenAI-compatible URL")
    ev.add_argument("--split", choices=["train", "test", "all"], default="test")
    ev.add_argument("--k", type=int, default=4, help="trials per scenario (pass@k and pass^k up to k)")
    ev.add_argument("--reward", default=None, help="reward preset name or YAML path (default: no reward)")
    ev.add_argument("--scenarios", type=int, default=None, help="only the first N scenarios of the split")
    ev.add_argument("--seed", type=int, default=0, help="same seed = same episodes (paired before/after)")
    ev.add_argument("--temperature", type=float, default=0.7)
    ev.add_argument("--max-turns", type=int, default=None, help="agent messages per episode (default: the pack's)")
    ev.add_argument("--max-new-tokens", type=int, default=128)
    ev.add_argument("--tool-prompt", choices=["full", "compact"], default="full",
                    help="the agent's prompt: full, or compact for small models (the pack's compact_prompt)")
    ev.add_argument("--concurrency", type=int, default=32, help="episodes in flight at once")
    ev.add_argument("--json", default=None, metavar="OUT", help="write the full report (every trial) as JSON, and every episode next to it "
                    "(eval.json -> eval.transcripts.jsonl; see `stateset-agents show`)")
    ev.add_argument("--experiences", default=None, metavar="PATH",
                    help="an experience library (Training-Free GRPO) injected into the agent's prompt")
    ev.set_defaults(func=cmd_eval)


def _add_serve(sub: Any) -> None:
    from .serving.cli import add_arguments as _serve_arguments

    srv = sub.add_parser("serve", help="HTTP service: OpenAI-compatible chat, conversations, training jobs, metrics "
                                       "(extra 'serve'; see docs/serving.md)")
    _serve_arguments(srv)
    srv.set_defaults(func=cmd_serve)


class _Parser(argparse.ArgumentParser):
    """argparse's usage errors in one line with the fix (the verb's --help), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


_YAML_MARK = re.compile(r'^in "[^"]*", line (\d+), column (\d+):?$')


def one_line(message: str) -> str:
    """An error message on one line. A YAML parser's source excerpts (mark line, source line, caret) become
    ``(line N, column M)`` and the fix is added."""
    out: list[str] = []
    skip, line = 0, None
    for raw in message.splitlines():
        text = raw.strip()
        mark = _YAML_MARK.match(text)
        if mark:
            line = line or mark[1]
            out.append(f"(line {mark[1]}, column {mark[2]})")
            skip = 2  # the quoted source line and the caret under it
        elif skip:
            skip -= 1
        elif text:
            out.append(text)
    joined = " ".join(out)
    return joined + (f"; fix the YAML syntax near line {line}" if line else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return int(args.func(args, console))
    except StatesetError as e:
        console.print(Text.assemble(("error:", "red"), " ", one_line(str(e))), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted", highlight=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
