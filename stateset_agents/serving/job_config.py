"""Checking a ``POST /api/jobs`` request before any process starts.

:func:`validate_job` reads the config (a file through the path resolver, or the fields), applies the overrides,
loads it with ``load_config`` (unknown fields, bad values, cross-field rules: 400 naming the field), then:

- checks every endpoint in the config, in the reward preset it names and in the env pack's manifest against the
  server's allow-list (:mod:`.egress`);
- sends every name that becomes a path through :func:`~.paths.resolve_job_path`: ``model``, ``init_from``,
  ``env``, ``reward``, ``learner``, ``experiences``, and inside a reward preset its rubric files, lexicons,
  pack names and judge cache. Resolved paths replace the client's spelling in the job's config;
- makes sure the env pack and reward preset load.

It returns the config to write, a reward preset to write into the run folder (a file preset with its paths
resolved; None for a built-in), and the key variables the job's environment gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, PackError
from .egress import EndpointPolicy
from .errors import APIError
from .paths import resolve_job_path

__all__ = ["ValidatedJob", "read_config_file", "validate_job"]

_RUBRIC_SUFFIXES = (".md", ".markdown", ".txt", ".yaml", ".yml")


@dataclass
class ValidatedJob:
    config: Any
    """The loaded config, paths resolved."""
    reward_preset: dict[str, Any] | None
    """A file preset's content with its paths resolved (written to ``RUN_DIR/reward.yaml``), or None."""
    key_vars: list[str]
    """Environment variables of allowed endpoints the job uses."""


def _builtins(kind: str) -> list[str]:
    from ..envs.pack import builtin_pack_dirs, pack_root

    if kind == "env":
        return list(builtin_pack_dirs())
    folder = {"reward": "presets", "lexicon": "lexicons"}[kind]
    root = pack_root("rewards") / folder
    return sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []


