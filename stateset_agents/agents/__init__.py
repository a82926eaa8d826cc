"""Agents that play the agent side of a conversation."""

from .multiturn import MultiTurnAgent, strategies
from .tool_grammar import tool_turn_grammar

__all__ = ["MultiTurnAgent", "strategies", "tool_turn_grammar"]
