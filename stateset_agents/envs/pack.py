"""Environment packs: the data that defines a conversation domain.

A pack is a folder with ``pack.yaml`` (tools, policy, defaults) and one or more scenario files under
``scenarios/*.yaml``. Packs are data, not code: tool behaviour is described with a handful of generic
effects (``get``, ``find``, ``update``, ``create``) and conditions over ``$args``, ``$record``, ``$policy``
and ``$db`` references. See docs/environments.md for the full format.

``load_pack(name_or_path)`` validates everything on load; a malformed pack raises :class:`PackError`
naming the file, the scenario id and the field.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ..errors import PackError
from .rules import ClaimSpec, Condition, ForbiddenAction, ForbiddenStatement, RequiredAction, _Strict
from .variant_spec import VariantSpec, VaryEntry

__all__ = [
    "ClaimSpec",
    "Condition",
    "EnvPack",
    "FactSpec",
    "ForbiddenAction",
    "ForbiddenStatement",
    "Goal",
    "HiddenFact",
    "PackPolicy",
    "ReferenceStep",
    "RequiredAction",
    "Scenario",
    "ToolEffect",
    "ToolSpec",
    "UserProfile",
    "builtin_pack_dirs",
    "load_pack",
    "pack_root",
]

Mood = Literal["calm", "frustrated", "angry", "confused", "anxious", "cheerful", "skeptical", "rushed"]


class ToolEffect(_Strict):
    """What a tool does to the episode's database.

    - ``get``: return ``table[args[key]]`` (error if absent).
    - ``find``: return every record of ``table`` whose fields equal the given args (``match``: field -> arg).
    - ``update``: check ``require`` on ``table[args[key]]``, then set fields (values may reference ``$args``).
    - ``create``: insert a record with the next id ``{id_prefix}{counter}`` and the given fields.
    - ``respond``: touch nothing and return ``result`` (for informational tools).
    """

    kind: Literal["get", "find", "update", "create", "respond"]
    table: str | None = None
    key: str | None = None
    """For get/update: the argument holding the record's key."""
    match: dict[str, str] = Field(default_factory=dict)
    """For find: record field -> argument name; fields compare case-insensitively for strings."""
    require: list[Condition] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)
    """For update and create: field -> value (literal or reference)."""
    id_prefix: str = "ID-"
    id_start: int = 1001
    result: Any = None
    """For respond: the value returned."""
    hide_fields: list[str] = Field(default_factory=list)
    """Fields never shown to the agent in results (e.g. secrets)."""

    @model_validator(mode="after")
    def _check(self) -> ToolEffect:
        if self.kind != "respond" and not self.table:
            raise ValueError(f"effect kind {self.kind!r} needs `table`")
        if self.kind in ("get", "update") and not self.key:
            raise ValueError(f"effect kind {self.kind!r} needs `key` (the argument naming the record)")
        if self.kind == "find" and not self.match:
            raise ValueError("effect kind 'find' needs `match` (record field -> argument name)")
        return self


class ToolSpec(_Strict):
    """One tool: its name, what it is for, its JSON-schema arguments and its effect."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema (type object) of the arguments. Supported keywords: type, properties, required,
    enum, minimum, maximum, minLength, maxLength, items, additionalProperties (default false)."""
    effect: ToolEffect
    summary: str | None = None
    """Its purpose in a few words, for the compact listing (``prompt: compact``); none: the name says it."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError(f"tool name {v!r} must be an identifier like lookup_order")
        return v

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") != "object":
            raise ValueError(f"parameters must be a JSON schema with type: object, got type: {v.get('type')!r}")
        props = v.get("properties", {})
        for r in v.get("required", []):
            if r not in props:
                raise ValueError(f"required argument {r!r} is not in properties {sorted(props)}")
        return v

    def openai_schema(self) -> dict[str, Any]:
        """The tool in OpenAI function-calling format (what chat templates take as ``tools``)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class Privacy(_Strict):
    """Fields of ``table`` that belong to one customer: saying another record's value is a disclosure."""

    table: str
    fields: list[str]


class PackPolicy(_Strict):
    values: dict[str, Any] = Field(default_factory=dict)
    """Named policy numbers and lists (``refund_limit: 100``), referenced as ``$policy.NAME``."""
    forbidden_actions: list[ForbiddenAction] = Field(default_factory=list)
    forbidden_statements: list[ForbiddenStatement] = Field(default_factory=list)
    privacy: Privacy | None = None
    free_text_fields: list[str] = Field(default_factory=list)
    """Fields left out when the end database is compared with the expected one (notes, summaries)."""
    claims: list[ClaimSpec] = Field(default_factory=list)
    """Actions the agent may claim to have taken, each tied to a database condition (see ClaimSpec)."""


