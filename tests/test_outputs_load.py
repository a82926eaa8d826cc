"""What training writes loads in the tools people serve with: a LoRA checkpoint with
`peft.PeftModel.from_pretrained`, a full fine-tune checkpoint with `AutoModelForCausalLM.from_pretrained`, each
giving the trained model's logits exactly (tiny model, one real GRPO step)."""

import json
from pathlib import Path

import pytest
import torch

from stateset_agents.training import load_config
from stateset_agents.training.build import build_trainer

TOY = str(Path(__file__).parent / "training" / "toy_pack")


def _train(tiny_model_path, tmp_path, use_lora):
    # a reward that differs within a group of gibberish replies, so the one step really moves the weights
    preset = tmp_path / "varied.yaml"
    preset.write_text("name: varied\ncomponents:\n  - {type: repetition, weight: 1.0}\n"
                      "  - {type: length_window, weight: 1.0}\n")
    cfg = load_config({"algorithm": "grpo", "model": str(tiny_model_path), "env": TOY, "reward": str(preset),
                       "max_steps": 1, "max_new_tokens": 16, "scenarios_per_step": 2, "group_size": 4,
                       "use_lora": use_lora, "learning_rate": 5e-2, "progress": False, "save_every": 1,
                       "eval_before": False, "eval_after": False, "output_dir": str(tmp_path / "run")})
    trainer = build_trainer(cfg)
    trainer.train()
    ckpt = tmp_path / "run" / "checkpoints" / "step-1"
    assert ckpt.is_dir()
    return trainer, ckpt


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


# peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing` inside from_pretrained (upstream, not ours)
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_checkpoint_loads_with_peft(tiny_model_path, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    trainer, ckpt = _train(tiny_model_path, tmp_path, use_lora=True)
    assert (ckpt / "adapter_config.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    spec = json.loads((ckpt / "adapter_config.json").read_text())
    # what vLLM needs to pair the adapter with its base: the folder the run trained from, and the rank
    assert Path(spec["base_model_name_or_path"]).resolve() == Path(tiny_model_path).resolve() and spec["r"] == 8
    ids = torch.tensor([[1, 5, 9, 12, 40, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    base_logits = _logits(base, ids)
    loaded = peft.PeftModel.from_pretrained(base, str(ckpt))
    got = _logits(loaded, ids)
    want = _logits(trainer.model, ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, base_logits, atol=1e-4)  # the adapter is really in there
    merged = loaded.merge_and_unload()  # what a server without LoRA support would load
    assert torch.allclose(_logits(merged, ids), want, atol=1e-4)


def test_full_checkpoint_loads_with_auto_model(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer, ckpt = _train(tiny_model_path, tmp_path, use_lora=False)
    assert (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()
    # the only top-level *.safetensors is the model's: vLLM loads them all as weights (the optimiser, RNG and
    # value-head tensors are in trainer_state/, which no loader reads)
    assert [p.name for p in ckpt.glob("*.safetensors")] == ["model.safetensors"]
    assert (ckpt / "trainer_state" / "optimizer.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.apply_chat_template([{"role": "user", "content": "Where is my order?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    want = _logits(trainer.model, ids)
    assert torch.allclose(_logits(model, ids), want, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    assert not torch.allclose(_logits(base, ids), want, atol=1e-4)  # the trained weights, not the base ones
