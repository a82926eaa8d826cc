"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI chat API over the served HFChatModel.

Supported request fields: ``model``, ``messages`` (roles system, developer, user, assistant with ``tool_calls``,
tool; content as a string or text parts), ``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``,
``n``, ``stop``, ``seed``, ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format``, ``logprobs``,
``stream`` with ``stream_options.include_usage``, and ``user``. Fields that would change sampling in ways the engine
cannot honour (``frequency_penalty``, ``presence_penalty``, ``logit_bias``, ``top_logprobs``) are refused with 400
naming the field, never silently ignored; unknown fields too.

Constrained output (the engine's grammar, models/grammar.py):

- ``response_format: {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` decodes under the
  schema, so ``content`` is a document valid under it (unless ``max_tokens`` ends it first: ``finish_reason``
  ``length``); ``{"type": "json_object"}`` is any JSON object; ``{"type": "text"}`` is the default.
- ``tool_choice: "required"`` forces one call of one of ``tools``; ``{"type": "function", "function": {"name": N}}``
  forces a call of ``N``: the reply is decoded under a schema of ``{"name": ..., "arguments": <the tool's
  parameters>}`` and returned as ``message.tool_calls``. ``auto`` (the default with tools) lets the model decide;
  ``none`` treats any call markup as text.
- ``parallel_tool_calls: false`` returns at most the first call of a reply.

Replies carry parsed tool calls in ``message.tool_calls`` (OpenAI format, arguments as a JSON string) with the
markup removed from ``content`` (see :mod:`stateset_agents.serving.streaming`). ``logprobs`` has one entry per
sampled token (the end-of-sequence token included when it ended the reply), under the sampling distribution.
Streaming sends real tokens as the engine samples them (Server-Sent Events, ``data: [DONE]`` at the end).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..models.base import SamplingParams
from ..types import Completion, Message, ToolCall
from .errors import APIError, error_body
from .streaming import DeltaDecoder, reply_content

__all__ = ["ChatCompletionRequest", "router"]

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    """Accepted (the openai client echoes it back) and must be empty."""


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    user: str | None = Field(default=None, max_length=256)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None


def _unsupported(req: ChatCompletionRequest) -> None:
    checks = [
        ("frequency_penalty", req.frequency_penalty != 0, "the engine has no repetition penalties; leave it at 0"),
        ("presence_penalty", req.presence_penalty != 0, "the engine has no repetition penalties; leave it at 0"),
        ("logit_bias", bool(req.logit_bias), "the engine does not bias logits; leave it out"),
        ("top_logprobs", bool(req.top_logprobs), "only the sampled tokens' log-probs are returned; use logprobs: true"),
        ("stream_options", req.stream_options is not None and not req.stream, "stream_options needs stream: true"),
    ]
    for field, bad, fix in checks:
        if bad:
            raise APIError(400, f"field {field!r}: {getattr(req, field)!r} is not supported: {fix}", param=field)


def _tool_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The decoding schema that forces a tool call (``tool_choice`` required or named), or None."""
    choice = req.tool_choice
    if choice in (None, "auto", "none"):
        return None
    if not req.tools:
        raise APIError(400, f"field 'tool_choice': {choice!r} forces a tool call but no 'tools' were given; "
                            "send tools, or use tool_choice 'auto'", param="tool_choice")
    specs: dict[str, dict[str, Any]] = {}
    for i, t in enumerate(req.tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, f"field 'tools.{i}': a tool is {{'type': 'function', 'function': {{'name': ..., "
                                "'parameters': {...}}}}", param=f"tools.{i}")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        specs[fn["name"]] = {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                             "required": ["name", "arguments"], "additionalProperties": False}
    if choice == "required":
        names = list(specs)
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in specs:
            raise APIError(400, f"field 'tool_choice': function {name!r} is not one of the tools {sorted(specs)}",
                           param="tool_choice")
        names = [name]
    else:
        raise APIError(400, f"field 'tool_choice': {choice!r} is not 'auto', 'none', 'required' or "
                            "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
    return specs[names[0]] if len(names) == 1 else {"anyOf": [specs[n] for n in names]}


def _format_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    """The decoding schema asked for by ``response_format``, or None for plain text."""
    rf = req.response_format
    if rf is None or rf == {"type": "text"}:
        return None
    if rf.get("type") == "json_object":
        return {"type": "object"}
    js = rf.get("json_schema")
    if rf.get("type") == "json_schema" and isinstance(js, dict) and isinstance(js.get("schema"), dict):
        return js["schema"]
    raise APIError(400, f"field 'response_format': {rf!r} is not {{'type': 'text'}}, {{'type': 'json_object'}} or "
                        "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}",
                   param="response_format")


def _constraint(req: ChatCompletionRequest) -> tuple[dict[str, Any] | None, bool]:
    """(decoding schema, whether it forces a tool call)."""
    call, fmt = _tool_schema(req), _format_schema(req)
    if call is not None and fmt is not None:
        raise APIError(400, "field 'response_format': cannot be combined with a forced tool_choice; the reply is "
                            "either a tool call or a document", param="response_format")
    return (call, True) if call is not None else (fmt, False)


def _to_messages(req: ChatCompletionRequest) -> list[Message]:
    out = []
    for i, m in enumerate(req.messages):
        content = m.content if isinstance(m.content, str) or m.content is None else "".join(p.text for p in m.content)
        calls = None
        if m.tool_calls:
            calls = []
            for j, c in enumerate(m.tool_calls):
                args = c.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError as e:
                        raise APIError(400, f"field 'messages.{i}.tool_calls.{j}.function.arguments' is not valid "
                                            f"JSON ({e.msg}): {args[:80]!r}",
                                       param=f"messages.{i}.tool_calls.{j}.function.arguments") from e
                if not isinstance(args, dict):
                    raise APIError(400, f"field 'messages.{i}.tool_calls.{j}.function.arguments' must be a JSON "
                                        f"object, got {type(args).__name__}",
                                   param=f"messages.{i}.tool_calls.{j}.function.arguments")
                calls.append(ToolCall(id=c.id, name=c.function.name, arguments=args))
        if m.refusal:
            raise APIError(400, f"field 'messages.{i}.refusal' must be empty", param=f"messages.{i}.refusal")
        try:
            out.append(Message(role="system" if m.role == "developer" else m.role, content=content or "",
                               tool_calls=calls, tool_call_id=m.tool_call_id,
                               name=m.name if m.role == "tool" else None))
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise APIError(400, f"field 'messages.{i}': {msg}", param=f"messages.{i}") from e
    return out


def _sampling(req: ChatCompletionRequest, limit: int, index: int) -> SamplingParams:
    max_tokens = req.max_completion_tokens or req.max_tokens or min(256, limit)
    field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    if max_tokens > limit:
        raise APIError(400, f"field {field!r}: {max_tokens} is above this server's limit of {limit} "
                            "(max_tokens_limit); ask for fewer tokens", param=field)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 8 or any(not s or len(s) > 256 for s in stop):
        raise APIError(400, "field 'stop': give at most 8 non-empty strings of at most 256 characters", param="stop")
    seed = None if req.seed is None else req.seed + index
    return SamplingParams(temperature=req.temperature, top_p=req.top_p, max_new_tokens=max_tokens, stop=stop,
                          seed=seed)


def _check_prompt(model: Any, messages: list[Message], tools: list[dict[str, Any]] | None, max_new: int) -> None:
    try:
        n = len(model.prompt_ids(messages, tools))
    except Exception as e:  # the chat template refused the conversation
        raise APIError(400, f"field 'messages': the model's chat template cannot render this conversation: "
                            f"{type(e).__name__}: {e}", param="messages") from e
    limit = getattr(model.model.config, "max_position_embeddings", None)
    if limit and n + max_new > limit:
        raise APIError(400, f"field 'messages': the prompt has {n} tokens and max_tokens is {max_new}, more than the "
                            f"model's {limit} positions; shorten the conversation or lower max_tokens",
                       param="messages")


def _tool_calls(c: Completion, parallel: bool | None = None) -> list[dict[str, Any]]:
    calls = c.tool_calls if parallel is not False else c.tool_calls[:1]
    return [{"id": f"call_{secrets.token_hex(12)}", "type": "function",
             "function": {"name": t.name, "arguments": json.dumps(t.arguments, ensure_ascii=False)}}
            for t in calls]


def _logprobs(tokenizer: Any, ids: list[int], lps: list[float]) -> dict[str, Any]:
    content = []
    for t, lp in zip(ids, lps, strict=True):
        text = tokenizer.decode([t])
        content.append({"token": text, "logprob": lp, "bytes": list(text.encode("utf-8")), "top_logprobs": []})
    return {"content": content}


def _choice(index: int, c: Completion, use_tools: bool, tokenizer: Any, logprobs: bool,
            parallel: bool | None = None) -> dict[str, Any]:
    calls = _tool_calls(c, parallel) if use_tools else []
    content = reply_content(c) if use_tools else c.text
    message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None}
    if calls:
        message["tool_calls"] = calls
    finish = c.finish_reason if use_tools or c.finish_reason != "tool_calls" else "stop"
    return {"index": index, "message": message, "finish_reason": finish,
            "logprobs": _logprobs(tokenizer, c.completion_ids or [], c.logprobs or []) if logprobs else None}


async def _prepare(request: Request, req: ChatCompletionRequest) -> tuple[Any, list[Message], list[SamplingParams]]:
    service = request.app.state.service
    cfg = service.config
    if req.model not in (service.model_name, "default"):
        raise APIError(404, f"field 'model': {req.model!r} is not served here; GET /v1/models lists "
                            f"{service.model_name!r} (or send 'default')", param="model", code="model_not_found")
    if len(req.messages) > cfg.max_messages:
        raise APIError(400, f"field 'messages': {len(req.messages)} messages is above this server's limit of "
                            f"{cfg.max_messages} (max_messages)", param="messages")
    if req.n > cfg.max_n:
        raise APIError(400, f"field 'n': {req.n} is above this server's limit of {cfg.max_n} (max_n)", param="n")
    if req.stream and req.n != 1:
        raise APIError(400, f"field 'n': streaming returns one choice; got n={req.n}", param="n")
    _unsupported(req)
    schema, forced = _constraint(req)
    if schema is not None:
        check = getattr(getattr(service.model, "engine", None), "check_schema", None)
        field = "tool_choice" if forced else "response_format"
        if check is None:
            raise APIError(400, f"field {field!r}: the served model cannot constrain its output", param=field)
        try:
            check(schema)
        except ConfigError as e:
            raise APIError(400, f"field {field!r}: {e}", param=field) from e
    messages = _to_messages(req)
    samplings = [_sampling(req, cfg.max_tokens_limit, i) for i in range(req.n)]
    if schema is not None:
        samplings = [s.model_copy(update={"json_schema": schema}) for s in samplings]
    _check_prompt(service.model, messages, req.tools, samplings[0].max_new_tokens)
    return service, messages, samplings


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    service = request.app.state.service
    return {"object": "list", "data": [{"id": service.model_name, "object": "model", "created": service.started,
                                        "owned_by": "stateset-agents"}]}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request, req: ChatCompletionRequest) -> Any:
    service, messages, samplings = await _prepare(request, req)
    use_tools = req.tool_choice != "none"
    tools = req.tools if use_tools else None
    cid, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
    if req.stream:
        service.check_room(1)  # the slot itself is taken when the stream starts
        return StreamingResponse(_stream(service, req, messages, samplings[0], tools, cid, created),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    async with service.generation_slot(req.n):
        completions = await asyncio.gather(*[service.model.chat(messages, sampling=s, tools=tools)
                                             for s in samplings])
    tok = service.model.tokenizer
    prompt_tokens = len(completions[0].prompt_ids or [])
    completion_tokens = sum(len(c.completion_ids or []) for c in completions)
    return {"id": cid, "object": "chat.completion", "created": created, "model": service.model_name,
            "system_fingerprint": None,
            "choices": [_choice(i, c, use_tools, tok, req.logprobs, req.parallel_tool_calls)
                        for i, c in enumerate(completions)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class _Chunks:
    """Builds the SSE chunks of one streamed completion; keeps the log-probs not yet sent."""

    def __init__(self, service: Any, req: ChatCompletionRequest, cid: str, created: int) -> None:
        self.service, self.req, self.cid, self.created = service, req, cid, created
        self.pending: list[tuple[int, float]] = []

    def chunk(self, delta: dict[str, Any], finish: str | None = None, with_logprobs: bool = False) -> str:
        logprobs = None
        if with_logprobs and self.req.logprobs:
            tok = self.service.model.tokenizer
            logprobs = _logprobs(tok, [t for t, _ in self.pending], [lp for _, lp in self.pending])
            self.pending.clear()
        return _sse({"id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.service.model_name, "system_fingerprint": None,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]})

    def usage(self, c: Completion) -> str:
        p, n = len(c.prompt_ids or []), len(c.completion_ids or [])
        return _sse({"id": self.cid, "object": "chat.completion.chunk", "created": self.created,
                     "model": self.service.model_name, "choices": [],
                     "usage": {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}})


async def _stream(service: Any, req: ChatCompletionRequest, messages: list[Message], sampling: SamplingParams,
                  tools: list[dict[str, Any]] | None, cid: str, created: int) -> AsyncIterator[str]:
    """Real token streaming: each sampled token goes through the DeltaDecoder as the engine produces it."""
    use_tools = req.tool_choice != "none"
    forced = _constraint(req)[1]  # the whole reply is a call: send it as tool_calls, not as content deltas
    out = _Chunks(service, req, cid, created)
    decoder = DeltaDecoder(service.model.tokenizer, sampling.stop, service.model.engine.eos)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    start = time.perf_counter()
    async with service.generation_slot(1):
        task = asyncio.ensure_future(service.model.chat(messages, sampling=sampling, tools=tools,
                                                        on_token=lambda t, lp: queue.put_nowait((t, lp))))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            yield out.chunk({"role": "assistant", "content": ""})
            first = True
            while (item := await queue.get()) is not None:
                out.pending.append(item)
                delta = decoder.push(item[0])
                if delta and not forced:
                    if first:
                        service.metrics.ttft.observe(time.perf_counter() - start)
                        first = False
                    yield out.chunk({"content": delta}, with_logprobs=True)
            try:
                c = task.result()
                rest = "" if forced else decoder.finish(reply_content(c) if use_tools else c.text)
            except Exception as e:  # the model failed, or the stream could not be completed: say so in it
                yield _sse(error_body(500, f"{type(e).__name__}: {e}", code="model_error"))
                yield "data: [DONE]\n\n"
                return
            if rest or out.pending:
                yield out.chunk({"content": rest} if rest else {}, with_logprobs=True)
            calls = _tool_calls(c, req.parallel_tool_calls) if use_tools else []
            if calls:
                yield out.chunk({"tool_calls": [dict(call, index=i) for i, call in enumerate(calls)]})
            yield out.chunk({}, c.finish_reason if use_tools or c.finish_reason != "tool_calls" else "stop")
            if req.stream_options is not None and req.stream_options.include_usage:
                yield out.usage(c)
            yield "data: [DONE]\n\n"
        finally:
            if not task.done():  # the client went away: the engine drops the request at its next step
                task.cancel()
