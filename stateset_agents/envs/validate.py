"""Cross-reference checks for a pack: names used in scenarios exist, references are well formed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import PackError
from .pack import Condition, EnvPack, Scenario

__all__ = ["check_pack"]


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