def read_config_file(value: str, roots: list[Path]) -> dict[str, Any]:
    path = Path(resolve_job_path(value, "config", roots, kind="config file"))
    if not path.is_file():
        raise APIError(400, f"field 'config': {value!r} is not a file", param="config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise APIError(400, f"field 'config': {value!r} is not valid YAML: {e}", param="config") from e
    if not isinstance(data, dict):
        raise APIError(400, f"field 'config': {value!r} must hold a mapping of fields", param="config")
    return data


def _model_folder(value: str, field: str, roots: list[Path], names: tuple[str, ...]) -> str:
    resolved = resolve_job_path(value, field, roots, builtins=names, kind="model folder")
    if resolved not in names and not (Path(resolved) / "config.json").is_file():
        raise APIError(400, f"field {field!r}: {value!r} is not a model folder (no config.json)", param=field)
    return resolved


def _env(value: str, roots: list[Path], policy: EndpointPolicy) -> str:
    from ..envs.pack import builtin_pack_dirs

    resolved = resolve_job_path(value, "config.env", roots, builtins=_builtins("env"), kind="environment pack")
    path = builtin_pack_dirs()[resolved] if resolved in builtin_pack_dirs() else Path(resolved)
    manifest = path / "pack.yaml"
    if not manifest.is_file():
        raise APIError(400, f"field 'config.env': {value!r} is not a folder with pack.yaml", param="config.env")
    try:
        policy.check_tree(yaml.safe_load(manifest.read_text(encoding="utf-8")), param="config.env",
                          where=str(manifest))
    except yaml.YAMLError as e:
        raise APIError(400, f"field 'config.env': {manifest} is not valid YAML: {e}", param="config.env") from e
    return str(path)  # a built-in by its folder: a folder of the same name under the server's cwd cannot shadow it


def _preset_params(spec: dict[str, Any], where: str, roots: list[Path]) -> None:
    """Resolve, in place, the paths a preset component's params name."""
    params = spec.get("params")
    if not isinstance(params, dict):
        return
    field = "config.reward"
    rubric = params.get("rubric")
    if isinstance(rubric, str) and "\n" not in rubric and rubric.strip().endswith(_RUBRIC_SUFFIXES):
        params["rubric"] = resolve_job_path(rubric.strip(), field, roots, kind=f"rubric file ({where}.rubric)")
    if isinstance(params.get("cache"), str):
        params["cache"] = resolve_job_path(params["cache"], field, roots, kind=f"judge cache ({where}.cache)",
                                           must_exist=False)
    if isinstance(params.get("lexicon"), str):
        params["lexicon"] = resolve_job_path(params["lexicon"], field, roots, builtins=_builtins("lexicon"),
                                             kind=f"lexicon ({where}.lexicon)")
    if isinstance(params.get("packs"), list):
        params["packs"] = [resolve_job_path(p, field, roots, builtins=_builtins("env"),
                                            kind=f"environment pack ({where}.packs)") for p in params["packs"]]


def _reward(value: str, roots: list[Path], policy: EndpointPolicy) -> tuple[str, dict[str, Any] | None, list]:
    from ..rewards.presets import preset_path

    resolved = resolve_job_path(value, "config.reward", roots, builtins=_builtins("reward"), kind="reward preset")
    path = preset_path(resolved) if resolved in _builtins("reward") else Path(resolved)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        raise APIError(400, f"field 'config.reward': {value!r} is not a reward preset file (a .yaml file) nor a "
                            f"built-in preset ({', '.join(_builtins('reward'))})", param="config.reward")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise APIError(400, f"field 'config.reward': cannot read {path}: {e}", param="config.reward") from e
    used = policy.check_tree(data, param="config.reward", where=str(path))
    if resolved in _builtins("reward"):
        return resolved, None, used
    if isinstance(data, dict) and isinstance(data.get("components"), list):
        for i, spec in enumerate(data["components"]):
            if isinstance(spec, dict):
                _preset_params(spec, f"{path}: components.{i}.params", roots)
    return str(path), data, used


def validate_job(request_config: str | dict[str, Any], overrides: dict[str, Any], run_dir: Path,
                 roots: list[Path], policy: EndpointPolicy) -> ValidatedJob:
    """See the module docs; :class:`APIError` 400 naming the field for anything refused."""
    from ..envs.pack import load_pack
    from ..rewards.presets import load_reward
    from ..training import load_config

    data = read_config_file(request_config, roots) if isinstance(request_config, str) else dict(request_config)
    data.update(overrides)
    data.update(output_dir=str(run_dir), progress=False)
    try:
        cfg = load_config(data)
    except ConfigError as e:
        raise APIError(400, str(e).replace("config: ", "field 'config': ", 1), param="config") from e
    used = policy.check_tree(cfg.model_dump(mode="json"), "config")
    updates: dict[str, Any] = {"model": _model_folder(cfg.model, "config.model", roots, ("default",))}
    learner = getattr(cfg, "learner", None)
    if isinstance(learner, str):
        updates["learner"] = _model_folder(learner, "config.learner", roots, ("same", "default"))
    for field in ("init_from", "experiences"):
        value = getattr(cfg, field, None)
        if isinstance(value, str):
            updates[field] = resolve_job_path(value, f"config.{field}", roots, kind=field.replace("_", " "))
    updates["env"] = _env(cfg.env, roots, policy)
    updates["reward"], preset, reward_used = _reward(cfg.reward, roots, policy)
    cfg = cfg.model_copy(update=updates)
    try:
        load_pack(cfg.env)
    except PackError as e:
        raise APIError(400, f"field 'config.env': {e}", param="config.env") from e
    try:
        load_reward(cfg.reward)
    except (PackError, ConfigError) as e:
        raise APIError(400, f"field 'config.reward': {e}", param="config.reward") from e
    keys = sorted({e.key_env for e in [*used, *reward_used] if e.key_env})
    return ValidatedJob(config=cfg, reward_preset=preset, key_vars=keys)
