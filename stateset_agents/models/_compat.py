"""transformers renamed the KV-cache argument of ``forward`` from ``past_key_values`` to ``cache`` (5.24; the old
name warns and goes away in 5.40). Our forwards pass a ``DynamicCache`` that the model fills in place, so only the
keyword differs; this picks the one the installed model class takes."""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["cache_kwarg", "logits_kwarg"]


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
