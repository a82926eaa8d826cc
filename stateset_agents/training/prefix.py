"""Shared-prompt forward: samples that share their prompt run it through the decoder once.

The ``group_size`` episodes of a scenario see the same first prompt (system message + the user's opening), so
their first agent turns are ``prompt + completion_i`` with one prompt. The plain forward computes that prompt
once per sample. Here the prompt runs once (with gradients); its per-layer keys and values are shared by every
completion, which runs as a continuation with the prompt as its KV cache. Causal attention makes every hidden
state identical to the plain forward's, and autograd sums the completions' gradients through the shared keys
and values, so the loss and its gradient are the same up to floating-point rounding; only the repeated prompt
compute is gone.

Used by the trainer when a micro-batch is one prompt group (see :func:`group_by_prompt`); not with gradient
checkpointing (transformers turns the KV cache off there), GAE's value head, or FSDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models._compat import cache_kwarg
from .batch import Batch, Sample, collate

__all__ = ["PrefixBatch", "collate_shared_prefix", "group_by_prompt", "shared_prefix_hidden"]


@dataclass
class PrefixBatch(Batch):
    """A :class:`Batch` of samples with one prompt: ``prompt_ids`` ``[1, P]``; ``input_ids`` holds only the
    completions ``[K, C]`` (right-padded), ``attention_mask`` covers prompt + completions ``[K, P + C]``, and
    ``positions`` index the ``[K, C]`` grid of hidden states that predict completion tokens."""

    prompt_ids: torch.Tensor | None = None


def group_by_prompt(samples: Sequence[Sample], max_size: int) -> tuple[list[list[Sample]], list[Sample]]:
    """Split samples into groups of at least two with identical prompts (at most ``max_size`` each) and the
    rest (prompts seen once)."""
    by_prompt: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        by_prompt.setdefault(tuple(s.input_ids[:s.completion_start]), []).append(s)
    groups: list[list[Sample]] = []
    rest: list[Sample] = []
    for members in by_prompt.values():
        chunks = [members[i:i + max_size] for i in range(0, len(members), max_size)]
        for chunk in chunks:
            if len(chunk) >= 2:
                groups.append(chunk)
            else:
                rest.extend(chunk)
    return groups, rest


def collate_shared_prefix(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu") -> PrefixBatch:
    """Collate samples that share one prompt (raises ValueError otherwise)."""
    p = samples[0].completion_start
    prompt = samples[0].input_ids[:p]
    if p < 1 or any(s.completion_start != p or s.input_ids[:p] != prompt for s in samples):
        raise ValueError("collate_shared_prefix needs samples with one common, non-empty prompt")
    # the plain collate gives the per-token fields; then re-index positions into the completion grid
    flat = collate(samples, pad_id, device)
    width = max(s.num_completion for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), p + width), dtype=torch.long)
    mask[:, :p] = 1
    for r, s in enumerate(samples):
        n = s.num_completion
        ids[r, :n] = torch.tensor(s.input_ids[p:])
        mask[r, p:p + n] = 1
    return PrefixBatch(
        input_ids=ids.to(device), attention_mask=mask.to(device), rows=flat.rows,
        positions=flat.positions - (p - 1), targets=flat.targets, old_logprobs=flat.old_logprobs,
        advantages=flat.advantages, weights=flat.weights, ref_logprobs=flat.ref_logprobs,
        value_positions=flat.value_positions, returns=flat.returns,
        prompt_ids=torch.tensor([prompt], dtype=torch.long, device=device),
    )


def shared_prefix_hidden(decoder: Any, b: PrefixBatch) -> torch.Tensor:
    """``[K, C, H]``: for each completion row, the final hidden states that predict its tokens (position ``j``
    predicts completion token ``j``: the prompt's last state for ``j = 0``, the completion's ``j - 1`` after)."""
    from transformers import DynamicCache

    assert b.prompt_ids is not None
    k, c = b.input_ids.shape
    p = b.prompt_ids.shape[1]
    device = b.input_ids.device
    cache = DynamicCache(config=getattr(decoder, "config", None))
    head = decoder(input_ids=b.prompt_ids, attention_mask=torch.ones_like(b.prompt_ids), use_cache=True,
                   **cache_kwarg(decoder, cache))
    for layer in cache.layers:  # one prompt, K continuations: views, no copies
        layer.keys = layer.keys.expand(k, -1, -1, -1)
        layer.values = layer.values.expand(k, -1, -1, -1)
    positions = torch.arange(p, p + c, device=device)
    tail = decoder(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=positions.expand(k, c),
                   cache_position=positions, use_cache=True, **cache_kwarg(decoder, cache))
    last = head.last_hidden_state[:, -1:, :].expand(k, 1, -1)
    return torch.cat([last, tail.last_hidden_state[:, :-1, :]], dim=1)
