"""The batching engine behind HFChatModel: concurrent requests decoded together.

Requests wait in a queue. The engine loop, on one worker thread:

1. admits waiting requests (up to ``max_batch_size`` in flight): their prompts are left-padded to a common
   length and prefilled in one forward; their KV cache is left-padded to the running batch's length (or the
   running batch's to theirs) and concatenated to it along the batch dimension;
2. runs one forward for the whole batch per decode step (each row feeds its last token; a shared
   ``cache_position`` works because left padding aligns every row's end; ``position_ids`` are per row);
3. samples each row with its own ``torch.Generator`` (seeded by the request), so a request's tokens do not
   depend on which others share its batch;
4. finishes rows on EOS, a stop string or ``max_new_tokens``, resolves their futures, drops them from the
   batch, and trims cache columns that are padding in every remaining row.

Streaming: ``generate(..., on_token=f)`` calls ``f(token_id, logprob)`` on the caller's event loop for every
sampled token, in order, before the request's result is set. A request whose awaiting task was cancelled (its
future is cancelled) leaves the batch at the next step instead of decoding to ``max_new_tokens``.

Requests join as others finish: admission happens before every decode step.

Log-probs: for each sampled token, ``log p(token)`` under the distribution it was sampled from: the model's
logits divided by ``temperature``, restricted to the top-p nucleus and renormalised. With ``top_p=1`` this is
``log_softmax(logits / temperature)``. With ``temperature=0`` (greedy) the sampling distribution is a point
mass, so the engine reports ``log_softmax(logits)`` (temperature 1, no top-p) instead.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from ._compat import cache_kwarg
from .base import SamplingParams

__all__ = ["EngineStats", "GenerationEngine", "GenerationResult"]


@dataclass
class GenerationResult:
    completion_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str


@dataclass
class EngineStats:
    requests: int = 0
    new_tokens: int = 0
    decode_steps: int = 0
    prefills: int = 0
    max_batch: int = 0
    busy_seconds: float = 0.0


@dataclass
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    generator: torch.Generator
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    pos: int = 0
    """Position id of the next token fed to the model."""
    finish: str | None = None
    text: str = ""
    on_token: Callable[[int, float], None] | None = None
    """Called on ``loop`` with each sampled token id and its log-prob (streaming)."""


class GenerationEngine:
    """Continuous batching over a transformers causal LM with a KV cache.

    Args:
        model: a ``PreTrainedModel`` in eval mode.
        tokenizer: its tokenizer (used to decode for stop strings).
        max_batch_size: most requests decoded together.
        eos_token_ids: token ids that end a completion (kept in ``completion_ids``).
        admit_window: when idle, how long (seconds) to keep collecting a burst of arriving requests before the
            first prefill; a burst stops early as soon as no new request arrived for 2 ms.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 32,
                 eos_token_ids: list[int] | None = None, admit_window: float = 0.02) -> None:
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

    # ------------------------------------------------------------------ public
    async def generate(self, prompt_ids: list[int], sampling: SamplingParams, *,
                       on_token: Callable[[int, float], None] | None = None) -> GenerationResult:
        """Generate one completion. ``on_token``, if given, is called on this event loop with each sampled
        token id and its log-prob as soon as it is sampled (see the module docs)."""
        loop = asyncio.get_running_loop()
        g = torch.Generator(device="cpu")
        g.manual_seed(sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        req = _Request(list(prompt_ids), sampling, loop.create_future(), loop, g, on_token=on_token)
        with self._lock:
            self._waiting.append(req)
            self.stats.requests += 1
            start = not self._running
            self._running = True
        if start:
            self._executor.submit(self._run)
        self._wake.set()
        return await req.future

    @property
    def batch_size(self) -> int:
        """Requests being decoded right now."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        """Requests queued for admission."""
        return len(self._waiting)

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
        width = max(len(r.prompt_ids) for r in new)
        ids = torch.full((len(new), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
            r.pos = n
        pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos_ids.to(self.device), use_cache=True, **cache_kwarg(self.model, cache))
        logits = out.logits[:, -1, :].float()
        self._merge(new, cache, mask)  # the model filled `cache` in place
        self._admitting = []
        self._sample_and_finish(new, logits)

    def _merge(self, new: list[_Request], cache: Any, mask: torch.Tensor) -> None:
        if not self._active:
            self._active, self._cache, self._mask = list(new), cache, mask
            for layer in self._cache.layers:
                _buffered(layer)
            return
        t_run, t_new = self._mask.shape[1], mask.shape[1]
        width = max(t_run, t_new)
        for layer_run, layer_new in zip(self._cache.layers, cache.layers, strict=True):
            layer_run.keys = torch.cat([_lpad(layer_run.keys, width), _lpad(layer_new.keys, width)], dim=0)
            layer_run.values = torch.cat([_lpad(layer_run.values, width), _lpad(layer_new.values, width)], dim=0)
            _buffered(layer_run)
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
        out = self.model(input_ids=last.to(self.device), attention_mask=self._mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, **cache_kwarg(self.model, self._cache),
                         cache_position=torch.tensor([t - 1], device=self.device))
        self._sample_and_finish(list(self._active), out.logits[:, -1, :].float())

    def _sample_and_finish(self, reqs: list[_Request], logits: torch.Tensor) -> None:
        for r, (token, lp) in zip(reqs, _sample_rows(logits, reqs), strict=True):
            r.out_ids.append(token)
            r.logprobs.append(lp)
            self.stats.new_tokens += 1
            if r.on_token is not None:
                r.loop.call_soon_threadsafe(r.on_token, token, lp)
            self._check_finished(r)
        done = [r for r in self._active if r.finish is not None]
        if not done:
            return
        keep = [i for i, r in enumerate(self._active) if r.finish is None]
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

    def _check_finished(self, r: _Request) -> None:
        if r.future.cancelled():  # nobody waits for it any more: free its row
            r.finish = "cancelled"
            return
        s = r.sampling
        token = r.out_ids[-1]
        if token in self.eos:
            r.finish = "stop"
            r.text = self.tokenizer.decode(r.out_ids[:-1], skip_special_tokens=True)
            return
        if s.stop:
            text = self.tokenizer.decode(r.out_ids, skip_special_tokens=True)
            cut = min((text.find(x) for x in s.stop if x in text), default=-1)
            if cut >= 0:
                r.finish, r.text = "stop", text[:cut]
                return
        if len(r.out_ids) >= s.max_new_tokens:
            r.finish = "length"
            r.text = self.tokenizer.decode(r.out_ids, skip_special_tokens=True)


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


def _sample_rows(logits: torch.Tensor, reqs: list[_Request]) -> list[tuple[int, float]]:
    """Sample every row at once where possible; each row uses its own request's generator (Gumbel-max:
    ``argmax(logp + G)`` with ``G = -log(-log(U))`` draws exactly from ``softmax(logp)``)."""
    temps = torch.tensor([r.sampling.temperature if r.sampling.temperature > 0 else 1.0 for r in reqs],
                         dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits / temps[:, None], -1)
    out: list[tuple[int, float] | None] = [None] * len(reqs)
    rows, noise = [], []
    for i, r in enumerate(reqs):
        s = r.sampling
        if s.temperature == 0:
            token = int(torch.argmax(logits[i]))
            out[i] = (token, float(logp[i, token]))
        elif s.top_p < 1.0:
            out[i] = _sample(logits[i], s, r.generator)
        else:
            rows.append(i)
            noise.append(torch.rand(logits.shape[-1], generator=r.generator))
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        u = torch.stack(noise).to(logits.device)
        tokens = torch.argmax(logp[idx] - torch.log(-torch.log(u)), -1)
        lps = logp[idx].gather(1, tokens[:, None])[:, 0]
        for j, i in enumerate(rows):
            out[i] = (int(tokens[j]), float(lps[j]))
    return out  # type: ignore[return-value]


def _sample(logits: torch.Tensor, s: SamplingParams, g: torch.Generator) -> tuple[int, float]:
    """One token from one row of logits, and its log-prob under the sampling distribution (see module doc)."""
    if s.temperature == 0:
        token = int(torch.argmax(logits))
        return token, float(torch.log_softmax(logits, -1)[token])
    logp = torch.log_softmax(logits / s.temperature, -1)
    if s.top_p < 1.0:
        sorted_lp, order = torch.sort(logp, descending=True)
        cum = sorted_lp.exp().cumsum(-1)
        drop = cum - sorted_lp.exp() >= s.top_p  # keep tokens until the mass before them reaches top_p
        sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(0, order, sorted_lp)
        logp = torch.log_softmax(logp, -1)
    token = int(torch.multinomial(logp.exp(), 1, generator=g))
    return token, float(logp[token])


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)
