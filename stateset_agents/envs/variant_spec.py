"""The data that declares how a pack's train scenarios expand into variants (see :mod:`.variants`).

In ``pack.yaml``::

    variants:
      count: 24                      # variants per train scenario a run asks for by default
      ids:                           # every id of these shapes is replaced by a fresh one of the same shape
        - {prefix: ORD-, digits: 4}
        - {prefix: C-, digits: 3}
      people:                        # records with a two-word ``name`` get a new name (and email) everywhere
        tables: [customers]
        first: [Ana, Ben, ...]
        last: [Okafor, Lindqvist, ...]
      pools:                         # named value pools a scenario's ``vary`` entries draw from
        item: [[cable-knit sweater, sweater], [denim jacket, jacket]]

and in a scenario::

    vary:
      - {value: [cable-knit sweater, sweater], pool: item}   # each alias maps to the same position in the pick
      - {value: 54.0, range: [20, 95]}                         # an amount: same cents, dollars drawn in range
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .rules import _Strict

__all__ = ["IdShape", "PeopleSpec", "VariantSpec", "VaryEntry"]


class IdShape(_Strict):
    """Ids like ``ORD-9104``: a literal prefix then exactly ``digits`` digits."""

    prefix: str = Field(min_length=1)
    digits: int = Field(ge=2, le=9)


class PeopleSpec(_Strict):
    """Who gets renamed: every record of these tables whose ``name`` is two or three capitalised words
    (the scenario's user among them): the new name is a first and a last name from these lists."""

    tables: list[str] = Field(min_length=1)
    first: list[str] = Field(min_length=4)
    last: list[str] = Field(min_length=4)


class VaryEntry(_Strict):
    """One literal of a scenario to vary: a value (or aliases of it) from a named pool, or an amount in a range."""

    value: str | float | list[str]
    pool: str | None = None
    range: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one(self) -> VaryEntry:
        if (self.pool is None) == (self.range is None):
            raise ValueError("a vary entry has exactly one of `pool` (a named pool) or `range` (an amount)")
        if self.range is not None:
            if isinstance(self.value, (str, list, bool)):
                raise ValueError(f"a `range` entry varies a number; value {self.value!r} is not one")
            lo, hi = self.range
            if not 0 < lo <= hi:
                raise ValueError(f"range {list(self.range)} must be [low, high] with 0 < low <= high")
        elif not isinstance(self.value, (str, list)) or not self.value:
            raise ValueError(f"a `pool` entry varies text; value {self.value!r} is not a string or aliases")
        return self

    def aliases(self) -> list[str]:
        return [self.value] if isinstance(self.value, str) else list(self.value)  # type: ignore[list-item]


class VariantSpec(_Strict):
    """How the pack's train scenarios expand into variants (module docs)."""

    count: int = Field(default=16, ge=1, le=1000)
    """Variants per train scenario when a run asks for the pack's default (``train_variants: default``)."""
    ids: list[IdShape] = Field(default_factory=list)
    people: PeopleSpec | None = None
    pools: dict[str, list[list[str]]] = Field(default_factory=dict)
    """Named pools of values; each value is a list of aliases (``[full name, short name]``)."""

    @model_validator(mode="after")
    def _pools(self) -> VariantSpec:
        for name, values in self.pools.items():
            if len(values) < 2:
                raise ValueError(f"pool {name!r} has {len(values)} value(s); give at least 2 to vary between")
            widths = {len(v) for v in values}
            if len(widths) != 1 or 0 in widths:
                raise ValueError(f"pool {name!r}: every value must list the same number (>= 1) of aliases")
        return self
