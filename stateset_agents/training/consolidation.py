"""Proposals of the Training-Free learner and their batch-level consolidation: conflict rules and, with
``consolidation: embedding``, near-duplicate ADDs merged by embedding similarity (no learner call)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..agents.experience import ExperienceLibrary, Operation, Provenance

__all__ = ["GroupProposal", "consolidate_by_embedding", "merge_provenance", "resolve_conflicts"]


@dataclass
class GroupProposal:
    """What the learner made of one group."""

    scenario_id: str
    rewards: list[float]
    strength: float
    ops: list[Operation] = field(default_factory=list)
    advantage: str = ""
    summaries: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0

    def to_json(self, step: int) -> dict[str, Any]:
        return {"step": step, "scenario_id": self.scenario_id, "rewards": self.rewards, "strength": self.strength,
                "advantage": self.advantage, "summaries": self.summaries,
                "operations": [o.model_dump(exclude={"provenance"}, exclude_none=True) for o in self.ops],
                "error": self.error, "attempts": self.attempts}


def _support(op: Operation) -> float:
    return sum(p.advantage for p in op.provenance)


def merge_provenance(ops: Sequence[Operation]) -> list[Provenance]:
    seen, out = set(), []
    for o in ops:
        for p in o.provenance:
            key = (p.scenario_id, p.step, p.advantage)
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def resolve_conflicts(ops: Sequence[Operation]) -> tuple[list[Operation], int]:
    """Fixed rules for operations on the same experience; returns (ops in apply order, how many were dropped).

    Per target id: DELETE and MODIFY conflict, and the side with the larger total support (sum of its evidence's
    strengths) wins, MODIFY on a tie; of several MODIFYs the best supported stays; KEEPs fold their evidence into
    the surviving MODIFY or KEEP and are dropped under a DELETE. ADDs pass (the library merges near-duplicates).
    Apply order: MODIFY and KEEP, then DELETE, then ADD.
    """
    by_id: dict[str, list[Operation]] = {}
    adds = []
    for op in ops:
        if op.op == "ADD":
            adds.append(op)
        elif op.id is not None:
            by_id.setdefault(op.id, []).append(op)
    changes, deletes, dropped = [], [], 0
    for target, group in by_id.items():
        mods = [o for o in group if o.op == "MODIFY"]
        dels = [o for o in group if o.op == "DELETE"]
        keeps = [o for o in group if o.op == "KEEP"]
        best_mod = max(mods, key=_support) if mods else None  # max() keeps the first on ties
        if dels and (best_mod is None or sum(map(_support, dels)) > _support(best_mod)):
            deletes.append(Operation(op="DELETE", id=target, provenance=merge_provenance(dels),
                                     reason="; ".join(o.reason for o in dels if o.reason)))
            dropped += len(group) - len(dels)
            continue
        dropped += len(dels)
        if best_mod is not None:
            dropped += len(mods) - 1
            changes.append(best_mod.model_copy(update={"provenance": merge_provenance([best_mod, *keeps])}))
        elif keeps:
            changes.append(Operation(op="KEEP", id=target, provenance=merge_provenance(keeps),
                                     reason="; ".join(o.reason for o in keeps if o.reason)))
    return changes + deletes + adds, dropped


def consolidate_by_embedding(ops: Sequence[Operation], library: ExperienceLibrary) -> tuple[list[Operation], int]:
    """Consolidation without a learner call: ADDs whose embeddings are at least ``dedup_threshold`` similar are
    merged (the best-supported text stays, the evidence is pooled), then :func:`resolve_conflicts`."""
    adds = sorted((o for o in ops if o.op == "ADD"), key=lambda o: -_support(o))
    clusters: list[list[Operation]] = []
    if adds:
        vecs = library.embed([o.text or "" for o in adds])
        heads: list[int] = []
        for i, o in enumerate(adds):
            for c, h in zip(clusters, heads, strict=True):
                if (o.domain or "general") == (adds[h].domain or "general") \
                        and float(vecs[i] @ vecs[h]) >= library.dedup_threshold:
                    c.append(o)
                    break
            else:
                clusters.append([o])
                heads.append(i)
    merged = [c[0].model_copy(update={"provenance": merge_provenance(c)}) for c in clusters]
    rest = [o for o in ops if o.op != "ADD"]
    out, dropped = resolve_conflicts(rest + merged)
    return out, dropped + len(adds) - len(merged)
