"""Environment packs: the data that defines a conversation domain.

A pack is a folder with ``pack.yaml`` (tools, policy, defaults) and one or more scenario files under
``scenarios/*.yaml``. Packs are data, not code: tool behaviour is described with a handful of generic
effects (``get``, ``find``, ``update``, ``create``) and conditions over ``$args``, ``$record``, ``$policy``
and ``$db`` references. See docs/environments.md for the full format.

``load_pack(name_or_path)`` validates everything on load; a malformed pack raises :class:`PackError`
naming the file, the scenario id and the field.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from ..errors import PackError
from .pack_schema import (
    EnvPack,
    FactSpec,
    Goal,
    HiddenFact,
    PackPolicy,
    ReferenceStep,
    Scenario,
    ToolEffect,
    ToolSpec,
    UserProfile,
)
from .pack_schema import Mood as Mood
from .pack_schema import Privacy as Privacy
from .rules import ClaimSpec, Condition, ForbiddenAction, ForbiddenStatement, RequiredAction
from .validate import check_claims, check_pack

__all__ = [
    "ClaimSpec",
    "Condition",
    "EnvPack",
    "FactSpec",
    "ForbiddenAction",
    "ForbiddenStatement",
    "Goal",
    "HiddenFact",
    "PackPolicy",
    "ReferenceStep",
    "RequiredAction",
    "Scenario",
    "ToolEffect",
    "ToolSpec",
    "UserProfile",
    "builtin_pack_dirs",
    "load_pack",
    "pack_root",
]


def _pkg_dir() -> Path:
    return Path(__file__).resolve().parent.parent


def pack_root(kind: Literal["environments", "rewards"]) -> Path:
    """Where built-in packs live: inside the installed wheel, or at the root of a source checkout."""
    env = os.environ.get(f"STATESET_{kind.upper()}_DIR")
    if env:
        return Path(env)
    inside = _pkg_dir() / "_packs" / kind
    if inside.is_dir():
        return inside
    return _pkg_dir().parent / kind


def builtin_pack_dirs() -> dict[str, Path]:
    root = pack_root("environments")
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "pack.yaml").is_file()}


def _read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise PackError(f"{path}: not valid YAML: {e}", file=str(path)) from e
    except OSError as e:
        raise PackError(f"{path}: cannot read: {e}", file=str(path)) from e


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def _pack_error(path: Path, e: ValidationError, scenario: str | None, prefix: str = "") -> PackError:
    first = e.errors()[0]
    field = prefix + _loc(first)
    where = f"scenario {scenario!r}, " if scenario else ""
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return PackError(f"{path}: {where}field {field!r}: {first['msg']}{more}", file=str(path),
                     scenario=scenario, field=field)


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    p = Path(name_or_path)
    if (p / "pack.yaml").is_file():
        return p
    builtins = builtin_pack_dirs()
    if str(name_or_path) in builtins:
        return builtins[str(name_or_path)]
    import difflib

    close = difflib.get_close_matches(str(name_or_path), list(builtins), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise PackError(f"no environment pack {str(name_or_path)!r}: not a folder with pack.yaml and not a "
                    f"built-in pack ({', '.join(builtins) or 'none installed'}).{hint}", file=str(name_or_path))


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, mtime_key: tuple[float, ...]) -> EnvPack:
    return _load(Path(path))


def load_pack(name_or_path: str | os.PathLike[str]) -> EnvPack:
    """Load and validate a pack by built-in name (``customer_service``) or folder path."""
    path = _resolve(name_or_path).resolve()
    files = [path / "pack.yaml", *sorted((path / "scenarios").glob("*.yaml"))]
    return _load_cached(str(path), tuple(f.stat().st_mtime for f in files))


def _load(path: Path) -> EnvPack:
    head_file = path / "pack.yaml"
    head = _read_yaml(head_file)
    if not isinstance(head, dict):
        raise PackError(f"{head_file}: must be a mapping of pack fields, got {type(head).__name__}",
                        file=str(head_file))
    if "scenarios" in head:
        raise PackError(f"{head_file}: field 'scenarios': put scenarios in scenarios/*.yaml, not pack.yaml",
                        file=str(head_file), field="scenarios")
    try:
        pack = EnvPack.model_validate({**head, "path": str(path)})
    except ValidationError as e:
        raise _pack_error(head_file, e, None) from e
    check_claims(pack.policy.claims, head_file, "")
    scenarios: list[Scenario] = []
    seen: dict[str, Path] = {}
    sdir = path / "scenarios"
    for f in sorted(sdir.glob("*.yaml")):
        data = _read_yaml(f)
        if data is None:
            continue
        if not isinstance(data, list):
            raise PackError(f"{f}: must be a list of scenarios, got {type(data).__name__}", file=str(f))
        for i, raw in enumerate(data):
            sid = raw.get("id") if isinstance(raw, dict) else None
            label = sid or f"#{i}"
            try:
                s = Scenario.model_validate(raw)
            except ValidationError as e:
                raise _pack_error(f, e, label) from e
            if s.id in seen:
                raise PackError(f"{f}: scenario {s.id!r}, field 'id': duplicate id, also in {seen[s.id]}",
                                file=str(f), scenario=s.id, field="id")
            seen[s.id] = f
            check_pack(pack, s, f)
            scenarios.append(s)
    if not scenarios:
        raise PackError(f"{path}: no scenarios; add a list of scenarios in {sdir}/*.yaml",
                        file=str(sdir), field="scenarios")
    pack.scenarios = scenarios
    return pack
