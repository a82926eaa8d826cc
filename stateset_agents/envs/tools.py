"""Executing an agent's tool calls against the episode's own database.

The database is ``table -> key -> record`` (plain dicts), copied from the scenario at reset. Tools are
described by data (:class:`~stateset_agents.envs.pack_schema.ToolSpec`); this module validates arguments
against the JSON schema subset documented there, checks conditions, applies the effect and returns a
JSON-serialisable result. A failure is a :class:`ToolError` whose message is shown to the agent as the
tool's answer, so it can recover. :func:`apply_changes` gives a database with a scenario's dotted-path
``expected_changes`` applied (the end database the outcome and the grounding rule compare against).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from .pack_schema import EnvPack, ToolSpec
from .rules import Condition, ForbiddenAction

__all__ = ["Database", "ToolError", "apply_changes", "evaluate", "resolve_ref", "run_tool", "validate_args"]

Database = dict[str, dict[str, dict[str, Any]]]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,), "null": (type(None),),
}


class ToolError(Exception):
    """A tool call that could not be carried out; the message goes back to the agent."""


def _check_value(name: str, value: Any, schema: dict[str, Any]) -> None:
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        ok = any(isinstance(value, _JSON_TYPES[x]) and not (x in ("integer", "number") and isinstance(value, bool))
                 for x in types if x in _JSON_TYPES)
        if not ok:
            raise ToolError(f"argument {name!r} must be of type {t}, got {type(value).__name__} {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ToolError(f"argument {name!r} must be one of {schema['enum']}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise ToolError(f"argument {name!r} must be >= {schema['minimum']}, got {value!r}")
        if "maximum" in schema and value > schema["maximum"]:
            raise ToolError(f"argument {name!r} must be <= {schema['maximum']}, got {value!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise ToolError(f"argument {name!r} must have at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise ToolError(f"argument {name!r} must have at most {schema['maxLength']} characters")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise ToolError(f"argument {name!r} must match {schema['pattern']!r}, got {value!r}; "
                            "check the value with the customer")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check_value(f"{name}[{i}]", item, schema["items"])
    if isinstance(value, dict) and schema.get("type") == "object":
        validate_args(value, schema, prefix=f"{name}.")


def validate_args(args: Any, schema: dict[str, Any], prefix: str = "") -> None:
    """Check ``args`` against an object JSON schema; raise ToolError naming the bad argument."""
    if not isinstance(args, dict):
        raise ToolError(f"arguments must be a JSON object, got {type(args).__name__} {args!r}")
    props = schema.get("properties", {})
    for r in schema.get("required", []):
        if r not in args:
            raise ToolError(f"missing required argument {prefix}{r!r}; required: {schema['required']}")
    if not schema.get("additionalProperties", False):
        extra = sorted(set(args) - set(props))
        if extra:
            raise ToolError(f"unknown argument(s) {extra}; this tool takes {sorted(props)}")
    for k, v in args.items():
        if k in props:
            _check_value(prefix + k, v, props[k])


_MISSING = object()


def resolve_ref(value: Any, *, args: dict[str, Any] | None = None, record: dict[str, Any] | None = None,
                policy: dict[str, Any] | None = None, db: Database | None = None) -> Any:
    """Turn ``$args.x`` / ``$record.x`` / ``$policy.x`` / ``$db.table.key.field`` into its value.

    Anything else is a literal. A reference to something absent resolves to a private sentinel, which
    only the ``exists``/``missing`` operators treat as meaningful (every comparison with it is false).
    """
    if not (isinstance(value, str) and value.startswith("$")):
        return value
    head, _, rest = value[1:].partition(".")
    sources = {"args": args, "record": record, "policy": policy, "db": db}
    if head not in sources or not rest:
        raise ValueError(f"bad reference {value!r}: use $args.NAME, $record.FIELD, $policy.NAME "
                         "or $db.TABLE.KEY.FIELD")
    cur: Any = sources[head]
    parts = rest.split(".") if head != "db" else _db_parts(rest, db)
    for p in parts:
        if not isinstance(cur, dict) or p not in cur:
            return _MISSING
        cur = cur[p]
    return cur


def _db_parts(rest: str, db: Database | None) -> list[str]:
    # Record keys may contain dots ("user@x.com"): take the table, then the longest key that exists.
    table, _, tail = rest.partition(".")
    recs = (db or {}).get(table, {})
    for i in range(len(tail), 0, -1):
        if tail[:i] in recs and (i == len(tail) or tail[i] == "."):
            field = tail[i + 1:]
            return [table, tail[:i], *([field] if field else [])]
    return [table, *tail.split(".")]


def _norm(x: Any) -> Any:
    return x.strip().lower() if isinstance(x, str) else x


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "exists":
        return left is not _MISSING and left is not None
    if op == "missing":
        return left is _MISSING or left is None
    if left is _MISSING or right is _MISSING:
        return op in ("!=", "not_in")  # an absent value differs from anything
    if op in ("in", "not_in"):
        items = right if isinstance(right, list) else [right]
        hit = _norm(left) in [_norm(i) for i in items]
        return hit if op == "in" else not hit
    if op == "contains":
        if isinstance(left, str):
            return _norm(right) in _norm(left)
        if isinstance(left, (list, dict)):
            return _norm(right) in [_norm(x) for x in left]
        return False
    left, right = _norm(left), _norm(right)
    try:
        return {"==": left == right, "!=": left != right}.get(op) if op in ("==", "!=") else {
            "<": lambda: left < right, "<=": lambda: left <= right,
            ">": lambda: left > right, ">=": lambda: left >= right}[op]()
    except TypeError:
        return False


def evaluate(cond: Condition, **sources: Any) -> bool:
    return _compare(resolve_ref(cond.left, **sources), cond.op, resolve_ref(cond.right, **sources))


def _visible(record: dict[str, Any], hide: list[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in hide}


def _key_of(spec: ToolSpec, args: dict[str, Any], db: Database) -> tuple[dict[str, Any], str]:
    eff = spec.effect
    table = db.get(eff.table or "", {})
    key = str(args[eff.key]) if eff.key in args else ""
    if key in table:
        return table, key
    lowered = {k.lower(): k for k in table}
    if key.strip().lower() in lowered:
        return table, lowered[key.strip().lower()]
    raise ToolError(f"no {eff.table} record with {eff.key}={key!r}; check the value with the customer")


def forbidden_hits(pack: EnvPack, extra: list[ForbiddenAction], name: str, args: dict[str, Any],
                   db: Database) -> list[str]:
    """Ids of forbidden-action rules that this (valid) call matches, judged before it runs."""
    spec = pack.tool(name)
    record: dict[str, Any] | None = None
    if spec and spec.effect.key and spec.effect.table:
        try:
            table, key = _key_of(spec, args, db)
            record = table[key]
        except ToolError:
            record = None
    hits = []
    for rule in [*pack.policy.forbidden_actions, *extra]:
        if rule.tool == name and all(evaluate(c, args=args, record=record, policy=pack.policy.values, db=db)
                                     for c in rule.when):
            hits.append(rule.id)
    return hits


def run_tool(pack: EnvPack, name: str, args: Any, db: Database) -> Any:
    """Execute one tool call; mutate ``db`` for update/create; return the result or raise ToolError."""
    spec = pack.tool(name)
    if spec is None:
        raise ToolError(f"unknown tool {name!r}; available tools: {', '.join(t.name for t in pack.tools)}")
    validate_args(args, spec.parameters)
    eff = spec.effect
    policy = pack.policy.values
    if eff.kind == "respond":
        return copy.deepcopy(eff.result)
    if eff.kind == "find":
        rows = [
            _visible(rec, eff.hide_fields) | {"_key": k}
            for k, rec in db.get(eff.table or "", {}).items()
            if all(_compare(rec.get(field, _MISSING), "==", args.get(arg)) for field, arg in eff.match.items())
        ]
        return {"matches": rows, "count": len(rows)}
    if eff.kind == "create":
        for c in eff.require:
            if not evaluate(c, args=args, record=None, policy=policy, db=db):
                raise ToolError(c.message or f"condition failed: {c.left} {c.op} {c.right}")
        table = db.setdefault(eff.table or "", {})
        n = eff.id_start
        while f"{eff.id_prefix}{n}" in table:
            n += 1
        key = f"{eff.id_prefix}{n}"
        table[key] = {f: resolve_ref(v, args=args, policy=policy, db=db) for f, v in eff.set.items()}
        table[key] = {f: v for f, v in table[key].items() if v is not _MISSING}
        return {"created": key} | _visible(table[key], eff.hide_fields)
    table, key = _key_of(spec, args, db)
    record = table[key]
    if eff.kind == "get":
        return _visible(record, eff.hide_fields) | {"_key": key}
    for c in eff.require:
        if not evaluate(c, args=args, record=record, policy=policy, db=db):
            raise ToolError(c.message or f"cannot {name}: condition {c.left} {c.op} {c.right} is not met")
    for f, v in eff.set.items():
        val = resolve_ref(v, args=args, record=record, policy=policy, db=db)
        if val is not _MISSING:
            record[f] = val
    return {"updated": key} | _visible(record, eff.hide_fields)


_PATH_RE = re.compile(r"^[^.]+\..+$")


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
