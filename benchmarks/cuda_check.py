"""The CUDA path, checked on a GPU machine: bf16 weights, real GRPO and SFT steps, a resumed run, engine decode.

CI and the tests run on CPU; this script is what a session with a lent GPU runs, once, to see that the same code
path trains on CUDA. Model: the SmolLM2-135M architecture and tokenizer (config.json and tokenizer files of the
converted default model, copied into --model-files) with weights drawn at random (seed 0): the real weights
(93 MB as GGUF, 270 MB in bf16) do not fit what travels to the GPU machine, and for the mechanics, the memory and
the speed of a step the values of the weights do not matter. Every section runs even when an earlier one failed;
the JSON written to --json records each section's figures or its error.

  python3 benchmarks/cuda_check.py --model-files DIR --json OUT.json

Sections: GRPO with LoRA (device and dtype left to ``auto``; the other fields at their defaults) for 2 steps,
then resumed to 3; GRPO full fine-tune, 1 step; SFT with LoRA on the pack's reference demonstrations, 2 steps;
decode: 8 concurrent HFChatModel.chat calls x 64 new tokens vs transformers ``generate`` on the same prompts.
GRPO scores with the outcome plus two text terms (repetition, a 0-20 word window, which splits the
~20-word turns of 32 random tokens): a random-weight policy never
earns outcome, so with the outcome alone every group's rewards are equal and no update runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_model(files: Path, out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for f in files.iterdir():
        shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
    model.save_pretrained(out)
    return out


def metrics(run: Path) -> list[dict[str, Any]]:
    keep = ("step", "loss", "grad_norm", "peak_memory_gb")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: r[k] for k in r if k in keep or k.startswith(("time/", "reward", "mismatch/", "tokens"))}
            for r in rows]


def grpo(model: Path, out: Path, *, lora: bool, steps: int, resume: bool = False) -> dict[str, Any]:
    import torch
    import yaml

    from stateset_agents.training.build import build_trainer
    from stateset_agents.training.config import load_config

    preset = out.parent / "varied_reward.yaml"  # the outcome is 0 for every random-weight episode: add text terms
    preset.write_text(yaml.safe_dump({"name": "cuda_check", "combine": "sum", "components": [
        {"type": "outcome", "weight": 1.0}, {"type": "repetition", "weight": 1.0},
        {"type": "length_window", "weight": 1.0, "params": {"min_words": 0, "max_words": 20}}]}))
    cfg = load_config({"model": str(model), "env": "customer_service", "reward": str(preset),
                       "tool_prompt": "compact", "max_turns": 2, "max_new_tokens": 32, "context_tokens": 1024,
                       "group_size": 4, "scenarios_per_step": 2, "max_steps": steps, "use_lora": lora,
                       "lora_r": 16, "lora_alpha": 32, "learning_rate": 1e-4, "micro_batch_size": 8,
                       "eval_before": False, "eval_after": False, "progress": False, "save_every": 1,
                       "output_dir": str(out), "seed": 0})
    torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg)
    before = {k: v.detach().float().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    t0 = time.perf_counter()
    trainer.train(resume=resume)
    wall = time.perf_counter() - t0
    moved = max((v.detach().float() - before[k]).abs().max().item()
                for k, v in trainer.model.named_parameters() if k in before)
    p = next(trainer.model.parameters())
    return {"resolved": {"device": str(p.device), "dtype": str(p.dtype), "mixed_precision": cfg.mixed_precision,
                         "rollout_precision": cfg.rollout_precision},
            "wall_s": round(wall, 2), "max_abs_weight_change": moved,
            "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3), "metrics": metrics(out)}


def sft(model: Path, out: Path) -> dict[str, Any]:
    import torch

    from stateset_agents.training.build import build_trainer
    from stateset_agents.training.config import load_config

    cfg = load_config({"algorithm": "sft", "model": str(model), "env": "customer_service",
                       "reward": "customer_service", "tool_prompt": "compact", "use_lora": True, "lora_r": 16,
                       "lora_alpha": 32, "learning_rate": 1e-4, "max_steps": 2, "batch_size": 8,
                       "micro_batch_size": 4, "demonstrations": {"from": "reference", "seeds": 1},
                       "eval_before": False, "eval_after": False, "progress": False, "save_every": 0,
                       "output_dir": str(out), "seed": 0})
    torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg)
    t0 = time.perf_counter()
    trainer.train()
    return {"wall_s": round(time.perf_counter() - t0, 2),
            "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3), "metrics": metrics(out)}


def decode(model: Path, batch: int = 8, new: int = 64, repeats: int = 3) -> dict[str, Any]:
    import torch

    from stateset_agents.models.hf import HFChatModel
    from stateset_agents.types import Message, SamplingParams

    m = HFChatModel(model, dtype="bfloat16", device="cuda", max_batch_size=32)
    prompts = [[Message(role="system", content="You are a customer-service agent."),
                Message(role="user", content=f"My order ORD-{1000 + i} has not arrived. Where is it?")]
               for i in range(batch)]
    sp = SamplingParams(temperature=1.0, max_new_tokens=new, seed=0)

    async def engine_once() -> tuple[float, int]:
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(m.chat(p, sampling=sp) for p in prompts))
        torch.cuda.synchronize()
        return time.perf_counter() - t0, sum(len(o.completion_ids or []) for o in outs)

    tok, hf = m.tokenizer, m.model
    tok.padding_side = "left"
    texts = [tok.apply_chat_template([x.model_dump(include={"role", "content"}) for x in p], tokenize=False,
                                     add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True).to("cuda")

    def generate_once() -> tuple[float, int]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0,
                              pad_token_id=tok.pad_token_id)
        torch.cuda.synchronize()
        return time.perf_counter() - t0, int(out.shape[0] * (out.shape[1] - enc["input_ids"].shape[1]))

    asyncio.run(engine_once())
    generate_once()
    rows: dict[str, list[float]] = {"engine_tok_s": [], "generate_tok_s": []}
    for _ in range(repeats):  # alternating
        s, n = asyncio.run(engine_once())
        rows["engine_tok_s"].append(round(n / s, 1))
        s, n = generate_once()
        rows["generate_tok_s"].append(round(n / s, 1))
    m.close()
    return {"batch": batch, "new_tokens": new, **rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-files", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cuda_check"))
    ap.add_argument("--sections", default="", help="comma-separated subset of the section names (default: all)")
    args = ap.parse_args()
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the CUDA path; run it on a GPU machine", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                              "gpu": torch.cuda.get_device_name(0)}
    model = build_model(args.model_files, args.work / "model")
    sections = {
        "grpo_lora_2_steps": lambda: grpo(model, args.work / "g_lora", lora=True, steps=2),
        "grpo_lora_resumed_to_3": lambda: grpo(model, args.work / "g_lora", lora=True, steps=3, resume=True),
        "grpo_full_1_step": lambda: grpo(model, args.work / "g_full", lora=False, steps=1),
        "sft_lora_2_steps": lambda: sft(model, args.work / "sft"),
        "decode_b8": lambda: decode(model),
    }
    chosen = [x for x in args.sections.split(",") if x] or list(sections)
    for name, fn in ((n, sections[n]) for n in chosen):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # a failing section is recorded and the rest still run
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"{name}: {time.perf_counter() - t0:.1f} s", json.dumps(report[name], default=str)[:1500], flush=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0 if not any(isinstance(v, dict) and "error" in v for v in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
