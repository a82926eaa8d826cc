"""Language models behind one protocol (see :mod:`stateset_agents.models.base`).

``HFChatModel`` (local transformers model with a batching engine), ``OpenAIChatModel`` (any OpenAI-compatible
endpoint) and ``default_model()`` (SmolLM2-135M-Instruct from PyPI). torch and transformers load lazily.
"""

from __future__ import annotations

from typing import Any

from .base import ChatModel, SamplingParams
from .openai import OpenAIChatModel

__all__ = ["ChatModel", "HFChatModel", "OpenAIChatModel", "SamplingParams", "default_model"]


def __getattr__(name: str) -> Any:
    if name == "HFChatModel":
        from .hf import HFChatModel

        return HFChatModel
    if name == "default_model":
        from .default import default_model

        return default_model
    raise AttributeError(f"module 'stateset_agents.models' has no attribute {name!r}")