class HiddenFact(_Strict):
    """Something the user knows and tells only when the agent asks for it."""

    id: str
    value: str
    asked_by: list[str] = Field(min_length=1)
    """Phrases (case-insensitive) in the agent's message that count as asking."""
    reply: str
    """What the user says when asked."""


class UserProfile(_Strict):
    name: str
    persona: str
    """Who the user is and how they talk (used by LLMUser and in docs)."""
    mood: Mood = "calm"
    customer_id: str | None = None
    """The user's own record in the privacy table; every other record there is someone else's."""
    patience: int = Field(default=3, ge=1, le=20)
    """Unhelpful agent turns in a row before the user gives up."""
    opening: list[str] = Field(min_length=1)
    """First messages; one is drawn with the env's np_random."""
    facts: list[HiddenFact] = Field(default_factory=list)
    accepts: list[str] = Field(default_factory=list)
    """Phrases in an agent's proposal the user agrees to."""
    refuses: list[str] = Field(default_factory=list)
    """Phrases in an agent's proposal the user turns down (checked before accepts)."""
    pushback: list[str] = Field(default_factory=list)
    """Extra lines the user says after an unhelpful turn (added to the mood's defaults)."""
    thanks: str = "Great, that's everything I needed. Thanks!"
    give_up: str | None = None


class FactSpec(_Strict):
    """Information the agent must tell the user: any of the phrases in an agent message, said after the
    scenario's required actions (and, for a grounded fact, after a tool result that contained it)."""

    id: str
    any_of: list[str] = Field(min_length=1)
    grounded: bool | None = None
    """The agent can only know this fact from the database. None (default): inferred, true when a phrase
    contains a value of the scenario's database that the user never says. See envs/grounding.py."""


class Goal(_Strict):
    description: str
    conditions: list[Condition] = Field(default_factory=list)
    """Database conditions (``$db.TABLE.KEY.FIELD``) that hold once the user's goal is met."""
    facts: list[str] | None = None
    """Required fact ids the user must hear for the goal; default: all required facts."""


class ReferenceStep(_Strict):
    """One turn of the reference solution: tool calls and/or what the agent says."""

    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    say: str | None = None

    @model_validator(mode="after")
    def _one(self) -> ReferenceStep:
        if (self.tool is None) == (self.say is None):
            raise ValueError("a reference step has exactly one of `tool` or `say`")
        return self


class Scenario(_Strict):
    id: str
    split: Literal["train", "test"]
    title: str
    category: str
    difficulty: Literal["easy", "medium", "hard"]
    user: UserProfile
    goal: Goal
    database: dict[str, dict[str, dict[str, Any]]]
    """table -> key -> record: the episode's own copy is made at reset."""
    expected_changes: dict[str, Any] = Field(default_factory=dict)
    """Dotted paths ``TABLE.KEY.FIELD`` (or ``TABLE.KEY`` for a whole new record) -> value; the expected
    end database is the seed with these applied, and must be met exactly (free-text fields aside)."""
    required_facts: list[FactSpec] = Field(default_factory=list)
    forbidden_actions: list[ForbiddenAction] = Field(default_factory=list)
    forbidden_statements: list[ForbiddenStatement] = Field(default_factory=list)
    required_actions: list[RequiredAction] = Field(default_factory=list)
    """Tool calls success requires (e.g. the verification lookup a refusal depends on)."""
    claims: list[ClaimSpec] = Field(default_factory=list)
    """Claims checked in this scenario in addition to the pack's."""
    reference: list[ReferenceStep] = Field(min_length=1)
    references: list[str] = Field(default_factory=list)
    """Example ideal agent replies (for similarity rewards)."""
    vary: list[VaryEntry] = Field(default_factory=list)
    """Literals its variants replace beyond the pack's ids and people (envs/variants.py)."""
    variant_of: str | None = None
    """Set on a variant (``BASE~vN``): the train scenario it was made from."""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v):
            raise ValueError(f"scenario id {v!r} must be non-empty with no spaces")
        return v


