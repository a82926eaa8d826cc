"""Training throughput of SmolLM2-135M-Instruct + LoRA on this machine: tokens per second of one forward and backward.

Arms (alternated, ``--repeats`` rounds, each arm's first call a warm-up that is not counted):
  fp32 / bf16-autocast  x  LoRA on every layer / the last 12 / the last 8 (``lora_layers``; the backward stops there)
on ``--batch`` sequences of ``--tokens`` tokens (the loss on the last 100 positions of each, as SFT's completions),
r 16 on all seven projections. These settings are the recipe's (docs/training.md): a packed customer_service
demonstration is about 760 tokens.

Run:  .venv/bin/python benchmarks/train_throughput.py [--repeats 3] [--json benchmarks/results_train_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(layers: int | None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from stateset_agents.models.default import default_model_path

    m = AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.float32)
    n = m.config.num_hidden_layers
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules=PROJ,
                     layers_to_transform=None if layers is None else list(range(n - layers, n)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(m, cfg)


def _step(m, x: torch.Tensor, bf16: bool) -> float:
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = m(input_ids=x).logits[:, -100:].float().logsumexp(-1).mean()
    loss.backward()
    m.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results_train_throughput.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randint(0, 40000, (args.batch, args.tokens))
    arms = [(layers, bf16) for layers in (None, 12, 8) for bf16 in (False, True)]
    models = {layers: _model(layers) for layers in (None, 12, 8)}
    times: dict[str, list[float]] = {}
    for layers, bf16 in arms:  # warm-up
        _step(models[layers], x, bf16)
    for _ in range(args.repeats):
        for layers, bf16 in arms:
            key = f"{'bf16' if bf16 else 'fp32'} lora_layers={layers or 'all'}"
            times.setdefault(key, []).append(_step(models[layers], x, bf16))
    tokens = args.batch * args.tokens
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                       "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
           "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats,
           "arms": {k: {"tokens_per_s_median": tokens / statistics.median(v),
                        "tokens_per_s_min": tokens / max(v), "tokens_per_s_max": tokens / min(v),
                        "seconds": v} for k, v in times.items()}}
    Path(args.json).write_text(json.dumps(out, indent=2), encoding="utf-8")
    for k, v in out["arms"].items():
        print(f"{k:26s} {v['tokens_per_s_median']:7.0f} tok/s (min {v['tokens_per_s_min']:.0f}, "
              f"max {v['tokens_per_s_max']:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
