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
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import StatesetError

__all__ = ["main"]


def _envs_list(args: argparse.Namespace, console: Console) -> int:
    from .envs import load_pack, registered_envs
    from .envs.variants import variant_counts

    table = Table(title="Conversation environments")
    envs = sorted(registered_envs().items())
    table.add_column("id", no_wrap=True, min_width=max((len(e) for e, _ in envs), default=2))
    for col in ("pack", "train", "variants", "test", "tools"):
        table.add_column(col)
    for env_id, kwargs in envs:
        pack = load_pack(kwargs["pack"])
        per, total = variant_counts(pack)
        table.add_row(env_id, pack.name, str(len(pack.split("train"))), f"{per} each" if per else "-",
                      str(len(pack.split("test"))), str(len(pack.tools)))
    console.print(table)
    return 0


def _envs_validate(args: argparse.Namespace, console: Console) -> int:
    from .envs.validation_report import validate_pack
    from .resolve import resolve_env

    pack, checks = validate_pack(resolve_env(args.pack)[0])
    bad = [c for c in checks if not c.ok]
    for c in bad:
        o = c.outcome
        console.print(f"[red]FAIL[/] {c.scenario_id}: progress={o['progress']:.2f} goal={o['goal_reached']} "
                      f"state_diff={o['state_diff']} facts={o['facts_told']} actions={o['actions_made']} "
                      f"forbidden={o['forbidden_actions']} ended_by={o['ended_by']}", soft_wrap=True)
    n_test = sum(c.split == "test" for c in checks)
    console.print(f"pack {pack.name!r}: {len(checks)} scenarios ({len(checks) - n_test} train, {n_test} test), "
                  f"{len(pack.tools)} tools; reference solutions that succeed: {len(checks) - len(bad)}/{len(checks)}",
                  soft_wrap=True)
    audit_rc = 0 if args.no_audit else _envs_audit(args, console, pack)
    return 1 if bad or audit_rc else 0


def _envs_audit(args: argparse.Namespace, console: Console, pack: object = None) -> int:
    from .envs.audit import audit_pack
    from .envs.audit_report import print_audit, save_audit
    from .resolve import resolve_env

    pack = pack if pack is not None else resolve_env(args.pack)[0]
    report = audit_pack(pack, split=args.split, seeds=tuple(args.seeds))
    print_audit(report, console)
    if args.json:
        console.print(f"audit: {save_audit(report, args.json)}", highlight=False)
    return 0 if report.ok else 1


