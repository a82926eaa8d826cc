"""Does RL beat more imitation? The recipe's evidence on SmolLM2-135M-Instruct, on this CPU.

Per seed (the seed sets LoRA's initialisation, the data order, the scenario variants and the sampling):

  1. SFT: the recipe's first stage (``--recipe``, default examples/recipe_customer_service.yaml), evaluated on the
     held-out test split before and after (same episodes: paired).
  2. From the SFT weights, two arms with the same training wall-clock budget (``--budget-s``, evaluation time not
     counted), run one after the other in an order that alternates with the seed:
       grpo : the recipe's GRPO stage (outcome-first reward), as many steps as fit the budget;
       sft+ : continued SFT, the SFT stage's settings on fresh variants (another variant seed: more distinct
              demonstrations, not more epochs of the same ones), as many steps as fit the budget.
     Both are evaluated on the test split every ``--eval-every-s`` seconds of training and at the end, with the
     recipe's evaluation settings (eval_k trials per scenario, the same seeds: paired).

Reported (``--json``, default benchmarks/results_learning.json; curve PNG next to it): held-out success after SFT
per seed; each arm's final success, progress and pass^k; GRPO minus continued SFT in held-out success, paired by
(seed, scenario) and pooled over seeds, with its standard error; the curves of held-out success against training
seconds for both arms. Settings are the recipe's, chosen on a validation slice of train (docs/training.md,
"The recipe"), never on the test split.

Run:  .venv/bin/python benchmarks/learning.py [--seeds 0 1 2] [--budget-s 900] [--eval-every-s 450]
      [--env customer_service] [--out runs/learning]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _stage_configs(recipe_path: Path, env: str | None) -> tuple[Any, Any]:
    from stateset_agents.training.recipe import load_recipe

    _, stages = load_recipe(recipe_path)
    by_name = {n: c for n, c in stages}
    sft, grpo = by_name["sft"], by_name["grpo"]
    if env is not None:
        sft, grpo = (c.model_copy(update={"env": env, "reward": c.reward.replace("customer_service", env)})
                     for c in (sft, grpo))
    return sft, grpo


def _report(run_dir: Path, tag: str, seeds: list[int]) -> list[Any]:
    from stateset_agents.evaluation import EvalReport

    return [EvalReport.load(run_dir / "eval" / f"{tag}-seed{s}.json") for s in seeds]


def _point(reports: list[Any], seconds: float, tag: str) -> dict[str, Any]:
    from stateset_agents.paired import stage_summary

    s = [stage_summary(r) for r in reports]
    return {"train_s": seconds, "tag": tag, "success_rate": sum(x["success_rate"] for x in s) / len(s),
            "progress": sum(x["progress"] for x in s) / len(s), "pass_hat_k": s[0]["pass_hat_k"]}


async def _arm(config: Any, budget_s: float, eval_every_s: float) -> dict[str, Any]:
    """Train ``config`` until ``budget_s`` seconds of steps have run; evaluate on the way and at the end."""
    from stateset_agents.training.build import build_trainer
    from stateset_agents.training.loop import RunLoop

    trainer = build_trainer(config)
    loop = RunLoop(trainer)
    prepare = getattr(trainer, "prepare", None)
    if prepare is not None:
        await prepare()
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    curve, spent, next_eval, steps = [], 0.0, eval_every_s, 0
    while spent < budget_s and trainer.step < trainer.total_steps:
        row = await loop.one_step()
        spent += float(row["time/total"])
        steps += 1
        if spent >= next_eval and spent < budget_s:
            tag = f"t{int(spent)}"
            await trainer.evaluate(tag)
            curve.append(_point(_report(run_dir, tag, config.eval_seeds), spent, tag))
            next_eval += eval_every_s
    await trainer.evaluate("after")
    curve.append(_point(_report(run_dir, "after", config.eval_seeds), spent, "after"))
    dist = getattr(trainer, "dist", None)
    if dist is not None:
        dist.close()
    del trainer, loop
    gc.collect()
    return {"steps": steps, "train_s": spent, "curve": curve}


def _pooled(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """GRPO minus continued SFT, per (seed, scenario) success, pooled over seeds: mean and standard error."""
    d = []
    for sft_r, grpo_r in pairs:
        a = {s.scenario_id: sum(s.successes) / len(s.successes) for s in sft_r.results}
        d += [sum(s.successes) / len(s.successes) - a[s.scenario_id] for s in grpo_r.results]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "se": sd / math.sqrt(n), "pairs": n}


def _plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"grpo": "tab:red", "sft+": "tab:blue"}
    for seed, r in results["seeds"].items():
        for arm in ("grpo", "sft+"):
            pts = [(0.0, r["after_sft"]["success_rate"])] + [(p["train_s"], p["success_rate"])
                                                            for p in r["arms"][arm]["curve"]]
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[arm], alpha=0.8,
                    label=f"{arm} (seed {seed})")
    ax.set_xlabel("training seconds after SFT (evaluation not counted)")
    ax.set_ylabel("held-out success rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"{results['env']}: GRPO vs continued SFT at equal training time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "examples" / "recipe_customer_service.yaml"))
    ap.add_argument("--env", default=None, help="another pack (tech_support, sales): same settings")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget-s", type=float, default=900.0, help="training seconds per arm")
    ap.add_argument("--eval-every-s", type=float, default=450.0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "learning"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results_learning.json"))
    args = ap.parse_args()

    import torch

    from stateset_agents.evaluation import EvalReport
    from stateset_agents.training.build import build_trainer

    sft, grpo = _stage_configs(Path(args.recipe), args.env)
    env = args.env or Path(sft.env).name
    out = Path(args.out) / env
    results: dict[str, Any] = {
        "env": env, "budget_s": args.budget_s, "eval_every_s": args.eval_every_s, "seeds": {},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version()},
        "recipe": str(Path(args.recipe).relative_to(ROOT)) if Path(args.recipe).is_relative_to(ROOT) else args.recipe}
    t_start = time.time()
    for i, seed in enumerate(args.seeds):
        base = out / f"seed{seed}"
        sft_cfg = sft.model_copy(update={"seed": seed, "output_dir": str(base / "sft")})
        if not (base / "sft" / "eval_after.json").is_file():
            trainer = build_trainer(sft_cfg)
            trainer.train()
            if getattr(trainer, "dist", None) is not None:
                trainer.dist.close()
            del trainer
            gc.collect()
        before = _report(base / "sft", "before", sft.eval_seeds)
        after = _report(base / "sft", "after", sft.eval_seeds)
        row: dict[str, Any] = {"before": _point(before, 0.0, "before"), "after_sft": _point(after, 0.0, "after"),
                               "arms": {}, "order": []}
        arms = {
            "grpo": grpo.model_copy(update={"seed": seed, "init_from": str(base / "sft"), "max_steps": 10_000,
                                            "output_dir": str(base / "grpo"), "eval_before": False}),
            "sft+": sft.model_copy(update={"seed": seed + 1000, "init_from": str(base / "sft"), "epochs": 1000,
                                           "output_dir": str(base / "sft_more"), "eval_before": False}),
        }
        order = ["grpo", "sft+"] if i % 2 == 0 else ["sft+", "grpo"]  # alternate which arm runs first
        for arm in order:
            row["arms"][arm] = asyncio.run(_arm(arms[arm], args.budget_s, args.eval_every_s))
            row["order"].append(arm)
            print(f"seed {seed} {arm}: {row['arms'][arm]['steps']} steps, "
                  f"final success {row['arms'][arm]['curve'][-1]['success_rate']:.3f}", flush=True)
        results["seeds"][str(seed)] = row
    pairs = []
    for seed in args.seeds:
        base = out / f"seed{seed}"
        for s in sft.eval_seeds:
            pairs.append((EvalReport.load(base / "sft_more" / "eval" / f"after-seed{s}.json"),
                          EvalReport.load(base / "grpo" / "eval" / f"after-seed{s}.json")))
    results["grpo_minus_sft_more"] = _pooled(pairs)
    results["wall_s"] = time.time() - t_start
    Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    _plot(results, Path(args.json).with_suffix(".png"))
    print(json.dumps({k: results[k] for k in ("env", "grpo_minus_sft_more", "wall_s")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
