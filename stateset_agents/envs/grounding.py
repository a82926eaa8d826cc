"""Grounded facts: information the agent can only know from the database.

A required fact is *grounded* when the pack says so (``grounded: true``) or, by default, when every one of
its phrases, or at least one phrase with a digit-bearing value (a date, an amount, an id), holds a value of the scenario's database (the seed with ``expected_changes`` applied, record
keys included) that the agent cannot know without a tool (not in the pack's system prompt, nor in the
user's openings, persona or hidden facts): a database
string inside the phrase, the phrase inside a database string (``may 22`` in ``Thursday, May 22``), or a
number of the database of 10 or more, or with a fraction (``$42.50`` matches ``42.5``; a "2" in "2 hours"
is too common to count). Strings of three or more characters compare as whole
words ignoring case; booleans and ``free_text_fields`` are skipped.

A phrase of a grounded fact counts only when said *after* a successful tool result of the same episode
contained one of that phrase's values (a phrase without a value of its own takes the values of the fact's
other phrases; for a fact marked ``grounded: true`` with no value at all, the phrase itself). ``grounded: false`` turns the rule off for that fact.
"""

from __future__ import annotations

import re
from typing import Any

from .pack_schema import EnvPack, FactSpec, Scenario
from .tools import apply_changes

__all__ = ["Evidence", "evidence_for", "numbers_in", "phrase_grounded", "told_grounded"]

Evidence = list[list[str | float]] | None
"""Per phrase (in ``any_of`` order), the normalised strings and numbers a tool result must have shown;
None for a fact that is not grounded."""

_NUM_RE = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?!\w)")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split())


def numbers_in(text: str) -> set[float]:
    """The numbers written in ``text`` (``1,299.00`` -> 1299.0); ids such as ``ORD-1042`` contribute 1042."""
    out = set()
    for m in re.finditer(r"\d+(?:,\d{3})*(?:\.\d+)?", text):
        out.add(round(float(m.group().replace(",", "")), 4))
    return out


def _db_values(pack: EnvPack, scenario: Scenario) -> tuple[set[str], set[float]]:
    db = apply_changes(scenario.database, scenario.expected_changes)
    skip = set(pack.policy.free_text_fields)
    strings: set[str] = set()
    numbers: set[float] = set()

    def walk(v: Any) -> None:
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            numbers.add(round(float(v), 4))
        elif isinstance(v, str) and len(v.strip()) >= 3:
            strings.add(_norm(v))
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                if k not in skip:
                    walk(x)

    for recs in db.values():
        for key, rec in recs.items():
            walk(key)
            walk(rec)
    return strings, numbers


def _known_text(pack: EnvPack, scenario: Scenario) -> str:
    """What the agent knows without a tool: the system prompt and everything the user may say."""
    u = scenario.user
    return _norm(" ".join([pack.system_prompt, *u.opening, u.persona, *(f.reply for f in u.facts),
                           *(f.value for f in u.facts)]))


def _word_in(needle: str, hay: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", hay) is not None


def _phrase_evidence(phrase: str, strings: set[str], numbers: set[float], user: str) -> list[str | float]:
    p = _norm(phrase)
    found: list[str | float] = [s for s in strings if not _word_in(s, user) and _word_in(s, p)]
    if len(p) >= 3 and not _word_in(p, user) and any(_word_in(p, s) for s in strings):
        found.append(p)
    user_numbers = numbers_in(user)
    for m in _NUM_RE.finditer(p):
        n = round(float(m.group().replace(",", "")), 4)
        if n in numbers and n not in user_numbers and (n >= 10 or n != int(n)):  # "2 hours" is no datum
            found.append(n)
    return sorted(set(found), key=str)


def evidence_for(pack: EnvPack, scenario: Scenario) -> dict[str, Evidence]:
    """Fact id -> per-phrase evidence (None: the fact is not grounded). See the module docstring."""
    strings, numbers = _db_values(pack, scenario)
    user = _known_text(pack, scenario)
    out: dict[str, Evidence] = {}
    for fact in scenario.required_facts:
        per = [_phrase_evidence(p, strings, numbers, user) for p in fact.any_of]
        union = sorted({e for ev in per for e in ev}, key=str)
        distinctive = any(isinstance(e, float) or any(c.isdigit() for c in e) for e in union)
        if fact.grounded is False or (fact.grounded is None and not (all(per) or distinctive)):
            out[fact.id] = None
        else:
            out[fact.id] = [ev or union or [_norm(p)] for ev, p in zip(per, fact.any_of, strict=True)]
    return out


def phrase_grounded(evidence: list[str | float], tool_text: str, tool_numbers: set[float]) -> bool:
    """Whether any of a phrase's evidence values appears in the (normalised) tool results seen so far."""
    for e in evidence:
        if isinstance(e, float):
            if e in tool_numbers:
                return True
        elif _word_in(e, tool_text):
            return True
    return False


def told_grounded(fact: FactSpec, evidence: Evidence, text: str, tool_text: str, tool_numbers: set[float]) -> bool:
    """Whether ``text`` tells ``fact`` under the grounding rule (``evidence`` from :func:`evidence_for`)."""
    t = _norm(text)
    for i, phrase in enumerate(fact.any_of):
        if _norm(phrase) in t and (evidence is None or phrase_grounded(evidence[i], tool_text, tool_numbers)):
            return True
    return False
