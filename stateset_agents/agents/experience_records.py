"""The records of an experience library: experiences, their provenance, operations, history and reports.

See :mod:`.experience` for what they mean (confidence, eviction, the prompt, storage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..types import Message

__all__ = ["OP_NAMES", "AppliedOp", "Experience", "LibraryReport", "Operation", "Provenance", "StepRecord",
           "confirm", "confirmed", "id_num", "in_domain", "library_table", "query_text", "word_count"]

MAX_PROVENANCE = 50
"""Provenance entries kept per experience (the most recent); ``confirmations`` still counts all of them."""


def word_count(text: str) -> int:
    return len(text.split())


def confirm(confidence: float, strength: float) -> float:
    """One more confirmation of strength ``a`` in [0, 1]: ``1 - (1 - c) * (1 - a / 2)``."""
    return 1.0 - (1.0 - confidence) * (1.0 - min(max(strength, 0.0), 1.0) / 2.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Provenance(_Strict):
    """Where a piece of evidence came from."""

    scenario_id: str
    """The scenario whose group comparison produced it (``manual`` for a user's own entry)."""
    step: int
    """The training step (1-based) it was applied in."""
    advantage: float = Field(ge=0, le=1)
    """Its strength ``a``: the group's reward spread / advantage_scale, capped at 1."""


class Experience(_Strict):
    """One lesson."""

    id: str
    """``E<n>``, never reused within a library's history."""
    text: str
    """At most the library's ``word_limit`` words."""
    domain: str
    """Domain tag (e.g. customer_service); ``general`` applies to every domain."""
    confidence: float = Field(ge=0, le=1)
    """``1 - prod_j (1 - a_j / 2)`` over its confirmations (see the module docs)."""
    confirmations: int = Field(ge=1)
    """How many pieces of evidence confirmed it (proposals, merges, keeps, modifications)."""
    provenance: list[Provenance] = Field(default_factory=list)
    """The most recent ``MAX_PROVENANCE`` pieces of evidence."""
    created_step: int = 0
    updated_step: int = 0


class Operation(_Strict):
    """An operation to apply (what the trainer hands to :meth:`ExperienceLibrary.apply`)."""

    op: Literal["ADD", "MODIFY", "DELETE", "KEEP"]
    id: str | None = None
    """The target experience (MODIFY, DELETE, KEEP)."""
    text: str | None = None
    """The lesson (ADD, MODIFY)."""
    domain: str | None = None
    """Domain tag of an ADD (default ``general``)."""
    provenance: list[Provenance] = Field(default_factory=list)
    """The evidence; each entry is one confirmation of strength ``advantage``."""
    reason: str = ""


class AppliedOp(_Strict):
    """What an operation did: the experience before and after (None when it did not exist / was removed)."""

    op: Literal["ADD", "MODIFY", "DELETE", "KEEP", "MERGE", "EVICT"]
    id: str
    before: Experience | None = None
    after: Experience | None = None
    reason: str = ""


class StepRecord(_Strict):
    step: int
    time: float
    ops: list[AppliedOp] = Field(default_factory=list)
    size: int = 0
    """Library size at the end of the step."""


class LibraryReport(_Strict):
    """Quality report (see :meth:`ExperienceLibrary.report`)."""

    size: int
    max_size: int
    mean_confidence: float | None
    domains: dict[str, int]
    """Experiences per domain tag (coverage)."""
    dedup_ratio: float | None
    """MERGE / (ADD + MERGE) over the history: the share of proposed lessons that were near-duplicates."""
    steps: int
    ops_total: dict[str, int]
    ops_per_step: list[dict[str, int]]
    """Per step: ``{"step": n, "ADD": .., "MODIFY": .., "DELETE": .., "KEEP": .., "MERGE": .., "EVICT": ..}``."""


OP_NAMES = ("ADD", "MODIFY", "DELETE", "KEEP", "MERGE", "EVICT")


# ------------------------------------------------------------ helpers of the library
def id_num(exp_id: str) -> int:
    try:
        return int(exp_id.lstrip("E"))
    except ValueError:
        return 0


def in_domain(e: Experience, domain: str | None) -> bool:
    return domain is None or e.domain in (domain, "general")


def confirmed(e: Experience, strengths: Sequence[float], prov: Sequence[Provenance], step: int) -> Experience:
    c = e.confidence
    for a in strengths:
        c = confirm(c, a)
    return e.model_copy(update={"confidence": c, "confirmations": e.confirmations + len(strengths),
                                "provenance": (list(e.provenance) + list(prov))[-MAX_PROVENANCE:],
                                "updated_step": step})


def query_text(conversation: Sequence[Message] | str | None, max_messages: int = 4, max_chars: int = 1000) -> str:
    if conversation is None:
        return ""
    if isinstance(conversation, str):
        return conversation[-max_chars:]
    msgs = [m.content for m in conversation if m.role != "system" and m.content.strip()]
    return "\n".join(msgs[-max_messages:])[-max_chars:]


def library_table(experiences: Sequence[Experience], title: str) -> Any:
    """A rich table of experiences, highest confidence first."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("id", "domain", "confidence", "seen", "text"):
        t.add_column(col, justify="right" if col in ("confidence", "seen") else "left")
    for e in sorted(experiences, key=lambda e: (-e.confidence, id_num(e.id))):
        t.add_row(e.id, e.domain, f"{e.confidence:.2f}", str(e.confirmations), e.text)
    return t
