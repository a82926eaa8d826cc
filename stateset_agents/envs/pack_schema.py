"""The schema of a pack: :class:`EnvPack` and its parts, the tools and their effects, the policy, and the
scenarios with their users, goals, required facts and reference solutions.

The loader (``load_pack``, which validates cross-references and judges each scenario's progress items) is in
:mod:`.pack`, above this module and the modules that read a pack; every name here is importable from there
too. See docs/environments.md for the format.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import PackError, UnknownScenarioError, did_you_mean
from .rules import ClaimSpec, Condition, ForbiddenAction, ForbiddenStatement, RequiredAction, _Strict
from .variant_spec import VariantSpec, VaryEntry

__all__ = [
    "EnvPack",
    "FactSpec",
    "Goal",
    "HiddenFact",
    "Mood",
    "PackPolicy",
    "Privacy",
    "ReferenceStep",
    "Scenario",
    "ToolEffect",
    "ToolSpec",
    "UserProfile",
    "unknown_scenario",
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
    enum, minimum, maximum, minLength, maxLength, pattern (a regular expression searched in a string, as in JSON
    Schema), items, additionalProperties (default false)."""
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
        for k, p in props.items():
            if isinstance(p, dict) and "pattern" in p:
                try:
                    re.compile(p["pattern"])
                except re.error as e:
                    raise ValueError(f"argument {k!r}: pattern {p['pattern']!r} is not a valid regular expression "
                                     f"({e}); write a Python regular expression") from None
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
    max_tool_errors: int | None = Field(default=5, ge=0)
    """Failed tool calls one episode may make (malformed calls, arguments outside the schema, refused
    calls). One more is trial-and-error against the database, judged as the forbidden action
    ``tool_errors_over_limit``: progress 0 and no success. ``null`` turns the budget off."""


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
    note: str | None = None
    """With ``tool``: what the agent writes in the same turn before the call, its reason in plain words ("It
    hasn't shipped yet, so I'll cancel it."). Judged like any agent text (claims, forbidden statements); the user
    does not see it. SFT demonstrations include it with ``demonstrations.notes: true``."""

    @model_validator(mode="after")
    def _one(self) -> ReferenceStep:
        if (self.tool is None) == (self.say is None):
            raise ValueError("a reference step has exactly one of `tool` or `say`")
        if self.note is not None and self.tool is None:
            raise ValueError("`note` goes with a `tool` step (the reason written before the call); "
                             "a `say` step is already text")
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
        for s in self.scenarios:
            if s.id == scenario_id:
                return s
        raise unknown_scenario(self, scenario_id)

    def split(self, split: str) -> list[Scenario]:
        if split not in ("train", "test", "all"):
            raise PackError(f"split {split!r} is not one of 'train', 'test', 'all'")
        return [s for s in self.scenarios if split == "all" or s.split == split]

    def reference_args(self) -> dict[str, list[str]]:
        """Per tool, the arguments whose value names a record: a get/update tool's ``key``, a find tool's
        ``match`` arguments (what ``tool_turn_grammar(..., grounded=...)`` grounds in the conversation)."""
        out: dict[str, list[str]] = {}
        for t in self.tools:
            e = t.effect
            args = [e.key] if e.kind in ("get", "update") and e.key else []
            args += [a for a in e.match.values() if a not in args]
            if args:
                out[t.name] = args
        return out

    def tools_openai(self, compact: bool = False) -> list[dict[str, Any]]:
        """The tools in OpenAI format; ``compact``: each description is the tool's ``summary`` (or empty)."""
        tools = [t.openai_schema() for t in self.tools]
        if compact:
            for t, spec in zip(tools, self.tools, strict=True):
                t["function"]["description"] = spec.summary or ""
        return tools


def unknown_scenario(pack: EnvPack, scenario_id: str) -> UnknownScenarioError:
    """The error for a scenario id the pack lacks, naming close matches."""
    ids = [s.id for s in pack.scenarios]
    hint = did_you_mean(scenario_id, ids)
    return UnknownScenarioError(f"unknown scenario {scenario_id!r} in pack {pack.name!r} ({len(ids)} scenarios)."
                                f"{' ' + hint if hint else ''} `stateset-agents envs list` shows them all")
