"""From a config to a ready trainer: the model, the agent, the env factory, the reward and the evaluator.

``build_trainer(config)`` is what ``stateset-agents train CONFIG`` runs. Every input is checked before any model
is loaded: the env pack, the reward preset, the scenario ids, and the model folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import GRPOConfig
from .dist import DistContext

__all__ = ["build_trainer", "make_env_factory", "make_evaluator", "resolve_device", "resolve_model_path"]


def resolve_model_path(spec: str) -> Path:
    """``default`` -> the converted SmolLM2 folder; a folder with config.json; or a clear error."""
    if spec == "default":
        from ..models.default import default_model_path

        return default_model_path()
    p = Path(spec)
    if not (p / "config.json").is_file():
        raise ConfigError(f"model {spec!r} is not a model folder (no config.json); use 'default' or the path of a "
                          "folder written by save_pretrained")
    return p


def resolve_device(device: str, dist: DistContext) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA device is available; use device: cpu")
        return f"cuda:{dist.local_rank}"
    return device


def make_env_factory(env: str, *, max_turns: int | None = None) -> Any:
    from ..envs import ConversationEnv, load_pack

    pack = load_pack(env)  # raises PackError naming the pack when it does not exist or is malformed
    return functools.partial(ConversationEnv, pack, split="all", max_turns=max_turns)


def make_evaluator(config: GRPOConfig, env_factory: Any, reward: Any, dist: DistContext) -> Any:
    """An evaluator for the trainer: the eval split, ``eval_k`` trials per scenario, the same seeds every time,
    sharded over processes; writes ``eval_<tag>.json`` and, after training, prints the before/after table."""
    from ..evaluation import EvalReport, aevaluate, compare

    probe = env_factory()
    try:
        pool = [s.id for s in probe.pack.split(config.eval_split)]
    finally:
        probe.close()
    if config.eval_scenarios is not None:
        unknown = [s for s in config.eval_scenarios if s not in pool]
        if unknown:
            raise ConfigError(f"eval_scenarios {unknown} are not in split {config.eval_split!r}; choose from {pool}")
        pool = list(config.eval_scenarios)
    if not pool and (config.eval_before or config.eval_after or config.eval_every):
        raise ConfigError(f"split {config.eval_split!r} has no scenarios to evaluate on; set eval_split, or turn "
                          "evaluation off (eval_before: false, eval_after: false)")

    async def evaluate(trainer: Any, tag: str) -> dict[str, Any]:
        from ..models.base import SamplingParams

        saved = trainer.agent.sampling
        trainer.agent.sampling = SamplingParams(temperature=config.eval_temperature,
                                                max_new_tokens=config.max_new_tokens)
        try:
            report = await aevaluate(trainer.agent, env_factory, pool, k=config.eval_k, reward=reward,
                                     seed=config.seed + 1_000_003, rank=dist.rank, world_size=dist.world_size,
                                     progress=False, domain=Path(config.env).name)
        finally:
            trainer.agent.sampling = saved
        if dist.distributed:
            report = EvalReport.merge(dist.all_gather_object(report))
        if dist.is_main:
            report.save(trainer.run_dir / f"eval_{tag}.json")
            if tag == "after" and (trainer.run_dir / "eval_before.json").is_file():
                from rich.console import Console

                before = EvalReport.load(trainer.run_dir / "eval_before.json")
                Console().print(compare(before, report))
        return json.loads(report.to_json())

    return evaluate


def build_trainer(config: Any, *, dist: DistContext | None = None) -> Any:
    """A GRPOTrainer (or, for ``algorithm: training_free``, a TrainingFreeGRPO) built from a loaded config."""
    if getattr(config, "algorithm", None) == "training_free":
        from .training_free import build_training_free

        return build_training_free(config)
    if not isinstance(config, GRPOConfig):
        raise ConfigError(f"build_trainer needs a GRPOConfig, got {type(config).__name__}")
    from ..agents import MultiTurnAgent
    from ..models.base import SamplingParams
    from ..models.hf import HFChatModel
    from ..rewards import load_reward
    from .trainer import GRPOTrainer

    env_factory = make_env_factory(config.env, max_turns=config.max_turns)
    reward = load_reward(config.reward)
    path = resolve_model_path(config.model)
    dist = dist or DistContext.from_env("cuda" if config.device == "cuda" else "cpu")
    device = resolve_device(config.device, dist)
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    model = HFChatModel(path, dtype=dtype, device=device, max_batch_size=config.max_batch_size,
                        name="policy" if config.model != "default" else None)
    agent = MultiTurnAgent(model, domain=config.resolved_domain(), context_tokens=config.context_tokens,
                           sampling=SamplingParams(temperature=config.temperature,
                                                   max_new_tokens=config.max_new_tokens))
    evaluator = None
    if config.eval_before or config.eval_after or config.eval_every:
        evaluator = make_evaluator(config, env_factory, reward, dist)
    return GRPOTrainer(agent, env_factory, reward, config, dist=dist, evaluator=evaluator)
