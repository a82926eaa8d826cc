"""From a config to a ready trainer: the model (with ``init_from``'s weights), the agent, the env factory, the reward
and the evaluator.

``build_trainer(config)`` is what ``stateset-agents train CONFIG`` runs, for every ``algorithm``. Every input is checked before any model
is loaded: the env pack, the reward preset, the scenario ids, and the model folder.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .dist import DistContext
from .grpo_config import GRPOConfig
from .sft_config import SFTConfig
from .tf_config import TrainingFreeConfig

__all__ = ["build_trainer", "build_training_free", "load_model", "make_env_factory", "make_evaluator",
           "resolve_device", "resolve_model_path"]


def resolve_model_path(spec: str) -> Path:
    """``default`` -> the converted SmolLM2 folder; a folder with config.json; or a clear error
    (:func:`~stateset_agents.models.default.model_folder`)."""
    from ..models.default import model_folder

    return model_folder(spec)


def resolve_device(device: str, dist: DistContext) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but no CUDA device is available; use device: cpu")
        return f"cuda:{dist.local_rank}"
    return device


def make_env_factory(env: str, *, max_turns: int | None = None, prompt: str = "full", variants: int = 0,
                     seed: int = 0) -> Any:
    """A factory of fresh ConversationEnvs over the pack ``env`` (all splits), with ``variants`` variants of each train
    scenario added (envs/variants.py) and the pack's ``prompt`` (``full`` or ``compact``) instructions."""
    from ..envs import ConversationEnv, load_pack
    from ..envs.variants import with_variants

    pack = load_pack(env)  # raises PackError naming the pack when it does not exist or is malformed
    if variants:
        pack = with_variants(pack, variants, seed=seed)
    return functools.partial(ConversationEnv, pack, split="all", max_turns=max_turns, prompt=prompt)


def config_env_factory(config: Any) -> Any:
    """:func:`make_env_factory` with a run config's ``env``, ``max_turns``, ``tool_prompt`` and ``train_variants``."""
    return make_env_factory(config.env, max_turns=config.max_turns, prompt=config.tool_prompt,
                            variants=config.train_variants, seed=config.seed)


def make_evaluator(config: GRPOConfig, env_factory: Any, reward: Any, dist: DistContext) -> Any:
    """An evaluator for the trainer: the eval split, ``eval_k`` trials per scenario, once per ``eval_seeds`` seed (the
    same seeds every time), sharded over processes; writes ``eval/<tag>-seed<S>.json`` per seed and
    ``eval_<tag>.json`` (the first seed's report) and, after training, prints the before/after table."""
    from ..evaluation import EvalReport, aevaluate, compare
    from .evaluate import eval_decoding
    from .scenarios import run_scenarios

    _, _, pool = run_scenarios(env_factory, config)  # eval_scenarios checked, with close matches

    async def evaluate(trainer: Any, tag: str) -> dict[str, Any]:
        reports = []
        with eval_decoding(trainer.agent, config, env_factory):
            for seed in config.eval_seeds:  # the same seeds as SFT's and Training-Free's evaluation: paired rows
                report = await aevaluate(trainer.agent, env_factory, pool, k=config.eval_k, reward=reward,
                                         seed=seed, rank=dist.rank, world_size=dist.world_size,
                                         progress=False, domain=Path(config.env).name)
                if dist.distributed:
                    report = EvalReport.merge(dist.all_gather_object(report))
                reports.append(report)
        report = reports[0]
        if dist.is_main:
            for seed, r in zip(config.eval_seeds, reports, strict=True):
                r.save(trainer.run_dir / "eval" / f"{tag}-seed{seed}.json")
            report.save(trainer.run_dir / f"eval_{tag}.json")  # the first seed's report (the HTML report reads it)
            if tag == "after" and (trainer.run_dir / "eval_before.json").is_file():
                from rich.console import Console

                before = EvalReport.load(trainer.run_dir / "eval_before.json")
                Console().print(compare(before, report))
        return json.loads(report.to_json())

    return evaluate


