"""Where a decode step's time goes, by batch size: the engine's fast path against transformers `generate`.

For each batch size B (default 1, 4, 8, 16, 32): B customer-service chat prompts (the ones of
rollout_throughput.py), 64 new tokens each at temperature 1.0, EOS ignored. The engine is driven on this thread
(the same ``_run`` loop its worker thread runs; no asyncio in the way), so every section of the step can be timed:

  decode step      the engine's ``_decode_step`` itself: input / position / mask tensors, batch bookkeeping
  forward          DecodeWeights.prefill for one token per row, less the sections below (embedding, RoPE,
                   reshapes, residual adds, the attention mask)
  linear           the 30 layers' fused q/k/v, o, fused gate/up and down projections
  lm head          the 49,152 x 576 output projection
  attention        F.scaled_dot_product_attention
  cache update     appending the step's keys and values to the preallocated cache buffers
  norm             the RMSNorms
  sampling         batched log-softmax and Gumbel-max draw (models/sampling.py)
  finish           per-request Python after sampling: stop checks, streaming hooks, dropping finished rows

Times are self times (a section's nested sections are subtracted), summed over the decode steps only (the
admission prefill is left out), reported per step. Timing every section adds a few hundred perf_counter calls per
step; the uninstrumented step time is measured in a separate pass and reported beside it. `generate`'s decode-step
time is (time for 64 new tokens - time for 1) / 63 on the same prompts, so its prefill is left out too.

  .venv/bin/python benchmarks/profile_decode.py [--batch-sizes 1,4,8,16,32] [--repeats 2] [--json out.json]
      [--torch-profiler B]   # also print torch.profiler's op table for the decode steps at batch B
      [--no-compare-kernels] # by default a third arm runs the engine with F.linear (MKL) instead of oneDNN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_kernels import read_once_ms  # noqa: E402

NEW_TOKENS = 64
SECTIONS = ["decode step", "forward", "linear", "lm head", "attention", "cache update", "norm", "sampling", "finish"]


class _Timers:
    """Self time per (root, section): a stack of open sections, each charged its time less its children's."""

    def __init__(self) -> None:
        self.stack: list[list] = []  # [name, start, child_time]
        self.self_time: dict[tuple[str, str], float] = {}
        self.enabled = True

    def wrap(self, name: str, fn, pick=None):
        def inner(*a, **kw):
            if not self.enabled:
                return fn(*a, **kw)
            label = pick(a) if pick else name
            self.stack.append([label, time.perf_counter(), 0.0])
            try:
                return fn(*a, **kw)
            finally:
                label, t0, child = self.stack.pop()
                dt = time.perf_counter() - t0
                root = self.stack[0][0] if self.stack else label
                key = (root, label)
                self.self_time[key] = self.self_time.get(key, 0.0) + dt - child
                if self.stack:
                    self.stack[-1][2] += dt
        return inner


def _instrument(engine, timers: _Timers) -> None:
    import torch.nn.functional as F

    from stateset_agents.models import engine as engine_mod
    from stateset_agents.models import fast_decode, kv_cache

    engine._decode_step = timers.wrap("decode step", engine._decode_step)
    engine._admit = timers.wrap("admit", engine._admit)
    engine_mod._sample_rows = timers.wrap("sampling", engine_mod._sample_rows)
    engine._sample_and_finish = timers.wrap("finish", engine._sample_and_finish)
    lin_call = fast_decode._Linear.__call__
    fast_decode._Linear.__call__ = timers.wrap(
        "linear", lin_call, pick=lambda a: "lm head" if engine._fast is not None and a[0] is engine._fast.lm_head
        else "linear")
    fast_decode.DecodeWeights.prefill = timers.wrap("forward", fast_decode.DecodeWeights.prefill)
    fast_decode.DecodeWeights._norm = timers.wrap("norm", fast_decode.DecodeWeights._norm)
    fast_decode.F = _FProxy(F, timers.wrap("attention", F.scaled_dot_product_attention))
    kv_cache._BufferedLayer.update = timers.wrap("cache update", kv_cache._BufferedLayer.update)


class _FProxy:
    """torch.nn.functional with scaled_dot_product_attention replaced (for fast_decode's `F.` lookups only)."""

    def __init__(self, f, sdpa) -> None:
        self._f, self.scaled_dot_product_attention = f, sdpa

    def __getattr__(self, name):
        return getattr(self._f, name)


