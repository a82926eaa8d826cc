"""Training-Free GRPO costs: retrieval latency, the loop's overhead over plain rollouts, memory of a deployed library.

  retrieval : a library of 10,000 synthetic customer-service lessons embedded with all-MiniLM-L6-v2; latency of
              ``to_prompt(conversation)`` (one query embedding + top-k over the cached matrix) over 50 different
              conversations. Target: under 100 ms. The one-time embedding of the 10,000 lessons is reported apart.
  overhead  : SmolLM2-135M-Instruct as the agent on customer_service (4 scenarios x 4 rollouts, 3 agent turns,
              32 new tokens), a 100-experience library (prompt_top_k 5), and a learner that answers instantly with
              one ADD per group (so learner time is ~0 and is subtracted anyway). Per repeat and step:
              (0) rollout() with no library, (1) rollout() with the same library and the step's seeds, then
              (2) TrainingFreeGRPO.astep() on the same scenarios and seeds. Overhead excluding learner calls:
              ``machinery = (retrieval in rollout + score + apply + save) / (rollout - retrieval)`` from the step's
              own phase timings (target: under 5%), and the paired wall clock ``(step - learner) / (1) - 1``.
              ``(1) / (0) - 1`` is the cost of the longer prompt itself (informative, not part of the target).
  memory    : a fresh process loads MiniLM and a 100-experience library and serves 50 ``to_prompt`` calls; its peak
              RSS (target: under 500 MB) and the growth from building the library.

Run:  .venv/bin/python benchmarks/training_free.py [--only retrieval,overhead,memory] [--repeats 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACTIONS = ["Ask for the order number", "Confirm the email on the account", "Check the tracking status",
           "Apologise once for the trouble", "Offer a refund to the original payment method",
           "Escalate to a supervisor", "Quote the delivery date from the tool", "Verify the customer's identity",
           "Summarise the next step", "Restate the customer's problem", "Look up the order with the tool",
           "Offer a replacement", "Explain the return window", "Give the refund amount",
           "Ask one question at a time", "Avoid promising dates you have not checked", "Offer store credit",
           "Cancel the order with the tool", "Check the policy limit", "Thank the customer by name",
           "Confirm the shipping address", "Mention the restocking fee", "Send a prepaid label",
           "Reset the password with the tool", "Unlock the account", "Check for duplicate charges",
           "Reverse the duplicate charge", "Explain the customs fee", "File a lost-parcel claim", "Reship the item"]
OBJECTS = ["before any refund", "when the parcel is late", "when the item arrived damaged", "for billing questions",
           "when the customer is angry", "before closing the conversation", "when two orders match",
           "when the account is locked", "after a failed delivery", "for international orders",
           "when the customer asks twice", "for orders over the refund limit", "when tracking shows delivered",
           "when the wrong item arrived", "for gift orders", "when the customer is in a hurry",
           "for subscription charges", "when the address changed", "after a partial return",
           "when the item is out of stock", "for marketplace sellers", "when the card expired",
           "for first-time customers", "when the warranty applies", "for bulk orders", "on weekends",
           "for pre-orders", "when the carrier lost the parcel", "after a price drop", "for digital goods"]
WHYS = ["so the customer trusts the answer", "to avoid a second contact", "because policy requires it",
        "to keep replies short", "so the tool call succeeds", "to prevent a wrong refund", "to save time",
        "so the database matches", "to avoid forbidden actions", "to tell the required facts", "to stay polite",
        "so nothing is invented"]
QUERIES = ["My order ORD-{i} hasn't arrived yet, where is it?", "I was charged twice for invoice INV-{i}.",
           "The blender in order {i} arrived cracked. What can you do?", "Can I change the address on order {i}?",
           "I can't log in to my account, it says locked.", "Please cancel order {i}, I ordered the wrong size.",
           "How long do refunds take to show up?", "Do you ship to Canada? My order {i} is for Toronto.",
           "The tracking says delivered but I have nothing.", "I want to return half of order {i}."]


def lessons(n: int) -> list[str]:
    out = [f"{a} {o} {w}." for a, o, w in itertools.product(ACTIONS, OBJECTS, WHYS)]
    if n > len(out):
        raise SystemExit(f"only {len(out)} distinct synthetic lessons")
    return out[:n]


def make_library(n: int, **kw):
    from stateset_agents.training.experience import ExperienceLibrary

    exps = [{"id": f"E{i + 1}", "text": t, "domain": "customer_service", "confidence": 0.5 + (i % 7) / 20,
             "confirmations": 1} for i, t in enumerate(lessons(n))]
    return ExperienceLibrary.model_validate({"max_size": max(n, 50), "word_limit": 32, "experiences": exps,
                                             "next_id": n + 1, **kw})


def conversations(n: int):
    from stateset_agents import Message

    return [[Message(role="system", content="rules"), Message(role="user", content=QUERIES[i % len(QUERIES)]
                                                              .format(i=1000 + i))] for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


# ---------------------------------------------------------------- retrieval
def bench_retrieval(n: int = 10_000, k: int = 8) -> dict:
    from stateset_agents.rewards.embeddings import default_embedder

    t = time.perf_counter()
    emb = default_embedder()
    load_s = time.perf_counter() - t
    lib = make_library(n, prompt_top_k=k).use_embedder(emb)
    t = time.perf_counter()
    lib.to_prompt(conversations(1)[0])  # embeds all n lessons once (cached afterwards)
    build_s = time.perf_counter() - t
    convs = conversations(50)
    for c in convs[:5]:  # warm-up
        lib.to_prompt(c)
    lat = []
    for c in convs:
        t = time.perf_counter()
        text = lib.to_prompt(c)
        lat.append((time.perf_counter() - t) * 1000)
    assert text.count("\n- [E") == k
    # the query embedding alone, to show where the time goes
    q = []
    for c in convs:
        t = time.perf_counter()
        emb.encode([c[-1].content])
        q.append((time.perf_counter() - t) * 1000)
    return {"experiences": n, "top_k": k, "embedder_load_s": round(load_s, 2),
            "embed_all_once_s": round(build_s, 2), "latency_ms_mean": round(statistics.fmean(lat), 2),
            "latency_ms_p50": round(pct(lat, 0.5), 2), "latency_ms_p95": round(pct(lat, 0.95), 2),
            "latency_ms_max": round(max(lat), 2), "query_embedding_ms_p50": round(pct(q, 0.5), 2),
            "target_ms": 100, "met": pct(lat, 0.95) < 100}


# ---------------------------------------------------------------- overhead
class TimedLibrary:
    """Times every to_prompt call the agent makes (the retrieval inside rollouts)."""

    def __init__(self, lib):
        self.lib, self.seconds, self.calls = lib, 0.0, 0

    def to_prompt(self, *a, **kw):
        t = time.perf_counter()
        try:
            return self.lib.to_prompt(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t
            self.calls += 1


def bench_overhead(repeats: int) -> dict:
    from stateset_agents.agents import MultiTurnAgent
    from stateset_agents.models import default_model
    from stateset_agents.models.base import SamplingParams
    from stateset_agents.rewards import load_reward
    from stateset_agents.rewards.embeddings import default_embedder
    from stateset_agents.rollout import rollout
    from stateset_agents.training.build import make_env_factory
    from stateset_agents.training.trainer import step_seed
    from stateset_agents.training.training_free import TrainingFreeConfig, TrainingFreeGRPO
    from stateset_agents.types import Completion

    class InstantLearner:
        """Proposes one ADD per group at once: learner time ~0, while apply/dedup/save do real work."""

        def __init__(self):
            self.n = 0

        async def chat(self, messages, *, sampling, tools=None):
            self.n += 1
            return Completion(text=json.dumps({"advantage": "a", "operations": [
                {"op": "ADD", "text": f"Lesson number {self.n} learned from the comparison."}]}))

    out_dir = Path(tempfile.mkdtemp(prefix="tf-bench-"))
    model = default_model(max_batch_size=64)
    env_factory = make_env_factory("customer_service", max_turns=3)
    reward = load_reward("customer_service")
    cfg = TrainingFreeConfig(env="customer_service", group_size=4, scenarios_per_step=4, epochs=1,
                             max_turns=3, max_new_tokens=32, temperature=0.9, summarize=False,
                             consolidation="embedding", prompt_top_k=5, library_max_size=150,
                             eval_before=False, eval_after=False, progress=False, save_every=0,
                             output_dir=str(out_dir))
    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    agent = MultiTurnAgent(model, domain="customer_service", context_tokens=cfg.context_tokens, sampling=sampling)
    plain_agent = MultiTurnAgent(model, domain="customer_service", context_tokens=cfg.context_tokens,
                                 sampling=sampling)
    lib = make_library(100, max_size=150, prompt_top_k=5).use_embedder(default_embedder())
    trainer = TrainingFreeGRPO(agent, env_factory, reward, cfg, learner=InstantLearner(), library=lib)
    timed = TimedLibrary(lib)
    trainer.agent.experiences = timed
    same_agent = MultiTurnAgent(model, domain="customer_service", context_tokens=cfg.context_tokens,
                                sampling=sampling, experiences=lib)
    asyncio.run(rollout(plain_agent, env_factory, trainer.batch(0)[:1], 2, seed=123, progress=False))  # warm-up
    runs = []
    for step in range(repeats):
        scen, seed = trainer.batch(step), step_seed(cfg.seed, step, "rollout")
        t = time.perf_counter()
        asyncio.run(rollout(plain_agent, env_factory, scen, cfg.group_size, seed=seed, progress=False))
        t_none = time.perf_counter() - t
        t = time.perf_counter()
        asyncio.run(rollout(same_agent, env_factory, scen, cfg.group_size, seed=seed, progress=False))
        t_same = time.perf_counter() - t
        timed.seconds, timed.calls = 0.0, 0
        m = asyncio.run(trainer.astep())
        retrieval = timed.seconds
        machinery = retrieval + m["time/score"] + m["time/apply"] + m["time/save"]
        runs.append({
            "step": step + 1, "rollout_no_library_s": round(t_none, 2), "rollout_same_library_s": round(t_same, 2),
            "step_total_s": round(m["time/total"], 2), "step_rollout_s": round(m["time/rollout"], 2),
            "retrieval_s": round(retrieval, 3), "retrieval_calls": timed.calls, "score_s": round(m["time/score"], 3),
            "learner_phase_s": round(m["time/learner"], 3), "apply_s": round(m["time/apply"], 3),
            "save_s": round(m["time/save"], 3), "library_size": m["library_size"], "new_tokens": m["new_tokens"],
            "machinery_overhead": round(machinery / (m["time/rollout"] - retrieval), 4),
            "paired_wall_overhead": round((m["time/total"] - m["time/learner"]) / t_same - 1, 4),
            "prompt_injection_cost": round(t_same / t_none - 1, 4)})
        print(json.dumps(runs[-1]), flush=True)
    model.close()
    mo = [r["machinery_overhead"] for r in runs]
    return {"workload": "SmolLM2-135M fp32 CPU; customer_service, 4 scenarios x 4 rollouts, 3 turns, 32 new tokens; "
                        "100-experience library, prompt_top_k 5; instant learner (1 ADD per group)",
            "runs": runs, "machinery_overhead_mean": round(statistics.fmean(mo), 4),
            "paired_wall_overhead_mean": round(statistics.fmean(r["paired_wall_overhead"] for r in runs), 4),
            "prompt_injection_cost_mean": round(statistics.fmean(r["prompt_injection_cost"] for r in runs), 4),
            "target": 0.05, "met": max(mo) < 0.05}


# ---------------------------------------------------------------- memory
_MEMORY = """
import json, resource, sys
sys.path.insert(0, {root!r})
import torch, transformers
from benchmarks.training_free import conversations, make_library
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
# ru_maxrss is not reset by exec on Linux: a child started by a parent holding SmolLM2 would report the parent's
# ~3 GB. VmHWM is this process's own high-water mark.
def rss(): return status("VmHWM")
def now(): return status("VmRSS")
base = now()
from stateset_agents.rewards.embeddings import default_embedder
emb = default_embedder()
with_model = now()
lib = make_library(100, prompt_top_k=8).use_embedder(emb)
for c in conversations(50):
    lib.to_prompt(c)
print(json.dumps({{"rss_after_imports_mb": round(base, 1), "rss_after_minilm_mb": round(with_model, 1),
                  "rss_after_library_mb": round(now(), 1), "peak_rss_mb": round(rss(), 1),
                  "library_json_kb": round(len(lib.model_dump_json()) / 1024, 1)}}))
"""


def bench_memory() -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    res = subprocess.run([sys.executable, "-c", _MEMORY.format(root=root)], capture_output=True, text=True,
                         check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["library_growth_mb"] = round(out["rss_after_library_mb"] - out["rss_after_minilm_mb"], 1)
    out["target_mb"] = 500
    out["met"] = out["peak_rss_mb"] < 500
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="retrieval,overhead,memory")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}}
    for name in args.only.split(","):
        t = time.perf_counter()
        result[name] = {"retrieval": bench_retrieval, "memory": bench_memory,
                        "overhead": lambda: bench_overhead(args.repeats)}[name]()
        result[name]["bench_seconds"] = round(time.perf_counter() - t, 1)
        print(name, json.dumps(result[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
