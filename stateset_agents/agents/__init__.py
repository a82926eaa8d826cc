"""Agents that play the agent side of a conversation."""

from .multiturn import MultiTurnAgent, strategies

__all__ = ["MultiTurnAgent", "strategies"]
