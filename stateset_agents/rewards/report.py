"""A reward report: per-component mean and std over a batch, and the correlation matrix between components."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from ..types import RewardResult

__all__ = ["RewardReport", "reward_report"]


@dataclass
class RewardReport:
    stats: dict[str, dict[str, float | int | None]]
    """component -> {"mean", "std", "count" (applicable values), "missing" (None values)}."""
    correlation: dict[str, dict[str, float | None]]
    """Pearson correlation over trajectories where both components apply; None when undefined."""

    def to_dict(self) -> dict[str, Any]:
        return {"stats": self.stats, "correlation": self.correlation}

    def tables(self) -> tuple[Table, Table]:
        """Two rich tables: the per-component statistics and the correlation matrix."""
        t = Table(title="reward components")
        for col in ("component", "mean", "std", "n", "n/a"):
            t.add_column(col, justify="right" if col != "component" else "left")
        for name, s in self.stats.items():
            t.add_row(name, fmt(s["mean"]), fmt(s["std"]), str(s["count"]), str(s["missing"]))
        c = Table(title="correlation between components")
        names = list(self.correlation)
        c.add_column("")
        for n in names:
            c.add_column(n, justify="right")
        for a in names:
            c.add_row(a, *["-" if self.correlation[a][b] is None else f"{self.correlation[a][b]:+.2f}" for b in names])
        return t, c


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    if sx == 0 or sy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)


def reward_report(results: Iterable[RewardResult], *, include_total: bool = True) -> RewardReport:
    """Summarise a batch of results (from one or many groups). The total is reported as ``total``."""
    rows: list[dict[str, float | None]] = []
    for r in results:
        row = dict(r.components)
        if include_total:
            row["total"] = r.value
        rows.append(row)
    names: list[str] = []
    for row in rows:
        names += [n for n in row if n not in names]
    stats: dict[str, dict[str, float | int | None]] = {}
    for n in names:
        xs = [row[n] for row in rows if row.get(n) is not None]
        mean = sum(xs) / len(xs) if xs else None
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)) if xs else None
        stats[n] = {"mean": mean, "std": std, "count": len(xs), "missing": len(rows) - len(xs)}
    corr: dict[str, dict[str, float | None]] = {a: {} for a in names}
    for a in names:
        for b in names:
            pairs = [(row[a], row[b]) for row in rows if row.get(a) is not None and row.get(b) is not None]
            corr[a][b] = _pearson([p[0] for p in pairs], [p[1] for p in pairs])
    return RewardReport(stats=stats, correlation=corr)
