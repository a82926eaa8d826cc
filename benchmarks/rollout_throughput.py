"""Rollout generation throughput: our batching engine vs transformers `generate`, on SmolLM2 (fp32, CPU).

Workload (identical for every method): 32 customer-service chat prompts, 64 new tokens each, sampled at
temperature 1.0; EOS is ignored so every request generates exactly 64 tokens.

  (a) engine      : 32 concurrent HFChatModel.chat() calls, decoded together by our engine
  (b) generate x1 : transformers `generate` called once per request, in turn
  (c) generate xN : transformers `generate` on the whole left-padded batch at once

Each method runs in its own subprocess (so peak RSS is its own), in the order given by --order; model load time
is excluded. Run:  .venv/bin/python benchmarks/rollout_throughput.py [--repeats 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

N_PROMPTS, NEW_TOKENS = 32, 64
QUESTIONS = [
    "My order ORD-{i} hasn't arrived yet, where is it?", "I was charged twice for invoice INV-{i}.",
    "The blender in order {i} arrived cracked. What can you do?", "Can I change the address on order {i}?",
    "I can't log in to my account, it says locked.", "Please cancel order {i}, I ordered the wrong size.",
    "How long do refunds take to show up?", "Do you ship to Canada? My order {i} is for Toronto.",
]


def prompts():
    from stateset_agents import Message

    system = Message(role="system", content="You are a helpful customer service agent for an online store.")
    return [[system, Message(role="user", content=QUESTIONS[i % len(QUESTIONS)].format(i=1000 + i))]
            for i in range(N_PROMPTS)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine() -> dict:
    import asyncio

    from stateset_agents import SamplingParams
    from stateset_agents.models import default_model

    model = default_model(max_batch_size=N_PROMPTS)
    model.engine.eos = set()  # fixed workload: exactly NEW_TOKENS per request
    s = SamplingParams(temperature=1.0, max_new_tokens=NEW_TOKENS, seed=0)
    ps = prompts()

    async def go():
        return await asyncio.gather(*[model.chat(p, sampling=s.model_copy(update={"seed": i}))
                                      for i, p in enumerate(ps)])

    asyncio.run(go())  # warm-up (allocator, kernels)
    t = time.perf_counter()
    out = asyncio.run(go())
    dt = time.perf_counter() - t
    model.close()
    return {"tokens": sum(len(c.completion_ids) for c in out), "seconds": dt}


def _hf():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stateset_agents.models.default import default_model_path

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template([m.to_openai() for m in p], add_generation_prompt=True, tokenize=False)
             for p in prompts()]
    return torch, tok, model, texts


def _generate(torch, tok, model, batch):
    enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id)
    return (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]


def run_generate_each() -> dict:
    torch, tok, model, texts = _hf()
    torch.manual_seed(0)
    _generate(torch, tok, model, texts[:1])  # warm-up
    t = time.perf_counter()
    n = sum(_generate(torch, tok, model, [x]) for x in texts)
    return {"tokens": n, "seconds": time.perf_counter() - t}


def run_generate_batch() -> dict:
    torch, tok, model, texts = _hf()
    torch.manual_seed(0)
    _generate(torch, tok, model, texts[:4])  # warm-up
    t = time.perf_counter()
    n = _generate(torch, tok, model, texts)
    return {"tokens": n, "seconds": time.perf_counter() - t}


METHODS = {"engine": run_engine, "generate_each": run_generate_each, "generate_batch": run_generate_batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=list(METHODS))
    ap.add_argument("--order", default="engine,generate_batch,generate_each")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.only:
        res = METHODS[args.only]()
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return
    results = {}
    for name in args.order.split(","):
        out = subprocess.run([sys.executable, __file__, "--only", name], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        results[name] = r
        print(f"{name:15s} {r['tokens']:5d} tokens in {r['seconds']:7.2f} s = {r['tokens_per_s']:7.1f} new tok/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    e = results["engine"]["tokens_per_s"]
    ratios = {"engine/generate_each": e / results["generate_each"]["tokens_per_s"],
              "engine/generate_batch": e / results["generate_batch"]["tokens_per_s"]}
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    import torch

    summary = {"workload": f"{N_PROMPTS} prompts x {NEW_TOKENS} new tokens, sampled, EOS ignored",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "results": results, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
