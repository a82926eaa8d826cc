"""The one resolver for every name in a job request that becomes a path.

A job config names files and folders: the config file itself, ``model``, ``env``, ``reward``, ``learner`` and,
inside a reward preset, rubric and lexicon files and a judge cache. Each of them goes through
:func:`resolve_job_path`, which accepts exactly two things:

- a built-in name: it matches :data:`BUILTIN_NAME` (lowercase letters, digits and ``_``; no dots, no separators)
  and is one of the names the caller lists (``customer_service``, ``default``, ...). It is returned unchanged;
- an existing path that resolves, with ``~`` expanded, relative paths taken from the server's working folder, ``..``
  collapsed and every symlink followed, to a location inside one of the allowed folders (``--runs-dir`` and each
  ``--allowed-dir``). The resolved absolute path is returned, so the job process opens the checked location and
  not the client's spelling of it.

Anything else (a name that is not built in, a path outside the folders, a symlink pointing out, a NUL byte) is
400 naming the field, its value, where it resolves, and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import APIError

__all__ = ["BUILTIN_NAME", "resolve_job_path"]

BUILTIN_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}", re.ASCII)
"""What a built-in name looks like; anything else is a path."""


def _refuse(field: str, message: str) -> APIError:
    return APIError(400, f"field {field!r}: {message}", param=field)


def resolve_job_path(value: str, field: str, roots: Sequence[Path], *, builtins: Iterable[str] = (),
                     kind: str = "file", must_exist: bool = True, cwd: Path | None = None) -> str:
    """``value`` unchanged when it is a built-in name, else its resolved path inside ``roots`` (see the module
    docs); :class:`APIError` 400 with ``param=field`` otherwise. ``kind`` words the error ("reward preset");
    ``must_exist=False`` accepts a path not created yet (a cache file)."""
    names = sorted(set(builtins))
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _refuse(field, f"{value!r} is not a {kind} name or path; use a built-in name"
                             f"{' (' + ', '.join(names) + ')' if names else ''} or a path inside the allowed folders")
    if BUILTIN_NAME.fullmatch(value):
        if value in names:
            return value
        known = f"the built-in names are {', '.join(names)}" if names else f"there are no built-in {kind} names"
        raise _refuse(field, f"{value!r} is not a built-in {kind} ({known}); a file or folder must be given as a "
                             "path with a '/', inside the allowed folders")
    base = cwd if cwd is not None else Path.cwd()
    try:
        path = Path(os.path.expanduser(value))
        resolved = (path if path.is_absolute() else base / path).resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, an unreadable component
        raise _refuse(field, f"{value!r} cannot be resolved ({e}); give a plain path inside the allowed "
                             "folders") from e
    real_roots = [Path(r).resolve() for r in roots]
    if not any(resolved == r or resolved.is_relative_to(r) for r in real_roots):
        shown = ", ".join(str(r) for r in real_roots) or "(none)"
        raise _refuse(field, f"{value!r} resolves to {str(resolved)!r}, outside the directories jobs may use "
                             f"({shown}); put the {kind} there or start the server with --allowed-dir")
    if must_exist and not resolved.exists():
        raise _refuse(field, f"{value!r} ({str(resolved)!r}) does not exist; check the path")
    return str(resolved)
