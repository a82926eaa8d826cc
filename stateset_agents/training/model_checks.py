"""Models the trainer refuses, each with a one-line reason and fix: logits changed after the LM head (soft-capping,
scaling), and dropout in the training forward (the engine samples without it)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["refuse_dropout", "refuse_rescaled_logits"]


#: config fields through which a transformers forward changes the LM head's output after the head
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logit_soft_cap", "softcap")
_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout")


def refuse_rescaled_logits(lm: Any) -> None:
    """Raise ConfigError when ``lm``'s forward logits differ from ``lm_head(last hidden state)``.

    The loss computes log-probs from the last hidden state through the model's own head in chunks; a forward that
    soft-caps or scales the logits after the head (Gemma 2's ``final_logit_softcapping``, Cohere's
    ``logit_scale``, Granite's ``logits_scaling``) would make them differ from the sampling log-probs, biasing
    every importance ratio silently. Checked on one short probe sequence at setup."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or getattr(lm, "base_model", None) is None:
        raise ConfigError(f"GRPO needs a transformers causal LM with an output embedding; got {type(lm).__name__}")
    device = next(lm.parameters()).device
    ids = (torch.arange(2, 10, device=device) % lm.config.vocab_size).unsqueeze(0)
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        full = lm(input_ids=ids, use_cache=False).logits.float()
        mine = head(lm.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    lm.train(was_training)
    if not torch.allclose(full, mine, rtol=1e-4, atol=1e-4 * float(full.abs().max()) + 1e-6):
        found = {k: getattr(lm.config, k) for k in _LOGIT_TRANSFORMS if getattr(lm.config, k, None) is not None}
        shown = ", ".join(f"{k}={v}" for k, v in found.items()) or "no known config field"
        raise ConfigError(f"{type(lm).__name__} ({shown}): its forward logits differ from its LM head's output "
                          "(soft-capping or scaling after the head), which the GRPO loss does not reproduce; turn "
                          "that off in the model's config.json (e.g. final_logit_softcapping: null) or train "
                          "another model")


def refuse_dropout(lm: Any, cfg: Any) -> None:
    """Raise ConfigError when the training forward would use dropout: the engine samples without it, so the
    importance ratio of the first optimiser pass would not be 1 and the clipped surrogate would be off-policy."""
    if cfg.use_lora and cfg.lora_dropout > 0:
        raise ConfigError(f"lora_dropout={cfg.lora_dropout} makes the training forward differ from the sampling "
                          "forward (rollouts sample without dropout); set lora_dropout: 0")
    found = {k: getattr(lm.config, k) for k in _DROPOUT_FIELDS
             if isinstance(getattr(lm.config, k, None), float) and getattr(lm.config, k) > 0}
    found.update({name: m.p for name, m in lm.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0})
    if found:
        shown = ", ".join(f"{k}={v}" for k, v in list(found.items())[:4])
        raise ConfigError(f"the model uses dropout ({shown}), which makes the training forward differ from the "
                          "sampling forward; set these to 0 in the model's config.json")