def _requests(model, b: int):
    from rollout_throughput import prompts

    from stateset_agents import SamplingParams
    from stateset_agents.models.requests import _Request

    loop = asyncio.new_event_loop()
    out = []
    for i, msgs in enumerate(prompts(b)):
        g = torch.Generator()
        g.manual_seed(i)
        s = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, seed=i)
        out.append(_Request(model.prompt_ids(msgs), s, loop.create_future(), loop, g))
    return out, loop


def _drive(model, b: int) -> tuple[float, int, list]:
    """Run B requests to completion on this thread; return (seconds, decode steps, requests)."""
    eng = model.engine
    reqs, loop = _requests(model, b)
    steps0 = eng.stats.decode_steps
    with eng._lock:
        eng._waiting.extend(reqs)
        eng._running = True
    t0 = time.perf_counter()
    eng._run()
    dt = time.perf_counter() - t0
    loop.close()
    assert all(len(r.out_ids) == NEW_TOKENS for r in reqs), "a request ended early"
    return dt, eng.stats.decode_steps - steps0, reqs


def run_engine(model, b: int, timers: _Timers) -> dict:
    eng = model.engine
    _drive(model, b)  # warm-up at this batch size
    # uninstrumented pass: time each decode step alone
    timers.enabled = False
    step_times: list[float] = []
    plain = eng._decode_step

    def timed():
        t = time.perf_counter()
        plain()
        step_times.append(time.perf_counter() - t)
    eng._decode_step = timed
    total, steps, _ = _drive(model, b)
    eng._decode_step = plain
    # instrumented pass
    timers.enabled = True
    timers.self_time.clear()
    _, isteps, _ = _drive(model, b)
    per = {s: 1000 * timers.self_time.get(("decode step", s), 0.0) / isteps for s in SECTIONS}
    return {"decode_step_ms_median": 1000 * statistics.median(step_times),
            "decode_step_ms_mean": 1000 * statistics.fmean(step_times), "decode_steps": steps,
            "seconds_with_prefill": total, "instrumented_ms_per_step": sum(per.values()),
            "sections_ms_per_step": per}


def run_generate(model, b: int) -> dict:
    from rollout_throughput import prompts

    tok, m = model.tokenizer, model.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([x.to_openai() for x in p], tokenize=False, add_generation_prompt=True)
             for p in prompts(b)]
    enc = tok(texts, return_tensors="pt", padding=True)

    def gen(n: int) -> float:
        torch.manual_seed(0)
        t = time.perf_counter()
        with torch.inference_mode():
            out = m.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=True, temperature=1.0,
                             top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id)
        assert out.shape[1] - enc["input_ids"].shape[1] == n
        return time.perf_counter() - t
    gen(4)  # warm-up
    t1, t64 = gen(1), gen(NEW_TOKENS)
    return {"decode_step_ms": 1000 * (t64 - t1) / (NEW_TOKENS - 1), "seconds_64": t64, "seconds_1": t1}


def torch_profile(model, b: int) -> str:
    """torch.profiler's op table over the decode steps of one run at batch ``b`` (profiling starts at the first
    decode step, so the admission prefill is left out)."""
    from torch.profiler import ProfilerActivity, profile

    eng = model.engine
    plain = eng._decode_step
    prof = profile(activities=[ProfilerActivity.CPU])

    def step():
        if prof.profiler is None:
            prof.start()
        plain()
    _drive(model, b)  # warm-up
    eng._decode_step = step
    _drive(model, b)
    prof.stop()
    eng._decode_step = plain
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--torch-profiler", type=int, default=0, metavar="B")
    ap.add_argument("--no-compare-kernels", dest="compare_kernels", action="store_false",
                    help="skip the engine arm with F.linear (MKL) instead of oneDNN")
    a = ap.parse_args()
    try:
        sizes = [int(x) for x in a.batch_sizes.split(",")]
    except ValueError:
        sys.exit(f"--batch-sizes {a.batch_sizes!r} is not a comma-separated list of integers; e.g. 1,4,8")
    if a.repeats < 1 or not sizes or min(sizes) < 1:
        sys.exit(f"--repeats {a.repeats} and --batch-sizes {a.batch_sizes!r} must be >= 1")

    from stateset_agents.models import default_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = default_model(max_batch_size=max(sizes))
    eng = model.engine
    eng.eos = set()
    eng.admit_window = 0.0  # all requests are queued before the loop starts
    _drive(model, 1)  # builds the decode snapshot
    assert eng._fast is not None, f"the fast path is off: {eng.stats.decode_path}"
    nbytes = eng._fast.nbytes
    timers = _Timers()
    _instrument(eng, timers)

    from stateset_agents.models import fast_decode

    onednn = fast_decode._onednn_linear_ok()
    arms = ["engine", "engine_mkl", "generate"] if onednn and a.compare_kernels else ["engine", "generate"]
    res: dict[int, dict] = {b: {m: [] for m in arms} for b in sizes}
    for rep in range(a.repeats):
        for b in sizes:
            for method in (arms if rep % 2 == 0 else arms[::-1]):
                if method == "generate":
                    r = run_generate(model, b)
                else:  # the snapshot is rebuilt with the kernel at the next admission (run_engine's warm-up)
                    fast_decode._ONEDNN = onednn and method == "engine"
                    eng._weights_changed.set()
                    r = run_engine(model, b, timers)
                    r["kernel"] = eng.stats.decode_kernel
                res[b][method].append(r)
                print(f"rep {rep} B={b} {method}: "
                      + (f"step {r['decode_step_ms']:.1f} ms" if method == "generate" else
                         f"step {r['decode_step_ms_median']:.1f} ms (instrumented {r['instrumented_ms_per_step']:.1f}, "
                         f"kernel {r['kernel']})"), flush=True)
    fast_decode._ONEDNN = onednn
    eng._weights_changed.set()

    fast = eng._fast  # the snapshot's projections and LM head: what a decode step streams
    floor = read_once_ms([x.weight for layer in fast.layers for x in (layer.qkv, layer.o, layer.gate_up, layer.down)]
                         + [fast.lm_head.weight])
    summary: dict = {"weight_read_floor_ms": floor}
    print(f"\nsnapshot weights: {nbytes / 2**20:.0f} MiB; reading them once (Tensor.sum over each): {floor:.1f} ms")
    engines = [m for m in arms if m != "generate"]
    for m in engines:
        print(f"\n{m} (kernel {res[sizes[0]][m][0]['kernel']}), self ms per decode step, medians over repeats:")
        print("| B | step (range) | generate step (range) | / generate | " + " | ".join(SECTIONS) + " |")
        print("|" + "---|" * (4 + len(SECTIONS)))
        for b in sizes:
            e = [r["decode_step_ms_median"] for r in res[b][m]]
            g = [r["decode_step_ms"] for r in res[b]["generate"]]
            sec = {s: statistics.median(r["sections_ms_per_step"][s] for r in res[b][m]) for s in SECTIONS}
            summary.setdefault(m, {})[b] = {
                "step_ms_median": statistics.median(e), "step_ms_range": [min(e), max(e)],
                "generate_step_ms_median": statistics.median(g), "generate_step_ms_range": [min(g), max(g)],
                "ratio_to_generate": statistics.median(e) / statistics.median(g), "sections_ms_per_step": sec,
                "instrumented_ms_per_step": statistics.median(r["instrumented_ms_per_step"] for r in res[b][m])}
            print(f"| {b} | {statistics.median(e):.1f} ({min(e):.1f}-{max(e):.1f}) | {statistics.median(g):.1f} "
                  f"({min(g):.1f}-{max(g):.1f}) | {summary[m][b]['ratio_to_generate']:.2f}x | "
                  + " | ".join(f"{sec[s]:.1f}" for s in SECTIONS) + " |")

    table = torch_profile(model, a.torch_profiler) if a.torch_profiler else None
    if table:
        print(f"\ntorch.profiler, decode steps at B={a.torch_profiler} (self CPU time):\n{table}")
    if a.json:
        out = {"workload": f"B chat prompts x {NEW_TOKENS} new tokens, temperature 1.0, EOS ignored; decode steps "
                           "only (prefill excluded)",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "snapshot_mib": nbytes / 2**20, "repeats": a.repeats, "summary": summary, "runs": res,
               "torch_profiler": {"batch": a.torch_profiler, "table": table} if table else None}
        tmp = Path(a.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
