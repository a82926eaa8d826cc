"""The engine's KV-cache helpers: shared-prefix detection and caching, append buffers, left padding."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ._compat import cache_kwarg, logits_kwarg

__all__ = ["common_prefix_len"]  # the rest is the engine's own


def common_prefix_len(seqs: Sequence[Sequence[int]], limit: int | None = None) -> int:
    """Length of the longest token prefix shared by every sequence (at most ``limit``). The engine's prefix cache
    and the trainer's shared-prefix forward both use it."""
    first = seqs[0]
    n = len(first) if limit is None else min(limit, len(first))
    for x in seqs[1:]:
        n = min(n, len(x))
        i = 0
        while i < n and x[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return max(n, 0)


def _fingerprint(model: Any) -> torch.Tensor:
    """A few values of every parameter: changes when an optimiser step or a weight load changes the weights."""
    return torch.stack([p.detach().reshape(-1)[:16].float().sum().cpu() for p in model.parameters()])


class _Prefix:
    """Keys and values of a token prefix (batch 1), reused by every prompt that starts with it."""

    def __init__(self, ids: list[int], cache: Any, fingerprint: torch.Tensor) -> None:
        self.ids, self.cache, self.fingerprint = ids, cache, fingerprint

    @classmethod
    def build(cls, model: Any, ids: list[int], device: torch.device) -> _Prefix:
        cache = DynamicCache()
        x = torch.tensor([ids], dtype=torch.long, device=device)
        model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=True, **cache_kwarg(model, cache),
              **logits_kwarg(model))
        return cls(list(ids), cache, _fingerprint(model))

    def valid(self, model: Any) -> bool:
        return torch.equal(self.fingerprint, _fingerprint(model))

    def expanded(self, n: int) -> Any:
        """A fresh cache holding the prefix for ``n`` rows (views; the forward's append copies them)."""
        cache = copy.copy(self.cache)
        cache.layers = []
        for layer in self.cache.layers:
            twin = copy.copy(layer)
            twin.keys = layer.keys.expand(n, -1, -1, -1)
            twin.values = layer.values.expand(n, -1, -1, -1)
            cache.layers.append(twin)
        return cache


def _buffered(layer: Any, spare: int = 64) -> None:
    """Turn a cache layer into one that appends into a preallocated buffer instead of ``torch.cat``
    (which copies the whole cache on every decode step)."""
    keys, values = layer.keys, layer.values
    b, h, t, d = keys.shape
    layer._kbuf = keys.new_empty((b, h, t + spare, d))
    layer._vbuf = values.new_empty((b, h, t + spare, d))
    layer._kbuf[:, :, :t] = keys
    layer._vbuf[:, :, :t] = values
    layer._len = t
    layer.keys, layer.values = layer._kbuf[:, :, :t], layer._vbuf[:, :, :t]
    if not isinstance(layer, _BufferedLayer):
        layer.__class__ = _BufferedLayer


def _concat_rows(run: Any, new: Any, width: int, spare: int = 64) -> None:
    """Append the rows of cache layer ``new`` below those of ``run`` (both left-padded to ``width`` positions), in
    place, with one copy of each into a fresh buffer that has ``spare`` room to decode into (the pads are zeros)."""
    keys = run.keys
    b1, h, t1, d = keys.shape
    b2, t2 = new.keys.shape[0], new.keys.shape[2]
    kbuf = keys.new_zeros((b1 + b2, h, width + spare, d))
    vbuf = run.values.new_zeros((b1 + b2, h, width + spare, d))
    kbuf[:b1, :, width - t1:width] = keys
    vbuf[:b1, :, width - t1:width] = run.values
    kbuf[b1:, :, width - t2:width] = new.keys
    vbuf[b1:, :, width - t2:width] = new.values
    run._kbuf, run._vbuf, run._len = kbuf, vbuf, width
    run.keys, run.values = kbuf[:, :, :width], vbuf[:, :, :width]
    if not isinstance(run, _BufferedLayer):
        run.__class__ = _BufferedLayer


class _BufferedLayer(DynamicLayer):
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n, q = self._len, key_states.shape[-2]
        if n + q > self._kbuf.shape[-2]:
            _buffered(self, spare=max(64, n))  # grow geometrically
        self._kbuf[:, :, n:n + q] = key_states
        self._vbuf[:, :, n:n + q] = value_states
        self._len = n + q
        self.keys, self.values = self._kbuf[:, :, :n + q], self._vbuf[:, :, :n + q]
        return self.keys, self.values


def _lpad(x: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - x.shape[-2]
    if missing == 0:
        return x
    pad = torch.zeros((*x.shape[:-2], missing, x.shape[-1]), dtype=x.dtype, device=x.device)
    return torch.cat([pad, x], dim=-2)


def _lpad_mask(m: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - m.shape[1]
    if missing == 0:
        return m
    return torch.cat([torch.zeros((m.shape[0], missing), dtype=m.dtype), m], dim=1)
