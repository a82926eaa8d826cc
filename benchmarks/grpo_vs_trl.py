"""GRPO step time and peak memory: our GRPOTrainer vs TRL's GRPOTrainer, same model, prompts, reward and sizes.

Workload (identical for both trainers):

- model: SmolLM2-135M-Instruct (the converted default model folder), float32, CPU;
- prompts: customer-service chat prompts (one system message + one user message; the same token ids for both:
  checked before anything is timed);
- one prompt per step, 4 generations of it (4 completions per step, one optimiser update on all 4),
  at most 32 new tokens, temperature 1.0, no top-k/top-p;
- reward: the same Python function of the completion text (:func:`score_text`) for both;
- loss: DAPO token-level normalisation, clip 0.2, no KL (beta = 0, so no reference model), AdamW,
  constant learning rate 1e-5, gradient clipping at 1.0, no zero-variance-group skipping;
- settings: full fine-tune, and LoRA r=8 (alpha 16, q/k/v/o projections).

Ours runs with its rollouts sampled from fp32 weights (``ours``) and from int8 weights (``ours_int8``:
``rollout_precision: int8``, the update in fp32 with the mismatch measured and corrected by truncated importance
sampling; ``ours_bf16`` also available). Each trainer runs in its own subprocess (its peak RSS is its own; model
loading is not timed) and they alternate within one invocation (TRL, ours, ours_int8, then the reverse), so all see
the same machine load. A step is timed
from its start to the end of its optimiser update (TRL: ``on_step_begin`` to ``on_step_end``; ours: one
``GRPOTrainer.astep()``), including generation. The first ``--warmup`` steps of every run are not counted;
the reported figure is the median over all counted steps of all rounds.

Run:  .venv/bin/python benchmarks/grpo_vs_trl.py [--steps 6] [--rounds 2] [--settings full lora]
      [--ours ours ours_int8] [--json benchmarks/results_grpo_vs_trl.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a helpful customer service agent for an online store. Reply briefly."
QUESTIONS = [
    "My order ORD-1042 hasn't arrived yet, where is it?",
    "I was charged twice for invoice INV-2210.",
    "The blender in order 1187 arrived cracked. What can you do?",
    "Can I change the shipping address on order 1311?",
    "I can't log in to my account, it says locked.",
    "Please cancel order 1450, I ordered the wrong size.",
    "How long do refunds take to show up on my card?",
    "Do you ship to Canada? My order 1502 is for Toronto.",
]
GENERATIONS, NEW_TOKENS, LEARNING_RATE, SEED = 4, 32, 1e-5, 0
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
KEYWORDS = ("order", "refund", "sorry", "help", "account", "ship")
TRAINERS = {"trl": None, "ours": "fp32", "ours_int8": "int8", "ours_bf16": "bf16"}
"""The trainers a run can alternate: TRL, and ours with its rollouts sampled from fp32, int8 or bf16 weights."""


def score_text(text: str) -> float:
    """The reward both trainers optimise: length up to 24 words, plus a bonus per distinct service keyword."""
    words = text.lower().split()
    return min(len(words), 24) / 24 + 0.25 * sum(k in text.lower() for k in KEYWORDS)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_path() -> Path:
    from stateset_agents.models.default import default_model_path

    return default_model_path()


# ---------------------------------------------------------------------------------------------- TRL
def run_trl(setting: str, steps: int, gradient_checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    path = model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]}
                              for q in QUESTIONS] * 64)

    def reward(completions, **kwargs):
        return [score_text(c[0]["content"]) for c in completions]

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.lengths: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
            logging_steps=1, max_steps=steps, per_device_train_batch_size=GENERATIONS, num_generations=GENERATIONS,
            gradient_accumulation_steps=1, max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0,
            beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo", scale_rewards="group",
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
            gradient_checkpointing=gradient_checkpointing, seed=SEED, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        peft_config = None
        if setting == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA)
        timer = Timer()
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                              processing_class=tok, peft_config=peft_config, callbacks=[timer])
        gen_times: list[float] = []
        generate = trainer.model.generate

        def timed_generate(*a, **k):  # TRL calls the (unwrapped) model's generate once per step here
            t0 = time.perf_counter()
            try:
                return generate(*a, **k)
            finally:
                gen_times.append(time.perf_counter() - t0)

        trainer.model.generate = timed_generate
        rss_loaded = peak_rss_mb()
        trainer.train()
    return {"step_seconds": timer.times, "generation_seconds": gen_times,
            "mean_completion_tokens": statistics.mean(timer.lengths) if timer.lengths else None,
            "peak_rss_mb": peak_rss_mb(), "rss_after_load_mb": rss_loaded,
            "gradient_checkpointing": gradient_checkpointing, "optimizer": type(trainer.optimizer).__name__,
            "optimizer_defaults": {k: v for k, v in trainer.optimizer.defaults.items()
                                   if k in ("foreach", "fused")}}


# ---------------------------------------------------------------------------------------------- ours
def write_pack(folder: Path) -> Path:
    """A single-turn env pack holding the same prompts: every episode ends after the agent's first reply (the user
    thanks it when the reply mentions the order, and gives up otherwise: patience 1). The pack validator wants
    something to earn in every scenario; the benchmark's reward is :func:`score_text` regardless."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scenarios").mkdir(exist_ok=True)
    (folder / "pack.yaml").write_text(yaml.safe_dump({
        "name": "bench_prompts", "env_id": "bench/Prompts-v0", "domain": "customer_service",
        "description": "The GRPO-vs-TRL benchmark prompts, one agent reply per episode.", "max_turns": 2,
        "system_prompt": SYSTEM, "tools": []}), encoding="utf-8")
    scenarios = [{"id": f"q-{i:03d}", "split": "train", "title": f"question {i}", "category": "bench",
                  "difficulty": "easy",
                  "user": {"name": "Sam", "persona": "brief", "mood": "calm", "opening": [q], "facts": [],
                           "patience": 1},
                  "goal": {"description": "Answer."}, "database": {},
                  "required_facts": [{"id": "answered", "any_of": ["order"]}],
                  "reference": [{"say": "Let me check your order."}]}
                 for i, q in enumerate(QUESTIONS)]
    (folder / "scenarios" / "bench.yaml").write_text(yaml.safe_dump(scenarios, sort_keys=False), encoding="utf-8")
    return folder