def _chat(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    from .chat import load_model, play_chat
    from .envs import ConversationEnv
    from .resolve import resolve_env

    experiences = None
    if args.experiences is not None:  # read before the (slow) model load, so a bad path fails at once
        from .training.experience import ExperienceLibrary

        experiences = ExperienceLibrary.load(args.experiences)
    pack, kwargs = resolve_env(args.env)
    kwargs.update(scenario=args.scenario, split="all")
    env = ConversationEnv(pack, **kwargs)
    model = None if args.as_ == "agent" else load_model(args.model, model_name=args.model_name)
    try:
        asyncio.run(play_chat(env, model=model, human=args.as_, seed=args.seed, console=console,
                              max_new_tokens=args.max_new_tokens, experiences=experiences))
    finally:
        env.close()
    return 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import play_demo

    play_demo(console, seed=args.seed)
    return 0


def _train(args: argparse.Namespace, console: Console) -> int:
    from .training import load_config
    from .training.build import build_trainer

    config = _resolve_config_env(load_config(args.config, output_dir=args.output_dir, max_steps=args.max_steps))
    trainer = build_trainer(config)
    is_main = getattr(getattr(trainer, "dist", None), "is_main", True)
    resume: bool | str = args.resume
    restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restarts and not resume:  # every algorithm resumes under the run loop
        # torchrun --max-restarts brought the job back after a failure: continue from the last checkpoint.
        resume = "auto"
    if is_main:
        console.print(f"training {config.algorithm} on {config.env!r} -> {config.output_dir}", highlight=False)
        if resume == "auto":
            from .training.checkpoint import latest_checkpoint

            ckpt = latest_checkpoint(config.output_dir)
            console.print(f"torchrun restart {restarts}: " + (f"resuming from {ckpt}" if ckpt else
                          "no checkpoint yet, starting from step 0"), highlight=False, soft_wrap=True)
    try:
        summary = trainer.train(resume=resume)
    finally:
        dist = getattr(trainer, "dist", None)
        if dist is not None:
            dist.close()
    if is_main:
        from .training.report import plot_run
        from .training.report_html import write_html_report

        plot = plot_run(summary["run_dir"])
        page = write_html_report(summary["run_dir"])
        console.print(f"done: {summary['steps']} steps; metrics {summary['run_dir']}/metrics.jsonl; plot {plot}; "
                      f"report {page}", highlight=False, soft_wrap=True)
    return 0


def _recipe(args: argparse.Namespace, console: Console) -> int:
    from .training.recipe import load_recipe, run_recipe

    if args.check:
        _, stages = load_recipe(args.config)
        for name, c in stages:
            console.print(f"{name}: {c.algorithm} -> {c.output_dir}" + (f" (from {c.init_from})" if c.init_from else ""),
                          highlight=False)
        return 0
    run_recipe(args.config, console)
    return 0


def _resolve_config_env(config: Any) -> Any:
    """The config's ``env`` through the one resolver, checked before any model loads: a registered id becomes
    its pack's folder (the trainers load packs by name or folder); a pack name or folder stays as written."""
    from .envs import registered_envs
    from .resolve import resolve_env

    pack, _ = resolve_env(config.env)
    if config.env in registered_envs():
        return config.model_copy(update={"env": str(pack.path)})
    return config


def _report(args: argparse.Namespace, console: Console) -> int:
    from .training.report import plot_run, summary_table
    from .training.report_html import write_html_report

    plot = plot_run(args.run_dir, out=args.out)
    console.print(summary_table(args.run_dir))
    page = write_html_report(args.run_dir, out=args.html)
    console.print(f"plot: {plot}\nreport: {page}", highlight=False, soft_wrap=True)
    return 0


def _show(args: argparse.Namespace, console: Console) -> int:
    from .transcripts import read_transcripts
    from .transcripts_show import at_step, render, render_diff

    records = at_step(read_transcripts(args.file), args.step, args.file)
    if args.diff is not None:
        other = at_step(read_transcripts(args.diff), args.step, args.diff)
        render_diff(console, records, other, scenario=args.scenario, failed=args.failed)
    else:
        render(console, records, scenario=args.scenario, failed=args.failed)
    return 0


def _eval(args: argparse.Namespace, console: Console) -> int:
    import asyncio

    from .chat import load_model
    from .errors import ConfigError
    from .evaluation import aevaluate_domains, load_domain
    from .models.base import SamplingParams

    if args.k < 1:
        raise ConfigError(f"--k {args.k} must be >= 1 (trials per scenario)")
    if args.temperature < 0 or args.max_new_tokens < 1:
        raise ConfigError(f"--temperature {args.temperature} must be >= 0 and --max-new-tokens "
                          f"{args.max_new_tokens} >= 1")
    sampling = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    for env in args.env:  # check every input before the (slow) model load
        load_domain(env, split=args.split, limit=args.scenarios, max_turns=args.max_turns,
                    tool_prompt=args.tool_prompt)
    extra = {}
    if args.experiences is not None:
        from .training.experience import ExperienceLibrary

        extra["experiences"] = ExperienceLibrary.load(args.experiences)
    reward = None
    if args.reward is not None:
        from .rewards import load_reward

        reward = load_reward(args.reward)
    model = load_model(None if args.model == "default" else args.model, model_name=args.model_name)
    try:
        domains = [load_domain(e, split=args.split, limit=args.scenarios, max_turns=args.max_turns, model=model,
                               sampling=sampling, tool_prompt=args.tool_prompt, **extra) for e in args.env]
        report = asyncio.run(aevaluate_domains(None, domains, k=args.k, reward=reward, seed=args.seed,
                                               concurrency=args.concurrency))
    finally:
        if hasattr(model, "close"):
            model.close()
    if extra:
        report = report.model_copy(update={"label": f"experiences {args.experiences} "
                                                    f"({len(extra['experiences'])} lessons)"})
    console.print(report.table())
    if args.json:
        from .transcripts import transcripts_path

        path = report.save(args.json)
        console.print(f"report: {path}\ntranscripts: {transcripts_path(path)} (stateset-agents show FILE)",
                      highlight=False, soft_wrap=True)
    return 0


def _serve(args: argparse.Namespace, console: Console) -> int:
    from .chat import check_model_folder
    from .serving.cli import run

    if os.path.isdir(args.model):
        check_model_folder(args.model)  # a broken config.json fails here, not in the server's startup
    return run(args, console)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stateset-agents", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    envs = sub.add_parser("envs", help="list and validate conversation environments")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True)
    envs_sub.add_parser("list", help="environments and scenario counts").set_defaults(func=_envs_list)
    v = envs_sub.add_parser("validate", help="check a pack and replay its reference solutions")
    v.add_argument("pack", help="a pack folder (with pack.yaml) or a built-in pack name")
    v.add_argument("--no-audit", action="store_true", help="skip the degenerate-policy audit")
    au = envs_sub.add_parser("audit", help="play degenerate policies on a pack; exit 1 if any games the judge")
    au.add_argument("pack", help="a pack folder (with pack.yaml) or a built-in pack name")
    au.set_defaults(func=_envs_audit, no_audit=False)
    for p in (v, au):
        p.add_argument("--split", choices=["train", "test", "all"], default="all", help="scenarios to audit")
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds (default 0 1 2)")
        p.add_argument("--json", default=None, metavar="OUT", help="also write the audit report as JSON")
    v.set_defaults(func=_envs_validate)
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
    chat.set_defaults(func=_chat)
    demo = sub.add_parser("demo", help="play one scripted conversation per domain")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train from a YAML config (SFT, GRPO or Training-Free GRPO)")
    train.add_argument("config", help="YAML config (see examples/customer_service.yaml)")
    train.add_argument("--output-dir", default=None, help="run folder (overrides the config's output_dir)")
    train.add_argument("--max-steps", type=int, default=None, help="overrides the config's max_steps")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    train.set_defaults(func=_train)
    rc = sub.add_parser("recipe", help="run training stages in order (SFT, RFT, GRPO), each from the last one's "
                        "weights, and print the held-out table of every stage (docs/training.md, 'The recipe')")
    rc.add_argument("config", help="recipe YAML (see examples/recipe_customer_service.yaml)")
    rc.add_argument("--check", action="store_true", help="validate the recipe and list its stages; run nothing")
    rc.set_defaults(func=_recipe)
    report = sub.add_parser("report", help="plot a run's reward and components over steps; write its HTML report")
    report.add_argument("run_dir", help="a run folder with metrics.jsonl")
    report.add_argument("--out", default=None, help="PNG path (default RUN_DIR/plot.png)")
    report.add_argument("--html", default=None, metavar="PATH", help="the self-contained HTML page: curves, "
                        "before/after, every evaluation transcript (default RUN_DIR/report.html)")
    report.set_defaults(func=_report)
    show = sub.add_parser("show", help="print transcripts (*.transcripts.jsonl written by eval --json and train)")
    show.add_argument("file", help="a transcripts file, e.g. RUN_DIR/eval_after.transcripts.jsonl")
    show.add_argument("--scenario", default=None, help="only this scenario id")
    show.add_argument("--step", type=int, default=None, help="only this training step (of a training run's "
                      "RUN_DIR/train_transcripts.jsonl; with --diff, in both files)")
    show.add_argument("--failed", action="store_true", help="only failed episodes (with --diff: pairs where "
                      "either side failed)")
    show.add_argument("--diff", default=None, metavar="OTHER", help="a second transcripts file (e.g. the after "
                      "evaluation): print the episodes paired by scenario and trial, side by side")
    show.set_defaults(func=_show)
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
    ev.set_defaults(func=_eval)
    srv = sub.add_parser("serve", help="HTTP service: OpenAI-compatible chat, conversations, training jobs, metrics "
                                       "(extra 'serve'; see docs/serving.md)")
    from .serving.cli import add_arguments as _serve_arguments

    _serve_arguments(srv)
    srv.set_defaults(func=_serve)
    return parser


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
