"""The before/after table of two evaluation reports (:func:`compare`); three or more reports go to the stages
table of :mod:`stateset_agents.paired`. Importable from :mod:`stateset_agents.evaluation` too."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from .errors import ConfigError
from .evaluation_report import EvalReport

__all__ = ["compare"]


def compare(before: EvalReport, after: EvalReport, *more: EvalReport, labels: Sequence[str] | None = None) -> Table:
    """Two reports: a before/after table per domain (success, errors, outcome score, reward, pass@1, pass@k, pass^k and
    every reward component, with deltas). Three or more (the stages of a recipe, ``labels`` naming them): one row
    per report, each with its paired difference against the row above and its standard error
    (:func:`~stateset_agents.paired.stages_table`). All must cover the same scenarios with the same k."""
    if more or labels is not None:
        from .paired import stages_table

        return stages_table([before, after, *more], labels)
    key = [(s.domain, s.scenario_id) for s in before.results]
    if before.k != after.k or sorted(key) != sorted((s.domain, s.scenario_id) for s in after.results):
        raise ConfigError(f"compare() needs two evaluations of the same scenarios with the same k; got k={before.k} "
                          f"with {len(before.results)} scenarios before and k={after.k} with {len(after.results)} "
                          "after. Evaluate both with the same scenario list and k")
    paired = "same seeds: paired episodes" if before.seed == after.seed else \
        f"different seeds ({before.seed} vs {after.seed}): episodes are not paired"
    t = Table(title="before / after", caption=f"{len(before.results)} scenarios x k={after.k}; {paired}")
    t.add_column("domain")
    t.add_column("metric")
    for col in ("before", "after", "delta"):
        t.add_column(col, justify="right")
    rows = [*after.domains, "overall"] if len(after.domains) > 1 else after.domains
    for d in rows:
        b, a = (r.overall if d == "overall" else r.by_domain[d] for r in (before, after))
        metrics: list[tuple[str, float | None, float | None, bool]] = [
            ("success rate", b.success_rate, a.success_rate, True),
            ("errors", b.errors, a.errors, False),
            ("outcome score", b.mean_outcome_score, a.mean_outcome_score, True),
            ("reward", b.mean_reward, a.mean_reward, True),
            *[(f"pass@{j}", b.pass_at_k.get(j), a.pass_at_k.get(j), True) for j in sorted({1, after.k})],
            (f"pass^{after.k}", b.pass_hat_k.get(after.k), a.pass_hat_k.get(after.k), True),
        ]
        for name in dict.fromkeys([*b.components, *a.components]):
            cb, ca = b.components.get(name), a.components.get(name)
            metrics.append((f"  {name}", cb.mean if cb else None, ca.mean if ca else None, True))
        for i, (name, x, y, up) in enumerate(metrics):
            t.add_row(b.domain if i == 0 else "", name, _num(x), _num(y), _delta(x, y, up),
                      end_section=i == len(metrics) - 1)
    return t


def _num(x: float | None) -> str:
    return "-" if x is None else str(x) if isinstance(x, int) else f"{x:.3f}"


def _delta(x: float | None, y: float | None, higher_is_better: bool) -> str:
    if x is None or y is None:
        return "-"
    d = y - x
    if d == 0:
        return "0" if isinstance(d, int) else "0.000"
    color = "green" if (d > 0) == higher_is_better else "red"
    return f"[{color}]{d:+d}[/]" if isinstance(d, int) else f"[{color}]{d:+.3f}[/]"
