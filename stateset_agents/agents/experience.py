"""ExperienceLibrary: the short natural-language lessons that Training-Free GRPO learns and puts into the prompt.

An :class:`Experience` is one lesson of at most ``word_limit`` words (default 32) with an id (``E1``, ``E2``, ...),
a domain tag, a confidence and its provenance (the scenarios and steps whose group comparisons produced or
confirmed it). The library is a pydantic model saved as JSON; the file also holds the per-step history of every
operation, so a user can see how the library grew and :meth:`ExperienceLibrary.rollback` to any step.

**Operations.** ``ADD`` (a new lesson; a near-duplicate of an existing one, cosine similarity of their embeddings
>= ``dedup_threshold``, is merged into it instead and recorded as ``MERGE``), ``MODIFY(id)`` (new text),
``DELETE(id)``, ``KEEP(id)`` (the lesson was confirmed as it is). ``EVICT`` is recorded when the library is full.

**Confidence.** Each confirming piece of evidence j (the group that proposed the ADD, MODIFY, KEEP or merge) has a
strength ``a_j`` in [0, 1]: the group's reward spread (best minus worst) divided by the trainer's
``advantage_scale``, capped at 1. Confidence accumulates like independent evidence::

    confidence = 1 - prod_j (1 - a_j / 2)

so one full-strength group gives 0.5, two give 0.75, three 0.875; weak groups move it little. A manual
:meth:`~ExperienceLibrary.add` without provenance counts as one full-strength confirmation (0.5).

**Eviction.** When an ADD makes the library exceed ``max_size``, the experience with the lowest confidence is
evicted; ties go to the one least recently updated (``updated_step``), then to the oldest id. Experiences added or
changed in the current step are exempt unless every experience was.

**Prompt.** :meth:`~ExperienceLibrary.to_prompt` lists all experiences (highest confidence first) when there are at
most ``prompt_top_k``; otherwise the top-k by embedding similarity (all-MiniLM-L6-v2 by default) to the last
messages of the conversation. Embeddings are cached per text, so retrieval costs one query embedding and one
matrix product.

**Storage.** :meth:`~ExperienceLibrary.save` writes atomically through fsspec (see :mod:`.experience_store`);
the history is replayed and summarised in :mod:`.experience_history`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from ..errors import ConfigError, validation_error_text
from ..types import Message
from .experience_history import history_report, replay
from .experience_records import (
    MAX_PROVENANCE,
    OP_NAMES,
    AppliedOp,
    Experience,
    LibraryReport,
    Operation,
    Provenance,
    StepRecord,
    confirm,
    confirmed,
    id_num,
    in_domain,
    library_table,
    query_text,
    word_count,
)
from .experience_store import read_library_json, write_text_atomic

__all__ = ["OP_NAMES", "AppliedOp", "Experience", "ExperienceLibrary", "LibraryReport", "Operation", "Provenance",
           "StepRecord", "confirm", "word_count"]
FORMAT = "stateset_agents.experience_library"

class ExperienceLibrary(BaseModel):
    """The experience library (see the module docs). Change it only through its methods.

    Args (fields):
        max_size: most experiences kept (the eviction rule is in the module docs).
        word_limit: most words per experience.
        prompt_top_k: most experiences put into one prompt (the prompt budget).
        dedup_threshold: cosine similarity at or above which an ADD is merged into an existing experience.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["stateset_agents.experience_library"] = FORMAT
    version: Literal[1] = 1
    max_size: int = Field(default=50, ge=1)
    """Most experiences kept; an ADD beyond it evicts one (see the module docs)."""
    word_limit: int = Field(default=32, ge=4)
    """Most words per experience."""
    prompt_top_k: int = Field(default=8, ge=1)
    """Most experiences in one prompt; beyond it, the top-k most similar to the conversation."""
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    """An ADD at least this similar (cosine) to an existing experience of the same domain is merged into it."""
    experiences: list[Experience] = Field(default_factory=list)
    history: list[StepRecord] = Field(default_factory=list)
    next_id: int = Field(default=1, ge=1)
    step: int = 0
    """The last step committed (see :meth:`commit`)."""

    _embedder: Any = PrivateAttr(default=None)
    _cache: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)
    _matrix: tuple[Any, np.ndarray] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> ExperienceLibrary:
        ids = [e.id for e in self.experiences]
        if len(set(ids)) != len(ids):
            raise ValueError(f"experience ids are not unique: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
        if len(self.experiences) > self.max_size:
            raise ValueError(f"{len(self.experiences)} experiences exceed max_size={self.max_size}; raise max_size")
        return self

    # ------------------------------------------------------------ embeddings
    def use_embedder(self, embedder: Any) -> ExperienceLibrary:
        """Use ``embedder`` (anything with ``encode(list[str]) -> [n, dim]`` unit vectors) for dedup and retrieval;
        default: all-MiniLM-L6-v2, loaded the first time it is needed. Returns the library."""
        self._embedder = embedder
        self._cache.clear()
        self._matrix = None
        return self

    def _encoder(self) -> Any:
        if self._embedder is None:
            from ..rewards.embeddings import default_embedder

            self._embedder = default_embedder()
        return self._embedder

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 unit vectors (cached per text)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vecs = np.asarray(self._encoder().encode(missing), dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != len(missing):
                raise ConfigError(f"the embedder returned shape {vecs.shape} for {len(missing)} texts; it must return "
                                  "one vector per text")
            for t, v in zip(missing, vecs, strict=True):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def _all_vectors(self) -> np.ndarray:
        key = tuple((e.id, e.text) for e in self.experiences)
        if self._matrix is None or self._matrix[0] != key:
            self._matrix = (key, self.embed([e.text for e in self.experiences]))
        return self._matrix[1]

    # ------------------------------------------------------------ lookups
    def __len__(self) -> int:
        return len(self.experiences)

    def get(self, exp_id: str) -> Experience:
        for e in self.experiences:
            if e.id == exp_id:
                return e
        known = ", ".join(e.id for e in self.experiences) or "none"
        raise ConfigError(f"no experience with id {exp_id!r} in the library; known ids: {known}")

    def ids(self) -> list[str]:
        return [e.id for e in self.experiences]

    def _index(self, exp_id: str) -> int:
        for i, e in enumerate(self.experiences):
            if e.id == exp_id:
                return i
        self.get(exp_id)  # raises with the known ids
        raise AssertionError  # pragma: no cover

    def similar(self, query: str, k: int, *, domain: str | None = None) -> list[tuple[Experience, float]]:
        """The ``k`` experiences most similar to ``query`` (of ``domain`` or ``general`` when given)."""
        pool = [i for i, e in enumerate(self.experiences) if in_domain(e, domain)]
        if not pool or k <= 0:
            return []
        matrix = self._all_vectors()
        # the whole library (no domain filter) needs no gathered copy of the matrix
        sims = (matrix if len(pool) == len(matrix) else matrix[pool]) @ self.embed([query])[0]
        k = min(k, len(pool))
        top = np.argpartition(-sims, k - 1)[:k] if k < len(pool) else np.arange(len(pool))
        top = sorted(top, key=lambda j: (-float(sims[j]), pool[j]))
        return [(self.experiences[pool[j]], float(sims[j])) for j in top]

    def nearest(self, text: str, *, domain: str) -> tuple[Experience, float] | None:
        """The experience of exactly ``domain`` most similar to ``text``, with its cosine similarity."""
        pool = [i for i, e in enumerate(self.experiences) if e.domain == domain]
        if not pool:
            return None
        sims = self._all_vectors()[pool] @ self.embed([text])[0]
        j = int(np.argmax(sims))
        return self.experiences[pool[j]], float(sims[j])

    # ------------------------------------------------------------ the prompt
    def select(self, conversation: Sequence[Message] | str | None = None, *, k: int | None = None,
               domain: str | None = None) -> list[Experience]:
        """The experiences :meth:`to_prompt` shows (highest confidence first)."""
        k = k or self.prompt_top_k
        pool = [e for e in self.experiences if in_domain(e, domain)]
        if len(pool) > k:
            query = query_text(conversation)
            if query:
                pool = [e for e, _ in self.similar(query, k, domain=domain)]
            else:  # nothing to compare with yet: the most confident
                pool = sorted(pool, key=lambda e: (-e.confidence, id_num(e.id)))[:k]
        return sorted(pool, key=lambda e: (-e.confidence, id_num(e.id)))

    def to_prompt(self, conversation: Sequence[Message] | str | None = None, *, k: int | None = None,
                  domain: str | None = None) -> str:
        """The text injected into the agent's system prompt ("" for an empty library).

        With more than ``k`` (default ``prompt_top_k``) experiences, the top-k by similarity to the last messages
        of ``conversation`` are shown; ``domain`` keeps only that domain's and ``general`` experiences.
        """
        chosen = self.select(conversation, k=k, domain=domain)
        if not chosen:
            return ""
        lines = ["Lessons learned from earlier conversations (follow them when they apply):"]
        lines += [f"- [{e.id}] {e.text}" for e in chosen]
        return "\n".join(lines)

    # ------------------------------------------------------------ operations
    def add(self, text: str, *, domain: str = "general", provenance: Iterable[Provenance] = (), step: int,
            reason: str = "") -> list[AppliedOp]:
        """ADD a lesson, or MERGE it into a near-duplicate of the same domain; may EVICT one (module docs)."""
        text = self._clean(text)
        prov = list(provenance)
        strengths = [p.advantage for p in prov] or [1.0]
        self._check_step(step)
        near = self.nearest(text, domain=domain)
        if near is not None and near[1] >= self.dedup_threshold:
            target, sim = near
            i = self._index(target.id)
            after = confirmed(target, strengths, prov, step)
            self.experiences[i] = after
            return [self._record(step, AppliedOp(op="MERGE", id=target.id, before=target, after=after,
                                                 reason=f"near-duplicate (similarity {sim:.2f}): {text}"
                                                 + (f"; {reason}" if reason else "")))]
        confidence = 0.0
        for a in strengths:
            confidence = confirm(confidence, a)
        new = Experience(id=f"E{self.next_id}", text=text, domain=domain, confidence=confidence,
                         confirmations=len(strengths), provenance=prov[-MAX_PROVENANCE:], created_step=step,
                         updated_step=step)
        self.next_id += 1
        self.experiences.append(new)
        out = [self._record(step, AppliedOp(op="ADD", id=new.id, after=new, reason=reason))]
        while len(self.experiences) > self.max_size:
            out.append(self._evict(step))
        return out

    def modify(self, exp_id: str, text: str, *, provenance: Iterable[Provenance] = (), step: int,
               reason: str = "") -> AppliedOp:
        """MODIFY: new text for an experience; it also counts as a confirmation."""
        text = self._clean(text)
        self._check_step(step)
        i = self._index(exp_id)
        before = self.experiences[i]
        prov = list(provenance)
        after = confirmed(before, [p.advantage for p in prov] or [1.0], prov, step).model_copy(update={"text": text})
        self.experiences[i] = after
        return self._record(step, AppliedOp(op="MODIFY", id=exp_id, before=before, after=after, reason=reason))

    def keep(self, exp_id: str, *, provenance: Iterable[Provenance] = (), step: int, reason: str = "") -> AppliedOp:
        """KEEP: the experience was confirmed as it is (raises its confidence)."""
        self._check_step(step)
        i = self._index(exp_id)
        before = self.experiences[i]
        prov = list(provenance)
        after = confirmed(before, [p.advantage for p in prov] or [1.0], prov, step)
        self.experiences[i] = after
        return self._record(step, AppliedOp(op="KEEP", id=exp_id, before=before, after=after, reason=reason))

    def delete(self, exp_id: str, *, step: int, reason: str = "") -> AppliedOp:
        self._check_step(step)
        before = self.experiences.pop(self._index(exp_id))
        return self._record(step, AppliedOp(op="DELETE", id=exp_id, before=before, reason=reason))

    def apply(self, ops: Iterable[Operation], *, step: int) -> list[AppliedOp]:
        """Apply operations in order; an op whose target was removed earlier in the same list is a ConfigError."""
        out: list[AppliedOp] = []
        for op in ops:
            if op.op == "ADD":
                if not op.text:
                    raise ConfigError("an ADD operation needs text")
                out += self.add(op.text, domain=op.domain or "general", provenance=op.provenance, step=step,
                                reason=op.reason)
            elif op.op == "MODIFY":
                if not op.id or not op.text:
                    raise ConfigError(f"a MODIFY operation needs an id and text, got id={op.id!r} text={op.text!r}")
                out.append(self.modify(op.id, op.text, provenance=op.provenance, step=step, reason=op.reason))
            elif op.op == "KEEP":
                if not op.id:
                    raise ConfigError("a KEEP operation needs the id of the experience it confirms")
                out.append(self.keep(op.id, provenance=op.provenance, step=step, reason=op.reason))
            else:
                if not op.id:
                    raise ConfigError("a DELETE operation needs the id of the experience to delete")
                out.append(self.delete(op.id, step=step, reason=op.reason))
        return out

    def commit(self, step: int) -> StepRecord:
        """Close ``step`` in the history (an empty record when nothing changed) and record the size."""
        self._check_step(step)
        if not self.history or self.history[-1].step != step:
            self.history.append(StepRecord(step=step, time=time.time()))
        rec = self.history[-1]
        rec.size = len(self.experiences)
        rec.time = time.time()
        self.step = step
        return rec

    def _evict(self, step: int) -> AppliedOp:
        fresh = {op.id for r in self.history if r.step == step for op in r.ops}
        pool = [e for e in self.experiences if e.id not in fresh] or list(self.experiences)
        victim = min(pool, key=lambda e: (e.confidence, e.updated_step, id_num(e.id)))
        self.experiences.remove(victim)
        return self._record(step, AppliedOp(
            op="EVICT", id=victim.id, before=victim,
            reason=f"library full (max_size={self.max_size}); lowest confidence {victim.confidence:.3f}"))

    def _record(self, step: int, op: AppliedOp) -> AppliedOp:
        if not self.history or self.history[-1].step != step:
            self.history.append(StepRecord(step=step, time=time.time()))
        self.history[-1].ops.append(op)
        return op

    def _check_step(self, step: int) -> None:
        last = self.history[-1].step if self.history else 0
        if step < last:
            raise ConfigError(f"step {step} is before the library's last recorded step {last}; steps only grow "
                              "(use rollback(step) to go back)")

    def _clean(self, text: str) -> str:
        text = " ".join(str(text).split())
        if not text:
            raise ConfigError("an experience cannot be empty; give a short lesson")
        n = word_count(text)
        if n > self.word_limit:
            raise ConfigError(f"experience {text[:60]!r}... has {n} words, more than word_limit={self.word_limit}; "
                              "shorten it or raise word_limit")
        return text

    # ------------------------------------------------------------ history
    def rollback(self, step: int) -> ExperienceLibrary:
        """A new library as it was at the end of ``step`` (0 = empty), rebuilt by replaying the history."""
        if step < 0:
            raise ConfigError(f"step {step} must be >= 0")
        if step > self.step:
            raise ConfigError(f"cannot roll back to step {step}: the library's last committed step is {self.step}")
        experiences, records, max_id = replay(self.history, step)
        lib = type(self).model_validate({
            "max_size": self.max_size, "word_limit": self.word_limit, "prompt_top_k": self.prompt_top_k,
            "dedup_threshold": self.dedup_threshold, "experiences": [e.model_dump() for e in experiences],
            "history": [r.model_dump() for r in records], "next_id": max_id + 1, "step": step})
        lib._embedder = self._embedder
        lib._cache = dict(self._cache)
        return lib

    def report(self) -> LibraryReport:
        """Size, mean confidence, domain coverage, deduplication ratio, operations per step."""
        return history_report(self.experiences, self.history, self.max_size)

    def table(self) -> Any:
        """A rich table of the experiences (id, domain, confidence, confirmations, text)."""
        return library_table(self.experiences, f"experience library: {len(self)} / {self.max_size} (step {self.step})")

    # ------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the library (with its history) as JSON atomically; ``path`` is a local path or an fsspec URL."""
        return write_text_atomic(str(path), self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, embedder: Any = None) -> ExperienceLibrary:
        """Read a library written by :meth:`save` (a local path or an fsspec URL)."""
        url = str(path)
        data = read_library_json(url, FORMAT)
        try:
            lib = cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{url!r}: invalid experience library: {validation_error_text(e, limit=1)}") from e
        if embedder is not None:
            lib.use_embedder(embedder)
        return lib
