"""The engine's records: a request in flight, its result, and the engine's counters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

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
    decode_path: str = ""
    """Which forward runs decode steps: ``fast-native`` / ``fast-int8`` (models/fast_decode.py) or
    ``transformers`` (with the reason the fast path does not apply)."""
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
