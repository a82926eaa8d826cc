"""The rules a pack states about agent behaviour: conditions, forbidden actions and statements, claims checked
against the database, and required actions. Split from :mod:`.pack` (which re-exports every name)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ClaimSpec", "Condition", "ForbiddenAction", "ForbiddenStatement", "RequiredAction"]

Op = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "exists", "missing"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Condition(_Strict):
    """``left op right``. Either side is a literal or a reference: ``$args.NAME``, ``$record.FIELD``,
    ``$policy.NAME`` or ``$db.TABLE.KEY.FIELD``. ``exists``/``missing`` ignore ``right``. A reference to
    something absent differs from everything: ``!=`` and ``not_in`` are true for it, every other operator false."""

    left: Any
    op: Op = "=="
    right: Any = None
    message: str | None = None
    """For ``require`` conditions: the tool error shown to the agent when the condition fails."""


class ForbiddenAction(_Strict):
    """A tool call the policy forbids: ``tool`` called with every ``when`` condition true."""

    id: str
    description: str
    tool: str
    when: list[Condition] = Field(default_factory=list)


class ForbiddenStatement(_Strict):
    """Something the agent must never say: a case-insensitive regular expression over its messages."""

    id: str
    description: str
    pattern: str


class ClaimSpec(_Strict):
    """An action the agent may say it took, and the database condition that backs it.

    An agent sentence matching ``pattern`` (case-insensitive regular expression), outside a negated,
    conditional or question clause, claims the action. The claim is backed when, at the end of the
    episode, some record of ``table`` satisfies every ``where`` condition (``$record.FIELD``,
    ``$policy.NAME``); with ``changed: true`` that record must also be new, or differ from the seed database
    in a field the conditions name (the action happened in this episode). An unbacked claim is the
    forbidden action ``false_claim:ID``."""

    id: str
    description: str = ""
    pattern: str
    table: str
    where: list[Condition] = Field(min_length=1)
    changed: bool = False


class RequiredAction(_Strict):
    """A tool call success depends on (tau-bench's action matching): a call of ``tool`` whose arguments
    include every ``args`` entry (strings compare ignoring case and surrounding
    spaces, numbers within 0.005)."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    ok: bool | None = True
    """Whether the call must have run without a tool error (true, default), must have been refused by the tool
    (false: e.g. a security PIN that does not match), or either (null)."""
