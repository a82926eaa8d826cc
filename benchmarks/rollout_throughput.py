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

--workload multiturn is the demo's real rollout instead: the first --scenarios customer_service train scenarios x
--group episodes (default 4 x 4 = 16, the demo's step), at most 6 agent turns of at most 80 new tokens, the compact
tool prompt, the scripted user and the tools in process, replies ending at EOS, greedy by default (so every method
plays the same episodes; each run prints a hash of all completion ids to show it). Methods: engine, engine_hf
(continuous batching, prefix and conversation caches) and generate (transformers `generate` driven the usual way
for such a workload: turn-synchronous static batches of whatever turns are waiting, left-padded). Reported: wall
time of the whole rollout, new tokens/s and turns/s (median and range over repeats), peak RSS, engine cache stats.

  .venv/bin/python benchmarks/rollout_throughput.py --workload multiturn [--methods engine,engine_hf,generate]
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


# ---------------------------------------------------------------------------------------------- multi-turn workload
# The demo's real rollout: customer_service episodes with the compact tool prompt (a ~290-token system message),
# at most 6 agent turns of at most 80 new tokens, the scripted user and the tools in the same process. Episodes
# end at different turns and replies end at EOS, so requests arrive and finish at different times. `generate`
# has no engine: the usual way to drive it on such a workload is turn-synchronous static batching, which
# GenerateBatcher does (collect the turns that are waiting, left-pad them, one `generate` call, repeat).

MT_ENV, MT_MAX_TURNS, MT_NEW_TOKENS, MT_CONTEXT = "customer_service", 6, 80, 1024


class GenerateBatcher:
    """A ChatModel over transformers `generate`: concurrent chat() calls wait up to ``window_s`` for one another
    and are generated as one left-padded batch; each row's reply ends at its first EOS (greedy or sampled)."""

    def __init__(self, path, max_batch_size: int = 32, window_s: float = 0.02) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        gen_eos = self.model.generation_config.eos_token_id
        self.eos = sorted(set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) | {self.tokenizer.eos_token_id})
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        self.max_batch_size, self.window_s = max_batch_size, window_s
        self.loop = self.queue = self.worker = None
        self.calls = 0  # generate() calls
        self.padded_positions = 0  # prompt positions that were padding

    def prompt_ids(self, messages, tools=None):  # the same template call as HFChatModel.prompt_ids
        from stateset_agents.models.hf import _template_message

        kw = {"tools": tools} if tools else {}
        out = self.tokenizer.apply_chat_template([_template_message(m) for m in messages],
                                                 add_generation_prompt=True, tokenize=True, **kw)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    async def chat(self, messages, *, sampling, tools=None):
        import asyncio

        from stateset_agents.toolcalls import parse_message
        from stateset_agents.types import Completion, ToolCall

        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # each asyncio.run() is a new loop: a queue and a worker of its own
            self.loop, self.queue = loop, asyncio.Queue()
            self.worker = loop.create_task(self._run())
        prompt = self.prompt_ids(messages, tools)
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((prompt, sampling, fut))
        ids = await fut
        text = self.tokenizer.decode([t for t in ids if t not in self.eos], skip_special_tokens=False)
        ended = bool(ids) and ids[-1] in self.eos
        parsed = parse_message(text)
        calls = [ToolCall(id=f"call_{i + 1}", name=c.name, arguments=c.arguments)
                 for i, c in enumerate(parsed.calls) if c.error is None and c.name and isinstance(c.arguments, dict)]
        finish = ("tool_calls" if calls else "stop") if ended else "length"
        return Completion(text=text, tool_calls=calls, finish_reason=finish,
                          prompt_ids=prompt, completion_ids=ids, model="generate",
                          usage={"prompt_tokens": len(prompt), "completion_tokens": len(ids)})

    async def _run(self) -> None:
        import asyncio

        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.max_batch_size:  # gather the turns that arrive together
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), self.window_s))
                except TimeoutError:
                    break
            try:
                outs = await asyncio.to_thread(self._generate, [b[0] for b in batch], batch[0][1])
            except Exception as e:  # noqa: BLE001 - handed to every waiting chat() call
                for _, _, fut in batch:
                    fut.set_exception(e)
                continue
            for (_, _, fut), ids in zip(batch, outs, strict=True):
                fut.set_result(ids)

    def _generate(self, prompts, sampling):
        import torch

        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        self.calls += 1
        self.padded_positions += int((mask == 0).sum())
        kw = {"do_sample": False} if sampling.temperature == 0 else {
            "do_sample": True, "temperature": sampling.temperature, "top_p": 1.0, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
                                      eos_token_id=self.eos, pad_token_id=self.pad, **kw)
        rows = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in self.eos), None)
            rows.append(row if end is None else row[:end + 1])
        return rows

    def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()


