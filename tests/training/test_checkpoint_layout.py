"""Checkpoint layout: the top level of ``checkpoints/step-N`` holds only what a model loader reads (vLLM loads every
top-level ``*.safetensors`` of a folder without an index as weights); the trainer's own tensors live in
``trainer_state/``; checkpoints of the older layout (those files at the top level) still resume."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from stateset_agents.errors import ConfigError
from stateset_agents.training.checkpoint import STATE_DIR
from stateset_agents.training.loop import RunLoop

from .test_trainer import CharCount, make_trainer

SMALL = dict(scenarios_per_step=2, group_size=2, max_new_tokens=8, use_lora=False, save_every=1)


def _top_level_weights(ckpt) -> set[str]:
    return {p.name for p in ckpt.glob("*.safetensors")}


def test_full_checkpoint_holds_only_model_weights_at_the_top(tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, advantage_estimator="gae", **SMALL)
    trainer.train()
    ckpt = tmp_path / "run/checkpoints/step-1"
    index = ckpt / "model.safetensors.index.json"
    files = _top_level_weights(ckpt)
    if index.is_file():  # sharded: exactly the shards the index names
        assert files == set(json.loads(index.read_text())["weight_map"].values())
    else:
        assert files == {"model.safetensors"}
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    names = set(model.state_dict())
    for f in files:
        with safe_open(str(ckpt / f), framework="pt") as h:
            assert set(h.keys()) <= names  # model tensors only: nothing a loader would choke on
    own = {p.name for p in (ckpt / STATE_DIR).iterdir()}
    assert {"optimizer.safetensors", "optimizer.json", "rng.safetensors", "value_head.safetensors",
            "value_optimizer.safetensors", "value_optimizer.json"} <= own
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "config.yaml").is_file()


def _to_old_layout(ckpt) -> None:
    for p in (ckpt / STATE_DIR).iterdir():
        shutil.move(str(p), str(ckpt / p.name))
    (ckpt / STATE_DIR).rmdir()


def _optimizer_tensors(opt) -> dict[str, torch.Tensor]:
    return {f"{pid}.{k}": v.clone() for pid, st in opt.state_dict()["state"].items() for k, v in st.items()
            if torch.is_tensor(v)}


@pytest.mark.parametrize("layout", ["new", "old"])
def test_resume_restores_the_optimizer_from_either_layout(tiny_model_path, tmp_path, layout):
    first = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, **SMALL)
    first.train()
    want = _optimizer_tensors(first.optimizer)
    assert want  # AdamW moments exist after a step
    ckpt = tmp_path / "run/checkpoints/step-1"
    if layout == "old":
        _to_old_layout(ckpt)
        assert not (ckpt / STATE_DIR).exists() and (ckpt / "optimizer.safetensors").is_file()
    second = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, **SMALL)
    RunLoop(second).load_checkpoint(ckpt)
    got = _optimizer_tensors(second.optimizer)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0)
    third = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, **SMALL)
    third.train(resume=True)  # from the same checkpoint, on to step 2, written in the new layout
    assert third.step == 2
    new = tmp_path / "run/checkpoints/step-2"
    assert (new / STATE_DIR / "optimizer.safetensors").is_file() and _top_level_weights(new) == {"model.safetensors"}


def test_incomplete_checkpoint_names_the_missing_file(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, **SMALL)
    trainer.train()
    ckpt = tmp_path / "run/checkpoints/step-1"
    (ckpt / STATE_DIR / "optimizer.safetensors").unlink()
    again = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, **SMALL)
    with pytest.raises(ConfigError, match=r"no trainer_state/optimizer\.safetensors \(nor optimizer\.safetensors"):
        again.train(resume=True)
