"""One way to name an environment, for every CLI verb and for :func:`~stateset_agents.evaluation.load_domain`.

``resolve_env(spec)`` accepts, in this order:

1. a registered Gymnasium id (``stateset/CustomerService-v0``, or a plugin's id): its pack and ``make()`` kwargs;
2. a pack folder (holding ``pack.yaml`` and ``scenarios/``), relative or absolute;
3. a built-in pack name (``customer_service``, ``tech_support``, ``sales``).

Anything else raises :class:`~stateset_agents.errors.ConfigError` in one line that names the value, says which of
the three it looked like, and gives the fix (close matches, or ``stateset-agents envs list``). A malformed pack
raises :class:`~stateset_agents.errors.PackError` naming the file and field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, did_you_mean

__all__ = ["resolve_env"]

_GYM_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+-v\d+$")
_LIST = "`stateset-agents envs list` shows them"


def resolve_env(spec: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """``(pack, kwargs)``: the loaded :class:`~stateset_agents.envs.EnvPack` and the registered id's ``make()``
    kwargs (without ``pack``; empty for a folder or pack name). See the module docs for what ``spec`` may be."""
    from .envs import builtin_pack_dirs, load_pack, registered_envs

    text = str(spec).strip()
    if not text:
        raise ConfigError(f"--env {str(spec)!r} is empty; pass a registered id, a pack folder or a built-in pack "
                          f"name ({_LIST})")
    registered = registered_envs()
    if text in registered:
        kwargs = dict(registered[text])
        return load_pack(kwargs.pop("pack")), kwargs
    path = Path(text).expanduser()
    builtins = builtin_pack_dirs()
    if path.exists():
        return _load(load_pack, _pack_folder(path)), {}
    if text in builtins:
        return _load(load_pack, text), {}
    raise _unknown(text, list(registered), list(builtins))


def _load(load_pack: Any, where: str | Path) -> Any:
    from .errors import PackError

    try:
        return load_pack(where)
    except PackError as e:
        raise PackError(f"{e}; fix the pack (docs/environments.md has the schema; `stateset-agents envs validate "
                        f"{where}` checks it)", file=e.file, scenario=e.scenario, field=e.field) from e


def _pack_folder(path: Path) -> Path:
    if path.is_file():
        if path.name == "pack.yaml":
            return path.parent
        raise ConfigError(f"environment {str(path)!r} is a file; pass the pack folder that holds pack.yaml and "
                          "scenarios/ (see docs/environments.md)")
    if not (path / "pack.yaml").is_file():
        raise ConfigError(f"environment folder {str(path)!r} has no pack.yaml; pass a pack folder (pack.yaml and "
                          "scenarios/*.yaml, see docs/environments.md) or a built-in pack name")
    return path


def _unknown(text: str, ids: list[str], packs: list[str]) -> ConfigError:
    if not _GYM_ID.match(text) and (os.sep in text or text.startswith((".", "~"))):
        return ConfigError(f"environment folder {text!r} does not exist; pass an existing pack folder, a "
                           f"built-in pack ({', '.join(packs)}) or a registered id ({_LIST})")
    hint = did_you_mean(text, ids + packs)
    hint = hint + " " if hint else ""
    return ConfigError(f"unknown environment {text!r}: not a registered id, a pack folder or a built-in pack. {hint}"
                       f"Built-in packs: {', '.join(packs)}; {_LIST}")
