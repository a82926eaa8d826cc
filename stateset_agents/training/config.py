"""``load_config``: a YAML file (or a dict) into the config of the algorithm its ``algorithm`` field names.

``grpo`` (the default) gives a :class:`~.grpo_config.GRPOConfig`, ``sft`` an :class:`~.sft_config.SFTConfig`,
``training_free`` a :class:`~.tf_config.TrainingFreeConfig`; all share :class:`~.run_config.RunConfig`. Unknown
fields are errors, each field has one docstring line, and cross-field checks say what to change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .grpo_config import GRPOConfig
from .run_config import PolicyConfig, RunConfig, format_validation_error
from .sft_config import SFTConfig
from .tf_config import TrainingFreeConfig

__all__ = ["ALGORITHMS", "GRPOConfig", "PolicyConfig", "RunConfig", "SFTConfig", "TrainingFreeConfig",
           "format_validation_error", "load_config"]

ALGORITHMS: dict[str, type[RunConfig]] = {"grpo": GRPOConfig, "sft": SFTConfig, "training_free": TrainingFreeConfig}
"""``algorithm`` value -> its config class."""


def _read(path_or_dict: str | os.PathLike[str] | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict), "config"
    path = Path(path_or_dict)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass the path of a YAML config "
                          "(see examples/customer_service.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of fields, got {type(data).__name__}")
    return data, str(path)


def load_config(path_or_dict: str | os.PathLike[str] | dict[str, Any], **overrides: Any) -> Any:
    """Read a YAML config (or a dict) into the config class of its ``algorithm`` (default ``grpo``).

    ``overrides`` replace fields (e.g. ``output_dir=`` from the CLI; None leaves a field as it is). Errors name the
    file and the field.
    """
    data, source = _read(path_or_dict)
    data.update({k: v for k, v in overrides.items() if v is not None})
    algorithm = data.get("algorithm", "grpo")
    cls = ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if cls is None:
        names = ", ".join(repr(n) for n in ALGORITHMS)
        raise ConfigError(f"{source}: field 'algorithm': {algorithm!r} is not one of {names}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from e
