"""transformers renamed the KV-cache argument of ``forward`` from ``past_key_values`` to ``cache`` (5.24; the old
name warns and goes away in 5.40). Our forwards pass a ``DynamicCache`` that the model fills in place, so only the
keyword differs; this picks the one the installed model class takes."""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["cache_kwarg", "logits_kwarg", "native_bf16"]


def _unwrap(model: Any) -> Any:
    while True:
        if hasattr(model, "get_base_model"):  # peft
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "config"):  # DDP and friends
            model = model.module
        else:
            return model


@functools.cache
def _name_for(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (AttributeError, TypeError, ValueError):  # not an nn.Module (a test double): the old name
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kwarg(model: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, whichever ``model.forward`` accepts."""
    return {_name_for(type(_unwrap(model))): cache}


@functools.cache
def _keeps_logits(cls: type) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False


def logits_kwarg(model: Any) -> dict[str, Any]:
    """``{"logits_to_keep": 1}`` where the model supports it: a prefill needs the last position's logits only, and
    the LM head over every prompt position would cost more than the rest of a short prompt's forward."""
    return {"logits_to_keep": 1} if _keeps_logits(type(_unwrap(model))) else {}


def native_bf16(device: str = "cpu") -> bool:
    """Whether bfloat16 matrix products run natively on ``device`` (``auto``: CUDA when present, else the CPU): a
    CUDA GPU that supports bf16, or a CPU with AVX512-BF16 or AMX. Elsewhere (an AVX2-only CPU) torch emulates
    them, many times slower than fp32 (docs/training.md, "The recipe")."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in checks if callable(f))
