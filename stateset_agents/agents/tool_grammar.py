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

**Grounded references** (``grounded={tool: [argument, ...]}``, ``values=conversation_values(conversation)``): the
named arguments name a record (an env pack's ``reference_args()``: a get/update tool's key, a find tool's match
fields), and their value must be a word the customer wrote or a tool returned earlier in the episode that the
argument's own schema allows (its ``pattern``, ``enum``, ``minLength``, ``maxLength``); a tool with such an
argument is not offered until the conversation holds a value for it. Without a ``pattern`` any word qualifies
(measured on SmolLM2 after SFT: the agent then picked ``"my"`` and ``"your"``; docs/training.md, "Constrained tool
calls"). An agent cannot know an order id it was never told, so this removes only calls that must fail; it cannot
stop a real value going to the wrong argument (an email as an
order id) or the wrong record being chosen among those mentioned.

Local models only (the engine applies the mask token by token). A trained policy's rollouts must stay
unconstrained: the trainer scores tokens under the unmasked distribution (training/batch.py refuses constrained
completions). Use it for evaluation (``eval_tool_grammar: true``), chat and serving.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from ..errors import ConfigError
from ..models.grammar import COMPACT_JSON

__all__ = ["conversation_values", "tool_turn_grammar"]

# A value a customer or a tool can give for a record reference: an id, an email, a name (letters, digits and
# @ . _ + - inside, no spaces), with the sentence's punctuation around it left out.
_WORD = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9@._+-]*[A-Za-z0-9])?")


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [x for v in node.values() for x in _strings(v)]
    if isinstance(node, list):
        return [x for v in node for x in _strings(v)]
    return []


def conversation_values(conversation: Sequence[Any]) -> list[str]:
    """The words of what the customer said and of the tools' string results, sorted and deduplicated: the values
    a grounded reference may take (the agent's own messages, the system prompt and tool errors do not count)."""
    out: set[str] = set()
    for m in conversation:
        role, content = getattr(m, "role", None), getattr(m, "content", "") or ""
        if role == "user":
            texts = [content]
        elif role == "tool":
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = content
            if isinstance(parsed, dict) and "ok" in parsed:  # the env's envelope: only what the tool returned
                parsed = parsed.get("result")  # (an error echoes the bad value back: not a source)
            texts = _strings(parsed)
        else:
            continue
        out.update(w for t in texts for w in _WORD.findall(t))
    return sorted(out)


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


def _ground(schemas: list[tuple[str, dict[str, Any]]], grounded: dict[str, list[str]],
            values: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, schema in schemas:
        args = grounded.get(name, [])
        props = schema["properties"]
        for a in args:
            if a not in props:
                raise ConfigError(f"grounded argument {name}.{a} is not a parameter of {name!r} "
                                  f"(parameters: {', '.join(props) or 'none'}); name the tool's own arguments")
            if props[a].get("type", "string") == "string":
                props[a] = {"type": "string", "enum": [v for v in values if _fits(v, props[a])]}
        if any(p.get("enum") == [] for a, p in props.items() if a in args):
            continue  # nothing it could refer to yet: the tool cannot be called
        out.append((name, schema))
    return out


def _fits(value: str, schema: dict[str, Any]) -> bool:
    # the argument's own constraints, as the env checks them (envs/tools.py): a word the customer said that the
    # schema rules out ("my" for an order id matching ^ORD-[0-9]+$) is not a reference
    return (value in schema.get("enum", [value]) and len(value) >= schema.get("minLength", 0)
            and len(value) <= schema.get("maxLength", len(value))
            and ("pattern" not in schema or re.search(schema["pattern"], value) is not None))


@lru_cache(maxsize=256)
def _grammar(tools_json: str, grounded_json: str | None = None, values: tuple[str, ...] = ()) -> str:
    # "name" first, then "arguments", as the documented format writes them: a JSON schema would let the decoder
    # put "arguments" first, which no demonstration does (measured: the SmolLM2 agent then wrote ids of zeros)
    schemas = _tool_schemas(json.loads(tools_json))
    if grounded_json is not None:
        schemas = _ground(schemas, json.loads(grounded_json), list(values))
    if not schemas:
        return 'start: MESSAGE\nMESSAGE: /[^<]+/\n'
    lines = ["start: MESSAGE | MESSAGE? call+", "call: " + " | ".join(f"call{i}" for i in range(len(schemas)))]
    for i, (name, schema) in enumerate(schemas):
        head = json.dumps('<tool_call>{"name": ' + json.dumps(name) + ', "arguments": ')
        lines += [f'call{i}: {head} args{i} "}}</tool_call>"', f"args{i}: %json {json.dumps(schema)}"]
    return "\n".join([*lines, "MESSAGE: /[^<]+/", ""])


def tool_turn_grammar(tools: list[dict[str, Any]], *, grounded: Mapping[str, Sequence[str]] | None = None,
                      values: Sequence[str] = ()) -> str:
    """The Lark grammar of one agent turn that is a message or calls of ``tools`` (see the module docs);
    with ``grounded``, those arguments take only ``values`` (see "Grounded references").

    Raises :class:`ConfigError` naming the tool when one has no name or its parameters are not a schema, or
    naming the argument when ``grounded`` names one the tool does not have."""
    g = None if grounded is None else json.dumps({k: list(v) for k, v in grounded.items()}, sort_keys=True)
    # not sorted: the properties keep the order they are written in
    return _grammar(json.dumps(tools, default=str), g, tuple(sorted(set(values))))
