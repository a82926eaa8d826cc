"""NeuralReward's persistence: ``save`` and ``load`` (two files, each written atomically; see ``neural.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from ..errors import ConfigError, validation_error_text
from .base import RewardFunction
from .neural_model import NeuralRewardConfig
from .neural_online import Mode

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "Persistence"]

_R = TypeVar("_R", bound="Persistence")

CONFIG_FILE = "neural_reward.json"
WEIGHTS_FILE = "neural_reward.safetensors"
_FORMAT = "stateset_agents.NeuralReward"
_VERSION = 1


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Persistence:
    """``save`` and ``load`` of a :class:`~.neural.NeuralReward` (a mixin)."""

    def _encoder_record(self) -> str:
        from ..models.default import embedding_model_path

        path = getattr(self.embedder, "path", None)
        if path is None:
            return f"custom:{type(self.embedder).__name__}"
        try:
            if Path(path).resolve() == embedding_model_path().resolve():
                return "default"
        except ImportError:
            pass
        return str(Path(path).resolve())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head and its config into the folder ``path`` (created if needed), each file atomically."""
        from safetensors.torch import save_file

        if self._head is None or not self._trained:
            raise ConfigError(f"NeuralReward {self.name!r} has nothing to save: the head is untrained")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in self._head.state_dict().items()}
        _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": _FORMAT}))
        record = {
            "format": _FORMAT, "version": _VERSION, "name": self.name, "encoder": self._encoder_record(),
            "embed_dim": int(self.embedder.dim), "input_dim": int(self._head[0].in_features),
            "features": "reply,context,reply*context" if self.config.use_context else "reply",
            "config": self.config.model_dump(mode="json"), "holdout_spearman": self._stats.holdout_spearman,
            "weights_file": WEIGHTS_FILE, "weights_sha256": _sha256(folder / WEIGHTS_FILE),
        }
        text = json.dumps(record, indent=2) + "\n"
        _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return folder

    @classmethod
    def load(cls: type[_R], path: str | os.PathLike[str], *, teacher: RewardFunction | None = None,
             mode: Mode | None = None, embedder: Any = None) -> _R:
        """A NeuralReward from a folder written by :meth:`save` (trained head; empty buffer and held-out slice)."""
        folder = Path(path)
        record = _read_record(folder)
        if embedder is None:
            embedder = _embedder_for(record["encoder"], folder / CONFIG_FILE)
        if int(embedder.dim) != record["embed_dim"]:
            raise ConfigError(f"{folder / CONFIG_FILE} was trained on {record['embed_dim']}-dimensional embeddings "
                              f"but the embedder gives {embedder.dim}; pass the encoder it was trained with")
        try:
            config = NeuralRewardConfig.model_validate(record["config"])
        except ValidationError as e:
            raise ConfigError(f"{folder / CONFIG_FILE} has a bad 'config': {validation_error_text(e)}") from e
        reward = cls(teacher, mode=mode, config=config, embedder=embedder, name=record.get("name", "neural"))
        head = reward._ensure_head(record["input_dim"])
        try:
            head.load_state_dict(_read_weights(folder / WEIGHTS_FILE, record))
        except RuntimeError as e:
            raise ConfigError(f"{folder / WEIGHTS_FILE} does not fit the head described in {CONFIG_FILE}: {e}") from e
        reward._trained = True
        return reward




def _read_record(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder; pass the folder NeuralReward.save() wrote")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file} is missing; the folder was not written by NeuralReward.save() or the save was "
                          "interrupted; save again")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file} is corrupt ({type(e).__name__}: {e}); save the reward again") from e
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise ConfigError(f"{file} is not a NeuralReward config (format {record.get('format') if isinstance(record, dict) else None!r}, "
                          f"expected {_FORMAT!r})")
    if record.get("version") != _VERSION:
        raise ConfigError(f"{file} has format version {record.get('version')!r}; this library reads version {_VERSION}")
    missing = [k for k in ("encoder", "embed_dim", "input_dim", "config", "weights_sha256") if k not in record]
    if missing:
        raise ConfigError(f"{file} lacks the fields {missing}; save the reward again")
    return record


def _read_weights(file: Path, record: dict[str, Any]) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise ConfigError(f"{file} is missing; the folder holds only half a NeuralReward; save it again")
    if _sha256(file) != record["weights_sha256"]:
        raise ConfigError(f"{file} does not match {file.with_name(CONFIG_FILE).name} (sha256 differs): it is "
                          "corrupt or from another save; save the reward again")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{file} is corrupt ({e}); save the reward again") from e


def _embedder_for(encoder: str, file: Path) -> Any:
    from .embeddings import Embedder, default_embedder

    if encoder == "default":
        return default_embedder()
    if encoder.startswith("custom:"):
        raise ConfigError(f"{file} was saved with a custom embedder ({encoder[7:]}); pass it as embedder=")
    if not (Path(encoder) / "config.json").is_file():
        raise ConfigError(f"the encoder folder {encoder!r} named in {file} does not exist here; pass "
                          "embedder=Embedder(FOLDER) with the same encoder")
    return Embedder(encoder)
