"""The trainable policy behind one interface: LoRA or full weights, replicated or FSDP2-sharded.

A :class:`Policy` wraps a local :class:`~stateset_agents.models.hf.HFChatModel` (its engine samples the rollouts
from the same weights that are trained) and owns:

- the parameters: LoRA adapters injected into the model in place (``use_lora``), or all weights; under torchrun
  replicated (gradients all-reduced) or, with ``fsdp``, sharded (:mod:`.fsdp`);
- its one :class:`~stateset_agents.types.SamplingParams` (``policy.sampling``), which the agent samples with; each
  :class:`~stateset_agents.types.Completion` records the sampling it was drawn with, and the loss reads the
  temperature from there (:func:`sample_temperature`), never from a config field read elsewhere;
- the forward that gives the log-probs of a batch's loss tokens through the model's own LM head (a model whose
  forward changes the head's output is refused at setup), with the shared-prefix forward of :mod:`.prefix`;
- its checkpoint files (adapter or ``save_pretrained`` weights, optimiser state) and ``init_from``: starting from
  another run's final weights.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..types import SamplingParams
from .batch import Sample, collate
from .checkpoint import latest_checkpoint, load_optimizer, optimizer_tensors, state_dir, state_file
from .dist import DistContext
from .model_checks import refuse_rescaled_logits
from .prefix import (
    MIN_SHARED_PREFIX,
    PrefixBatch,
    checkpointed_layers,
    collate_shared_prefix,
    common_prefix_len,
    shared_prefix_hidden,
)
from .run_config import PolicyConfig

__all__ = ["Policy", "init_weights_from", "lr_lambda", "sample_temperature"]


def lr_lambda(config: PolicyConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier per step: linear warmup, then constant, linear or cosine decay to 0."""
    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.lr_scheduler == "constant":
            return 1.0
        span = max(1, total_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        if config.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


_LIBC: Any = None


def trim_heap() -> bool:
    """Give freed heap memory back to the operating system (glibc ``malloc_trim``); False where there is none.

    Why: glibc keeps freed blocks in per-thread arenas, and raises its mmap threshold after large frees, so the
    rollout's buffers (allocated on the engine's thread) and the update's gradients, once freed, stay resident and
    the next phase allocates beside them (benchmarks/grpo_memory_trace.py measures the update's peak with and
    without it). Its time cost, re-faulting the returned pages, is not measured separately."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


def sample_temperature(samples: list[Sample]) -> float:
    """The temperature the samples' tokens were drawn with (recorded on their completions); one per micro-batch."""
    temps = {s.temperature for s in samples}
    if len(temps) != 1 or None in temps:
        raise ConfigError(f"the micro-batch mixes completions drawn at temperatures {sorted(map(str, temps))}; "
                          "the loss scores each token under the temperature it was sampled with, so sample every "
                          "rollout of a step with the policy's one SamplingParams")
    return float(next(iter(temps)))  # type: ignore[arg-type]


class Policy:
    """The trainable weights of ``chat_model`` (see the module docs)."""

    def __init__(self, chat_model: Any, config: PolicyConfig, *, dist: DistContext | None = None,
                 sampling: SamplingParams | None = None) -> None:
        if getattr(chat_model, "model", None) is None or getattr(chat_model, "tokenizer", None) is None:
            raise ConfigError(f"training needs a local model, but the agent's model is {type(chat_model).__name__}; "
                              "use an HFChatModel (e.g. stateset_agents.models.default_model())")
        self.chat_model, self.config = chat_model, config
        self.tokenizer = chat_model.tokenizer
        self.dist = dist or DistContext()
        self.sampling = sampling or SamplingParams(temperature=config.temperature,
                                                   max_new_tokens=config.max_new_tokens)
        base = chat_model.model
        self.device = next(base.parameters()).device
        self.is_lora = config.use_lora
        self.model = self._with_adapters(base) if config.use_lora else base
        if not config.use_lora:
            for p in base.parameters():
                p.requires_grad_(True)
        refuse_rescaled_logits(self.causal_lm)
        if config.gradient_checkpointing and config.fsdp:  # replicated: hidden() checkpoints (prefix.py)
            self.causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the policy has no trainable parameters; check use_lora / lora_target_modules")
        self.dist.broadcast_parameters(self.params)
        self.fsdp: Any = None
        if config.fsdp:
            from .fsdp import FSDPPolicy

            self.fsdp = FSDPPolicy(self.causal_lm, self.dist, pad_id=self.pad_id)
            self.params = self.fsdp.params

    def _with_adapters(self, base: Any) -> Any:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(base, PeftModel):
            return base
        cfg = self.config
        layers = None
        if cfg.lora_layers is not None:  # the last N decoder layers: the backward pass stops below them
            n = int(getattr(base.config, "num_hidden_layers", 0))
            if cfg.lora_layers > n:
                raise ConfigError(f"lora_layers={cfg.lora_layers} but the model has {n} decoder layers; use at most "
                                  f"{n}, or leave it out to adapt every layer")
            layers = list(range(n - cfg.lora_layers, n))
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM",
                          layers_to_transform=layers)
        try:
            # Injects the adapters into `base` in place: the engine, which holds `base`, samples with them.
            with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                return get_peft_model(base, lora)
        except ValueError as e:
            raise ConfigError(f"LoRA could not be applied: {e}; set lora_target_modules to module names of this "
                              "model (e.g. q_proj, v_proj)") from e

    # ------------------------------------------------------------------ forward
    @property
    def causal_lm(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def head(self) -> Any:
        """The model's own LM head module (its bias and adapters included)."""
        return self.causal_lm.get_output_embeddings()

    def can_share_prefix(self) -> bool:
        return self.fsdp is None

    def collate(self, mb: list[Sample], *, share: bool = True) -> Any:
        """One micro-batch as tensors; around the prompts' common prefix when that saves compute."""
        if share and self.can_share_prefix() and len(mb) > 1 and common_prefix_len(mb) >= MIN_SHARED_PREFIX:
            return collate_shared_prefix(mb, self.pad_id, self.device)
        return collate(mb, self.pad_id, self.device)

    def hidden(self, b: Any) -> torch.Tensor:
        """Final hidden states. With ``gradient_checkpointing`` (and gradients on), the decoder layers keep only
        their inputs and are recomputed in the backward pass; the shared prefix's forward is not checkpointed."""
        decoder = self.causal_lm.base_model
        ckpt = self.config.gradient_checkpointing and torch.is_grad_enabled()
        if isinstance(b, PrefixBatch):
            return shared_prefix_hidden(decoder, b, checkpoint=ckpt)
        with checkpointed_layers(decoder, ckpt):
            return decoder(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state

    def logprobs(self, b: Any, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Hidden states, log-probs of the loss tokens at ``temperature``, and their entropies."""
        from .losses import token_logprobs

        cfg = self.config
        if self.fsdp is not None:
            return self.fsdp.forward(b, temperature, cfg.logprob_chunk_size)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"):
            hidden = self.hidden(b)
            logp, ent = token_logprobs(hidden[b.rows, b.positions], self.head(), b.targets, temperature=temperature,
                                       chunk_size=cfg.logprob_chunk_size, with_entropy=True)
        return hidden, logp.float(), ent.float() if ent is not None else None

    # ------------------------------------------------------------------ optimisation
    def optimizer(self, lr: float | None = None) -> torch.optim.Optimizer:
        cfg = self.config
        # The fused kernel is several times faster than torch's default per-tensor loop on CPU; FSDP's sharded
        # (DTensor) parameters take the multi-tensor path instead.
        impl = {"foreach": True} if self.fsdp is not None else {"fused": True}
        return torch.optim.AdamW(self.params, lr=lr or cfg.learning_rate, betas=cfg.adam_betas,
                                 weight_decay=cfg.weight_decay, **impl)

    def reduce_and_clip(self) -> float:
        """All-reduce the gradients over processes and clip their global norm; return the norm before clipping."""
        self.dist.all_reduce_gradients(self.params)
        return self.dist.clip_grad_norm(self.params, self.config.max_grad_norm)

    def before_update(self) -> None:
        """The weights are about to change: free the engine's decode snapshot and caches (rebuilt after the update
        anyway) so the update's peak memory does not include them."""
        self.chat_model.engine.release_caches()
        trim_heap()

    def after_update(self) -> None:
        """The weights changed: drop the engine's cached prompt keys/values; whole weights again for sampling."""
        self.chat_model.engine.clear_prefix_cache()
        trim_heap()  # the gradients were just freed
        if self.fsdp is not None:
            self.fsdp.gather()

    # ------------------------------------------------------------------ checkpoints
    def writer(self, optimizer: torch.optim.Optimizer) -> Callable[[Path], dict[str, Any]]:
        """Called on every process (replica check, FSDP gather); returns what the main process writes."""
        replicas = None
        if self.dist.distributed and self.fsdp is None:
            from ..errors import TrainingError

            replicas = self.dist.replica_digests((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
            if len(set(replicas)) > 1:
                raise TrainingError(f"the processes hold different weights (digests {replicas}); data-parallel "
                                    "replicas must stay identical - this is a bug, please report it")
        full = self.fsdp.full_state(optimizer) if self.fsdp is not None else None  # collective

        def write(tmp: Path) -> dict[str, Any]:
            from safetensors.torch import save_file

            if self.is_lora:
                self.model.save_pretrained(tmp)
            else:
                self.model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": full[0]} if full else {}))
                self.tokenizer.save_pretrained(tmp)
            if full is not None:
                from .fsdp import optimizer_state_to_files

                ot, om = optimizer_state_to_files(full[1])
            else:
                ot, om = optimizer_tensors(optimizer)
            own = state_dir(tmp)  # not beside the weights: loaders glob *.safetensors there
            save_file(ot, str(own / "optimizer.safetensors"))
            (own / "optimizer.json").write_text(json.dumps(om), encoding="utf-8")
            return {"is_lora": self.is_lora, "fsdp": self.fsdp is not None, "replicas": replicas,
                    "base_model": self.config.model}
        return write

    def load(self, path: Path, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
        """Restore the weights and the optimiser from a checkpoint folder written by :meth:`writer`."""
        from safetensors.torch import load_file

        if state.get("is_lora") != self.is_lora:
            raise ConfigError(f"checkpoint {str(path)!r} has is_lora={state.get('is_lora')} but this run has "
                              f"use_lora={self.is_lora}; resume with the same config")
        if state.get("fsdp", False) and self.fsdp is None:
            raise ConfigError(f"checkpoint {str(path)!r} was written with fsdp: true (optimiser state by parameter "
                              "name); resume it with fsdp: true")
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, load_file(str(path / "adapter_model.safetensors")))
        else:
            sd = _read_weights(path)
            if self.fsdp is not None:
                from .fsdp import optimizer_state_from_files

                self.fsdp.load_full_state(sd, optimizer, optimizer_state_from_files(
                    load_file(str(state_file(path, "optimizer.safetensors"))),
                    json.loads(state_file(path, "optimizer.json").read_text(encoding="utf-8"))))
            else:
                _load_full(self.model, sd, path)
        if self.fsdp is None:
            load_optimizer(optimizer, load_file(str(state_file(path, "optimizer.safetensors"))),
                           json.loads(state_file(path, "optimizer.json").read_text(encoding="utf-8")))
            self.dist.broadcast_parameters(self.params)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise ConfigError(f"checkpoint {str(path)!r} has no model*.safetensors")
    sd = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                sd[k] = h.get_tensor(k)
    return sd


def _load_full(model: Any, sd: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = model.load_state_dict(sd, strict=False)
    bad = [k for k in missing if "lm_head" not in k]  # tied heads are not saved
    if bad or unexpected:
        raise ConfigError(f"checkpoint {str(path)!r} does not match the model: missing {bad[:5]}, "
                          f"unexpected {unexpected[:5]}")


def init_weights_from(chat_model: Any, run_dir: str, model_spec: str) -> Path:
    """Load the last checkpoint of run folder ``run_dir`` into ``chat_model``'s weights, in place.

    A LoRA checkpoint is merged into the base weights (``W + B A * alpha / r``), so the new run starts from the
    tuned model and trains its own adapter (or all weights) on top; a full checkpoint's weights replace the model's.
    The checkpoint's run must have used the same ``model``. Returns the checkpoint folder."""
    run = Path(run_dir)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise ConfigError(f"init_from {run_dir!r}: no checkpoint in {str(run / 'checkpoints')!r}; point it at a "
                          "run folder written by `stateset-agents train`")
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    if "is_lora" not in state:
        raise ConfigError(f"init_from {run_dir!r}: {ckpt.name} holds no weights (a {state.get('format')!r} run); "
                          "point it at an SFT or GRPO run")
    import yaml

    their = (yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")) or {}).get("model")
    if their != model_spec:
        raise ConfigError(f"init_from {run_dir!r} trained model {their!r}, but this run's model is "
                          f"{model_spec!r}; set model: {their}")
    base = chat_model.model
    if state["is_lora"]:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            merged = PeftModel.from_pretrained(base, str(ckpt)).merge_and_unload()
        if merged is not base:
            raise ConfigError("peft returned a new model object when merging the adapter; this peft version is not "
                              "supported for init_from (the engine holds the original weights)")
    else:
        _load_full(base, _read_weights(ckpt), ckpt)
    chat_model.engine.clear_prefix_cache()
    return ckpt
