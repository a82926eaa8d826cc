"""The fields every run shares (:class:`RunConfig`) and those of every run that updates weights (:class:`PolicyConfig`).

Each algorithm's config (GRPO, SFT, Training-Free GRPO) subclasses one of these and adds only its own fields, so a
field such as ``env`` or ``save_every`` is declared, documented and checked once. Configs are pydantic models with
``extra="forbid"``: an unknown field is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import validation_error_text

__all__ = ["PolicyConfig", "RunConfig", "format_validation_error"]

Split = Literal["train", "test", "all"]


class RunConfig(BaseModel):
    """What every run has: the model, the env, the reward, rollouts, evaluation, checkpoints and logging."""

    model_config = ConfigDict(extra="forbid")

    algorithm: str
    """Which algorithm: ``grpo``, ``sft`` or ``training_free`` (each subclass fixes its own)."""

    # ------------------------------------------------------------ what runs, on what
    model: str = "default"
    """``default`` (SmolLM2-135M-Instruct) or a local model folder (``save_pretrained`` layout)."""
    init_from: str | None = None
    """A run folder: start from its last checkpoint's weights (a LoRA adapter is merged into the base weights;
    this run trains its own on top). Its ``model`` must be this run's ``model``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to run: ``auto`` picks cuda when available (under torchrun, the local rank's GPU)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights' dtype: ``auto`` is bfloat16 on GPU, float32 on CPU."""
    env: str = "customer_service"
    """Environment pack: a built-in name (customer_service, tech_support, sales) or a pack folder."""
    domain: str | None = None
    """The agent's strategy prompt (agents/strategies.yaml); default: the env's name when it has one, else none."""
    reward: str = "customer_service"
    """Reward preset name (rewards/presets) or a preset YAML path."""
    train_split: Split = "train"
    """Scenarios to train on."""
    scenarios: list[str] | None = None
    """Train only on these scenario ids (of ``train_split``); default: all of the split."""
    train_variants: int = Field(default=0, ge=0, le=1000)
    """Variants of each train scenario to add to the train pool (the pack's ``variants:``; envs/variants.py); with
    ``scenarios``, only theirs. 0: none. Eval scenarios are never varied."""
    tool_prompt: Literal["full", "compact"] = "full"
    """The agent's prompt: ``full`` (strategy, the pack's instructions, every tool's whole description) or
    ``compact`` for small models (the pack's ``compact_prompt`` and one ``name(args): summary`` line per tool)."""
    eval_split: Split = "test"
    """Scenarios to evaluate on."""
    eval_scenarios: list[str] | None = None
    """Evaluate only these scenario ids; default: all of ``eval_split``."""

    # ------------------------------------------------------------ rollouts
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the run's rollouts."""
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
    """Trials per eval scenario per seed (pass@k and pass^k need k >= the k reported)."""
    eval_temperature: float = Field(default=0.7, ge=0)
    """Sampling temperature during evaluation."""
    eval_tool_grammar: bool = False
    """Evaluation decodes each agent turn under the tool-turn grammar (agents/tool_grammar.py): a message, or
    calls of the offered tools with arguments valid under their schemas. Rollouts for training stay unconstrained."""
    eval_grounded_args: bool = False
    """With ``eval_tool_grammar``: record references (the pack's ``reference_args()``: order, customer, invoice
    ids, emails) take only words the customer or a tool gave earlier in the episode (agents/tool_grammar.py)."""
    eval_seeds: list[int] = Field(default_factory=lambda: [0])
    """One evaluation per seed; ``eval_<tag>.json`` gives mean and spread over seeds, ``eval/`` each report."""
    save_every: int = Field(default=10, ge=0)
    """Checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = Field(default=2, ge=1)
    """Most recent checkpoints kept."""
    output_dir: str = "runs/run"
    """The run folder: config, metrics.jsonl, checkpoints, eval results, plot."""
    report_to: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list)
    """Optional trackers (extras ``tracking``); off by default."""
    progress: bool = True
    """Show a live progress display (rich)."""

    @model_validator(mode="after")
    def _run_checks(self) -> RunConfig:
        for name in ("scenarios", "eval_scenarios"):
            ids = getattr(self, name)
            if ids is not None and not ids:
                raise ValueError(f"{name} is an empty list; leave it out to use the whole split")
            if ids is not None and len(set(ids)) != len(ids):
                raise ValueError(f"{name} has duplicates: {ids}; list each id once")
        if (self.eval_before or self.eval_after or self.eval_every) and not self.eval_seeds:
            raise ValueError("eval_seeds is empty; give at least one seed, or turn evaluation off "
                             "(eval_before: false, eval_after: false, eval_every: 0)")
        if len(set(self.eval_seeds)) != len(self.eval_seeds):
            raise ValueError(f"eval_seeds has duplicates: {self.eval_seeds}; list each seed once")
        if self.eval_grounded_args and not self.eval_tool_grammar:
            raise ValueError("eval_grounded_args grounds arguments of the tool-turn grammar; set eval_tool_grammar: "
                             "true as well, or leave eval_grounded_args out")
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("init_from is empty; give a run folder or leave it out")
        return self

    def resolved_domain(self) -> str | None:
        from ..agents.multiturn import strategies

        if self.domain is not None:
            return self.domain
        name = Path(self.env).name
        return name if name in strategies() else None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class PolicyConfig(RunConfig):
    """A run that updates weights (GRPO, SFT): the optimiser, the parameters, the batching."""

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
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the gradient's global norm to this (None: no clipping; the norm is still logged)."""
    micro_batch_size: int = Field(default=8, ge=1)
    """Sequences (agent turns) per forward/backward pass."""
    logprob_chunk_size: int = Field(default=1024, ge=1)
    """Tokens per chunk when computing log-probs over the vocabulary (bounds peak memory)."""
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
    lora_layers: int | None = Field(default=None, ge=1)
    """Adapt only the last N decoder layers (None: all). Nothing below them needs a gradient, so the backward pass
    stops there: on SmolLM2 (30 layers), a LoRA forward and backward in fp32 ran at 272 tokens/s with every layer,
    437 with the last 12, 493 with the last 8 (benchmarks/train_throughput.py; RESULTS.md, "Training throughput")."""
    rollout_precision: Literal["fp32", "bf16", "int8", "auto"] = "fp32"
    """Weights the rollouts sample from: ``fp32``, the trained weights in their own dtype; ``bf16`` or ``int8``,
    bfloat16 or int8 copies of every linear layer (the engine's fast path; local Llama-family models; int8 on CPU
    only) while the update keeps the fp32 weights; ``auto``: ``bf16`` where the device computes bf16 natively (a
    bf16 GPU, a CPU with AVX512-BF16 or AMX), else ``fp32`` (resolved when the config is loaded; the run folder's
    config.yaml records the choice). Evaluation samples with the same weights (its speed is not
    benchmarked yet). The sampler (mu) then differs from the trained policy: GRPO measures the mismatch
    (``mismatch/*``) and corrects it (``tis_cap``)."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """``bf16``: the training forward and backward run under ``torch.autocast`` in bfloat16 (weights, gradients and
    AdamW state stay fp32; log-probs and the loss in fp32). On this project's CPU (AMX) a LoRA forward and backward
    ran 1.8-2.3x faster (benchmarks/RESULTS.md, "Training throughput"; needs AMX or AVX512-BF16: on an AVX2-only
    CPU torch emulates bf16, many times slower than fp32; docs/training.md, "The recipe"). ``auto``: ``bf16`` where the device
    computes it natively, else ``no`` (resolved when the config is loaded, like ``rollout_precision``). The trainer's
    log-probs then differ from an fp32 sampler's by bf16 rounding: GRPO's ``mismatch/*`` metrics measure it and ``tis_cap`` corrects it."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, more time)."""
    fsdp: bool = False
    """Full fine-tune with FSDP2 under torchrun: weights, gradients and AdamW state sharded over processes."""
    train_transcripts: bool = True
    """Write every training episode (GRPO's rollouts, SFT's rejection-sampling episodes) to
    ``train_transcripts.jsonl`` in the run folder (docs/transcripts.md); false to save disk."""

    @model_validator(mode="after")
    def _policy_checks(self) -> PolicyConfig:
        if "auto" in (self.mixed_precision, self.rollout_precision):
            from ..models._compat import native_bf16

            fast = native_bf16(self.device)
            if self.mixed_precision == "auto":
                self.mixed_precision = "bf16" if fast else "no"
            if self.rollout_precision == "auto":
                self.rollout_precision = "bf16" if fast else "fp32"
        if self.use_lora and not self.lora_target_modules:
            raise ValueError("use_lora is on but lora_target_modules is empty; name the modules to adapt")
        if self.rollout_precision == "int8" and (self.fsdp or self.device == "cuda"):
            raise ValueError("rollout_precision 'int8' runs torch's CPU int8 kernel on a replicated policy; with "
                             f"device={self.device!r}, fsdp={self.fsdp} use rollout_precision: fp32")
        if self.fsdp and self.use_lora:
            raise ValueError("fsdp shards a full fine-tune; LoRA adapters are small enough to replicate: "
                             "set use_lora: false, or fsdp: false")
        return self


def format_validation_error(e: ValidationError, source: str) -> str:
    """``SOURCE: `` and every pydantic error in one line (:func:`~stateset_agents.errors.validation_error_text`)."""
    return f"{source}: {validation_error_text(e)}"
