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
trainer orders samples by prompt so that micro-batches share as much as possible); not with GAE's value head or
FSDP.

With ``gradient_checkpointing`` the tail's decoder layers run under activation checkpointing
(:func:`checkpointed_layers`): each layer keeps only its input for the backward pass and is recomputed there, so
the update's activation memory is about one layer's instead of all of them. The prefix is forwarded once without
checkpointing (one row; it writes the cache) and the tail reads its keys and values from a :class:`_PrefixCache`
that stores nothing, so a layer recomputed in the backward pass attends to exactly what it attended to in the
forward. (transformers' own checkpointing drops the cache argument of a checkpointed layer, which would cut the
tail off from its prefix; it is not used here.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..models._compat import cache_kwarg
from ..models.kv_cache import common_prefix_len as _token_prefix_len
from .batch import Batch, Sample, collate

__all__ = ["MIN_SHARED_PREFIX", "PrefixBatch", "checkpointed_layers", "collate_shared_prefix", "common_prefix_len",
           "shared_prefix_hidden"]

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


def _decoder_layers(decoder: Any) -> list[torch.nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in decoder.modules() if isinstance(m, GradientCheckpointingLayer)]


@contextmanager
def checkpointed_layers(decoder: Any, enabled: bool = True) -> Iterator[None]:
    """Within the block, every decoder layer of ``decoder`` runs under ``torch.utils.checkpoint`` (non-reentrant):
    it saves its inputs only and is recomputed in the backward pass. Layers whose inputs and weights need no
    gradient (below ``lora_layers``) save nothing either way. The layers' own (transformers) checkpointing is off
    inside the block, so a layer is never checkpointed twice; nothing is left changed after it."""
    if not enabled:
        yield
        return
    from torch.utils.checkpoint import checkpoint

    layers = _decoder_layers(decoder)
    with _transformers_checkpointing_off(layers):
        for m in layers:
            forward = type(m).forward.__get__(m)
            m.forward = lambda *a, _f=forward, **k: checkpoint(_f, *a, use_reentrant=False, **k)
        try:
            yield
        finally:
            for m in layers:
                del m.forward


@contextmanager
def _transformers_checkpointing_off(layers: list[torch.nn.Module]) -> Iterator[None]:
    """transformers' own layer checkpointing off for the block (it drops the cache argument, and a replay of a
    layer that writes the cache would write it twice); each layer's setting restored after."""
    saved = [m.gradient_checkpointing for m in layers]
    for m in layers:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m, was in zip(layers, saved, strict=True):
            m.gradient_checkpointing = was


@functools.cache
def _prefix_cache_class() -> type:
    from transformers import DynamicCache

    class _PrefixCache(DynamicCache):
        """Filled by the prefix forward; then (``frozen``) every layer's update returns prefix + new states and
        stores nothing, so a recomputed layer sees the cache the forward saw."""

        frozen = False

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.frozen:
                return super().update(key_states, value_states, layer_idx, *args, **kwargs)
            layer = self.layers[layer_idx]
            return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    return _PrefixCache


def shared_prefix_hidden(decoder: Any, b: PrefixBatch, *, checkpoint: bool = False) -> torch.Tensor:
    """``[K, C, H]``: for each completion row, the final hidden states that predict its tokens (position ``j``
    predicts completion token ``j``: the prompt's last state for ``j = 0``, the completion's ``j - 1`` after).
    ``checkpoint``: the tail's layers under activation checkpointing (see the module docs)."""
    assert b.prompt_ids is not None
    k, c = b.input_ids.shape
    p = b.prompt_ids.shape[1]
    device = b.input_ids.device
    cache = _prefix_cache_class()(config=getattr(decoder, "config", None))
    with _transformers_checkpointing_off(_decoder_layers(decoder)):
        head = decoder(input_ids=b.prompt_ids, attention_mask=torch.ones_like(b.prompt_ids), use_cache=True,
                       **cache_kwarg(decoder, cache))
    for layer in cache.layers:  # one prompt, K continuations: views, no copies
        layer.keys = layer.keys.expand(k, -1, -1, -1)
        layer.values = layer.values.expand(k, -1, -1, -1)
    cache.frozen = True
    positions = torch.arange(p, p + c, device=device)
    with checkpointed_layers(decoder, checkpoint):
        tail = decoder(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=positions.expand(k, c),
                       cache_position=positions, use_cache=True, **cache_kwarg(decoder, cache))
    last = head.last_hidden_state[:, -1:, :].expand(k, 1, -1)
    return torch.cat([last, tail.last_hidden_state[:, :-1, :]], dim=1)
