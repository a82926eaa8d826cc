"""OpenAIChatModel: any OpenAI-compatible ``/v1/chat/completions`` endpoint over httpx.

Works with vLLM, Ollama, llama.cpp's server, OpenAI, and the ``stateset-agents serve`` server. Retries
with exponential backoff (honouring ``Retry-After``) on 429, 5xx, timeouts and connection errors; any other
4xx raises :class:`ModelError` at once with the status and the server's message. When the server returns
log-probs (``logprobs: true``), they are in ``Completion.logprobs``; token ids are not (servers do not return them).
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx

from ..errors import ConfigError, ModelError
from ..types import Completion, Message, ToolCall
from .base import SamplingParams

__all__ = ["OpenAIChatModel"]

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIChatModel:
    """A ChatModel backed by an OpenAI-compatible endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server expects.
        api_key: the bearer token; default: the environment variable named by ``api_key_env``.
        api_key_env: where to read the key from (``OPENAI_API_KEY``); no key is sent when neither is set.
        timeout: seconds per request (connect, read, write).
        max_retries: retries after the first attempt for retryable failures.
        backoff: first retry delay in seconds, doubled each retry (capped at 30 s).
        logprobs: ask the server for log-probs of the sampled tokens.
        transport: an httpx transport (tests pass a fake one; default: real network).
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5, logprobs: bool = False,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url {base_url!r} must start with http:// or https:// "
                              "(e.g. http://127.0.0.1:8000/v1)")
        if max_retries < 0:
            raise ConfigError(f"max_retries={max_retries} must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env)
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.logprobs = logprobs
        self._transport = transport
        self._clients: dict[int, httpx.AsyncClient] = {}
        self.stats = {"requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def _client(self) -> httpx.AsyncClient:
        # One client per event loop: an httpx client must not cross loops.
        key = id(asyncio.get_running_loop())
        if key not in self._clients:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._clients[key] = httpx.AsyncClient(timeout=self.timeout, headers=headers, transport=self._transport)
        return self._clients[key]

    def payload(self, messages: list[Message], sampling: SamplingParams,
                tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_wire(m) for m in messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
        }
        if sampling.stop:
            body["stop"] = sampling.stop
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.grammar:
            raise ConfigError("SamplingParams.grammar (e.g. constrain_tool_calls) needs a local model; an "
                              "OpenAI-compatible endpoint has its own tool calling: pass tools instead")
        if sampling.json_schema is not None:  # OpenAI's structured-output shape (vLLM, llama.cpp, Ollama take it too)
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": sampling.json_schema,
                                                       "strict": True}}
        if tools:
            body["tools"] = tools
        if self.logprobs:
            body["logprobs"] = True
        return body

    async def chat(self, messages: list[Message], *, sampling: SamplingParams,
                   tools: list[dict[str, Any]] | None = None) -> Completion:
        url = f"{self.base_url}/chat/completions"
        body = self.payload(messages, sampling, tools)
        delay = self.backoff
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            self.stats["requests"] += 1
            try:
                resp = await self._client().post(url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                if last:
                    raise ModelError(f"POST {url} failed after {attempt + 1} attempts: {type(e).__name__}: {e}. "
                                     "Is the server running and reachable?") from e
            else:
                if resp.status_code == 200:
                    return self._parse(resp, url)
                if resp.status_code not in _RETRY_STATUS:
                    raise ModelError(f"POST {url} returned {resp.status_code}: {_error_text(resp)}")
                if last:
                    raise ModelError(f"POST {url} returned {resp.status_code} after {attempt + 1} attempts: "
                                     f"{_error_text(resp)}")
                retry_after = resp.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    delay = max(delay, float(retry_after))
            self.stats["retries"] += 1
            await asyncio.sleep(min(delay, 30.0))
            delay *= 2
        raise AssertionError("unreachable")

    def _parse(self, resp: httpx.Response, url: str) -> Completion:
        try:
            data = resp.json()
            choice = data["choices"][0]
            msg = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"POST {url} returned 200 but not a chat completion: {resp.text[:200]!r}") from e
        calls = []
        for i, c in enumerate(msg.get("tool_calls") or []):
            fn = c.get("function", {})
            args = fn.get("arguments", {})
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError as e:
                    raise ModelError(f"tool call {fn.get('name')!r} from {url} has arguments that are not JSON: "
                                     f"{args[:100]!r}") from e
            calls.append(ToolCall(id=c.get("id") or f"call_{i + 1}", name=fn.get("name", ""), arguments=args))
        logprobs = None
        lp = choice.get("logprobs")
        if lp and lp.get("content") is not None:
            logprobs = [float(t["logprob"]) for t in lp["content"]]
        usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        self.stats["prompt_tokens"] += usage.get("prompt_tokens", 0)
        self.stats["completion_tokens"] += usage.get("completion_tokens", 0)
        finish = choice.get("finish_reason") or "stop"
        if finish not in ("stop", "length", "tool_calls"):
            finish = "stop"
        return Completion(text=msg.get("content") or "", tool_calls=calls, finish_reason=finish,
                          logprobs=logprobs, model=data.get("model", self.model), usage=usage)

    async def aclose(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()


def _wire(m: Message) -> dict[str, Any]:
    d = m.to_openai()
    if "tool_calls" in d:
        for c in d["tool_calls"]:
            c["function"]["arguments"] = json.dumps(c["function"]["arguments"])
    return d


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:500]
    except ValueError:
        return resp.text[:500]
