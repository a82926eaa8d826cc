"""Paired comparisons of evaluations: differences per scenario, their mean and standard error, and the stages table.

Two evaluations of the same scenarios with the same seeds play the same episodes up to the agent's choices (the
user's opening lines, the database, the sampling seeds), so their difference is measured scenario by scenario:
``d_i = mean over the k trials of scenario i after - the same before``. The reported difference is the mean of the
``d_i`` and its standard error ``sd(d) / sqrt(n)`` over the ``n`` scenarios (trials of one scenario are not
independent, so the scenario is the unit). ``evaluation.compare`` with three or more reports prints
:func:`stages_table`; ``paired_difference`` gives the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rich.table import Table

from .errors import ConfigError

EvalReport = Any  # evaluation.EvalReport (not imported: evaluation.compare imports this module)
TrialResult = Any  # evaluation.TrialResult

__all__ = ["METRICS", "paired_difference", "stage_summary", "stages_table", "tool_validity"]


def _success(t: TrialResult) -> float:
    return float(t.success)


def _progress(t: TrialResult) -> float:
    return float(t.progress or 0.0) if t.error is None else 0.0


METRICS: dict[str, Callable[[Any], float]] = {"success": _success, "progress": _progress}
"""Per-trial metrics a paired difference can be taken of; a failed episode counts 0."""


def _check_same(reports: Sequence[EvalReport]) -> list[tuple[str, str]]:
    key = [(s.domain, s.scenario_id) for s in reports[0].results]
    for r in reports[1:]:
        if r.k != reports[0].k or sorted(key) != sorted((s.domain, s.scenario_id) for s in r.results):
            raise ConfigError(f"paired comparisons need evaluations of the same scenarios with the same k; got "
                              f"k={reports[0].k} with {len(reports[0].results)} scenarios and k={r.k} with "
                              f"{len(r.results)}. Evaluate every stage with the same scenario list, k and seed")
    return key


def _per_scenario(report: EvalReport, metric: str) -> dict[tuple[str, str], float]:
    f = METRICS[metric]
    return {(s.domain, s.scenario_id): sum(f(t) for t in s.trials) / len(s.trials) for s in report.results}


def paired_difference(before: EvalReport, after: EvalReport, metric: str = "success") -> tuple[float, float, int]:
    """(mean difference after - before, its standard error, scenarios) of ``metric`` (``success`` or ``progress``),
    paired by scenario (module docs). The standard error is 0 with one scenario."""
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is not one of {sorted(METRICS)}")
    key = _check_same([before, after])
    b, a = _per_scenario(before, metric), _per_scenario(after, metric)
    d = [a[k] - b[k] for k in key]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    return mean, sd / math.sqrt(n), n


def tool_validity(report: EvalReport) -> tuple[float | None, float]:
    """(share of the agent's tool calls that ran without an error, or None without calls; share of episodes with at
    least one tool call), over trials that ended without error."""
    trials = [t for s in report.results for t in s.trials if t.error is None and t.tool_calls is not None]
    calls = sum(t.tool_calls or 0 for t in trials)
    errors = sum(t.tool_errors or 0 for t in trials)
    valid = (calls - errors) / calls if calls else None
    with_calls = sum((t.tool_calls or 0) > 0 for t in trials) / len(trials) if trials else 0.0
    return valid, with_calls


def stage_summary(report: EvalReport) -> dict[str, Any]:
    """One stage's numbers: success rate, mean progress, pass^1..k, tool-call validity (as in the stages table)."""
    o = report.overall
    trials = [t for s in report.results for t in s.trials]
    valid, with_calls = tool_validity(report)
    return {"success_rate": o.success_rate, "successes": o.successes, "trials": o.trials,
            "progress": sum(_progress(t) for t in trials) / len(trials) if trials else None,
            "pass_hat_k": {str(j): v for j, v in o.pass_hat_k.items()}, "tool_call_validity": valid,
            "episodes_with_tool_calls": with_calls}


def _signed(d: float, se: float, pct: bool) -> str:
    if pct:
        return f"{100 * d:+.1f} ± {100 * se:.1f}"
    return f"{d:+.3f} ± {se:.3f}"


def stages_table(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> Table:
    """One row per report (a stage of a recipe): success (count), progress, pass^1..k, tool-call validity, and the
    paired difference in success (points) and progress against the row above, each with its standard error."""
    if len(reports) < 2:
        raise ConfigError(f"a stages table needs at least two evaluations, got {len(reports)}")
    labels = list(labels) if labels is not None else [f"#{i}" for i in range(len(reports))]
    if len(labels) != len(reports):
        raise ConfigError(f"{len(labels)} labels for {len(reports)} evaluations; give one label per evaluation")
    _check_same(reports)
    k = reports[0].k
    n = len(reports[0].results)
    paired = "same seeds: paired" if len({r.seed for r in reports}) == 1 else "different seeds: not paired"
    t = Table(title=f"held-out evaluation: {n} scenarios x k={k}",
              caption=f"{paired}; differences are against the row above, per scenario, mean ± standard error")
    for col in ("stage", "success", "progress", *[f"pass^{j}" for j in range(1, k + 1)], "tool calls ok",
                "Δ success (pts)", "Δ progress"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for i, (label, r) in enumerate(zip(labels, reports, strict=True)):
        s = stage_summary(r)
        valid = "-" if s["tool_call_validity"] is None else f"{s['tool_call_validity']:.0%}"
        deltas = ["", ""]
        if i:
            ds, ses, _ = paired_difference(reports[i - 1], r, "success")
            dp, sep, _ = paired_difference(reports[i - 1], r, "progress")
            deltas = [_signed(ds, ses, True), _signed(dp, sep, False)]
        t.add_row(label, f"{s['success_rate']:.1%} ({s['successes']}/{s['trials']})", f"{s['progress']:.3f}",
                  *[f"{s['pass_hat_k'].get(str(j), 0.0):.3f}" for j in range(1, k + 1)], valid, *deltas)
    return t
