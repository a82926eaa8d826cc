"""Training: SFT, GRPO and Training-Free GRPO under one run loop, their configs, the policy, pure loss functions,
checkpoints and distributed helpers (see docs/training.md and docs/training_free.md)."""

from __future__ import annotations

from typing import Any

from .config import GRPOConfig, RunConfig, SFTConfig, load_config
from .dist import DistContext
from .losses import clipped_surrogate, gae, group_advantages, k3_kl, loss_weights, token_logprobs

__all__ = [
    "DistContext",
    "ExperienceLibrary",
    "GRPOConfig",
    "GRPOTrainer",
    "RunConfig",
    "RunLoop",
    "SFTConfig",
    "SFTTrainer",
    "TrainingFreeConfig",
    "TrainingFreeGRPO",
    "build_trainer",
    "clipped_surrogate",
    "gae",
    "group_advantages",
    "k3_kl",
    "load_config",
    "loss_weights",
    "token_logprobs",
]

_LAZY = {
    "GRPOTrainer": ".trainer",
    "RunLoop": ".loop",
    "SFTTrainer": ".sft",
    "build_trainer": ".build",
    "ExperienceLibrary": "..agents.experience",
    "TrainingFreeConfig": ".training_free",
    "TrainingFreeGRPO": ".training_free",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'stateset_agents.training' has no attribute {name!r}")
