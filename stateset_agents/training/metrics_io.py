"""The one reader of a run's JSONL logs (``metrics.jsonl``, ``learner.jsonl``), used by every trainer's resume.

A run killed while writing leaves a torn last line (a prefix of a JSON object). Such a line is what a crash
produces, so it is skipped; any other line that is not a JSON object means the file was edited or corrupted, and
reading stops with an error naming the file and the line (nothing is silently dropped from the middle of a log).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import TrainingError

__all__ = ["keep_rows_through_step", "read_rows"]


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per non-blank line; a torn last line is skipped. Missing file: ``[]``."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, x) for n, x in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if x.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # the torn last line of a killed run
            raise TrainingError(f"{path}: line {n} is not JSON ({e.msg}) and is not the last line, so it is not "
                                "a torn write; fix or remove that line") from e
        if not isinstance(row, dict):
            raise TrainingError(f"{path}: line {n} is {type(row).__name__}, not a JSON object; fix or remove it")
        rows.append(row)
    return rows


def keep_rows_through_step(path: str | os.PathLike[str], step: int) -> None:
    """Rewrite ``path`` atomically (temp file + rename) with the rows of steps <= ``step`` only (and no torn line)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_rows(path) if r.get("step", 0) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
    os.replace(tmp, path)
