"""Registration of conversation environments with Gymnasium, and third-party plugins.

Built-in ids: ``stateset/CustomerService-v0``, ``stateset/TechSupport-v0``, ``stateset/Sales-v0``.
A third-party package registers its own through the entry-point group ``stateset_agents.environments``:
each entry point names a callable that takes no arguments and registers environments, usually with
:func:`register_pack`. Plugins load when ``stateset_agents`` is imported; a failing plugin raises
:class:`PluginError` naming it (set ``STATESET_AGENTS_NO_PLUGINS=1`` to skip plugins).
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import gymnasium as gym

from ..errors import PluginError
from .pack_schema import unknown_scenario as unknown_scenario

__all__ = ["BUILTIN_ENVS", "ENTRY_POINT_GROUP", "load_plugins", "register_builtin_envs", "register_pack",
           "registered_envs", "unknown_scenario"]

ENTRY_POINT_GROUP = "stateset_agents.environments"
BUILTIN_ENVS = {
    "stateset/CustomerService-v0": "customer_service",
    "stateset/TechSupport-v0": "tech_support",
    "stateset/Sales-v0": "sales",
}
_ENTRY = "stateset_agents.envs.conversation:ConversationEnv"


def register_pack(pack: str | os.PathLike[str], env_id: str, **defaults: Any) -> None:
    """Register a pack (built-in name or folder) under a Gymnasium id; ``defaults`` become make() kwargs."""
    pack_arg = str(Path(pack).resolve()) if Path(pack).exists() else str(pack)
    if env_id in gym.registry:
        existing = gym.registry[env_id]
        if existing.entry_point == _ENTRY and existing.kwargs.get("pack") == pack_arg:
            return
        raise PluginError(f"environment id {env_id!r} is already registered (entry point "
                          f"{existing.entry_point}, kwargs {existing.kwargs}); pick another id")
    gym.register(id=env_id, entry_point=_ENTRY, kwargs={"pack": pack_arg, **defaults})


def register_builtin_envs() -> None:
    for env_id, name in BUILTIN_ENVS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=_ENTRY, kwargs={"pack": name})


def load_plugins() -> list[str]:
    """Call every ``stateset_agents.environments`` entry point; return their names."""
    if os.environ.get("STATESET_AGENTS_NO_PLUGINS"):
        return []
    loaded = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            hook = ep.load()
            if not callable(hook):
                raise TypeError(f"{ep.value} is a {type(hook).__name__}, not a callable")
            hook()
        except Exception as e:
            dist = getattr(ep.dist, "name", "?")
            raise PluginError(f"environment plugin {ep.name!r} ({ep.value}, package {dist}) failed: "
                              f"{type(e).__name__}: {e}. Fix or uninstall that package, or set "
                              "STATESET_AGENTS_NO_PLUGINS=1 to skip plugins") from e
        loaded.append(ep.name)
    return loaded


def registered_envs() -> dict[str, dict[str, Any]]:
    """Every Gymnasium id whose entry point is ConversationEnv, with its kwargs."""
    return {k: dict(v.kwargs) for k, v in gym.registry.items() if v.entry_point == _ENTRY}