def run_ours(setting: str, steps: int, gradient_checkpointing: bool, precision: str = "fp32") -> dict:
    import asyncio

    import torch  # noqa: F401

    from stateset_agents.agents import MultiTurnAgent
    from stateset_agents.models.hf import HFChatModel
    from stateset_agents.rewards.base import TrajectoryReward, agent_text
    from stateset_agents.training import GRPOConfig
    from stateset_agents.training.build import make_env_factory
    from stateset_agents.training.trainer import GRPOTrainer

    class TextReward(TrajectoryReward):
        name = "bench_text"

        def score_one(self, t):
            return score_text(agent_text(t))

    with tempfile.TemporaryDirectory() as tmp:
        pack = write_pack(Path(tmp) / "pack")
        path = model_path()
        config = GRPOConfig(
            model=str(path), env=str(pack), group_size=GENERATIONS, scenarios_per_step=1, max_steps=10_000,
            max_new_tokens=NEW_TOKENS, temperature=1.0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo",
            scale_rewards="group", learning_rate=LEARNING_RATE, lr_scheduler="constant", max_grad_norm=1.0,
            weight_decay=0.0, use_lora=setting == "lora", lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"],
            lora_dropout=0.0, lora_target_modules=LORA["target_modules"], micro_batch_size=GENERATIONS,
            skip_zero_variance_groups=False, gradient_checkpointing=gradient_checkpointing, seed=SEED,
            rollout_precision=precision,
            eval_before=False, eval_after=False, save_every=0, progress=False, output_dir=str(Path(tmp) / "run"))
        model = HFChatModel(path, max_batch_size=GENERATIONS)
        agent = MultiTurnAgent(model, domain=None)
        trainer = GRPOTrainer(agent, make_env_factory(str(pack)), TextReward(), config)
        check_same_prompt(model, agent)
        rss_loaded = peak_rss_mb()
        times, tokens, gen, update = [], [], [], []

        async def go() -> None:
            for _ in range(steps):
                t0 = time.perf_counter()
                m = await trainer.astep()
                times.append(time.perf_counter() - t0)
                tokens.append(m["new_tokens"] / GENERATIONS)
                gen.append(m["time/rollout"])
                update.append(m["time/update"])

        asyncio.run(go())
        model.close()
    return {"step_seconds": times, "generation_seconds": gen, "update_seconds": update,
            "mean_completion_tokens": statistics.mean(tokens), "peak_rss_mb": peak_rss_mb(),
            "rss_after_load_mb": rss_loaded, "gradient_checkpointing": gradient_checkpointing,
            "rollout_precision": precision, "decode_path": model.engine.stats.decode_path,
            "optimizer_defaults": {k: v for k, v in trainer.optimizer.defaults.items() if k in ("foreach", "fused")}}


def check_same_prompt(model, agent) -> None:
    """The token ids our agent sends are the ids TRL gets from the chat template for the same messages."""
    from stateset_agents import Message

    for q in QUESTIONS:
        conversation = [Message(role="system", content=SYSTEM), Message(role="user", content=q)]
        ours = model.prompt_ids(agent.build_prompt(conversation))
        trl = model.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                   {"role": "user", "content": q}],
                                                  add_generation_prompt=True, tokenize=True)
        trl = list(trl["input_ids"] if hasattr(trl, "keys") else trl)
        if ours != trl:
            raise SystemExit(f"prompt mismatch for {q!r}: ours {len(ours)} tokens, TRL's {len(trl)}")


