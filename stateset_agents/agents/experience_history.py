"""An experience library's history, read back: the library as it was at a step (what
:meth:`~stateset_agents.agents.experience.ExperienceLibrary.rollback` rebuilds) and the per-step counts of
operations (:meth:`~stateset_agents.agents.experience.ExperienceLibrary.report`).

See :mod:`.experience` for what the operations mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .experience_records import OP_NAMES, Experience, LibraryReport, StepRecord, id_num

__all__ = ["history_report", "replay"]


def replay(history: Sequence[StepRecord], step: int) -> tuple[list[Experience], list[StepRecord], int]:
    """Replay every operation of the records up to ``step``: the experiences then (in the order they were last
    written), those records, and the highest id number used (so ids are never reused)."""
    state: dict[str, Experience] = {}
    max_id = 0
    records = [r for r in history if r.step <= step]
    for r in records:
        for op in r.ops:
            max_id = max(max_id, id_num(op.id))
            if op.after is None:
                state.pop(op.id, None)
            else:
                state[op.id] = op.after
    return list(state.values()), records, max_id


def history_report(experiences: Sequence[Experience], history: Sequence[StepRecord], max_size: int) -> LibraryReport:
    """Size, mean confidence, domain coverage, deduplication ratio, operations per step."""
    per_step = []
    totals = dict.fromkeys(OP_NAMES, 0)
    for r in history:
        row = {"step": r.step, **dict.fromkeys(OP_NAMES, 0)}
        for op in r.ops:
            row[op.op] += 1
            totals[op.op] += 1
        per_step.append(row)
    domains: dict[str, int] = {}
    for e in experiences:
        domains[e.domain] = domains.get(e.domain, 0) + 1
    proposed = totals["ADD"] + totals["MERGE"]
    return LibraryReport(
        size=len(experiences), max_size=max_size,
        mean_confidence=float(np.mean([e.confidence for e in experiences])) if experiences else None,
        domains=domains, dedup_ratio=totals["MERGE"] / proposed if proposed else None,
        steps=len(history), ops_total=totals, ops_per_step=per_step)