def load_model(config: Any, dist: DistContext, *, name: str = "policy") -> Any:
    """The config's local model (an HFChatModel) on its device, with ``init_from``'s weights when given."""
    from ..models.hf import HFChatModel

    path = resolve_model_path(config.model)
    if config.init_from is not None and not Path(config.init_from).is_dir():
        raise ConfigError(f"init_from {config.init_from!r} is not a folder; give the output_dir of an earlier run")
    device = resolve_device(config.device, dist)
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    model = HFChatModel(path, dtype=dtype, device=device, max_batch_size=config.max_batch_size,
                        name=name if config.model != "default" else None)
    if config.init_from is not None:
        from .policy import init_weights_from

        init_weights_from(model, config.init_from, config.model)
    return model


def _agent(config: Any, model: Any, domain: str | None) -> Any:
    from ..agents import MultiTurnAgent
    from ..models.base import SamplingParams

    return MultiTurnAgent(model, domain=domain, context_tokens=config.context_tokens, tool_prompt=config.tool_prompt,
                          sampling=SamplingParams(temperature=config.temperature,
                                                  max_new_tokens=config.max_new_tokens))


def _dist(config: Any, dist: DistContext | None) -> DistContext:
    return dist or DistContext.from_env("cuda" if config.device == "cuda" else "cpu")


def _build_grpo(config: GRPOConfig, dist: DistContext | None) -> Any:
    from ..rewards import load_reward
    from .trainer import GRPOTrainer

    env_factory = config_env_factory(config)
    reward = load_reward(config.reward)
    dist = _dist(config, dist)
    agent = _agent(config, load_model(config, dist), config.resolved_domain())
    evaluator = None
    if config.eval_before or config.eval_after or config.eval_every:
        evaluator = make_evaluator(config, env_factory, reward, dist)
    return GRPOTrainer(agent, env_factory, reward, config, dist=dist, evaluator=evaluator)


def _build_sft(config: SFTConfig, dist: DistContext | None) -> Any:
    from ..rewards import load_reward
    from .sft import SFTTrainer

    env_factory = config_env_factory(config)
    reward = load_reward(config.reward)
    dist = _dist(config, dist)
    agent = _agent(config, load_model(config, dist), config.resolved_domain())
    return SFTTrainer(agent, env_factory, reward, config, dist=dist)


def build_training_free(config: TrainingFreeConfig, *, embedder: Any = None) -> Any:
    """A ready TrainingFreeGRPO from a config: the agent model, the learner, the env, the reward.

    Every input is checked before a model is loaded (pack, reward preset, learner spec, model folders)."""
    from ..agents.multiturn import strategies
    from ..models.hf import HFChatModel
    from ..rewards import load_reward
    from .tf_config import LearnerEndpoint
    from .training_free import TrainingFreeGRPO

    env_factory = config_env_factory(config)
    reward = load_reward(config.reward)
    resolve_model_path(config.model)
    spec = config.learner
    learner_path = resolve_model_path(spec) if isinstance(spec, str) and spec not in ("same", "default") else None
    dist = DistContext()
    model = load_model(config, dist, name="agent")
    if isinstance(spec, LearnerEndpoint):
        from ..models.openai import OpenAIChatModel

        learner: Any = OpenAIChatModel(spec.base_url, spec.model, api_key_env=spec.api_key_env,
                                       timeout=spec.timeout, max_retries=spec.max_retries)
    elif learner_path is not None:
        device = resolve_device(config.device, dist)
        dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        learner = HFChatModel(learner_path, dtype=dtype, device=device, max_batch_size=config.max_batch_size,
                              name="learner")
    else:
        learner = model
    domain = config.domain
    if domain is None:
        probe = env_factory()
        try:
            domain = probe.pack.domain
        finally:
            probe.close()
    agent = _agent(config, model, domain if domain in strategies() else None)
    return TrainingFreeGRPO(agent, env_factory, reward, config, learner=learner, embedder=embedder)


def build_trainer(config: Any, *, dist: DistContext | None = None) -> Any:
    """The trainer of ``config.algorithm`` (GRPOTrainer, SFTTrainer or TrainingFreeGRPO) built from a loaded
    config; every input is checked before a model is loaded."""
    if isinstance(config, TrainingFreeConfig):
        return build_training_free(config)
    if isinstance(config, SFTConfig):
        return _build_sft(config, dist)
    if isinstance(config, GRPOConfig):
        return _build_grpo(config, dist)
    raise ConfigError(f"build_trainer needs a config from load_config (GRPOConfig, SFTConfig or TrainingFreeConfig), "
                      f"got {type(config).__name__}")
