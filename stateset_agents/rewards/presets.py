"""Reward presets: data files in ``rewards/presets/NAME.yaml`` that build a combined reward.

```yaml
name: customer_service
description: What this preset is for.
combine: sum            # sum | mean | geometric | min
normalize: null         # null | zscore | minmax (within each group, per component)
components:
  - {type: outcome, weight: 1.0}
  - {type: efficiency, weight: 0.1, params: {max_turns: 12}}
  - {type: ruler, weight: 0.5, params: {rubric: customer_service}, when: judge}
```

``type`` is one of :data:`COMPONENT_TYPES`. ``when: judge`` includes the component only when ``load_reward`` is
given a ``judge`` (RULER needs one). A malformed preset raises :class:`PackError` naming the file and the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError, PackError, error_location, validation_error_text
from .base import RewardFunction
from .components import (
    EfficiencyReward,
    LengthWindowReward,
    LexiconReward,
    OutcomeReward,
    RepetitionPenalty,
    ToolUseReward,
)
from .compose import Combined

__all__ = ["COMPONENT_TYPES", "ComponentSpec", "RewardPreset", "load_reward", "preset_path"]


def _ruler(params: dict[str, Any], ctx: dict[str, Any]) -> RewardFunction:
    from .ruler import RulerReward

    return RulerReward(ctx["judge"], **params)


def _similarity(params: dict[str, Any], ctx: dict[str, Any]) -> RewardFunction:
    from .similarity import ReferenceSimilarity

    return ReferenceSimilarity(embedder=ctx.get("embedder"), **params)


COMPONENT_TYPES: dict[str, Callable[[dict[str, Any], dict[str, Any]], RewardFunction]] = {
    "outcome": lambda p, c: OutcomeReward(**p),
    "tool_use": lambda p, c: ToolUseReward(**p),
    "efficiency": lambda p, c: EfficiencyReward(**p),
    "length_window": lambda p, c: LengthWindowReward(**p),
    "repetition": lambda p, c: RepetitionPenalty(**p),
    "lexicon": lambda p, c: LexiconReward(**p),
    "heuristic_empathy": lambda p, c: LexiconReward("empathy", **p),
    "heuristic_professionalism": lambda p, c: LexiconReward("professionalism", **p),
    "heuristic_action_orientation": lambda p, c: LexiconReward("action_orientation", **p),
    "similarity": _similarity,
    "ruler": _ruler,
}


class ComponentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[tuple(COMPONENT_TYPES)]  # type: ignore[valid-type]
    weight: float = Field(ge=0)
    """0 = log only."""
    params: dict[str, Any] = Field(default_factory=dict)
    when: Literal["always", "judge"] = "always"


class RewardPreset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    combine: Literal["sum", "mean", "geometric", "min"] = "sum"
    normalize: Literal["zscore", "minmax"] | None = None
    components: list[ComponentSpec] = Field(min_length=1)


def preset_path(name_or_path: str | os.PathLike[str]) -> Path:
    from ..envs.pack import pack_root

    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    root = pack_root("rewards") / "presets"
    path = root / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(x.stem for x in root.glob("*.yaml"))
        raise ConfigError(f"no reward preset {str(name_or_path)!r}; built-in presets: {', '.join(known)}; or pass "
                          "the path of a .yaml file")
    return path


def load_reward(name_or_path: str | os.PathLike[str], *, judge: Any = None, embedder: Any = None) -> Combined:
    """Build the combined reward of a preset (built-in name or YAML path)."""
    path = preset_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PackError(f"{path}: cannot read reward preset: {e}", file=str(path)) from e
    try:
        preset = RewardPreset.model_validate(raw)
    except ValidationError as e:
        raise PackError(f"{path}: {validation_error_text(e, limit=1)}", file=str(path),
                        field=error_location(e.errors()[0])) from e
    ctx = {"judge": judge, "embedder": embedder}
    parts = []
    for i, spec in enumerate(preset.components):
        if spec.when == "judge" and judge is None:
            continue
        try:
            fn = COMPONENT_TYPES[spec.type](dict(spec.params), ctx)
        except TypeError as e:
            raise PackError(f"{path}: field 'components.{i}.params': {e}", file=str(path),
                            field=f"components.{i}.params") from e
        parts.append((fn, spec.weight))
    try:
        return Combined(parts, combine=preset.combine, normalize=preset.normalize, name=preset.name)
    except ConfigError as e:
        raise PackError(f"{path}: field 'components': {e}", file=str(path), field="components") from e
