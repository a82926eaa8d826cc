"""The engine's records: a request in flight, its result, and the engine's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..types import SamplingParams
from .grammar import JsonConstraint

__all__ = ["EngineStats", "GenerationResult"]


@dataclass
class GenerationResult:
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


@dataclass
class EngineStats:
    requests: int = 0
    new_tokens: int = 0
    decode_steps: int = 0
    prefills: int = 0
    max_batch: int = 0
    busy_seconds: float = 0.0
    prefix_builds: int = 0
    prefix_hits: int = 0
    prefix_tokens_reused: int = 0
    conversation_hits: int = 0
    """Prompts that continued a finished request's cached keys and values (models/seq_cache.py)."""
    conversation_tokens_reused: int = 0
    decode_path: str = ""
    """Which forward runs decode steps: ``fast-native`` / ``fast-int8`` (models/fast_decode.py) or
    ``transformers`` (with the reason the fast path does not apply)."""
    decode_kernel: str = ""
    """The fast path's matmul: ``onednn`` (fp32 on CPU), ``linear`` (F.linear) or ``int8pack``; empty until a
    snapshot is built or when the transformers forward runs."""
    decode_snapshots: int = 0
    """How many times the fast path's weight snapshot was (re)built."""


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    generator: torch.Generator
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pos: int = 0
    """Position id of the next token fed to the model."""
    finish: str | None = None
    text: str = ""
    on_token: Callable[[int, float], None] | None = None
    """Called on ``loop`` with each sampled token id and its log-prob (streaming)."""
    constraint: JsonConstraint | None = None
    """The JSON-schema grammar state of a constrained request (``sampling.json_schema``)."""


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)


def check_finished(r: _Request, eos: set[int], tokenizer: Any) -> None:
    """Set ``r.finish`` (and its text) when its last token ends it: EOS, a complete JSON document, a stop string,
    ``max_new_tokens``; a cancelled request finishes as ``cancelled``."""
    if r.future.cancelled():  # nobody waits for it any more: free its row
        r.finish = "cancelled"
        return
    s = r.sampling
    token = r.out_ids[-1]
    if token in eos:
        r.finish = "stop"
        r.text = tokenizer.decode(r.out_ids[:-1], skip_special_tokens=True)
        return
    if r.constraint is not None and r.constraint.done:  # the JSON document is complete
        r.finish = "stop"
        r.text = tokenizer.decode(r.out_ids, skip_special_tokens=True)
        return
    if s.stop:
        text = tokenizer.decode(r.out_ids, skip_special_tokens=True)
        cut = min((text.find(x) for x in s.stop if x in text), default=-1)
        if cut >= 0:
            r.finish, r.text = "stop", text[:cut]
            return
    if len(r.out_ids) >= s.max_new_tokens:
        r.finish = "length"
        r.text = tokenizer.decode(r.out_ids, skip_special_tokens=True)
