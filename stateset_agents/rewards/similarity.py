"""Similarity of the agent's replies to the scenario's reference replies, with sentence embeddings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..envs.pack import builtin_pack_dirs, load_pack
from ..types import RewardResult, TrajectoryGroup
from .base import agent_messages, failed_result
from .embeddings import Embedder, default_embedder

__all__ = ["ReferenceSimilarity"]


def _pack_references(packs: Iterable[str]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for name in packs:
        for s in load_pack(name).scenarios:
            refs[s.id] = list(s.references)
    return refs


class ReferenceSimilarity:
    """Best cosine similarity between any agent message and any of the scenario's ``references``.

    ``value = max(0, max_ij cos(agent_i, reference_j))`` in [0, 1] with all-MiniLM-L6-v2 unit embeddings; every
    text of the group is embedded in one batched call. Not applicable (``None``) when the scenario has no
    references or the agent said nothing to the user. Measures topical closeness to an ideal reply, not whether
    the facts are right: an agent that paraphrases the reference with the wrong date scores high.

    Args:
        references: scenario id -> reference replies; default: from the given packs (all built-in packs).
        packs: pack names or folders to read references from when ``references`` is not given.
        embedder: default: the shared all-MiniLM-L6-v2 embedder.
    """

    def __init__(self, references: Mapping[str, list[str]] | None = None, *, packs: Iterable[str] | None = None,
                 embedder: Embedder | None = None, name: str = "similarity") -> None:
        self.references = dict(references) if references is not None else _pack_references(
            packs if packs is not None else list(builtin_pack_dirs()))
        self._embedder = embedder
        self.name = name

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        from ..toolcalls import parse_message

        refs = self.references.get(group.scenario_id, [])
        per_traj: list[list[str]] = []
        for t in group.trajectories:
            texts = [parse_message(m.content).text for m in agent_messages(t)] if t.error is None else []
            per_traj.append([x for x in texts if x.strip()])
        flat = [x for texts in per_traj for x in texts]
        emb = None if not refs or not flat else self.embedder.encode(refs + flat)
        out, k = [], len(refs)
        for t, texts in zip(group.trajectories, per_traj, strict=True):
            if t.error is not None:
                out.append(failed_result(t))
                continue
            if not refs:
                out.append(RewardResult(value=None, components={self.name: None},
                                        explanation=f"scenario {group.scenario_id!r} has no reference replies"))
                continue
            if not texts:
                out.append(RewardResult(value=None, components={self.name: None},
                                        explanation="the agent said nothing to the user"))
                continue
            sims = emb[k:k + len(texts)] @ emb[:len(refs)].T
            k += len(texts)
            v = max(0.0, float(sims.max()))
            out.append(RewardResult(value=v, components={self.name: v},
                                    explanation=f"best cosine {v:.3f} over {len(texts)} replies x {len(refs)} references"))
        return out
