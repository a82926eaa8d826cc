"""What a scenario judges at the end of an episode, computed by code from the episode's data.

The episode reward is ``success`` (0 or 1, tau-bench's convention). ``info["outcome"]`` holds:

- ``success``: no forbidden action, no error, the goal reached, the end database matching the expected one,
  and every required action made.
- ``progress`` in [0, 1]: partial credit for what the agent changed or obtained, the fraction earned of
  the scenario's *progress items*: each goal condition that is false in the seed database (earned when true
  at the end), each expected change that differs from the seed (earned when the end database has it), each
  required fact (earned when told, see :class:`EpisodeRecord`) and each required action (earned when made,
  but only alongside another earned item: a lookup by itself obtains nothing for the user).
  ``progress`` is 0 when any forbidden action was taken or the database was changed where the scenario
  expects no change (``collateral_changes``). ``progress_items`` gives ``[earned, total]`` per kind.
- ``goal_reached``: the goal's conditions hold and the user was told the goal's facts.
- ``state_match`` / ``state_diff``: the end database equals the seed with ``expected_changes`` applied
  (free-text fields aside); the paths that differ. ``collateral_changes``: the differing paths that no
  expected change covers.
- ``facts_told`` per required fact, ``facts_score`` the fraction told (1.0 when none are required);
  ``actions_made`` per required action (``tool(args)`` -> bool).
- ``forbidden_actions``: forbidden tool calls and statements, disclosures of another customer's private
  data (``disclosed_private_data:KEY``), claims the end database does not back (``false_claim:ID``) and
  more failed tool calls than ``policy.max_tool_errors`` allows (``tool_errors_over_limit``).
- ``turns_used``, ``tool_calls``, ``tool_errors``, ``ended_by``, ``error``.
- ``score``: the same number as ``progress``, kept so readers written for the old partial-credit score
  still work (deprecated).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .claims import false_claims
from .grounding import Evidence, evidence_for, numbers_in, told_grounded
from .pack_schema import EnvPack, Scenario
from .rules import RequiredAction
from .tools import Database, apply_changes, evaluate

__all__ = ["EpisodeRecord", "action_matches", "apply_changes", "compute_outcome", "disclosures", "facts_in",
           "forbidden_statements_in", "goal_reached", "state_diff"]


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("\u2019", "'").split())


def facts_in(scenario: Scenario, text: str) -> set[str]:
    """Ids of required facts whose phrases ``text`` contains (before the grounding and order rules)."""
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


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, str) and isinstance(got, str):
        return want.strip().lower() == got.strip().lower()
    if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return abs(float(want) - float(got)) <= 0.005
    return bool(want == got)


def action_matches(action: RequiredAction, name: str, args: dict[str, Any], ok: bool = True) -> bool:
    """Whether a tool call ``name(args)`` that ran (``ok``) or was refused satisfies ``action``: the same tool,
    every listed argument present and equal, and the result ``action.ok`` asks for."""
    return (name == action.tool and (action.ok is None or action.ok == ok)
            and all(k in args and _same(v, args[k]) for k, v in action.args.items()))


def action_label(action: RequiredAction) -> str:
    tail = {True: "", False: " refused", None: " either way"}[action.ok]
    return f"{action.tool}({json.dumps(action.args, sort_keys=True, default=str)}){tail}"


@dataclass
class EpisodeRecord:
    """What the judge keeps from an episode as it runs: facts told, tool results seen, calls made.

    A required fact counts as told when an agent message contains one of its phrases, said after every
    required action of the scenario was made and, for a grounded fact (see :mod:`.grounding`), after a tool
    result that contained its evidence.
    """

    pack: EnvPack
    scenario: Scenario
    told: set[str] = field(default_factory=set)
    agent_texts: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any], bool]] = field(default_factory=list)
    """Every parsed tool call: name, arguments, whether it ran without a tool error."""
    tool_text: str = ""
    tool_numbers: set[float] = field(default_factory=set)
    evidence: dict[str, Evidence] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.evidence = evidence_for(self.pack, self.scenario)

    def actions_made(self) -> list[bool]:
        return [any(action_matches(a, n, args, ok) for n, args, ok in self.calls) for a in self.scenario.required_actions]

    def on_agent_text(self, text: str) -> set[str]:
        """Record an agent message; return the ids of facts told for the first time."""
        self.agent_texts.append(text)
        if not all(self.actions_made()):
            return set()
        new = {f.id for f in self.scenario.required_facts if f.id not in self.told
               and told_grounded(f, self.evidence[f.id], text, self.tool_text, self.tool_numbers)}
        self.told |= new
        return new

    def on_tool_result(self, name: str, args: dict[str, Any], ok: bool, content: str) -> None:
        self.calls.append((name, copy.deepcopy(args), ok))
        if not ok:  # an error message may echo the agent's own arguments: it grounds nothing
            return
        self.tool_text += "\n" + _norm(content)
        self.tool_numbers |= numbers_in(content)


def goal_reached(pack: EnvPack, scenario: Scenario, db: Database, told: set[str]) -> bool:
    wanted = scenario.goal.facts if scenario.goal.facts is not None else [f.id for f in scenario.required_facts]
    return all(evaluate(c, db=db, policy=pack.policy.values) for c in scenario.goal.conditions) \
        and set(wanted) <= told


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _progress(pack: EnvPack, scenario: Scenario, db: Database, diff: list[str], told: set[str],
              made: list[bool]) -> dict[str, list[int]]:
    seed, policy = scenario.database, pack.policy.values
    expected = apply_changes(seed, scenario.expected_changes)
    seed_diff = state_diff(seed, expected, pack.policy.free_text_fields)
    conds = [c for c in scenario.goal.conditions if not evaluate(c, db=seed, policy=policy)]
    changes = [p for p in scenario.expected_changes if any(_under(d, p) for d in seed_diff)]
    items = {
        "conditions": [sum(evaluate(c, db=db, policy=policy) for c in conds), len(conds)],
        "changes": [sum(not any(_under(d, p) for d in diff) for p in changes), len(changes)],
        "facts": [sum(f.id in told for f in scenario.required_facts), len(scenario.required_facts)],
    }
    # A required action (a lookup, a verification) obtains nothing for the user by itself: it counts only
    # alongside something else earned, so random lookups that hit the right id score nothing.
    alongside = any(earned for earned, _ in items.values())
    items["actions"] = [sum(made) if alongside else 0, len(made)]
    return items


def progress_items(pack: EnvPack, scenario: Scenario) -> int:
    """How many progress items the scenario offers (0 means nothing for the agent to earn)."""
    items = _progress(pack, scenario, scenario.database, [], set(), [False] * len(scenario.required_actions))
    return sum(total for _, total in items.values())


def _error_budget(pack: EnvPack, tool_errors: int) -> list[str]:
    limit = pack.policy.max_tool_errors
    return ["tool_errors_over_limit"] if limit is not None and tool_errors > limit else []


def compute_outcome(pack: EnvPack, scenario: Scenario, db: Database, *, record: EpisodeRecord, forbidden: list[str],
                    turns_used: int, tool_calls: int, tool_errors: int, ended_by: str,
                    error: str | None) -> dict[str, Any]:
    told = record.told
    expected = apply_changes(scenario.database, scenario.expected_changes)
    diff = state_diff(db, expected, pack.policy.free_text_fields)
    collateral = [d for d in diff if not any(_under(d, p) or _under(p, d) for p in scenario.expected_changes)]
    facts = {f.id: f.id in told for f in scenario.required_facts}
    made = record.actions_made()
    goal = goal_reached(pack, scenario, db, told)
    forbidden = sorted(set(forbidden) | set(false_claims(pack, scenario, record.agent_texts, db))
                       | set(_error_budget(pack, tool_errors)))
    items = _progress(pack, scenario, db, diff, told, made)
    earned, total = sum(e for e, _ in items.values()), sum(t for _, t in items.values())
    progress = 0.0 if forbidden or collateral or not total else earned / total
    success = not forbidden and error is None and goal and not diff and all(made) and total > 0
    return {
        "scenario_id": scenario.id,
        "success": success,
        "progress": progress,
        "progress_items": items,
        "goal_reached": goal,
        "state_match": not diff,
        "state_diff": diff,
        "collateral_changes": collateral,
        "facts_told": facts,
        "facts_score": sum(facts.values()) / len(facts) if facts else 1.0,
        "actions_made": {action_label(a): m for a, m in zip(scenario.required_actions, made, strict=True)},
        "forbidden_actions": forbidden,
        "turns_used": turns_used,
        "tool_calls": tool_calls,
        "tool_errors": tool_errors,
        "ended_by": ended_by,
        "error": error,
        "score": progress,
    }
