"""Agents that play the agent side of a conversation."""

from .multiturn import MultiTurnAgent, strategies
from .tool_grammar import conversation_values, tool_turn_grammar

__all__ = ["MultiTurnAgent", "conversation_values", "strategies", "tool_turn_grammar"]
