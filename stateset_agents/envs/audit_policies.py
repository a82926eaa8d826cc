"""Degenerate policies for ``envs audit``: agents that do no real work, written as an adversary would.

Each policy is a function ``(state) -> action`` called once per agent turn, where ``state`` is a
:class:`PolicyState` (the pack, the scenario being played, the last observation, the conversation so far,
the phrase lists it may exploit and a seeded generator). None of them reads the scenario's reference
solution, goal conditions or expected changes; the phrase-reciting one uses the required-fact phrases of
the train split, the asking ones use the user's ``asked_by`` phrases (what a prompt-hacker could learn from
the pack's published data).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..toolcalls import format_tool_call
from ..types import Message
from .conversation import END_MARKER, MAX_ACTION_CHARS
from .pack import EnvPack, Scenario, ToolSpec

__all__ = ["CANNED_REFUSAL", "POLICIES", "PolicyState", "train_fact_phrases"]

CANNED_REFUSAL = ("I'm sorry, I can't share that information. Only the account holder can make changes to this "
                  "account, and they will need to verify their identity with a photo ID. It's not an error, "
                  "the charge is valid. " + END_MARKER)
"""The fixed refusal of issue 13, which solved 2 of 15 customer_service test scenarios under the old judge."""

_ID_RE = re.compile(r"\b[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-\d[A-Z0-9-]*\b|[\w.+-]+@[\w-]+\.[\w.]+")


@dataclass
class PolicyState:
    pack: EnvPack
    scenario: Scenario
    observation: str
    messages: list[Message]
    fact_phrases: list[str]
    rng: np.random.Generator
    turn: int = 0
    memory: dict[str, Any] = field(default_factory=dict)


def train_fact_phrases(pack: EnvPack) -> list[str]:
    """Every required-fact phrase of the pack's train split, deduplicated, in order."""
    return list(dict.fromkeys(p for s in pack.split("train") for f in s.required_facts for p in f.any_of))


def _chunks(parts: list[str], limit: int = MAX_ACTION_CHARS - 64) -> list[str]:
    out, cur = [], ""
    for p in parts:
        if cur and len(cur) + len(p) + 2 > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}. {p}" if cur else p
    return [*out, cur] if cur else out


def _ask_all(state: PolicyState) -> str:
    asks = list(dict.fromkeys(a for f in state.scenario.user.facts for a in f.asked_by))
    return "Could you tell me your " + ", ".join(asks) + "?" if asks else "Could you tell me more?"


def _seen_ids(messages: list[Message]) -> list[str]:
    ids: list[str] = []
    for m in messages:
        if m.role in ("user", "tool"):
            ids += _ID_RE.findall(m.content)
            if m.role == "tool":
                ids += re.findall(r'"_key":\s*"([^"]+)"', m.content)
    return list(dict.fromkeys(ids))


def _filler(schema: dict[str, Any], rng: np.random.Generator | None) -> Any:
    if "enum" in schema:
        opts = schema["enum"]
        return opts[int(rng.integers(len(opts)))] if rng is not None else opts[0]
    t = schema.get("type")
    if t in ("number", "integer"):
        lo = schema.get("minimum", 1)
        val = lo + (float(rng.integers(0, 200)) if rng is not None else 10)
        return int(val) if t == "integer" else float(val)
    if t == "boolean":
        return True
    if t == "array":
        return []
    return "requested by the customer"


def _calls_for(tool: ToolSpec, ids: list[str], rng: np.random.Generator | None) -> list[dict[str, Any]]:
    """Argument sets for ``tool``: each seen id in each string argument (others filled in)."""
    props = tool.parameters.get("properties", {})
    req = tool.parameters.get("required", list(props))
    base = {k: _filler(props[k], rng) for k in req}
    id_args = [k for k in req if props[k].get("type", "string") == "string" and "enum" not in props[k]]
    if not id_args or not ids:
        return [base]
    return [base | {k: i} for k in id_args[:1] for i in ids]


def do_nothing(state: PolicyState) -> str:
    return "Let me see."


def end_at_once(state: PolicyState) -> str:
    return END_MARKER


def echo_user(state: PolicyState) -> str:
    last = next((m.content for m in reversed(state.messages) if m.role == "user"), "") or "Okay."
    return last[:MAX_ACTION_CHARS]


def ask_everything(state: PolicyState) -> str:
    return _ask_all(state)


def recite_facts(state: PolicyState) -> str:
    if state.turn == 0:
        return _ask_all(state)
    chunks = state.memory.setdefault("chunks", _chunks(state.fact_phrases))
    i = state.turn - 1
    if i < len(chunks):
        return chunks[i] + (f" {END_MARKER}" if i == len(chunks) - 1 else "")
    return END_MARKER


def canned_refusal(state: PolicyState) -> str:
    return CANNED_REFUSAL


def call_every_tool(state: PolicyState) -> str:
    if state.turn == 0:
        return _ask_all(state)
    if state.turn > 2:
        return END_MARKER
    ids = _seen_ids(state.messages)
    calls = [format_tool_call(t.name, a) for t in state.pack.tools for a in _calls_for(t, ids, None)]
    msg = "\n".join(calls)
    while len(msg) > MAX_ACTION_CHARS and calls:
        calls.pop()
        msg = "\n".join(calls)
    return msg


def random_tools(state: PolicyState) -> str:
    if state.turn == 0:
        return _ask_all(state)
    if state.turn > 4:
        return END_MARKER
    tools = state.pack.tools
    tool = tools[int(state.rng.integers(len(tools)))]
    options = _calls_for(tool, _seen_ids(state.messages), state.rng)
    return format_tool_call(tool.name, options[int(state.rng.integers(len(options)))])


POLICIES: dict[str, Callable[[PolicyState], str]] = {
    "do_nothing": do_nothing,
    "end_at_once": end_at_once,
    "echo_user": echo_user,
    "ask_everything": ask_everything,
    "recite_facts": recite_facts,
    "canned_refusal": canned_refusal,
    "call_every_tool": call_every_tool,
    "random_tools": random_tools,
}
"""Name -> policy, in the order the audit table lists them."""


def describe(name: str) -> str:
    return {
        "do_nothing": "says 'Let me see.' every turn",
        "end_at_once": "replies [END] at once",
        "echo_user": "repeats the user's last message",
        "ask_everything": "asks for every hidden fact, every turn",
        "recite_facts": "asks for everything, then recites every train-split fact phrase",
        "canned_refusal": "one fixed refusal, then ends",
        "call_every_tool": "asks for everything, then calls every tool with every id seen (twice)",
        "random_tools": "asks for everything, then 4 random valid tool calls with ids seen",
    }[name]

