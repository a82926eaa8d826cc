"""GRPOConfig: the GRPO trainer's own fields, on top of :class:`~.run_config.PolicyConfig` (see docs/training.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .run_config import PolicyConfig

__all__ = ["GRPOConfig"]

#: GSPO's clip range (left, right) from its paper; the default with ``importance_sampling_level: sequence``
GSPO_EPSILON, GSPO_EPSILON_HIGH = 3e-4, 4e-4


class GRPOConfig(PolicyConfig):
    """The GRPO trainer's configuration (see docs/training.md for every field with its default)."""

    algorithm: Literal["grpo"] = "grpo"
    """Which trainer: ``grpo`` here (``sft`` and ``training_free`` select the others)."""
    output_dir: str = "runs/grpo"
    """The run folder: config, metrics.jsonl, checkpoints, eval results, plot."""

    # ------------------------------------------------------------ rollouts
    group_size: int = Field(default=4, ge=2)
    """Episodes per scenario per step (G): the group advantages are computed within."""
    scenarios_per_step: int = Field(default=4, ge=1)
    """Scenarios (groups) per step, drawn without replacement from the train scenarios (over all processes)."""
    max_steps: int = Field(default=20, ge=1)
    """Training steps (one rollout batch each)."""

    # ------------------------------------------------------------ the objective
    beta: float = Field(default=0.0, ge=0)
    """KL coefficient against the reference policy (k3 estimator); 0 turns the reference off."""
    epsilon: float = Field(default=0.2, gt=0, lt=1)
    """Lower clip range: the ratio is clipped below at ``1 - epsilon``; default 0.2, 3e-4 at sequence level (GSPO)."""
    epsilon_high: float | None = Field(default=None, gt=0)
    """Upper clip range (DAPO's clip-higher): clipped above at ``1 + epsilon_high``; default ``epsilon`` (GSPO: 4e-4)."""
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo"
    """Loss normalisation: per-trajectory mean (grpo), constant budget (dr_grpo), or per token (dapo)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (GRPO) or one per agent turn (GSPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide centred rewards by the group's std, the batch's std, or nothing (Dr. GRPO)."""
    advantage_estimator: Literal["grpo", "gae"] = "grpo"
    """``grpo``: group-relative advantages; ``gae``: a value head and GAE over agent turns (PPO-style)."""
    gamma: float = Field(default=1.0, ge=0, le=1)
    """GAE discount per agent turn."""
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    """GAE lambda."""
    value_learning_rate: float = Field(default=1e-3, gt=0)
    """Learning rate of the value head (``advantage_estimator: gae``)."""
    num_iterations: int = Field(default=1, ge=1)
    """Optimiser passes over one rollout batch (mu in the GRPO paper); > 1 makes the ratio and clipping bite."""
    gradient_accumulation_steps: int | None = Field(default=None, ge=1)
    """Micro-batches accumulated per optimiser update; None: the whole rollout batch, one update per iteration."""
    mask_truncated: bool = False
    """Exclude from the loss every agent turn that hit ``max_new_tokens`` (DAPO's overlong filtering)."""
    skip_zero_variance_groups: bool = True
    """Leave out of the loss groups whose rewards are all equal (advantages 0; saves compute); kept when beta > 0."""
    zero_variance_rtol: float = Field(default=1e-3, ge=0)
    """A group's rewards count as all equal when max - min <= this x max(1, the group's largest |reward|)."""
    advantage_std_floor: float = Field(default=0.1, ge=0)
    """Group (batch) std floor, x max(1, largest |reward|): tiny shaping differences get tiny advantages, not +-1."""
    pack_turns: bool = True
    """Train each trajectory's agent turns as one sequence wherever a turn's prompt extends the previous turn
    (training/batch.pack_turns): the same loss and gradient as turn by turn, for a fraction of the tokens. Used with
    advantage_estimator grpo and token-level importance sampling (GAE's per-turn advantages and GSPO's per-turn
    sequence ratio are kept turn by turn). ``micro_batch_size`` then counts sequences, not turns."""
    failure_reward: float | Literal["group_min"] = "group_min"
    """Reward of an episode the agent's own output ended (rollout.AGENT_FAILURES); group_min: its group's lowest, or 0."""

    # ------------------------------------------------------------ training-inference mismatch (grpo_mismatch.py)
    tis_cap: float | None = Field(default=2.0, ge=1)
    """Truncated importance sampling: each token's policy-gradient term is weighted by ``min(pi_old / mu, tis_cap)``
    (detached) and the PPO ratio is taken against pi_old (the trainer's own log-probs before the update);
    null turns it off (the ratio is then taken against the rollout's log-probs mu, as without correction)."""
    mismatch_mask: float | None = Field(default=None, gt=1)
    """Drop from the loss every agent turn whose geometric-mean ratio ``exp(mean log(pi_old / mu))`` is outside
    ``[1 / mismatch_mask, mismatch_mask]`` (e.g. 1.5); null keeps every turn."""

    @model_validator(mode="after")
    def _cross_checks(self) -> GRPOConfig:
        if self.importance_sampling_level == "sequence" and "epsilon" not in self.model_fields_set:
            # GSPO's ratio is a length-normalised mean, far closer to 1 than a token's: 0.2 would almost never clip.
            # The GSPO paper's ranges (Zheng et al. 2025, arXiv 2507.18071, section 5.1) are the default there.
            self.epsilon = GSPO_EPSILON
            if "epsilon_high" not in self.model_fields_set:
                self.epsilon_high = GSPO_EPSILON_HIGH
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be smaller than max_steps={self.max_steps}; "
                             "lower warmup_steps or raise max_steps")
        if self.advantage_estimator == "gae" and self.importance_sampling_level == "sequence":
            raise ValueError("advantage_estimator 'gae' gives each turn its own advantage, which sequence-level "
                             "importance sampling (GSPO) does not use per token; use importance_sampling_level 'token'")
        if self.fsdp and (self.beta > 0 or self.advantage_estimator == "gae"):
            raise ValueError(f"fsdp supports beta: 0 and advantage_estimator: grpo only (got beta={self.beta}, "
                             f"advantage_estimator={self.advantage_estimator!r}); a sharded reference model and "
                             "value head are not implemented - set beta: 0 and advantage_estimator: grpo")
        return self

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high
