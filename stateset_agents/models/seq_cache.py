"""The engine's conversation cache: the keys and values of finished requests, reused by a later prompt that
extends one (the next turn of the same conversation).

A multi-turn episode sends the whole conversation again every agent turn; the shared-prefix cache (kv_cache.py)
covers only what every prompt of a pack shares (the system message), so each turn re-prefilled the episode's own
history. Here, when a request finishes, its row's keys and values (its prompt and every completion token fed back)
are kept, up to ``max_tokens`` positions in all (oldest dropped first). A new prompt that starts with a kept
sequence for at least ``min_tokens`` tokens (leaving one to feed) takes that entry: only the rest of the prompt (the
user's reply or the tool result, and the chat template around it) is prefilled, on top of the kept cache. The
match is on token ids, so a completion the chat template re-tokenises differently is reused up to where the ids
agree. Every entry is dropped when the weights change (the engine clears the cache with its prefix cache and checks
a parameter fingerprint). Hidden states equal a full prefill's up to floating-point rounding (causal attention).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from transformers import DynamicCache

__all__ = ["SequenceCache"]


class SequenceCache:
    """Finished sequences' per-layer keys and values, each ``[1, heads, T, dim]`` (module docs)."""

    def __init__(self, max_tokens: int = 65536, min_tokens: int = 32) -> None:
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self._entries: OrderedDict[int, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._tokens = 0
        self._next = 0
        self.hits = self.tokens_reused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._tokens = 0

    def put(self, ids: list[int], cache: Any, mask: torch.Tensor, row: int) -> None:
        """Keep row ``row`` of a batch cache (its unpadded positions, ``mask[row]``) as the sequence ``ids``."""
        keep = mask[row].bool().to(cache.layers[0].keys.device)
        if int(keep.sum()) != len(ids) or len(ids) > self.max_tokens:
            return
        kv = [(layer.keys[row:row + 1, :, keep].clone(), layer.values[row:row + 1, :, keep].clone())
              for layer in cache.layers]
        self._entries[self._next] = (list(ids), kv)
        self._next += 1
        self._tokens += len(ids)
        while self._tokens > self.max_tokens and self._entries:
            _, (old, _) = self._entries.popitem(last=False)
            self._tokens -= len(old)

    def take(self, prompt: list[int]) -> tuple[int, Any] | None:
        """The longest kept sequence ``prompt`` extends, removed from the cache: (positions reused, a DynamicCache
        holding them); None when none covers ``min_tokens`` tokens."""
        best, best_n = None, self.min_tokens - 1
        limit = len(prompt) - 1
        for key, (ids, _) in self._entries.items():
            n = 0
            m = min(len(ids), limit)
            while n < m and ids[n] == prompt[n]:
                n += 1
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None
        ids, kv = self._entries.pop(best)
        self._tokens -= len(ids)
        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k[:, :, :best_n], v[:, :, :best_n], i)
        self.hits += 1
        self.tokens_reused += best_n
        return best_n, cache
