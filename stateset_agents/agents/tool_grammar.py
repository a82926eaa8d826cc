"""The grammar of one agent turn when tool calls are constrained: a message, or calls of the offered tools only.

``tool_turn_grammar(tools)`` is a Lark grammar (llguidance's dialect, ``SamplingParams.grammar``) that accepts
exactly the turns the env can act on::

    turn := MESSAGE                       free text without "<" (what the customer reads), ended by EOS
          | MESSAGE? CALL+                optional text, then one or more tool calls
    CALL := "<tool_call>" JSON "</tool_call>"
    JSON := {"name": TOOL, "arguments": ARGS}   TOOL one of the offered tools, ARGS valid under its schema

Arguments follow the tool's own JSON schema with the env's reading of it (envs/tools.py ``validate_args``): an
object schema without ``additionalProperties`` takes no other keys, so the decoder cannot add an argument the env
would refuse (``"items"`` to a lookup), misspell a tool name, or leave the JSON unfinished while budget remains.
The JSON layout is the documented one (``", "`` and ``": "``, no other whitespace), as
:func:`~stateset_agents.toolcalls.format_tool_call` writes it and the demonstrations teach it.

What it cannot fix: *which* tool, and the values. A wrong tool with valid arguments is still wrong, and a
free-text argument (a summary) can still run past ``max_new_tokens``; the completion is then cut
(``finish_reason="length"``) and the env answers the unfinished call with a tool error, as without the grammar.
Text may not contain ``<``, so a message cannot open a malformed tag either.

Local models only (the engine applies the mask token by token). A trained policy's rollouts must stay
unconstrained: the trainer scores tokens under the unmasked distribution (training/batch.py refuses constrained
completions). Use it for evaluation (``eval_tool_grammar: true``), chat and serving.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

from ..errors import ConfigError
from ..models.grammar import COMPACT_JSON

__all__ = ["tool_turn_grammar"]


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``additionalProperties: false`` on every object that does not say otherwise (the env's
    default), recursively through properties and items."""
    s = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if node.get("type") == "object" or "properties" in node:
            node.setdefault("type", "object")
            node.setdefault("additionalProperties", False)
            node.setdefault("properties", {})
            for v in node["properties"].values():
                walk(v)
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    walk(s)
    return s


def _tool_schemas(tools: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tool {t!r} has no name; give tools as {{'name': ..., 'parameters': {{...}}}} "
                              "or in the OpenAI function form")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise ConfigError(f"tool {name!r}: parameters must be a JSON schema object, got {params!r}")
        out.append((name, {**_closed(params), "x-guidance": dict(COMPACT_JSON)}))
    if not out:
        raise ConfigError("tool_turn_grammar needs at least one tool; without tools, leave the turn unconstrained")
    return out


@lru_cache(maxsize=64)
def _grammar(tools_json: str) -> str:
    # "name" first, then "arguments", as the documented format writes them: a JSON schema would let the decoder
    # put "arguments" first, which no demonstration does (measured: the SmolLM2 agent then wrote ids of zeros)
    schemas = _tool_schemas(json.loads(tools_json))
    lines = ["start: MESSAGE | MESSAGE? call+", "call: " + " | ".join(f"call{i}" for i in range(len(schemas)))]
    for i, (name, schema) in enumerate(schemas):
        head = json.dumps('<tool_call>{"name": ' + json.dumps(name) + ', "arguments": ')
        lines += [f'call{i}: {head} args{i} "}}</tool_call>"', f"args{i}: %json {json.dumps(schema)}"]
    return "\n".join([*lines, "MESSAGE: /[^<]+/", ""])


def tool_turn_grammar(tools: list[dict[str, Any]]) -> str:
    """The Lark grammar of one agent turn that is a message or calls of ``tools`` (see the module docs).

    Raises :class:`ConfigError` naming the tool when one has no name or its parameters are not a schema."""
    return _grammar(json.dumps(tools, default=str))  # not sorted: the properties keep the order they are written in
