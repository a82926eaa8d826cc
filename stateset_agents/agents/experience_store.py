"""Reading and writing an experience library's JSON through fsspec.

A local path (the default) is written to a temp file in the same folder, fsynced and renamed over the old file, so
a crash leaves the previous library intact; other URLs (``memory://``, ``s3://`` ...) are written to a temporary
object and moved into place.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

from ..atomic import write_text_atomic as _write_local
from ..errors import ConfigError

__all__ = ["read_library_json", "write_text_atomic"]


def read_library_json(url: str, fmt: str) -> dict[str, Any]:
    """The JSON object at ``url`` (a local path or an fsspec URL), checked to be a library of format ``fmt``."""
    import fsspec

    try:
        with fsspec.open(url, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise ConfigError(f"no experience library at {url!r}; pass the experiences.json of a Training-Free GRPO "
                          "run (RUN_DIR/experiences.json)") from e
    except (OSError, ValueError, ImportError) as e:
        raise ConfigError(f"cannot read experience library {url!r}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{url!r} is not valid JSON ({e}); it is not an experience library") from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ConfigError(f"{url!r} is not an experience library (expected \"format\": {fmt!r}); pass the "
                          "experiences.json written by Training-Free GRPO")
    return data


def write_text_atomic(url: str, text: str) -> str:
    """Write ``text`` to ``url``: locally a fsynced temp file renamed over the old one; elsewhere a temporary
    object moved into place. A crash leaves the previous file intact."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        p = _write_local(path, text)
        return str(p)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    tmp = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp" if parent else f".{path}.{uuid.uuid4().hex}.tmp"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    return url
