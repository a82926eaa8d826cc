"""What ``--model`` names, and loading it as an :class:`HFChatModel`.

``--model`` is one of:

- ``default``: SmolLM2-135M-Instruct (:func:`stateset_agents.models.default.default_model_path`);
- a model folder (``save_pretrained`` layout: ``config.json``, weights, tokenizer files), e.g. a full fine-tune's
  ``checkpoints/step-N``;
- a LoRA adapter folder (peft layout: ``adapter_config.json``, ``adapter_model.safetensors``), e.g. a LoRA run's
  ``checkpoints/step-N``. Its base model is the ``model`` field of the ``config.yaml`` next to it (the run's config),
  else peft's ``base_model_name_or_path``; the adapter is merged into the base weights once at load time, so
  serving costs what the base model costs. The tokenizer is the base model's;
- a run folder (with ``checkpoints/``): its latest complete checkpoint, whichever of the two kinds it is.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..models.default import DEFAULT_MODEL_NAME, model_folder

__all__ = ["ModelSource", "load_served_model", "resolve_model"]


@dataclass(frozen=True)
class ModelSource:
    kind: str
    """``default``, ``folder`` or ``adapter``."""
    path: Path
    """The model folder, or the adapter folder."""
    base: Path | None = None
    """For an adapter: the base model folder."""
    name: str = ""
    """The id served at ``/v1/models``."""


def _base_of_adapter(adapter: Path) -> Path:
    spec = None
    for cfg in (adapter / "config.yaml", adapter.parent.parent / "config.yaml"):
        if cfg.is_file():
            data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
            if isinstance(data, dict) and isinstance(data.get("model"), str):
                spec = data["model"]
                break
    if spec is None:
        import json

        spec = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not spec:
        raise ConfigError(f"adapter {str(adapter)!r} does not say which base model it adapts (no config.yaml with "
                          "`model`, no base_model_name_or_path in adapter_config.json); serve the base model folder "
                          "with the adapter merged, or add config.yaml with `model: PATH`")
    return model_folder(spec, described=f"the base model {spec!r} of adapter {str(adapter)!r}",
                        fix="it must exist on this machine")


def resolve_model(spec: str | os.PathLike[str], name: str | None = None) -> ModelSource:
    """What ``spec`` names (see the module docs); checks the folders without loading any weights."""
    if str(spec) == "default":
        return ModelSource("default", model_folder(spec), name=name or DEFAULT_MODEL_NAME)
    p = Path(spec).expanduser()
    if not p.is_dir():
        raise ConfigError(f"model {str(spec)!r} is not a folder; pass 'default', a model folder, an adapter folder "
                          "or a run folder")
    if (p / "checkpoints").is_dir() and not (p / "config.json").is_file():
        from ..training.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise ConfigError(f"run folder {str(p)!r} has no complete checkpoint (checkpoints/step-N with "
                              "trainer_state.json) yet; wait for the first checkpoint or serve another model")
        return resolve_model(ckpt, name=name or f"{p.resolve().name}/{ckpt.name}")
    default_name = name or (f"{p.resolve().parent.parent.name}/{p.name}" if p.parent.name == "checkpoints"
                            else p.resolve().name)
    if (p / "adapter_config.json").is_file():
        return ModelSource("adapter", p, base=_base_of_adapter(p), name=default_name)
    if (p / "config.json").is_file():
        return ModelSource("folder", p, name=default_name)
    raise ConfigError(f"{str(p)!r} holds neither a model (config.json) nor a LoRA adapter (adapter_config.json) "
                      "nor checkpoints/; pass 'default', a model folder, an adapter folder or a run folder")


def load_served_model(spec: str | os.PathLike[str], *, name: str | None = None, dtype: str = "float32",
                      device: str = "cpu", max_batch_size: int = 32) -> Any:
    """Load what ``spec`` names as an :class:`HFChatModel` (adapters merged into their base)."""
    from ..models.hf import HFChatModel

    src = resolve_model(spec, name)
    if src.kind != "adapter":
        return HFChatModel(src.path, dtype=dtype, device=device, max_batch_size=max_batch_size, name=src.name)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from peft import PeftModel
    except ImportError as e:
        from ..errors import ModelNotInstalledError

        raise ModelNotInstalledError("serving a LoRA adapter needs peft: pip install 'stateset-agents[train]'") from e
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    tokenizer = AutoTokenizer.from_pretrained(src.base)
    base = AutoModelForCausalLM.from_pretrained(src.base, dtype=dtypes[dtype])
    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        merged = PeftModel.from_pretrained(base, src.path).merge_and_unload()
    return HFChatModel(model=merged.to(device), tokenizer=tokenizer, max_batch_size=max_batch_size, name=src.name)
