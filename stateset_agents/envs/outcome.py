"""What a scenario judges at the end of an episode, computed by code from the episode's data.

``info["outcome"]`` holds:

- ``goal_reached``: the goal's database conditions hold and the user heard the goal's facts.
- ``state_match``: the end database equals the seed with ``expected_changes`` applied (free-text fields
  aside); ``state_diff`` lists the paths that differ.
- ``facts_told``: per required fact, whether an agent message contained one of its phrases;
  ``facts_score`` is the fraction told (1.0 when none are required).
- ``forbidden_actions``: ids of forbidden tool calls, forbidden statements and disclosures of another
  customer's private data. Any one of them fails the episode.
- ``turns_used``, ``tool_calls``, ``tool_errors``, ``ended_by``, ``error``.
- ``score`` in [0, 1]: 0 if any forbidden action, else the mean of goal_reached, state_match and
  facts_score. ``success`` is ``score == 1``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .pack import EnvPack, Scenario
from .tools import Database, evaluate

__all__ = ["apply_changes", "compute_outcome", "disclosures", "facts_in", "forbidden_statements_in",
           "goal_reached", "state_diff"]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def facts_in(scenario: Scenario, text: str) -> set[str]:
    """Ids of required facts that ``text`` tells."""
    t = _norm(text)
    return {f.id for f in scenario.required_facts if any(_norm(p) in t for p in f.any_of)}


def forbidden_statements_in(pack: EnvPack, scenario: Scenario, text: str) -> list[str]:
    return [s.id for s in [*pack.policy.forbidden_statements, *scenario.forbidden_statements]
            if re.search(s.pattern, text, re.IGNORECASE)]


def disclosures(pack: EnvPack, scenario: Scenario, db: Database, text: str) -> list[str]:
    """Keys of other customers whose private fields appear in ``text``."""
    priv = pack.policy.privacy
    if priv is None:
        return []
    t = _norm(text)
    hits = []
    for key, rec in db.get(priv.table, {}).items():
        if key == scenario.user.customer_id:
            continue
        for f in priv.fields:
            v = rec.get(f)
            if isinstance(v, str) and len(v.strip()) >= 5 and _norm(v) in t:
                hits.append(key)
                break
    return hits


def _split_path(path: str, db: Database, value: Any) -> tuple[str, str, str | None]:
    table, _, rest = path.partition(".")
    recs = db.get(table, {})
    if rest in recs or "." not in rest:
        return table, rest, None
    for i in range(len(rest) - 1, 0, -1):
        if rest[i] == "." and rest[:i] in recs:
            return table, rest[:i], rest[i + 1:]
    key, _, fld = rest.rpartition(".")
    return table, key, fld


def apply_changes(db: Database, changes: dict[str, Any]) -> Database:
    """A copy of ``db`` with ``TABLE.KEY.FIELD -> value`` (or ``TABLE.KEY -> record|None``) applied."""
    out = copy.deepcopy(db)
    for path, value in changes.items():
        table, key, fld = _split_path(path, out, value)
        recs = out.setdefault(table, {})
        if fld is None:
            if value is None:
                recs.pop(key, None)
            else:
                recs[key] = copy.deepcopy(value)
        else:
            recs.setdefault(key, {})[fld] = copy.deepcopy(value)
    return out


def state_diff(actual: Database, expected: Database, ignore: list[str]) -> list[str]:
    """Paths (``TABLE.KEY[.FIELD]``) where the two databases differ, ignoring free-text fields."""
    diffs = []
    for table in sorted(set(actual) | set(expected)):
        a, e = actual.get(table, {}), expected.get(table, {})
        for key in sorted(set(a) | set(e)):
            if key not in a or key not in e:
                diffs.append(f"{table}.{key}")
                continue
            for fld in sorted(set(a[key]) | set(e[key])):
                if fld in ignore:
                    continue
                if a[key].get(fld, "<absent>") != e[key].get(fld, "<absent>"):
                    diffs.append(f"{table}.{key}.{fld}")
    return diffs


def goal_reached(pack: EnvPack, scenario: Scenario, db: Database, told: set[str]) -> bool:
    wanted = scenario.goal.facts if scenario.goal.facts is not None else [f.id for f in scenario.required_facts]
    return all(evaluate(c, db=db, policy=pack.policy.values) for c in scenario.goal.conditions) \
        and set(wanted) <= told


def compute_outcome(pack: EnvPack, scenario: Scenario, db: Database, *, told: set[str], forbidden: list[str],
                    turns_used: int, tool_calls: int, tool_errors: int, ended_by: str,
                    error: str | None) -> dict[str, Any]:
    expected = apply_changes(scenario.database, scenario.expected_changes)
    diff = state_diff(db, expected, pack.policy.free_text_fields)
    facts = {f.id: f.id in told for f in scenario.required_facts}
    facts_score = sum(facts.values()) / len(facts) if facts else 1.0
    goal = goal_reached(pack, scenario, db, told)
    forbidden = sorted(set(forbidden))
    score = 0.0 if forbidden else (float(goal) + float(not diff) + facts_score) / 3.0
    return {
        "scenario_id": scenario.id,
        "goal_reached": goal,
        "state_match": not diff,
        "state_diff": diff,
        "facts_told": facts,
        "facts_score": facts_score,
        "forbidden_actions": forbidden,
        "turns_used": turns_used,
        "tool_calls": tool_calls,
        "tool_errors": tool_errors,
        "ended_by": ended_by,
        "error": error,
        "score": score,
        "success": score == 1.0 and error is None,
    }