# ---------------------------------------------------------------------------------------------- driver
def child(which: str, setting: str, steps: int, gc: bool) -> None:
    import torch

    out = run_trl(setting, steps, gc) if which == "trl" else run_ours(setting, steps, gc, TRAINERS[which])
    out["torch_threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out), flush=True)


def spawn(which: str, setting: str, steps: int, gc: bool, threads: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--setting", setting, "--steps", str(steps),
           "--gc", "on" if gc else "off"]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    load_after = os.getloadavg()[0]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{which} {setting} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    res = json.loads(lines[-1][len("RESULT "):])
    res.update({"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)), "wall_seconds": time.time() - t0,
                "load_average_1min": [load_before, load_after]})
    return res


def summarise(runs: list[dict], warmup: int) -> dict:
    counted = [t for r in runs for t in r["step_seconds"][warmup:]]
    gen = [t for r in runs for t in r.get("generation_seconds", [])[warmup:]]
    return {"median_step_seconds": statistics.median(counted), "steps_counted": len(counted),
            "median_generation_seconds": statistics.median(gen) if gen else None,
            "min_step_seconds": min(counted), "max_step_seconds": max(counted),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "mean_completion_tokens": statistics.mean(r["mean_completion_tokens"] for r in runs
                                                      if r["mean_completion_tokens"] is not None),
            "runs": runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="steps per run (the first --warmup are not counted)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="runs of each trainer per setting, alternating order")
    p.add_argument("--settings", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument("--trl-gc", choices=["on", "off"], default="on",
                   help="TRL's gradient checkpointing (its default: on)")
    p.add_argument("--ours-gc", choices=["on", "off"], default="off",
                   help="our gradient checkpointing (our default: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for both trainers (default: torch's, one per core)")
    p.add_argument("--ours", nargs="+", choices=[t for t in TRAINERS if t != "trl"], default=["ours", "ours_int8"],
                   help="our settings to run beside TRL: fp32 rollouts, int8 or bf16 rollout weights")
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--child", choices=list(TRAINERS), help=argparse.SUPPRESS)
    p.add_argument("--setting", choices=["full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--gc", choices=["on", "off"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.setting, a.steps, a.gc == "on")
        return
    import torch
    import transformers
    import trl

    meta = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.platform()}", "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "trl": trl.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps_per_run": a.steps, "warmup": a.warmup,
            "rounds": a.rounds, "generations": GENERATIONS, "new_tokens": NEW_TOKENS, "threads": a.threads,
            "trl_gradient_checkpointing": a.trl_gc, "ours_gradient_checkpointing": a.ours_gc,
            "load_average_at_start": os.getloadavg()}
    gcs = {w: (a.trl_gc if w == "trl" else a.ours_gc) == "on" for w in TRAINERS}
    order = ["trl", *a.ours]
    results: dict = {"meta": meta, "settings": {}}
    for setting in a.settings:
        runs: dict[str, list[dict]] = {w: [] for w in order}
        for r in range(a.rounds):
            for which in (order if r % 2 == 0 else order[::-1]):
                res = spawn(which, setting, a.steps, gcs[which], a.threads)
                runs[which].append(res)
                print(f"{setting:4s} {which:4s} round {r + 1}: steps "
                      f"{' '.join(f'{t:.2f}' for t in res['step_seconds'])} s (generation "
                      f"{' '.join(f'{t:.2f}' for t in res['generation_seconds'])}); peak RSS "
                      f"{res['peak_rss_mb']:.0f} MB; load {res['load_average_1min'][0]:.1f}", flush=True)
        s = {w: summarise(runs[w], a.warmup) for w in runs}
        for w in a.ours:
            s[f"ratio_seconds_{w}_over_trl"] = s[w]["median_step_seconds"] / s["trl"]["median_step_seconds"]
            s[f"ratio_memory_{w}_over_trl"] = s[w]["peak_rss_mb"] / s["trl"]["peak_rss_mb"]
        results["settings"][setting] = s
        print(f"{setting}: TRL {s['trl']['median_step_seconds']:.2f} s/step, {s['trl']['peak_rss_mb']:.0f} MB"
              + "".join(f" | {w} {s[w]['median_step_seconds']:.2f} s/step, {s[w]['peak_rss_mb']:.0f} MB "
                        f"({s[f'ratio_seconds_{w}_over_trl']:.2f}x time, {s[f'ratio_memory_{w}_over_trl']:.2f}x "
                        "memory)" for w in a.ours), flush=True)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