class EnvPack(_Strict):
    name: str
    env_id: str
    """The Gymnasium id, e.g. ``stateset/CustomerService-v0``."""
    description: str
    domain: str
    """Agent strategy domain (customer_service, tech_support, sales, ...)."""
    system_prompt: str
    """What the agent is told about its role and the policy."""
    compact_prompt: str | None = None
    """The same instructions trimmed for small models (``tool_prompt: compact``); default: ``system_prompt``."""
    variants: VariantSpec | None = None
    """How train scenarios expand into variants (envs/variants.py); None: the pack has none."""
    max_turns: int = Field(default=12, ge=1)
    policy: PackPolicy = Field(default_factory=PackPolicy)
    tools: list[ToolSpec]
    scenarios: list[Scenario] = Field(default_factory=list)
    path: str | None = None

    def tool(self, name: str) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == name), None)

    def scenario(self, scenario_id: str) -> Scenario:
        from .registry import unknown_scenario  # local: avoids a cycle

        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise unknown_scenario(self, scenario_id)

    def split(self, split: str) -> list[Scenario]:
        if split not in ("train", "test", "all"):
            raise PackError(f"split {split!r} is not one of 'train', 'test', 'all'")
        return [s for s in self.scenarios if split == "all" or s.split == split]

    def tools_openai(self, compact: bool = False) -> list[dict[str, Any]]:
        """The tools in OpenAI format; ``compact``: each description is the tool's ``summary`` (or empty)."""
        tools = [t.openai_schema() for t in self.tools]
        if compact:
            for t, spec in zip(tools, self.tools, strict=True):
                t["function"]["description"] = spec.summary or ""
        return tools


def _pkg_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def pack_root(kind: Literal["environments", "rewards"]) -> Path:
    """Where built-in packs live: inside the installed wheel, or at the root of a source checkout."""
    env = os.environ.get(f"STATESET_{kind.upper()}_DIR")
    if env:
        return Path(env)
    inside = _pkg_dir() / "_packs" / kind
    if inside.is_dir():
        return inside
    return _pkg_dir().parent / kind


def builtin_pack_dirs() -> dict[str, Path]:
    root = pack_root("environments")
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "pack.yaml").is_file()}


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise PackError(f"{path}: not valid YAML: {e}", file=str(path)) from e
    except OSError as e:
        raise PackError(f"{path}: cannot read: {e}", file=str(path)) from e


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def _pack_error(path: Path, e: ValidationError, scenario: str | None, prefix: str = "") -> PackError:
    first = e.errors()[0]
    field = prefix + _loc(first)
    where = f"scenario {scenario!r}, " if scenario else ""
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return PackError(f"{path}: {where}field {field!r}: {first['msg']}{more}", file=str(path),
                     scenario=scenario, field=field)


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    p = Path(name_or_path)
    if (p / "pack.yaml").is_file():
        return p
    builtins = builtin_pack_dirs()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    import difflib

    close = difflib.get_close_matches(str(name_or_path), list(builtins), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise PackError(f"no environment pack {str(name_or_path)!r}: not a folder with pack.yaml and not a "
                    f"built-in pack ({', '.join(builtins) or 'none installed'}).{hint}", file=str(name_or_path))


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime_key: tuple[float, ...]) -> EnvPack:
    return _load(Path(path))


def load_pack(name_or_path: str | os.PathLike[str]) -> EnvPack:
    """Load and validate a pack by built-in name (``customer_service``) or folder path."""
    path = _resolve(name_or_path).resolve()
    files = [path / "pack.yaml", *sorted((path / "scenarios").glob("*.yaml"))]
    return _load_cached(str(path), tuple(f.stat().st_mtime for f in files))


def _load(path: Path) -> EnvPack:
    from .validate import check_claims, check_pack  # cross-references

    head_file = path / "pack.yaml"
    head = _read_yaml(head_file)
    if not isinstance(head, dict):
        raise PackError(f"{head_file}: must be a mapping of pack fields, got {type(head).__name__}",
                        file=str(head_file))
    if "scenarios" in head:
        raise PackError(f"{head_file}: field 'scenarios': put scenarios in scenarios/*.yaml, not pack.yaml",
                        file=str(head_file), field="scenarios")
    try:
        pack = EnvPack.model_validate({**head, "path": str(path)})
    except ValidationError as e:
        raise _pack_error(head_file, e, None) from e
    check_claims(pack.policy.claims, head_file, "")
    scenarios: list[Scenario] = []
    seen: dict[str, Path] = {}
    sdir = path / "scenarios"
    for f in sorted(sdir.glob("*.yaml")):
        data = _read_yaml(f)
        if data is None:
            continue
        if not isinstance(data, list):
            raise PackError(f"{f}: must be a list of scenarios, got {type(data).__name__}", file=str(f))
        for i, raw in enumerate(data):
            sid = raw.get("id") if isinstance(raw, dict) else None
            label = sid or f"#{i}"
            try:
                s = Scenario.model_validate(raw)
            except ValidationError as e:
                raise _pack_error(f, e, label) from e
            if s.id in seen:
                raise PackError(f"{f}: scenario {s.id!r}, field 'id': duplicate id, also in {seen[s.id]}",
                                file=str(f), scenario=s.id, field="id")
            seen[s.id] = f
            check_pack(pack, s, f)
            scenarios.append(s)
    if not scenarios:
        raise PackError(f"{path}: no scenarios; add a list of scenarios in {sdir}/*.yaml",
                        file=str(sdir), field="scenarios")
    pack.scenarios = scenarios
    return pack
