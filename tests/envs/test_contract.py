"""The Gymnasium contract: check_env on every registered env and every built-in scenario."""

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from stateset_agents import ConversationEnv
from stateset_agents.envs import BUILTIN_ENVS, MAX_ACTION_CHARS, MAX_OBSERVATION_CHARS
from tests.conftest import ALL_SCENARIOS


@pytest.mark.parametrize("env_id", list(BUILTIN_ENVS))
def test_check_env_on_registered_env(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize(("env_id", "pack", "scenario_id"), ALL_SCENARIOS)
def test_check_env_on_every_scenario(env_id, pack, scenario_id):
    env = gym.make(env_id, scenario=scenario_id)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert info["scenario_id"] == scenario_id
    env.close()


def test_spaces_hold_real_text():
    env = gym.make("stateset/CustomerService-v0")
    text = "Señora Müller’s “order” — café, naïve, 東京, 👍\n\tok"
    assert env.observation_space.contains(text)
    assert env.action_space.contains(text)
    assert env.action_space.max_length == MAX_ACTION_CHARS
    assert env.observation_space.max_length == MAX_OBSERVATION_CHARS
    env.close()


def test_make_kwargs_reach_the_env():
    env = gym.make("stateset/Sales-v0", split="test", max_turns=5)
    inner = env.unwrapped
    assert isinstance(inner, ConversationEnv)
    assert inner.max_turns == 5 and inner.split == "test"
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert info["split"] == "test"
    env.close()
