"""The ChatModel protocol: the one interface to any language model.

Agents, LLM user simulators, judges and the training-free extractor all call
``await model.chat(messages, sampling=SamplingParams(...), tools=None) -> Completion``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..types import Completion, Message, SamplingParams

__all__ = ["ChatModel", "SamplingParams"]


@runtime_checkable
class ChatModel(Protocol):
    """Anything with an async ``chat`` that returns a :class:`Completion`."""

    async def chat(self, messages: list[Message], *, sampling: SamplingParams,
                   tools: list[dict[str, Any]] | None = None) -> Completion: ...
