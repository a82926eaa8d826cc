"""The scenario ids a run uses: a split of the pack, or the ids a config lists (checked, with close matches)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from ..envs.variants import SEP
from ..errors import ConfigError

__all__ = ["pick_scenarios", "run_scenarios", "split_ids"]


def split_ids(env_factory: Callable[[], Any], split: str) -> tuple[Any, list[str]]:
    """The env's pack and the ids of its scenarios in ``split``."""
    probe = env_factory()
    try:
        return probe.pack, [s.id for s in probe.pack.split(split)]
    finally:
        probe.close()


def pick_scenarios(pool: list[str], wanted: list[str] | None, field: str, split: str, pack: str) -> list[str]:
    """``wanted`` (checked against ``pool``) or the whole pool. An unknown id is an error naming it, its closest
    ids in the split, and the split's ids. Variants (``BASE~vN``) are not listed by id: a wanted base brings its own."""
    if wanted is None:
        return list(pool)
    base = [s for s in pool if SEP not in s]
    variants = [s for s in pool if SEP in s and s.split(SEP)[0] in wanted]
    unknown = [s for s in wanted if s not in pool or s not in base]
    if unknown:
        near = {u: difflib.get_close_matches(u, base, n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {m[0]!r}?" for u, m in near.items() if m)
        raise ConfigError(f"{field} {unknown} are not in split {split!r} of pack {pack!r}"
                          + (f" ({hint})" if hint else "") + f"; choose from {base}")
    return [*wanted, *variants]  # a listed train scenario brings its variants (train_variants)


def run_scenarios(env_factory: Callable[[], Any], config: Any) -> tuple[Any, list[str], list[str]]:
    """(pack, train scenario ids, eval scenario ids) of a run's config (``train_split``/``scenarios``,
    ``eval_split``/``eval_scenarios``); a run that evaluates needs eval scenarios."""
    pack, train = split_ids(env_factory, config.train_split)
    _, evals = split_ids(env_factory, config.eval_split)
    evals = [s for s in evals if SEP not in s]  # evaluation is on the hand-written scenarios, never variants
    scenarios = pick_scenarios(train, config.scenarios, "scenarios", config.train_split, pack.name)
    eval_scenarios = pick_scenarios(evals, config.eval_scenarios, "eval_scenarios", config.eval_split, pack.name)
    if not eval_scenarios and (config.eval_before or config.eval_after or config.eval_every):
        raise ConfigError(f"split {config.eval_split!r} of pack {pack.name!r} has no scenarios to evaluate "
                          "on; set eval_split, or eval_before: false and eval_after: false")
    return pack, scenarios, eval_scenarios
