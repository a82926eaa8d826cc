"""Reward functions: async, group-aware, composable, every component logged (see docs/rewards.md)."""

from __future__ import annotations

from typing import Any

from .base import RewardFunction, TrajectoryReward, agent_messages, agent_text
from .components import (
    EfficiencyReward,
    LengthWindowReward,
    LexiconReward,
    OutcomeReward,
    RepetitionPenalty,
    ToolUseReward,
)
from .compose import Combined, GeometricMean, Minimum, WeightedMean, WeightedSum
from .interop import as_trl_reward, from_trl_reward
from .judge_cache import JudgeCache
from .presets import load_reward
from .report import RewardReport, reward_report
from .ruler import RulerReward, builtin_rubrics, load_rubric

__all__ = [
    "Combined",
    "EfficiencyReward",
    "Embedder",
    "GeometricMean",
    "JudgeCache",
    "LengthWindowReward",
    "LexiconReward",
    "Minimum",
    "NeuralReward",
    "NeuralRewardConfig",
    "OutcomeReward",
    "ReferenceSimilarity",
    "RepetitionPenalty",
    "RewardFunction",
    "RewardReport",
    "RulerReward",
    "ToolUseReward",
    "TrajectoryReward",
    "WeightedMean",
    "WeightedSum",
    "agent_messages",
    "agent_text",
    "as_trl_reward",
    "builtin_rubrics",
    "from_trl_reward",
    "load_reward",
    "load_rubric",
    "reward_report",
]

_LAZY = {"Embedder": ".embeddings", "ReferenceSimilarity": ".similarity", "NeuralReward": ".neural",
         "NeuralRewardConfig": ".neural"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'stateset_agents.rewards' has no attribute {name!r}")
