"""--model: the default model, a model folder, a LoRA adapter, a run folder's latest checkpoint; served for real."""

from __future__ import annotations

import asyncio
import json
import warnings

import httpx
import pytest
import torch

from stateset_agents import Message, SamplingParams
from stateset_agents.errors import ConfigError
from stateset_agents.models.hf import HFChatModel
from stateset_agents.models.testing import build_tiny_model
from stateset_agents.serving.loading import resolve_model

from .conftest import AUTH, make_config
from .harness import ServerThread

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)
MSGS = [Message(role="user", content="Where is my order?")]


def _complete(path) -> None:
    (path / "trainer_state.json").write_text(json.dumps({"step": int(path.name[5:])}))


def _adapter_run(base, run):
    """A LoRA run folder like the trainer writes: checkpoints/step-3 with a peft adapter (non-zero B, so it
    changes the model) and the run's config.yaml naming the base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                    LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ckpt = run / "checkpoints" / "step-3"
    peft_model.save_pretrained(ckpt)
    (ckpt / "config.yaml").write_text(f"model: {base}\nuse_lora: true\n")
    _complete(ckpt)
    return ckpt, peft_model.merge_and_unload()


def _served_text(config, **body) -> tuple[str, str]:
    with ServerThread(config) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        name = c.get("/v1/models").json()["data"][0]["id"]
        r = c.post("/v1/chat/completions", json={"model": name, "messages": [m.to_openai() for m in MSGS],
                                                  "temperature": 0, "max_tokens": 12, **body})
        return name, r.json()["choices"][0]["message"]["content"]


def test_a_run_folder_serves_its_latest_full_checkpoint(tmp_path, tiny_model_path):
    run = tmp_path / "run"
    build_tiny_model(run / "checkpoints" / "step-1", seed=1)
    build_tiny_model(run / "checkpoints" / "step-2", seed=2)
    build_tiny_model(run / "checkpoints" / "step-9", seed=9)  # not complete: no trainer_state.json
    for step in ("step-1", "step-2"):
        _complete(run / "checkpoints" / step)
    src = resolve_model(run)
    assert (src.kind, src.path.name, src.name) == ("folder", "step-2", "run/step-2")
    name, text = _served_text(make_config(tmp_path, model=str(run)))
    local = HFChatModel(run / "checkpoints" / "step-2")
    try:
        assert name == "run/step-2"
        assert text == asyncio.run(local.chat(MSGS, sampling=GREEDY)).text
    finally:
        local.close()


def test_a_lora_adapter_is_merged_into_its_base_and_served(tmp_path, tiny_model_path, tiny_model):
    ckpt, merged = _adapter_run(tiny_model_path, tmp_path / "lora-run")
    src = resolve_model(tmp_path / "lora-run")
    assert (src.kind, src.path, src.base) == ("adapter", ckpt, tiny_model_path)
    local = HFChatModel(model=merged, tokenizer=tiny_model.tokenizer)
    try:
        expected = asyncio.run(local.chat(MSGS, sampling=GREEDY)).text
    finally:
        local.close()
    base_text = asyncio.run(tiny_model.chat(MSGS, sampling=GREEDY)).text
    assert expected != base_text  # the adapter really changes the model
    for model in (tmp_path / "lora-run", ckpt):  # the run folder, or the checkpoint itself
        name, text = _served_text(make_config(tmp_path, model=str(model)))
        assert name == "lora-run/step-3"
        assert text == expected


def test_default_resolves_to_smollm2_without_loading_it():
    src = resolve_model("default")
    assert src.kind == "default" and src.name == "SmolLM2-135M-Instruct"
    assert (src.path / "config.json").is_file()


def test_bad_model_specs(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder; pass 'default', a model folder"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds neither a model .config.json. nor a LoRA adapter"):
        resolve_model(tmp_path / "empty")
    (tmp_path / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no complete checkpoint"):
        resolve_model(tmp_path / "run")
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match="is not a model folder .no config.json.; it must exist on this machine"):
        resolve_model(orphan)
