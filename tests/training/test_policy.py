"""The policy's one SamplingParams: recorded on every completion, read back by the loss; estimators by name."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.errors import ConfigError
from stateset_agents.models.hf import HFChatModel
from stateset_agents.rollout import rollout
from stateset_agents.training import GRPOConfig
from stateset_agents.training.advantages import ESTIMATORS, GAE, GroupRelative
from stateset_agents.training.batch import samples_from_trajectories
from stateset_agents.training.build import make_env_factory
from stateset_agents.training.policy import sample_temperature
from stateset_agents.training.trainer import GRPOTrainer

from .test_trainer import CharCount

TOY = str(Path(__file__).parent / "toy_pack")


def test_completions_record_the_policys_sampling_and_the_loss_reads_it(tiny_model_path, tmp_path):
    config = GRPOConfig(model=str(tiny_model_path), env=TOY, temperature=0.8, max_new_tokens=6, group_size=2,
                        scenarios_per_step=2, max_steps=1, use_lora=False, eval_before=False, eval_after=False,
                        progress=False, save_every=0, output_dir=str(tmp_path / "run"))
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None)
    trainer = GRPOTrainer(agent, make_env_factory(TOY), CharCount(), config)
    assert trainer.policy.sampling.temperature == 0.8
    agent.sampling = trainer.policy.sampling  # what every step does before its rollout
    groups = asyncio.run(rollout(agent, trainer.env_factory, ["toy-000"], 2, concurrency=2, seed=0, progress=False))
    completions = [c for g in groups for t in g.trajectories for c in t.completions]
    assert completions and all(c.sampling == trainer.policy.sampling.model_copy(update={"seed": c.sampling.seed})
                               for c in completions)  # each turn's own seed, the policy's parameters
    samples = samples_from_trajectories([t for g in groups for t in g.trajectories])
    assert {s.temperature for s in samples} == {0.8}
    assert sample_temperature(samples) == 0.8
    samples[0].temperature = 1.0
    with pytest.raises(ConfigError, match="mixes completions drawn at temperatures"):
        sample_temperature(samples)
    assert {"grpo": GroupRelative, "gae": GAE} == ESTIMATORS
    assert type(trainer.estimator) is GroupRelative and trainer.value_head is None


def test_completions_decoded_under_a_json_schema_or_grammar_are_refused_for_training():
    from stateset_agents import Completion, SamplingParams, Trajectory
    from stateset_agents.training.batch import samples_from_trajectories

    c = Completion(text="{}", prompt_ids=[1, 2], completion_ids=[3], logprobs=[-0.1],
                   sampling=SamplingParams(json_schema={"type": "object"}))
    t = Trajectory(scenario_id="s1", completions=[c], reward=1.0)
    with pytest.raises(ValueError, match="decoded under a grammar"):
        samples_from_trajectories([t])
    g = Completion(text="hi", prompt_ids=[1, 2], completion_ids=[3], logprobs=[-0.1],
                   sampling=SamplingParams(grammar="start: /[a-z]+/"))  # constrain_tool_calls' kind
    with pytest.raises(ValueError, match="constrain_tool_calls"):
        samples_from_trajectories([Trajectory(scenario_id="s1", completions=[g], reward=1.0)])


def test_trim_heap_returns_freed_memory_where_glibc_runs():
    import platform

    from stateset_agents.training.policy import trim_heap

    ok = trim_heap()
    assert isinstance(ok, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok
