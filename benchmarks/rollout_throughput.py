"""Rollout generation throughput: our batching engine vs transformers `generate`, on SmolLM2 (fp32, CPU).

Workload (identical for every method): B customer-service chat prompts (B in --batch-sizes, default 1, 4, 8, 16,
32), 64 new tokens each, sampled at temperature 1.0; EOS is ignored so every request generates exactly 64 tokens.

  engine        : B concurrent HFChatModel.chat() calls decoded together, fast decode path (models/fast_decode.py)
  engine_int8   : the same with int8 decode weights (precision="int8")
  engine_hf     : the same through the transformers forward (fast_decode=False): the engine before this path
  generate      : transformers `generate` on the B left-padded prompts at once

Each method runs in its own subprocess (so peak RSS is its own), all batch sizes inside it; the methods alternate
in every repeat (--repeats), so a shared, noisy machine slows them alike. Model load time is excluded; each run
is preceded by a warm-up at the same batch size. Reported per (method, batch size): new tokens/s (median and
range over repeats) and the mean decode-step time (seconds / 64 steps, prefill included).

  .venv/bin/python benchmarks/rollout_throughput.py [--repeats 2] [--batch-sizes 1,4,8,16,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

NEW_TOKENS = 64
QUESTIONS = [
    "My order ORD-{i} hasn't arrived yet, where is it?", "I was charged twice for invoice INV-{i}.",
    "The blender in order {i} arrived cracked. What can you do?", "Can I change the address on order {i}?",
    "I can't log in to my account, it says locked.", "Please cancel order {i}, I ordered the wrong size.",
    "How long do refunds take to show up?", "Do you ship to Canada? My order {i} is for Toronto.",
]


def prompts(n: int):
    from stateset_agents import Message

    system = Message(role="system", content="You are a helpful customer service agent for an online store.")
    return [[system, Message(role="user", content=QUESTIONS[i % len(QUESTIONS)].format(i=1000 + i))]
            for i in range(n)]


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine(batch_sizes: list[int], **kw) -> dict:
    import asyncio

    from stateset_agents import SamplingParams
    from stateset_agents.models import default_model

    model = default_model(max_batch_size=max(batch_sizes), **kw)
    model.engine.eos = set()  # fixed workload: exactly NEW_TOKENS per request
    s = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)

    async def go(ps):
        return await asyncio.gather(*[model.chat(p, sampling=s.model_copy(update={"seed": i}))
                                      for i, p in enumerate(ps)])

    out = {"decode_path": model.engine.stats.decode_path}
    for b in batch_sizes:
        ps = prompts(b)
        asyncio.run(go(ps))  # warm-up (allocator, kernels, the decode snapshot)
        t = time.perf_counter()
        res = asyncio.run(go(ps))
        out[str(b)] = {"tokens": sum(len(c.completion_ids) for c in res), "seconds": time.perf_counter() - t}
    model.close()
    return out


def run_engine(bs):
    return _engine(bs)


def run_engine_int8(bs):
    return _engine(bs, precision="int8")


def run_engine_hf(bs):
    return _engine(bs, fast_decode=False)


def run_generate(batch_sizes: list[int]) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stateset_agents.models.default import default_model_path

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def gen(texts):
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            o = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                               max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id)
        return (o.shape[1] - enc["input_ids"].shape[1]) * o.shape[0]

    torch.manual_seed(0)
    out = {"decode_path": "transformers generate"}
    for b in batch_sizes:
        texts = [tok.apply_chat_template([m.to_openai() for m in p], add_generation_prompt=True, tokenize=False)
                 for p in prompts(b)]
        gen(texts)  # warm-up
        t = time.perf_counter()
        n = gen(texts)
        out[str(b)] = {"tokens": n, "seconds": time.perf_counter() - t}
    return out


METHODS = {"engine": run_engine, "engine_int8": run_engine_int8, "engine_hf": run_engine_hf,
           "generate": run_generate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(METHODS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bs = [int(x) for x in args.batch_sizes.split(",")]
    if args.only:
        res = METHODS[args.only](bs)
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        order = methods if rep % 2 == 0 else methods[::-1]  # alternate, so drift hits every method alike
        for name in order:
            out = subprocess.run([sys.executable, __file__, "--only", name, "--batch-sizes", args.batch_sizes],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            print(f"repeat {rep} {name:12s} " + "  ".join(
                f"b={b}: {r[str(b)]['tokens'] / r[str(b)]['seconds']:6.1f} tok/s" for b in bs), flush=True)
    results: dict[str, dict] = {}
    for name, rs in runs.items():
        results[name] = {"decode_path": rs[0]["decode_path"],
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "batch": {}}
        for b in bs:
            tps = [r[str(b)]["tokens"] / r[str(b)]["seconds"] for r in rs]
            step = [r[str(b)]["seconds"] / NEW_TOKENS * 1e3 for r in rs]
            results[name]["batch"][str(b)] = {"tokens_per_s_median": statistics.median(tps),
                                              "tokens_per_s_range": [min(tps), max(tps)],
                                              "step_ms_median": statistics.median(step)}
    ratios = {}
    if "generate" in results:
        for name in results:
            if name != "generate":
                ratios[f"{name}/generate"] = {
                    str(b): results[name]["batch"][str(b)]["tokens_per_s_median"]
                    / results["generate"]["batch"][str(b)]["tokens_per_s_median"] for b in bs}
    print(json.dumps({"ratios": ratios}, indent=1))
    import torch

    summary = {"workload": f"B prompts x {NEW_TOKENS} new tokens, sampled, EOS ignored; B in {bs}",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "repeats": args.repeats, "results": results, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
