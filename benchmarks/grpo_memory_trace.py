"""Peak RSS of each phase of our GRPO step (rollout, update, forward+backward, optimiser) on grpo_vs_trl.py's workload.

A thread samples the process's resident memory every 5 ms; the trainer's update and micro-steps are wrapped to label
the phase. Prints the peak per phase over 3 steps (rolloutN, updateN, fwdbwdN, optimN), in MB, each step's wall time, and the
seconds spent inside ``trim_heap`` itself.

  .venv/bin/python benchmarks/grpo_memory_trace.py [full|lora] [--no-trim] [--json OUT]

--no-trim turns the trainer's heap trim (training/policy.py ``trim_heap``) off, to see what it saves; what it costs
is the time inside the call plus the page faults of re-using returned memory later, so compare step times of runs
with and without it, alternating (``benchmarks/trim_ab.sh``). --json writes the figures to OUT.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

phase = ["init"]
peak: dict[str, float] = {}
step = [0]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def sampler() -> None:
    while True:
        r, p = rss_mb(), phase[0]
        if r > peak.get(p, 0.0):
            peak[p] = r
        time.sleep(0.005)


def main() -> None:
    import grpo_vs_trl as g

    import stateset_agents.training.grpo_update as gu
    import stateset_agents.training.policy as policy
    from stateset_agents.agents import MultiTurnAgent
    from stateset_agents.models.hf import HFChatModel
    from stateset_agents.rewards.base import TrajectoryReward, agent_text
    from stateset_agents.training import GRPOConfig
    from stateset_agents.training.build import make_env_factory
    from stateset_agents.training.trainer import GRPOTrainer

    args = sys.argv[1:]
    out = args[args.index("--json") + 1] if "--json" in args else None
    if out is not None:
        del args[args.index("--json"):args.index("--json") + 2]
    trim = "--no-trim" not in args
    setting = next((x for x in args if x != "--no-trim"), "full")
    if setting not in ("full", "lora"):
        sys.exit(f"setting {setting!r} is not 'full' or 'lora'")
    real_trim, trim_s = policy.trim_heap, [0.0]

    def timed_trim() -> bool:
        t = time.perf_counter()
        try:
            return real_trim() if trim else False
        finally:
            trim_s[0] += time.perf_counter() - t
    policy.trim_heap = timed_trim
    threading.Thread(target=sampler, daemon=True).start()
    tmp = Path(tempfile.mkdtemp())
    pack, path = g.write_pack(tmp / "pack"), g.model_path()
    config = GRPOConfig(
        model=str(path), env=str(pack), group_size=g.GENERATIONS, scenarios_per_step=1, max_steps=10_000,
        max_new_tokens=g.NEW_TOKENS, temperature=1.0, beta=0.0, num_iterations=1, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", learning_rate=g.LEARNING_RATE, lr_scheduler="constant", max_grad_norm=1.0,
        weight_decay=0.0, use_lora=setting == "lora", lora_r=g.LORA["r"], lora_alpha=g.LORA["lora_alpha"],
        lora_dropout=0.0, lora_target_modules=g.LORA["target_modules"], micro_batch_size=g.GENERATIONS,
        skip_zero_variance_groups=False, gradient_checkpointing=False, seed=g.SEED, eval_before=False,
        eval_after=False, save_every=0, progress=False, output_dir=str(tmp / "run"))
    model = HFChatModel(path, max_batch_size=g.GENERATIONS)

    class TextReward(TrajectoryReward):
        name = "bench_text"

        def score_one(self, t):
            return g.score_text(agent_text(t))

    trainer = GRPOTrainer(MultiTurnAgent(model, domain=None), make_env_factory(str(pack)), TextReward(), config)
    update, micro = gu.GRPOUpdate._update, gu.GRPOUpdate._micro_step

    def traced_update(self, *a, **k):
        phase[0] = f"update{step[0]}"
        try:
            return update(self, *a, **k)
        finally:
            phase[0] = f"rollout{step[0] + 1}"

    def traced_micro(self, *a, **k):
        phase[0] = f"fwdbwd{step[0]}"
        out = micro(self, *a, **k)
        phase[0] = f"optim{step[0]}"
        return out

    gu.GRPOUpdate._update, gu.GRPOUpdate._micro_step = traced_update, traced_micro

    step_s: list[float] = []

    async def go() -> None:
        for i in range(3):
            step[0], phase[0] = i, f"rollout{i}"
            t = time.perf_counter()
            await trainer.astep()
            step_s.append(time.perf_counter() - t)

    asyncio.run(go())
    time.sleep(0.05)
    model.close()
    print(f"{setting}, heap trim {'on' if trim else 'off'}; peak RSS per phase (MB):")
    for k, v in peak.items():
        print(k, round(v))
    print("peak", round(max(peak.values())))
    print("step s", [round(x, 2) for x in step_s], "inside trim_heap s", round(trim_s[0], 3))
    if out is not None:
        Path(out).write_text(json.dumps({"setting": setting, "trim": trim, "peak_mb": peak, "step_s": step_s,
                                         "trim_call_s": trim_s[0]}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
