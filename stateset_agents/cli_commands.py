"""What each verb of the ``stateset-agents`` command line does: one ``cmd_<verb>(args, console)`` per verb, returning
the exit status. :mod:`stateset_agents.cli` parses the arguments and calls them."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = [
    "cmd_chat",
    "cmd_demo",
    "cmd_envs_audit",
    "cmd_envs_list",
    "cmd_envs_validate",
    "cmd_eval",
    "cmd_recipe",
    "cmd_report",
    "cmd_serve",
    "cmd_show",
    "cmd_train",
]


def cmd_envs_list(args: argparse.Namespace, console: Console) -> int:
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


def cmd_envs_validate(args: argparse.Namespace, console: Console) -> int:
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
    audit_rc = 0 if args.no_audit else cmd_envs_audit(args, console, pack)
    return 1 if bad or audit_rc else 0


def cmd_envs_audit(args: argparse.Namespace, console: Console, pack: object = None) -> int:
    from .envs.audit import audit_pack
    from .envs.audit_report import print_audit, save_audit
    from .resolve import resolve_env

    pack = pack if pack is not None else resolve_env(args.pack)[0]
    report = audit_pack(pack, split=args.split, seeds=tuple(args.seeds))
    print_audit(report, console)
    if args.json:
        console.print(f"audit: {save_audit(report, args.json)}", highlight=False)
    return 0 if report.ok else 1


def cmd_chat(args: argparse.Namespace, console: Console) -> int:
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


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from .demo import play_demo

    play_demo(console, seed=args.seed)
    return 0


def cmd_train(args: argparse.Namespace, console: Console) -> int:
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


def cmd_recipe(args: argparse.Namespace, console: Console) -> int:
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


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from .training.report import plot_run, summary_table
    from .training.report_html import write_html_report

    plot = plot_run(args.run_dir, out=args.out)
    console.print(summary_table(args.run_dir))
    page = write_html_report(args.run_dir, out=args.html)
    console.print(f"plot: {plot}\nreport: {page}", highlight=False, soft_wrap=True)
    return 0


def cmd_show(args: argparse.Namespace, console: Console) -> int:
    from .transcripts import read_transcripts
    from .transcripts_show import at_step, render, render_diff

    records = at_step(read_transcripts(args.file), args.step, args.file)
    if args.diff is not None:
        other = at_step(read_transcripts(args.diff), args.step, args.diff)
        render_diff(console, records, other, scenario=args.scenario, failed=args.failed)
    else:
        render(console, records, scenario=args.scenario, failed=args.failed)
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
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


def cmd_serve(args: argparse.Namespace, console: Console) -> int:
    from .chat import check_model_folder
    from .serving.cli import run

    if os.path.isdir(args.model):
        check_model_folder(args.model)  # a broken config.json fails here, not in the server's startup
    return run(args, console)
