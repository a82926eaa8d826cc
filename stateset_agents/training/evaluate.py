"""The run's evaluation, the same for every algorithm: the eval scenarios, once per ``eval_seeds`` seed.

Each seed's full report goes to ``eval/<tag>-seed<S>.json`` (an :class:`~stateset_agents.evaluation.EvalReport`);
the summary ``eval_<tag>.json`` holds each seed's success rate, mean reward and outcome score, and their mean,
sample standard deviation, min and max over seeds. The same seeds before and after training give paired episodes
(the same users, the same opening lines), so ``after - before`` is reported per seed. Under torchrun the
scenarios are sharded over processes and the reports merged.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..types import SamplingParams
from .checkpoint import write_json_atomic
from .dist import DistContext

__all__ = ["eval_decoding", "eval_table", "evaluate_run", "spread"]

_KEYS = ("success_rate", "mean_reward", "mean_outcome_score")


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the non-None values (std None with fewer than 2)."""
    xs = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "min": min(xs) if xs else None, "max": max(xs) if xs else None, "n": len(xs)}


@contextmanager
def eval_decoding(agent: Any, config: Any, env_factory: Any) -> Iterator[None]:
    """``agent`` decodes as the run's evaluation asks (``eval_temperature``, ``max_new_tokens``,
    ``eval_tool_grammar``, ``eval_grounded_args`` with the env pack's record references) inside the block; its own
    settings are restored after."""
    names = ("sampling", "constrain_tool_calls", "grounded_args")
    saved = {n: getattr(agent, n, None) for n in names}
    grounded = None
    if getattr(config, "eval_grounded_args", False):
        from .scenarios import split_ids

        grounded = split_ids(env_factory, "all")[0].reference_args()
    agent.sampling = SamplingParams(temperature=config.eval_temperature, max_new_tokens=config.max_new_tokens)
    agent.constrain_tool_calls = getattr(config, "eval_tool_grammar", False)
    agent.grounded_args = grounded
    try:
        yield
    finally:
        for n, v in saved.items():
            setattr(agent, n, v)


async def evaluate_run(agent: Any, env_factory: Any, scenarios: list[str], reward: Any, config: Any, run_dir: Path,
                       tag: str, *, dist: DistContext | None = None, step: int = 0,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate ``agent`` (its sampling set to ``eval_temperature`` meanwhile); write and return the summary.

    Prints the before/after table once ``tag == "after"`` and ``eval_before.json`` exists."""
    from ..evaluation import EvalReport, aevaluate

    dist = dist or DistContext()
    per_seed = []
    with eval_decoding(agent, config, env_factory):
        for seed in config.eval_seeds:
            report = await aevaluate(agent, env_factory, scenarios, k=config.eval_k, reward=reward, seed=seed,
                                     concurrency=config.rollout_concurrency, rank=dist.rank,
                                     world_size=dist.world_size, progress=False, domain=Path(config.env).name)
            if dist.distributed:
                report = EvalReport.merge(dist.all_gather_object(report))
            if dist.is_main:
                report.save(run_dir / "eval" / f"{tag}-seed{seed}.json")
            o = report.overall
            per_seed.append({"seed": seed, "success_rate": o.success_rate, "mean_reward": o.mean_reward,
                             "mean_outcome_score": o.mean_outcome_score, "errors": o.errors, "trials": o.trials})
    summary: dict[str, Any] = {"tag": tag, "step": step, "scenarios": len(scenarios), "k": config.eval_k,
                               "seeds": list(config.eval_seeds), "per_seed": per_seed, **(extra or {})}
    for key in _KEYS:
        summary[key] = spread([r[key] for r in per_seed])
    if dist.is_main:
        write_json_atomic(run_dir / f"eval_{tag}.json", summary)
        before = run_dir / "eval_before.json"
        if tag == "after" and before.is_file():
            import json

            from rich.console import Console

            Console().print(eval_table(json.loads(before.read_text(encoding="utf-8")), summary,
                                       title=getattr(config, "algorithm", "run")))
    return summary


def eval_table(before: dict[str, Any], after: dict[str, Any], *, title: str = "run") -> Any:
    """Before/after table: mean ± std over seeds, and the mean paired difference."""
    from rich.table import Table

    t = Table(title=f"{title}: eval before vs after ({len(after['seeds'])} seeds, {after['scenarios']} scenarios)")
    for col in ("metric", "before", "after", "after - before (paired by seed)"):
        t.add_column(col, justify="left" if col == "metric" else "right")

    def fmt(s: dict[str, Any]) -> str:
        if s["mean"] is None:
            return "-"
        return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")

    for key in _KEYS:
        b = {r["seed"]: r[key] for r in before["per_seed"]}
        diffs = [r[key] - b[r["seed"]] for r in after["per_seed"]
                 if r[key] is not None and b.get(r["seed"]) is not None]
        t.add_row(key, fmt(before[key]), fmt(after[key]), fmt(spread(diffs)))
    return t