def _multiturn(model, scenarios: int, group: int, temperature: float, repeat: int) -> dict:
    import asyncio
    import hashlib

    from stateset_agents import SamplingParams
    from stateset_agents.evaluation import load_domain
    from stateset_agents.rollout import rollout

    sampling = SamplingParams(temperature=temperature, max_new_tokens=MT_NEW_TOKENS)
    dom = load_domain(MT_ENV, split="train", limit=scenarios, max_turns=MT_MAX_TURNS, model=model,
                      sampling=sampling, tool_prompt="compact", context_tokens=MT_CONTEXT)

    async def go(seed: int):
        return await rollout(dom.agent, dom.env_factory, dom.scenarios, group, concurrency=64, seed=seed,
                             progress=False)

    async def warm():
        return await rollout(dom.agent, dom.env_factory, dom.scenarios[:1], 2, seed=10_000, progress=False)

    # warm-up on other episodes (other user seeds): allocator, kernels, the decode snapshot
    asyncio.run(warm())
    out = {}
    for r in range(repeat):
        t = time.perf_counter()
        groups = asyncio.run(go(r))
        secs = time.perf_counter() - t
        trajs = [tr for g in groups for tr in g.trajectories]
        comps = [c for tr in trajs for c in tr.completions]
        sig = hashlib.sha256(repr([c.completion_ids for c in comps]).encode()).hexdigest()[:16]
        out[str(r)] = {"seconds": secs, "episodes": len(trajs), "turns": len(comps),
                       "new_tokens": sum(len(c.completion_ids or []) for c in comps),
                       "prompt_tokens": sum(c.usage.get("prompt_tokens", 0) for c in comps),
                       "errors": sum(1 for tr in trajs if tr.error), "transcripts_sha": sig}
    return out


def run_multiturn(method: str, scenarios: int, group: int, temperature: float, repeat: int) -> dict:
    from stateset_agents.models import default_model
    from stateset_agents.models.default import default_model_path

    batch = scenarios * group
    if method == "generate":
        model = GenerateBatcher(default_model_path(), max_batch_size=batch)
        res = _multiturn(model, scenarios, group, temperature, repeat)
        res["decode_path"] = "transformers generate, turn-synchronous batches"
        res["generate_calls"], res["padded_positions"] = model.calls, model.padded_positions
    else:
        model = default_model(max_batch_size=batch, fast_decode=method != "engine_hf")
        res = _multiturn(model, scenarios, group, temperature, repeat)
        st = model.engine.stats
        res["decode_path"] = st.decode_path
        res["engine_stats"] = {k: v for k, v in vars(st).items() if isinstance(v, int | float | str)}
    model.close()
    return res


METHODS = {"engine": run_engine, "engine_int8": run_engine_int8, "engine_hf": run_engine_hf,
           "generate": run_generate}


def main_multiturn(args) -> None:
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in MT_METHODS]
    if bad:
        raise SystemExit(f"--methods {','.join(bad)}: not a multiturn method; choose from {','.join(MT_METHODS)}")
    mt = ["--workload", "multiturn", "--scenarios", str(args.scenarios), "--group", str(args.group),
          "--temperature", str(args.temperature)]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeats):
        order = methods if rep % 2 == 0 else methods[::-1]
        for name in order:
            out = subprocess.run([sys.executable, __file__, "--only", name, *mt], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(r)
            m = r["0"]
            print(f"repeat {rep} {name:9s} {m['seconds']:7.1f} s  {m['episodes']} episodes  {m['turns']} turns  "
                  f"{m['new_tokens'] / m['seconds']:6.1f} new tok/s  transcripts {m['transcripts_sha']}", flush=True)
    results: dict[str, dict] = {}
    for name, rs in runs.items():
        secs = [r["0"]["seconds"] for r in rs]
        tps = [r["0"]["new_tokens"] / r["0"]["seconds"] for r in rs]
        tuns = [r["0"]["turns"] / r["0"]["seconds"] for r in rs]
        results[name] = {"decode_path": rs[0]["decode_path"], "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                         "seconds_median": statistics.median(secs), "seconds_range": [min(secs), max(secs)],
                         "new_tokens_per_s_median": statistics.median(tps), "new_tokens_per_s_range": [min(tps), max(tps)],
                         "turns_per_s_median": statistics.median(tuns), "runs": rs}
    ratios = {}
    if "generate" in results:
        for name in results:
            if name != "generate":
                ratios[f"{name}/generate"] = {
                    "wall_time": results[name]["seconds_median"] / results["generate"]["seconds_median"],
                    "new_tokens_per_s": results[name]["new_tokens_per_s_median"]
                    / results["generate"]["new_tokens_per_s_median"]}
    print(json.dumps({"ratios": ratios}, indent=1))
    import torch

    summary = {"workload": f"{MT_ENV} train scenarios[:{args.scenarios}] x group {args.group}, max_turns "
                           f"{MT_MAX_TURNS}, max_new_tokens {MT_NEW_TOKENS}, temperature {args.temperature}, "
                           "compact tool prompt, replies end at EOS",
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "repeats": args.repeats, "results": results, "ratios": ratios}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)


MT_METHODS = ("engine", "engine_hf", "generate")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["fixed", "multiturn"], default="fixed")
    ap.add_argument("--scenarios", type=int, default=4, help="multiturn: train scenarios (the first N)")
    ap.add_argument("--group", type=int, default=4, help="multiturn: episodes per scenario")
    ap.add_argument("--temperature", type=float, default=0.0, help="multiturn: 0 = greedy")
    ap.add_argument("--only", choices=list(METHODS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.workload == "multiturn":
        if args.only:
            res = run_multiturn(args.only, args.scenarios, args.group, args.temperature, 1)
            res["peak_rss_mb"] = peak_rss_mb()
            print(json.dumps(res))
            return
        if args.methods == ",".join(METHODS):
            args.methods = "engine,generate"
        main_multiturn(args)
        return
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
