"""The batching engine behind HFChatModel: concurrent requests decoded together.

Requests wait in a queue. The engine loop, on one worker thread, before every decode step admits waiting requests
(up to ``max_batch_size`` in flight: prompts left-padded and prefilled in one forward, their KV cache merged into
the running batch's), then runs one forward for the whole batch (left padding aligns every row's end;
``position_ids`` per row), samples each row with its own seeded ``torch.Generator`` (a request's tokens do not
depend on its batch-mates), finishes rows on EOS, a stop string or ``max_new_tokens`` and drops them, trimming
cache columns that are padding in every remaining row. Streaming: ``generate(..., on_token=f)`` calls
``f(token_id, logprob)`` on the caller's loop for every token, in order; a cancelled request leaves at the next step.

Prefix cache: the keys and values of the longest prompt prefix shared by the new prompts and the previous
admission's first (at least ``min_prefix_tokens``; the environment's system message) are computed once and reused;
rows are laid out ``[prefix][padding][rest]`` with the padding masked, the same computation as a full prefill.
Conversation cache: a finished request's keys and values are kept (``conversation_cache_tokens`` positions), and
the next turn of its conversation is prefilled only past them (models/seq_cache.py). Both are dropped when the
weights change (``clear_prefix_cache()`` after an update, a parameter fingerprint checked); see docs/models.md.

Constrained decoding: ``sampling.json_schema`` or ``sampling.grammar`` (Lark) masks the row's logits until it is done.

Log-probs: ``log p(token)`` under the distribution sampled from (logits / ``temperature``, top-p nucleus
renormalised); with ``temperature=0`` (greedy, a point mass) ``log_softmax(logits)`` instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from transformers import DynamicCache

from ._compat import cache_kwarg, logits_kwarg
from .base import SamplingParams
from .fast_decode import DecodeWeights, unsupported_reason
from .grammar import GrammarCompiler, JsonConstraint
from .kv_cache import _buffered, _concat_rows, _fingerprint, _lpad_mask, _Prefix, common_prefix_len
from .requests import EngineStats, GenerationResult, _Request, _set_exception, _set_result, check_finished
from .sampling import _sample_rows
from .seq_cache import SequenceCache

__all__ = ["EngineStats", "GenerationEngine", "GenerationResult"]


class GenerationEngine:
    """Continuous batching over a transformers causal LM with a KV cache.

    Args:
        model: a ``PreTrainedModel`` in eval mode.
        tokenizer: its tokenizer (used to decode for stop strings).
        max_batch_size: most requests decoded together.
        eos_token_ids: token ids that end a completion (kept in ``completion_ids``).
        admit_window: when idle, how long (seconds) to keep collecting a burst of arriving requests before the
            first prefill; a burst stops early as soon as no new request arrived for 2 ms.
        min_prefix_tokens: shortest shared prefix worth caching (see "Prefix cache"); 0 turns the cache off.
        fast_decode: decode with a snapshot of the effective weights (models/fast_decode.py) where the model
            supports it; False always uses the transformers forward.
        precision: the fast path's weights, ``native`` (the model's dtype) or ``int8`` (CPU; the sampling policy
            then differs from the model's own forward: see training/mismatch.py).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 32,
                 eos_token_ids: list[int] | None = None, admit_window: float = 0.02,
                 min_prefix_tokens: int = 64, fast_decode: bool = True, precision: str = "native",
                 conversation_cache_tokens: int = 16384) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.admit_window = admit_window
        self.eos = set(eos_token_ids or [])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self.stats = EngineStats()
        self._waiting: list[_Request] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stateset-engine")
        self._running = False
        # batch state (engine thread only)
        self._active: list[_Request] = []
        self._admitting: list[_Request] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self.min_prefix_tokens = min_prefix_tokens
        self._prefix: _Prefix | None = None
        self._last_prompt: list[int] = []
        self._clear_prefix = threading.Event()
        self._seqs = SequenceCache(max_tokens=conversation_cache_tokens)  # models/seq_cache.py
        self._seqs_fp: torch.Tensor | None = None
        self._grammars: GrammarCompiler | None = None
        self._fast_reason = unsupported_reason(model) if fast_decode else "fast_decode=False"
        self._fast: DecodeWeights | None = None
        self._fast_model = model
        self._fast_fingerprint: torch.Tensor | None = None
        self._weights_changed = threading.Event()
        self.set_precision(precision)

    # ------------------------------------------------------------------ public
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, *,
                       on_token: Callable[[int, float], None] | None = None) -> GenerationResult:
        """Generate one completion. ``on_token``, if given, is called on this event loop with each sampled
        token id and its log-prob as soon as it is sampled (see the module docs)."""
        loop = asyncio.get_running_loop()
        constraint = self._constraint(sampling) if sampling.json_schema is not None or sampling.grammar else None
        g = torch.Generator(device="cpu")
        g.manual_seed(sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        req = _Request(list(prompt_ids), sampling, loop.create_future(), loop, g, on_token=on_token,
                       constraint=constraint)
        with self._lock:
            self._waiting.append(req)
            self.stats.requests += 1
            start = not self._running
            self._running = True
        if start:
            self._executor.submit(self._run)
        self._wake.set()
        return await req.future

    def check_schema(self, schema: dict[str, Any]) -> None:
        """Raise :class:`ConfigError` naming the problem if ``schema`` cannot constrain decoding here."""
        self._constraint(SamplingParams(json_schema=schema))

    def _constraint(self, s: SamplingParams) -> JsonConstraint:
        if self._grammars is None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._grammars = GrammarCompiler(self.tokenizer, vocab_size=vocab, eos_token_ids=sorted(self.eos))
        return self._grammars.constraint_lark(s.grammar) if s.grammar else self._grammars.constraint(s.json_schema)

    @property
    def batch_size(self) -> int:
        """Requests being decoded right now."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Requests queued for admission."""
        return len(self._waiting)

    def clear_prefix_cache(self) -> None:
        """Forget the cached prefix and the fast path's weight snapshot (call after changing the weights);
        takes effect at the next admission."""
        self._clear_prefix.set()
        self._weights_changed.set()

    def release_caches(self) -> bool:
        """Free the decode snapshot, cached prefix and kept conversations now if no request is queued or in flight
        (the trainer calls this before an update: they are rebuilt from the new weights anyway); return whether
        they were freed. Otherwise they are dropped at the next admission, as with :meth:`clear_prefix_cache`."""
        self.clear_prefix_cache()
        deadline = time.perf_counter() + 1.0
        while True:
            with self._lock:
                if self._waiting or self._admitting or any(r.finish is None for r in self._active):
                    return False  # (finished rows are still listed for a moment after their results are set)
                if not self._running:  # the engine thread has left its loop: nothing else touches these
                    self._fast, self._fast_fingerprint = None, None
                    self._prefix, self._last_prompt = None, []
                    self._seqs.clear()
                    return True
            if time.perf_counter() > deadline:  # (the loop exits as soon as it finds nothing to do)
                return False
            time.sleep(0.001)

    def set_precision(self, precision: str) -> None:
        """The fast path's weights from the next admission on: ``native`` or ``int8`` (CPU; needs the fast path)."""
        if precision not in ("native", "bf16", "int8"):
            raise ValueError(f"precision {precision!r} is not one of 'native', 'bf16', 'int8'")
        if precision == "bf16" and self._fast_reason:
            raise ValueError(f"precision 'bf16' needs the fast decode path, which is off: {self._fast_reason}")
        if precision == "int8" and self._fast_reason:
            raise ValueError(f"precision 'int8' needs the fast decode path, which is off: {self._fast_reason}")
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError(f"precision 'int8' runs torch's CPU int8 kernel, but the model is on {self.device}")
        self.precision = precision
        r = self._fast_reason
        self.stats.decode_path = f"transformers ({r})" if r else f"fast-{precision}"
        self._weights_changed.set()  # the snapshot is rebuilt at the new precision

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._waiting and not self._active:
                        self._running = False
                        return
                if not self._active:
                    self._gather_burst()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    self._admit()
                    if self._active:
                        self._decode_step()
                self.stats.busy_seconds += time.perf_counter() - t0
        except BaseException as e:  # fail every pending request with the real error
            with self._lock:
                pending = self._active + self._admitting + self._waiting
                self._active, self._admitting, self._waiting, self._running = [], [], [], False
                self._cache = self._mask = None
            for r in pending:
                r.loop.call_soon_threadsafe(_set_exception, r.future, e)

    def _gather_burst(self) -> None:
        """When idle, wait while requests keep arriving (up to ``admit_window`` s), so a burst of concurrent
        calls is prefilled in one forward instead of one by one."""
        deadline = time.perf_counter() + self.admit_window
        seen = -1
        while time.perf_counter() < deadline:
            with self._lock:
                n = len(self._waiting)
            if n == seen or n >= self.max_batch_size:
                return
            seen = n
            time.sleep(0.002)

    def _admit(self) -> None:
        with self._lock:
            room = self.max_batch_size - len(self._active)
            new, self._waiting = self._waiting[:room], self._waiting[room:]
            self._admitting = new
        if not new:
            return
        self.stats.prefills += 1
        self._refresh_snapshot()
        if self._clear_prefix.is_set():  # (the prefix itself is dropped in _shared_prefix)
            self._seqs.clear()
        if len(self._seqs):  # next turns of finished conversations: prefill only what is new, one by one
            if not torch.equal(self._seqs_fp, _fingerprint(self.model)):
                self._seqs.clear()
            rest = []
            for r in new:
                hit = self._seqs.take(r.prompt_ids)  # constrained ones too: a mask acts on sampled tokens only
                if hit is None:
                    rest.append(r)
                else:
                    self.stats.conversation_hits += 1
                    self.stats.conversation_tokens_reused += hit[0]
                    self._prefill([r], hit[1], hit[0])
            new = rest
        if new:
            prefix = self._shared_prefix(new)
            cache = prefix.expanded(len(new)) if prefix is not None else DynamicCache()
            p = len(prefix.ids) if prefix is not None else 0
            if prefix is not None:
                self.stats.prefix_hits += 1
                self.stats.prefix_tokens_reused += p * len(new)
            self._prefill(new, cache, p)
        self._admitting = []

    def _prefill(self, new: list[_Request], cache: Any, p: int) -> None:
        """Prefill ``new`` on ``cache`` (holding their first ``p`` positions), merge them into the batch, sample."""
        width = max(len(r.prompt_ids) - p for r in new)
        ids = torch.full((len(new), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for i, r in enumerate(new):
            n = len(r.prompt_ids) - p
            ids[i, width - n:] = torch.tensor(r.prompt_ids[p:], dtype=torch.long)
            mask[i, p + width - n:] = 1
            r.pos = len(r.prompt_ids)
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
        if self._fast is not None:
            logits = self._fast.prefill(ids.to(self.device), pos_ids.to(self.device), cache,
                                        mask.to(self.device)).float()
        else:
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=pos_ids.to(self.device), use_cache=True, **cache_kwarg(self.model, cache),
                             **logits_kwarg(self.model))
            logits = out.logits[:, -1, :].float()
        self._merge(new, cache, mask)  # the model filled `cache` in place
        self._sample_and_finish(new, logits)

    def _refresh_snapshot(self) -> None:
        """(Re)build the fast path's weight snapshot when the weights changed since it was taken."""
        if self._fast_model is not self.model:  # a different model object was put in (tests, hot swaps)
            self._fast_model, self._fast = self.model, None
            self._fast_reason = unsupported_reason(self.model) if self._fast_reason != "fast_decode=False" \
                else self._fast_reason
            self.stats.decode_path = (f"transformers ({self._fast_reason})" if self._fast_reason
                                      else f"fast-{self.precision}")
        if self._fast_reason:
            self._fast = None
            self.stats.decode_kernel = ""
            return
        stale = self._fast is None or self._weights_changed.is_set()
        if not stale:
            stale = not torch.equal(self._fast_fingerprint, _fingerprint(self.model))
        if stale:
            self._weights_changed.clear()
            self._fast = None  # free the old copy before building the new one
            self._fast = DecodeWeights(self.model, self.precision)
            self._fast_fingerprint = _fingerprint(self.model)
            self.stats.decode_snapshots += 1
            self.stats.decode_kernel = self._fast.kernel

    def _shared_prefix(self, new: list[_Request]) -> _Prefix | None:
        """The cached prefix every new prompt extends, built anew when the prompts share a longer one with the
        previous admission than the cache holds (see "Prefix cache" in the module docs)."""
        if self._clear_prefix.is_set():
            self._clear_prefix.clear()
            self._prefix = None
        if self.min_prefix_tokens <= 0:
            return None
        prompts = [r.prompt_ids for r in new]
        cached = self._prefix
        if cached is not None and not cached.valid(self.model):
            cached = self._prefix = None
        limit = min(len(x) for x in prompts) - 1  # every row keeps at least one token to feed
        p = common_prefix_len(prompts + ([self._last_prompt] if self._last_prompt else []), limit)
        self._last_prompt = list(prompts[0])
        fits = cached is not None and len(cached.ids) <= limit and all(
            x[:len(cached.ids)] == cached.ids for x in prompts)
        if p < self.min_prefix_tokens or (fits and p <= len(cached.ids)):
            return cached if fits else None
        self._prefix = _Prefix.build(self.model, prompts[0][:p], self.device)
        self.stats.prefix_builds += 1
        return self._prefix

    def _merge(self, new: list[_Request], cache: Any, mask: torch.Tensor) -> None:
        if not self._active:
            self._active, self._cache, self._mask = list(new), cache, mask
            for layer in self._cache.layers:
                _buffered(layer)
            return
        t_run, t_new = self._mask.shape[1], mask.shape[1]
        width = max(t_run, t_new)
        for layer_run, layer_new in zip(self._cache.layers, cache.layers, strict=True):
            _concat_rows(layer_run, layer_new, width)  # one copy of each side into the new buffer
        self._mask = torch.cat([_lpad_mask(self._mask, width), _lpad_mask(mask, width)], dim=0)
        self._active.extend(new)

    def _decode_step(self) -> None:
        live = [r for r in self._active if r.finish is None]
        assert len(live) == len(self._active)
        b = len(self._active)
        self.stats.decode_steps += 1
        self.stats.max_batch = max(self.stats.max_batch, b)
        last = torch.tensor([[r.out_ids[-1]] for r in self._active], dtype=torch.long)
        # r.pos is the position of the token being fed: the prompt length plus the tokens fed before it.
        pos = torch.tensor([[r.pos] for r in self._active], dtype=torch.long)
        for r in self._active:
            r.pos += 1
        self._mask = torch.cat([self._mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
        t = self._mask.shape[1]
        if self._fast is not None:
            logits = self._fast.step(last.to(self.device), pos.to(self.device), self._cache,
                                     self._mask.to(self.device))
            self._sample_and_finish(list(self._active), logits.float())
            return
        out = self.model(input_ids=last.to(self.device), attention_mask=self._mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, **cache_kwarg(self.model, self._cache),
                         cache_position=torch.tensor([t - 1], device=self.device))
        self._sample_and_finish(list(self._active), out.logits[:, -1, :].float())

    def _sample_and_finish(self, reqs: list[_Request], logits: torch.Tensor) -> None:
        for i, r in enumerate(reqs):
            if r.constraint is not None:
                r.constraint.mask(logits[i])
        for r, (token, lp) in zip(reqs, _sample_rows(logits, reqs), strict=True):
            r.out_ids.append(token)
            r.logprobs.append(lp)
            if r.constraint is not None and token not in self.eos:
                r.constraint.advance(token)
            self.stats.new_tokens += 1
            if r.on_token is not None:
                r.loop.call_soon_threadsafe(r.on_token, token, lp)
            check_finished(r, self.eos, self.tokenizer)
        done = [r for r in self._active if r.finish is not None]
        if not done:
            return
        keep = [i for i, r in enumerate(self._active) if r.finish is None]
        for i, r in enumerate(self._active):  # keep finished conversations' keys and values for their next turn
            if r.finish in ("stop", "length") and self._seqs.max_tokens:
                if not len(self._seqs):
                    self._seqs_fp = _fingerprint(self.model)
                self._seqs.put(r.prompt_ids + r.out_ids[:-1], self._cache, self._mask, i)
        for r in done:
            r.loop.call_soon_threadsafe(_set_result, r.future, GenerationResult(
                r.out_ids, r.logprobs, r.text, r.finish or "stop"))
        if not keep:
            self._active, self._cache, self._mask = [], None, None
            return
        idx = torch.tensor(keep, dtype=torch.long)
        self._mask = self._mask[idx]
        # drop columns that are padding in every remaining row
        first = int((self._mask.sum(0) > 0).nonzero()[0])
        self._mask = self._mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys[idx.to(layer.keys.device), :, first:, :]
            layer.values = layer.values[idx.to(layer.values.device), :, first:, :]
            _buffered(layer)
        self._active = [self._active[i] for i in keep]


