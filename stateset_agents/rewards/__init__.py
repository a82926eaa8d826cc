"""Reward functions: async, group-aware, composable, every component logged."""

from .base import RewardFunction, TrajectoryReward, agent_messages, agent_text

__all__ = ["RewardFunction", "TrajectoryReward", "agent_messages", "agent_text"]
