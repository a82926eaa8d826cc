"""Evaluate a finished run's weights on its config's eval scenarios at one or more temperatures.

Used to choose settings on a validation slice carved from train (never the test split):

    python benchmarks/eval_run.py CONFIG RUN_DIR 0,0.7 OUT_DIR

CONFIG is the run's config (its ``eval_scenarios``, ``eval_seeds``, ``eval_k``, prompt and precision are used);
RUN_DIR the run whose last checkpoint is loaded (as ``init_from``); each temperature writes
``OUT_DIR/eval/val_t<T>-seed<S>.json`` with transcripts, and one summary line per temperature and seed is printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path

from stateset_agents.rewards import load_reward
from stateset_agents.training import build
from stateset_agents.training.config import load_config
from stateset_agents.training.dist import DistContext
from stateset_agents.training.grpo_mismatch import set_rollout_precision


def summary(path: Path) -> str:
    d = json.loads(path.read_text())
    trials = [t | {"sid": r["scenario_id"]} for r in d["results"] for t in r["trials"]]
    n, ok = len(trials), sum(1 for t in trials if t.get("success"))
    prog = sum(t.get("progress") or 0 for t in trials) / max(1, n)
    calls, errors = sum(t["tool_calls"] for t in trials), sum(t["tool_errors"] for t in trials)
    solved = sorted({t["sid"] for t in trials if t.get("success")})
    return (f"{path.name}: success {ok}/{n}, progress {prog:.3f}, tool calls ok {1 - errors / max(1, calls):.2f}, "
            f"solved {solved}")


def main(argv: list[str]) -> None:
    cfg_path, run_dir, temps, out = argv[0], argv[1], [float(t) for t in argv[2].split(",")], Path(argv[3])
    cfg = load_config(cfg_path).model_copy(update={"init_from": run_dir})
    dist = DistContext.from_env("cpu")
    model = build.load_model(cfg, dist)
    set_rollout_precision(model, cfg)
    env_factory = build.config_env_factory(cfg)
    reward = load_reward(cfg.reward)
    agent = build._agent(cfg, model, cfg.resolved_domain())
    trainer = types.SimpleNamespace(agent=agent, run_dir=out)  # what the evaluator reads
    for t in temps:
        evaluate = build.make_evaluator(cfg.model_copy(update={"eval_temperature": t}), env_factory, reward, dist)
        asyncio.run(evaluate(trainer, f"val_t{t:g}"))
        for seed in cfg.eval_seeds:
            print(f"temperature {t:g}, seed {seed}: " + summary(out / "eval" / f"val_t{t:g}-seed{seed}.json"))


if __name__ == "__main__":
    main(sys.argv[1:])
