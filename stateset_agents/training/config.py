"""GRPOConfig: every knob of the GRPO trainer, validated before any compute is spent; and ``load_config``.

A config is YAML (or a dict). Unknown fields are errors, each field has one docstring line, and cross-field checks
say what to change. ``load_config`` picks the algorithm from the ``algorithm`` field: ``grpo`` (the default) gives
a :class:`GRPOConfig`, ``training_free`` a :class:`~stateset_agents.training.training_free.TrainingFreeConfig`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError

__all__ = ["GRPOConfig", "format_validation_error", "load_config"]


class GRPOConfig(BaseModel):
    """The GRPO trainer's configuration (see docs/training.md for every field with its default)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["grpo"] = "grpo"
    """Which trainer: ``grpo`` here (``training_free`` selects Training-Free GRPO)."""

    # ------------------------------------------------------------ what is trained, on what
    model: str = "default"
    """``default`` (SmolLM2-135M-Instruct) or a local model folder (``save_pretrained`` layout)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: ``auto`` picks cuda when available (under torchrun, the local rank's GPU)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights' dtype: ``auto`` is bfloat16 on GPU, float32 on CPU."""
    env: str = "customer_service"
    """Environment pack: a built-in name (customer_service, tech_support, sales) or a pack folder."""
    domain: str | None = None
    """The agent's strategy prompt (agents/strategies.yaml); default: the env's name when it has one, else none."""
    reward: str = "customer_service"
    """Reward preset name (rewards/presets) or a preset YAML path."""
    train_split: Literal["train", "test", "all"] = "train"
    """Scenarios to train on."""
    scenarios: list[str] | None = None
    """Train only on these scenario ids (of ``train_split``); default: all of the split."""
    eval_split: Literal["train", "test", "all"] = "test"
    """Scenarios to evaluate on."""
    eval_scenarios: list[str] | None = None
    """Evaluate only these scenario ids; default: all of ``eval_split``."""

    # ------------------------------------------------------------ rollouts
    group_size: int = Field(default=4, ge=2)
    """Episodes per scenario per step (G): the group advantages are computed within."""
    scenarios_per_step: int = Field(default=4, ge=1)
    """Scenarios (groups) per step, drawn without replacement from the train scenarios (over all processes)."""
    max_steps: int = Field(default=20, ge=1)
    """Training steps (one rollout batch each)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of rollouts; the loss's log-probs use the same temperature."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Most new tokens per agent turn."""
    max_turns: int | None = Field(default=None, ge=2)
    """Agent turns before an episode is truncated; default: the pack's."""
    context_tokens: int = Field(default=1536, ge=64)
    """The agent's prompt budget (older turns are condensed beyond it)."""
    rollout_concurrency: int = Field(default=64, ge=1)
    """Episodes in flight at once; the engine decodes their turns together."""
    max_batch_size: int = Field(default=64, ge=1)
    """Most sequences the generation engine decodes together."""

    # ------------------------------------------------------------ the objective
    learning_rate: float = Field(default=1e-5, gt=0)
    """Peak learning rate (AdamW)."""
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    """Decay after warmup, per training step: constant, linear to 0, or cosine to 0."""
    warmup_steps: int = Field(default=0, ge=0)
    """Steps of linear warmup from 0 to ``learning_rate``."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    beta: float = Field(default=0.0, ge=0)
    """KL coefficient against the reference policy (k3 estimator); 0 turns the reference off."""
    epsilon: float = Field(default=0.2, gt=0, lt=1)
    """Lower clip range: the ratio is clipped below at ``1 - epsilon``."""
    epsilon_high: float | None = Field(default=None, gt=0)
    """Upper clip range (DAPO's clip-higher): clipped above at ``1 + epsilon_high``; default ``epsilon``."""
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
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the gradient's global norm to this (None: no clipping; the norm is still logged)."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Sequences (agent turns) per forward/backward pass."""
    gradient_accumulation_steps: int | None = Field(default=None, ge=1)
    """Micro-batches accumulated per optimiser update; None: the whole rollout batch, one update per iteration."""
    mask_truncated: bool = False
    """Exclude from the loss every agent turn that hit ``max_new_tokens`` (DAPO's overlong filtering)."""
    skip_zero_variance_groups: bool = True
    """Leave out of the loss groups whose rewards are all equal (their advantages are 0; saves compute)."""
    logprob_chunk_size: int = Field(default=1024, ge=1)
    """Tokens per chunk when computing log-probs over the vocabulary (bounds peak memory)."""

    # ------------------------------------------------------------ parameters
    use_lora: bool = True
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = Field(default=8, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(default=16, ge=1)
    """LoRA alpha (scale = alpha / r)."""
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    """LoRA dropout."""
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    fsdp: bool = False
    """Full fine-tune with FSDP2 under torchrun: weights, gradients and AdamW state sharded over processes."""
    seed: int = 0
    """Seeds scenario draws, rollouts, sampling and initialisation."""

    # ------------------------------------------------------------ evaluation, checkpoints, logging
    eval_before: bool = True
    """Evaluate on the eval scenarios before training (``eval_before.json``)."""
    eval_after: bool = True
    """Evaluate after training (``eval_after.json``), with the same seeds as before."""
    eval_every: int = Field(default=0, ge=0)
    """Also evaluate every N steps (0: never in between)."""
    eval_k: int = Field(default=1, ge=1)
    """Trials per eval scenario (pass@k and pass^k need k >= the k reported)."""
    eval_temperature: float = Field(default=0.7, ge=0)
    """Sampling temperature during evaluation."""
    save_every: int = Field(default=10, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Most recent checkpoints kept."""
    output_dir: str = "runs/grpo"
    """The run folder: config, metrics.jsonl, checkpoints, eval results, plot."""
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Optional trackers (extras ``tracking``); off by default."""
    progress: bool = True
    """Show a live progress display (rich)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> GRPOConfig:
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be smaller than max_steps={self.max_steps}; "
                             "lower warmup_steps or raise max_steps")
        if self.advantage_estimator == "gae" and self.importance_sampling_level == "sequence":
            raise ValueError("advantage_estimator 'gae' gives each turn its own advantage, which sequence-level "
                             "importance sampling (GSPO) does not use per token; use importance_sampling_level 'token'")
        if self.scenarios is not None and not self.scenarios:
            raise ValueError("scenarios is an empty list; leave it out to train on the whole split")
        if self.scenarios is not None and len(set(self.scenarios)) != len(self.scenarios):
            raise ValueError(f"scenarios has duplicates: {self.scenarios}; list each id once")
        if self.use_lora and not self.lora_target_modules:
            raise ValueError("use_lora is on but lora_target_modules is empty; name the modules to adapt")
        if self.fsdp and self.use_lora:
            raise ValueError("fsdp shards a full fine-tune; LoRA adapters are small enough to replicate: "
                             "set use_lora: false, or fsdp: false")
        if self.fsdp and (self.beta > 0 or self.advantage_estimator == "gae"):
            raise ValueError(f"fsdp supports beta: 0 and advantage_estimator: grpo only (got beta={self.beta}, "
                             f"advantage_estimator={self.advantage_estimator!r}); a sharded reference model and "
                             "value head are not implemented - set beta: 0 and advantage_estimator: grpo")
        return self

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    def resolved_domain(self) -> str | None:
        from ..agents.multiturn import strategies

        if self.domain is not None:
            return self.domain
        name = Path(self.env).name
        return name if name in strategies() else None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def format_validation_error(e: ValidationError, source: str) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}: remove it or check its spelling")
        else:
            parts.append(f"field {loc!r}: {err['msg']} (got {err.get('input')!r})")
    return f"{source}: " + "; ".join(parts)


def _read(path_or_dict: str | os.PathLike[str] | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict), "config"
    path = Path(path_or_dict)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a YAML config "
                          "(see examples/customer_service.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of fields, got {type(data).__name__}")
    return data, str(path)


def load_config(path_or_dict: str | os.PathLike[str] | dict[str, Any], **overrides: Any) -> Any:
    """Read a YAML config (or a dict) into a :class:`GRPOConfig` or a ``TrainingFreeConfig``.

    ``overrides`` replace fields (e.g. ``output_dir=`` from the CLI). Errors name the file and the field.
    """
    data, source = _read(path_or_dict)
    data.update({k: v for k, v in overrides.items() if v is not None})
    algorithm = data.get("algorithm", "grpo")
    if algorithm == "grpo":
        cls: type[BaseModel] = GRPOConfig
    elif algorithm == "training_free":
        from .training_free import TrainingFreeConfig

        cls = TrainingFreeConfig
    else:
        raise ConfigError(f"{source}: field 'algorithm': {algorithm!r} is not 'grpo' or 'training_free'")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from e
