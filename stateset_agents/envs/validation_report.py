"""``stateset-agents envs validate``: load a pack and replay every reference solution."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .pack import EnvPack, load_pack
from .reference import replay_reference

__all__ = ["ScenarioCheck", "validate_pack"]


@dataclass
class ScenarioCheck:
    scenario_id: str
    split: str
    outcome: dict[str, Any]

    @property
    def ok(self) -> bool:
        return bool(self.outcome["success"])


def validate_pack(name_or_path: str | EnvPack) -> tuple[EnvPack, list[ScenarioCheck]]:
    """Validate the pack's schema (raises PackError) and replay each reference solution."""
    pack = name_or_path if isinstance(name_or_path, EnvPack) else load_pack(name_or_path)

    async def run() -> list[ScenarioCheck]:
        return [ScenarioCheck(s.id, s.split, await replay_reference(pack, s)) for s in pack.scenarios]

    return pack, asyncio.run(run())
