"""Checkpoints: written atomically, read without unpickling anything.

A checkpoint is a folder ``checkpoints/step-N/`` whose top level is what a model loader reads:

- ``adapter_model.safetensors`` + ``adapter_config.json`` (LoRA, peft's layout) or ``model.safetensors`` (or
  sharded ``model-*.safetensors`` + ``model.safetensors.index.json``) + ``config.json`` + the tokenizer files (full
  fine-tune, ``save_pretrained`` layout): a folder you can serve. The only ``*.safetensors`` at the top level are
  the model's (vLLM loads every top-level ``*.safetensors`` of a folder without an index as weights);
- ``trainer_state/`` (:data:`STATE_DIR`): the trainer's own tensors, which no model loader looks into:
  ``optimizer.safetensors`` + ``optimizer.json`` (the optimiser's tensors, and its hyperparameters and non-tensor
  state as JSON), ``rng.safetensors`` (torch RNG states), ``value_head.safetensors`` +
  ``value_optimizer.safetensors`` + ``value_optimizer.json`` (with ``advantage_estimator: gae``);
- ``trainer_state.json`` (step, format, scheduler state, numpy/python RNG states, the algorithm's JSON state) and
  ``config.yaml`` (the run's config), beside the weights: JSON and YAML, which loaders ignore.

Checkpoints written before ``trainer_state/`` existed hold those files at the top level; :func:`state_file` finds a
file in either place, so they still resume (and ``init_from`` them still works).

It is written into ``checkpoints/.tmp-step-N-*`` and renamed into place with one ``os.replace``, so a crash leaves
either the whole checkpoint or none. Loading uses ``safetensors`` and ``json`` only.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import ConfigError

__all__ = ["STATE_DIR", "latest_checkpoint", "load_optimizer", "optimizer_tensors", "restore_rng", "rng_tensors",
           "save_atomically", "state_dir", "state_file", "write_json_atomic"]

STATE_DIR = "trainer_state"
"""The subfolder of a checkpoint that holds the trainer's own tensors (optimiser, RNG, value head)."""


def state_dir(folder: Path) -> Path:
    """Where a writer puts the trainer's own files in checkpoint ``folder`` (created)."""
    d = Path(folder) / STATE_DIR
    d.mkdir(exist_ok=True)
    return d


def state_file(folder: Path, name: str) -> Path:
    """The trainer file ``name`` of checkpoint ``folder``: ``trainer_state/NAME``, or ``NAME`` at the top level in
    a checkpoint written before ``trainer_state/`` existed. Missing in both: a :class:`ConfigError` naming both."""
    new, old = Path(folder) / STATE_DIR / name, Path(folder) / name
    if new.is_file():
        return new
    if old.is_file():
        return old
    raise ConfigError(f"checkpoint {str(folder)!r} has no {STATE_DIR}/{name} (nor {name}, as older checkpoints "
                      "had); it is incomplete: resume from another checkpoint or start the run again")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def save_atomically(dest: Path, write: Any) -> Path:
    """Call ``write(tmp_folder)`` then rename the folder to ``dest`` (replacing an older one)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{dest.name}-"))
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".old-{dest.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete ``checkpoints/step-N`` of a run folder, or None."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and (p / "trainer_state.json").is_file():
            try:
                steps.append((int(p.name[5:]), p))
            except ValueError:
                continue
    return max(steps)[1] if steps else None


# ------------------------------------------------------------------ optimiser state without pickle
def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = meta["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ConfigError(f"the checkpoint's optimiser has {len(groups)} parameter groups but this one has "
                          f"{len(optimizer.param_groups)}; resume with the same config")
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------ RNG states
def rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_json(random.getstate()),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    n = meta["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    random.setstate(_py_state_from_json(meta["python"]))


def _py_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_json(data: list) -> tuple:
    return (data[0], tuple(data[1]), data[2])
