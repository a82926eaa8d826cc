"""Peak memory and time of the demo's training update: LoRA and full fine-tune, with and without activation
checkpointing (``gradient_checkpointing``).

Workload: the SFT stage of ``examples/recipe_customer_service.yaml`` as ``make demo`` runs it (SmolLM2-135M-Instruct,
``mixed_precision: auto``, i.e. bf16 autocast only on a CPU with native bf16, micro-batches of 8 packed customer_service reference demonstrations of about 760 tokens, the
288-token system prefix forwarded once), except: ``train_variants: 1`` (the demonstrations are collected faster;
their lengths are the same kind), no evaluation, ``--steps`` updates. Full fine-tune: ``use_lora: false``, lr 1e-5,
every layer trained. GRPO's update runs the same forward and backward through the same policy (its micro-batches
are also 8 packed trajectories of the same pack), so its activation memory is the same kind.

Each arm runs in its own process; after the model is loaded and the demonstrations collected, the process's peak
RSS (VmHWM) is reset (``/proc/self/clear_refs``), so ``peak_rss_mb`` is the peak over the updates alone (model,
optimiser state and engine included, as they are resident during an update). Arms alternate over ``--rounds``.

  .venv/bin/python benchmarks/update_memory.py [--rounds 2] [--steps 3] [--json benchmarks/results_update_memory.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "recipe_customer_service.yaml"
ARMS = {"lora": (True, False, None), "lora_ckpt": (True, True, None), "full": (False, False, None),
        "full_ckpt": (False, True, None), "lora_ckpt_chunk256": (True, True, 256), "full_ckpt_chunk256": (False, True, 256)}
"""arm: (LoRA, gradient_checkpointing, logprob_chunk_size or None for the default); the default run takes the first
four."""
DEFAULT_ARMS = "lora,lora_ckpt,full,full_ckpt"


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def child(arm: str, steps: int) -> dict:
    from stateset_agents.training import build_trainer, load_config
    from stateset_agents.training.recipe import load_recipe

    lora, ckpt, chunk = ARMS[arm]
    _, stages = load_recipe(CONFIG)
    cfg = dict(stages)["sft"].model_dump()
    with tempfile.TemporaryDirectory() as tmp:
        cfg.update(output_dir=tmp, max_steps=steps, train_variants=1, eval_before=False, eval_after=False,
                   gradient_checkpointing=ckpt, use_lora=lora, init_from=None, warmup_steps=0)
        if not lora:
            cfg.update(learning_rate=1e-5, lora_layers=None)
        if chunk:
            cfg.update(logprob_chunk_size=chunk)
        trainer = build_trainer(load_config(cfg))
        asyncio.run(trainer.prepare())
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")
        times, tokens = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            m = asyncio.run(trainer.astep())
            times.append(time.perf_counter() - t0)
            tokens.append(sum(len(s.input_ids) for s in trainer.batch(trainer.step - 1)))
        return {"arm": arm, "mixed_precision": trainer.config.mixed_precision, "rss_before_mb": before, "peak_rss_mb": _status("VmHWM"), "update_s": times,
                "sequence_tokens": tokens, "loss": m["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", choices=list(ARMS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a.steps)), flush=True)
        return
    arms = a.arms.split(",")
    bad = [x for x in arms if x not in ARMS]
    if bad:
        sys.exit(f"--arms: unknown {bad}; choose from {', '.join(ARMS)}")
    runs: list[dict] = []
    for r in range(a.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            out = subprocess.run([sys.executable, __file__, "--child", arm, "--steps", str(a.steps)],
                                 capture_output=True, text=True, cwd=ROOT)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                sys.exit(f"arm {arm} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            res = json.loads(line[0][7:])
            res["round"] = r
            runs.append(res)
            print(f"round {r} {arm:10s} peak {res['peak_rss_mb']:7.0f} MB (before {res['rss_before_mb']:.0f})  "
                  f"updates {', '.join(f'{t:.1f}' for t in res['update_s'])} s", flush=True)
    summary = {}
    for arm in arms:
        rs = [x for x in runs if x["arm"] == arm]
        peaks = [x["peak_rss_mb"] for x in rs]
        ups = [t for x in rs for t in x["update_s"]]
        summary[arm] = {"peak_rss_mb_median": statistics.median(peaks), "peak_rss_mb_range": [min(peaks), max(peaks)],
                        "update_s_median": statistics.median(ups), "update_s_range": [min(ups), max(ups)]}
        print(f"{arm:10s} peak RSS {summary[arm]['peak_rss_mb_median']:.0f} MB ({min(peaks):.0f}-{max(peaks):.0f})"
              f"  update {summary[arm]['update_s_median']:.1f} s ({min(ups):.1f}-{max(ups):.1f})")
    if a.json:
        import torch

        doc = {"workload": "recipe_customer_service.yaml SFT stage, micro-batch 8, mixed_precision auto", "summary": summary,
               "runs": runs, "machine": f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus, "
                                        f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
        tmp = Path(a.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
