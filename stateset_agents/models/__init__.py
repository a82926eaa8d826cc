"""Language models behind one protocol (see :mod:`stateset_agents.models.base`)."""

from .base import ChatModel, SamplingParams

__all__ = ["ChatModel", "SamplingParams"]
