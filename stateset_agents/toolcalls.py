"""The one tool-call wire format: rendering a call, and parsing calls out of a message.

Used by models (chat templates), envs (the env executes parsed calls) and serving (replies and streamed deltas)
alike, so all of them read the same markup with the same regex.

The documented format (what the agent strategy prompts teach, and what Hermes/Qwen-style chat
templates emit) is one or more tagged JSON objects::

    <tool_call>{"name": "lookup_order", "arguments": {"order_id": "ORD-1042"}}</tool_call>

Also accepted, when it is the whole message (optionally inside a ```json fence): a bare JSON object
``{"name": ..., "arguments": ...}``, a list of them, or the OpenAI form
``{"type": "function", "function": {"name": ..., "arguments": "<json string>"}}``. ``arguments`` may be
an object or a JSON-encoded string. Text outside the tags is what the user sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TOOL_CALL_TAG", "ParsedCall", "ParsedMessage", "format_tool_call", "parse_message", "strip_tool_calls"]

TOOL_CALL_TAG = "<tool_call>"
"""The opening tag of the documented format."""
_TAG_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE_RE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass
class ParsedCall:
    name: str | None
    arguments: Any
    error: str | None = None
    """Why the call could not be parsed; the env answers it with a tool error."""


@dataclass
class ParsedMessage:
    text: str
    """The message without tool calls: what the user sees."""
    calls: list[ParsedCall] = field(default_factory=list)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The documented format for one call."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def strip_tool_calls(text: str) -> str:
    """``text`` with every tagged call removed (an unclosed tag runs to the end); whitespace is left as it is."""
    return _TAG_RE.sub("", text)


def _from_obj(obj: Any) -> ParsedCall:
    if not isinstance(obj, dict):
        return ParsedCall(None, None, f"a tool call must be a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(name, str) or not name:
        return ParsedCall(None, args, 'a tool call needs "name": a tool name string')
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return ParsedCall(name, args, f"arguments of {name!r} are not valid JSON: {e.msg}")
    return ParsedCall(name, args)


def _looks_like_call(obj: Any) -> bool:
    items = obj if isinstance(obj, list) else [obj]
    return bool(items) and all(isinstance(o, dict) and ("name" in o or "function" in o) for o in items)


def parse_message(text: str) -> ParsedMessage:
    """Split an agent message into user-visible text and tool calls (possibly malformed ones)."""
    if TOOL_CALL_TAG in text:
        calls = []
        for m in _TAG_RE.finditer(text):
            body = m.group(1).strip()
            try:
                calls.append(_from_obj(json.loads(body)))
            except json.JSONDecodeError as e:
                calls.append(ParsedCall(None, None, f"tool call is not valid JSON ({e.msg} at char {e.pos}): "
                                        f"{body[:80]!r}"))
        return ParsedMessage(strip_tool_calls(text).strip(), calls)
    stripped = text.strip()
    fence = _FENCE_RE.match(stripped)
    candidate = fence.group(1) if fence else stripped
    if candidate[:1] in "{[":
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            return ParsedMessage(text.strip())
        if _looks_like_call(obj):
            items = obj if isinstance(obj, list) else [obj]
            return ParsedMessage("", [_from_obj(o) for o in items])
    return ParsedMessage(text.strip())
