"""Combining reward functions: weighted sum, weighted mean, geometric mean, minimum.

Each component is ``(reward_function, weight)``. Weight 0 means "log only": the component is computed and
reported but does not enter the total. Every component's value (and its own sub-components, as ``name/sub``) is in
the result's ``components``, so a trainer logs exactly what it optimises.

``None`` (not applicable) components are left out of the total, never counted as 0:

- ``sum``: the applicable weighted values are summed and rescaled by (total weight / applicable weight), so a
  missing component neither adds nor subtracts;
- ``mean``: sum(w * v) / sum(w) over applicable components;
- ``geometric``: exp(sum(w * log v) / sum(w)) over applicable components; values must be in [0, 1] (a value of 0
  gives 0; a negative value is an error for that trajectory);
- ``min``: the smallest applicable value among components with weight > 0.

If no component with weight > 0 applies, the total is ``None``. A component that raises or returns an error is
recorded (its value ``None``, its error in the explanation) and the total uses the others.

``normalize="zscore"`` (or ``"minmax"``) rescales each component within the group before combining:
``(v - mean) / std`` (0 when the group's values are all equal) or ``(v - min) / (max - min)``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Literal

from ..errors import ConfigError
from ..types import RewardResult, TrajectoryGroup
from .base import RewardFunction, score_group

__all__ = ["Combined", "GeometricMean", "Minimum", "WeightedMean", "WeightedSum"]

Combine = Literal["sum", "mean", "geometric", "min"]
Normalize = Literal["zscore", "minmax"] | None


def _sum(vals: list[tuple[float, float]], total_w: float) -> float:
    w = sum(wi for _, wi in vals)
    return sum(v * wi for v, wi in vals) * (total_w / w)


def _mean(vals: list[tuple[float, float]], total_w: float) -> float:
    return sum(v * wi for v, wi in vals) / sum(wi for _, wi in vals)


def _geometric(vals: list[tuple[float, float]], total_w: float) -> float:
    bad = [v for v, _ in vals if v < 0]
    if bad:
        raise ValueError(f"geometric mean needs values in [0, 1], got {bad[0]}")
    if any(v == 0 for v, _ in vals):
        return 0.0
    return math.exp(sum(wi * math.log(v) for v, wi in vals) / sum(wi for _, wi in vals))


def _min(vals: list[tuple[float, float]], total_w: float) -> float:
    return min(v for v, _ in vals)


COMBINERS: dict[str, Callable[[list[tuple[float, float]], float], float]] = {
    "sum": _sum, "mean": _mean, "geometric": _geometric, "min": _min}


def _normalize(values: list[float | None], how: str) -> list[float | None]:
    xs = [v for v in values if v is not None]
    if not xs:
        return values
    if how == "zscore":
        mu = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))
        return [None if v is None else (0.0 if sd == 0 else (v - mu) / sd) for v in values]
    lo, hi = min(xs), max(xs)
    return [None if v is None else (0.0 if hi == lo else (v - lo) / (hi - lo)) for v in values]


class Combined:
    """Combine reward functions; see the module docs for the rules."""

    def __init__(self, components: Sequence[tuple[RewardFunction, float]], *, combine: Combine = "sum",
                 normalize: Normalize = None, name: str = "total") -> None:
        if not components:
            raise ConfigError("a combined reward needs at least one (reward_function, weight) component")
        if combine not in COMBINERS:
            raise ConfigError(f"combine={combine!r} is not one of {sorted(COMBINERS)}")
        if normalize not in (None, "zscore", "minmax"):
            raise ConfigError(f"normalize={normalize!r} is not one of None, 'zscore', 'minmax'")
        names = [getattr(fn, "name", None) for fn, _ in components]
        for (fn, w), n in zip(components, names, strict=True):
            if not n or not hasattr(fn, "score"):
                raise ConfigError(f"{fn!r} is not a RewardFunction (needs `name` and `async score(group)`)")
            if not isinstance(w, (int, float)) or w < 0 or math.isnan(w):
                raise ConfigError(f"weight of {n!r} is {w!r}; weights are numbers >= 0 (0 = log only)")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"component names must be unique; {dupes} appear more than once: give each its own "
                              "`name=`")
        if not any(w > 0 for _, w in components):
            raise ConfigError("every weight is 0; at least one component must count towards the total")
        self.components = list(components)
        self.combine, self.normalize, self.name = combine, normalize, name
        self.weights = {n: float(w) for n, (_, w) in zip(names, components, strict=True)}

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        # a crashing component is recorded (score_group), and the other components still count
        per_fn = await asyncio.gather(*[score_group(fn, group) for fn, _ in self.components])
        names = list(self.weights)
        raw = {n: [r.value for r in res] for n, res in zip(names, per_fn, strict=True)}
        used = {n: (_normalize(v, self.normalize) if self.normalize else v) for n, v in raw.items()}
        total_w = sum(w for w in self.weights.values() if w > 0)
        out = []
        for i, t in enumerate(group.trajectories):
            comps: dict[str, float | None] = {}
            notes, errors = [], []
            for n, res in zip(names, per_fn, strict=True):
                r = res[i]
                comps[n] = r.value
                for sub, v in r.components.items():
                    if sub != n:
                        comps[f"{n}/{sub}"] = v
                if r.error:
                    errors.append(f"{n}: {r.error}")
                if r.explanation:
                    notes.append(f"{n}: {r.explanation}")
            vals = [(used[n][i], w) for n, w in self.weights.items() if w > 0 and used[n][i] is not None]
            value: float | None = None
            err = None
            if vals:
                try:
                    value = float(COMBINERS[self.combine](vals, total_w))
                except ValueError as e:
                    err = str(e)
            elif t.error is not None:
                err = f"trajectory failed: {t.error}"
            else:
                err = "no component with weight > 0 applies" + (f" ({'; '.join(errors)})" if errors else "")
            out.append(RewardResult(value=value, components=comps,
                                    explanation="; ".join(notes + [f"error in {e}" for e in errors]), error=err))
        return out


class WeightedSum(Combined):
    def __init__(self, components: Sequence[tuple[RewardFunction, float]], *, normalize: Normalize = None,
                 name: str = "total") -> None:
        super().__init__(components, combine="sum", normalize=normalize, name=name)


class WeightedMean(Combined):
    def __init__(self, components: Sequence[tuple[RewardFunction, float]], *, normalize: Normalize = None,
                 name: str = "total") -> None:
        super().__init__(components, combine="mean", normalize=normalize, name=name)


class GeometricMean(Combined):
    def __init__(self, components: Sequence[tuple[RewardFunction, float]], *, name: str = "total") -> None:
        super().__init__(components, combine="geometric", name=name)


class Minimum(Combined):
    def __init__(self, components: Sequence[tuple[RewardFunction, float]], *, name: str = "total") -> None:
        super().__init__(components, combine="min", name=name)
