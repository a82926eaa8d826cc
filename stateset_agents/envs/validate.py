"""Cross-reference checks for a pack: names used in scenarios exist, references are well formed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import PackError
from .outcome import progress_items
from .pack_schema import EnvPack, Scenario
from .rules import ClaimSpec, Condition

__all__ = ["check_claims", "check_pack"]


def _err(f: Path, s: Scenario, field: str, msg: str) -> PackError:
    return PackError(f"{f}: scenario {s.id!r}, field {field!r}: {msg}", file=str(f), scenario=s.id, field=field)


def _check_ref(value: Any, f: Path, s: Scenario, field: str, allowed: tuple[str, ...]) -> None:
    if isinstance(value, str) and value.startswith("$"):
        head = value[1:].split(".", 1)[0]
        if head not in allowed or "." not in value:
            raise _err(f, s, field, f"reference {value!r} must start with one of "
                       f"{', '.join('$' + a + '.' for a in allowed)}")


def _check_conditions(conds: list[Condition], f: Path, s: Scenario, field: str, allowed: tuple[str, ...]) -> None:
    for i, c in enumerate(conds):
        _check_ref(c.left, f, s, f"{field}.{i}.left", allowed)
        _check_ref(c.right, f, s, f"{field}.{i}.right", allowed)


def check_claims(claims: list[ClaimSpec], f: Path, where: str) -> None:
    """Raise PackError if a claim pattern is not a valid regular expression or a reference is malformed."""
    for i, c in enumerate(claims):
        try:
            re.compile(c.pattern)
        except re.error as e:
            raise PackError(f"{f}: {where}field 'claims.{i}.pattern': not a valid regular expression: {e}",
                            file=str(f), field=f"claims.{i}.pattern") from e
        for j, cond in enumerate(c.where):
            for side in (cond.left, cond.right):
                if isinstance(side, str) and side.startswith("$") and side.split(".", 1)[0] not in (
                        "$record", "$policy"):
                    raise PackError(f"{f}: {where}field 'claims.{i}.where.{j}': reference {side!r} must start "
                                    "with $record. or $policy.", file=str(f), field=f"claims.{i}.where.{j}")


def _check_actions(pack: EnvPack, s: Scenario, f: Path) -> None:
    tools = {t.name: t for t in pack.tools}
    for i, a in enumerate(s.required_actions):
        if a.tool not in tools:
            raise _err(f, s, f"required_actions.{i}.tool", f"unknown tool {a.tool!r}; the pack has {sorted(tools)}")
        props = tools[a.tool].parameters.get("properties", {})
        for k in a.args:
            if k not in props:
                raise _err(f, s, f"required_actions.{i}.args.{k}",
                           f"tool {a.tool!r} has no argument {k!r}; it takes {sorted(props)}")
    check_claims(s.claims, f, f"scenario {s.id!r}, ")
    if progress_items(pack, s) == 0:
        raise _err(f, s, "required_actions", "the scenario gives the agent nothing to earn: every goal condition "
                   "already holds in its database and it has no expected_changes, required_facts or "
                   "required_actions; add the tool call that solves it under required_actions, or a goal "
                   "condition that is false in the seed database")


def check_pack(pack: EnvPack, s: Scenario, f: Path) -> None:
    """Raise PackError if scenario ``s`` refers to tools, tables, facts or records that do not exist."""
    tools = {t.name: t for t in pack.tools}
    for i, step in enumerate(s.reference):
        if step.tool is not None and step.tool not in tools:
            raise _err(f, s, f"reference.{i}.tool", f"unknown tool {step.tool!r}; the pack has {sorted(tools)}")
    fact_ids = [x.id for x in s.required_facts]
    for i, fid in enumerate(s.goal.facts or []):
        if fid not in fact_ids:
            raise _err(f, s, f"goal.facts.{i}", f"{fid!r} is not a required_facts id ({fact_ids})")
    _check_conditions(s.goal.conditions, f, s, "goal.conditions", ("db", "policy"))
    for i, rule in enumerate(s.forbidden_actions):
        if rule.tool not in tools:
            raise _err(f, s, f"forbidden_actions.{i}.tool", f"unknown tool {rule.tool!r}")
        _check_conditions(rule.when, f, s, f"forbidden_actions.{i}.when", ("args", "record", "policy", "db"))
    for i, st in enumerate(s.forbidden_statements):
        try:
            re.compile(st.pattern)
        except re.error as e:
            raise _err(f, s, f"forbidden_statements.{i}.pattern", f"not a valid regular expression: {e}") from e
    for path in s.expected_changes:
        table = path.split(".", 1)[0]
        if "." not in path:
            raise _err(f, s, "expected_changes", f"path {path!r} must be TABLE.KEY or TABLE.KEY.FIELD")
        known = set(s.database) | {t.effect.table for t in pack.tools if t.effect.table}
        if table not in known:
            raise _err(f, s, "expected_changes", f"path {path!r} names unknown table {table!r}")
    priv = pack.policy.privacy
    if priv and s.user.customer_id is not None and s.user.customer_id not in s.database.get(priv.table, {}):
        raise _err(f, s, "user.customer_id",
                   f"{s.user.customer_id!r} is not a key of table {priv.table!r} in the scenario database")
    if len({x.id for x in s.user.facts}) != len(s.user.facts):
        raise _err(f, s, "user.facts", "fact ids must be unique")
    _check_actions(pack, s, f)
