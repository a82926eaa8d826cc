"""The ChatModel protocol: the one interface to any language model.

Agents, LLM user simulators, judges and the training-free extractor all call
``await model.chat(messages, sampling=SamplingParams(...), tools=None) -> Completion``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ..types import Completion, Message

__all__ = ["ChatModel", "SamplingParams"]


class SamplingParams(BaseModel):
    """How to sample one completion."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens."""
    stop: list[str] = Field(default_factory=list)
    """Generation ends when any of these strings appears; the stop string is not returned."""
    seed: int | None = None
    """Per-request seed for reproducible sampling."""


@runtime_checkable
class ChatModel(Protocol):
    """Anything with an async ``chat`` that returns a :class:`Completion`."""

    async def chat(self, messages: list[Message], *, sampling: SamplingParams,
                   tools: list[dict[str, Any]] | None = None) -> Completion: ...
