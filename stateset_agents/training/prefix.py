"""Shared-prefix forward: samples whose prompts start with the same tokens run that prefix through the decoder once.

Every prompt of a pack starts with the same system message (strategy, instructions, tools: several hundred tokens).
The episodes of a group do not, in general, share more than that: each draws its user's opening line from the
scenario's ``opening`` list (with its own seed), so their first prompts differ from the user's first message on
when the scenario has several openings (and agree entirely only when it has one). The plain forward computes the
common prefix once per sample. Here the longest common prefix of a micro-batch runs once (with gradients); its per-layer
keys and values are shared by every sample's tail (the rest of its prompt, then its completion), which runs as a
continuation with the prefix as its KV cache. Causal attention makes every hidden state identical to the plain
forward's, and autograd sums the tails' gradients through the shared keys and values, so the loss and its
gradient are the same up to floating-point rounding; only the repeated prefix compute (and its activation memory)
is gone.

Used by the trainer for every micro-batch whose common prefix is at least :data:`MIN_SHARED_PREFIX` tokens (the
trainer orders samples by prompt so that micro-batches share as much as possible); not with gradient
checkpointing (transformers turns the KV cache off there), GAE's value head, or FSDP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..models._compat import cache_kwarg
from ..models.kv_cache import common_prefix_len as _token_prefix_len
from .batch import Batch, Sample, collate

__all__ = ["MIN_SHARED_PREFIX", "PrefixBatch", "collate_shared_prefix", "common_prefix_len", "shared_prefix_hidden"]

#: below this many common tokens the shared forward is not worth its second decoder call
MIN_SHARED_PREFIX = 16


@dataclass
class PrefixBatch(Batch):
    """A :class:`Batch` of samples with a common prefix: ``prompt_ids`` ``[1, P]`` is the prefix; ``input_ids``
    holds each sample's tail (the rest of its prompt, then its completion) ``[K, C]`` (right-padded),
    ``attention_mask`` covers prefix + tails ``[K, P + C]``, and ``positions`` index the ``[K, C]`` grid of hidden
    states that predict completion tokens."""

    prompt_ids: torch.Tensor | None = None


def common_prefix_len(samples: Sequence[Sample]) -> int:
    """Length of the longest token prefix that every sample's prompt starts with."""
    return _token_prefix_len([s.input_ids[:s.completion_start] for s in samples])


def collate_shared_prefix(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu") -> PrefixBatch:
    """Collate samples around their prompts' longest common prefix (raises ValueError when it is empty)."""
    p = common_prefix_len(samples)
    if p < 1:
        raise ValueError("collate_shared_prefix needs samples whose prompts share a non-empty prefix")
    prefix = samples[0].input_ids[:p]
    # the plain collate gives the per-token fields; then re-index positions into the tail grid: full position t
    # (which predicts token t + 1) is column t - (p - 1), column 0 being the prefix's last hidden state
    flat = collate(samples, pad_id, device)
    width = max(len(s.input_ids) - p for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), p + width), dtype=torch.long)
    mask[:, :p] = 1
    for r, s in enumerate(samples):
        n = len(s.input_ids) - p
        ids[r, :n] = torch.tensor(s.input_ids[p:])
        mask[r, p:p + n] = 1
    return PrefixBatch(
        input_ids=ids.to(device), attention_mask=mask.to(device), rows=flat.rows,
        positions=flat.positions - (p - 1), targets=flat.targets, old_logprobs=flat.old_logprobs,
        advantages=flat.advantages, weights=flat.weights, ref_logprobs=flat.ref_logprobs,
        value_positions=flat.value_positions, returns=flat.returns,
        prompt_ids=torch.tensor([prefix], dtype=torch.long, device=device),
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
