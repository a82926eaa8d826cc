"""score_group: the one error policy every caller that scores a group shares."""

import pytest

from stateset_agents import ConfigError, RewardResult, Trajectory, TrajectoryGroup
from stateset_agents.rewards.base import check_results, score_group


def _group(n: int) -> TrajectoryGroup:
    return TrajectoryGroup(scenario_id="s", trajectories=[Trajectory(scenario_id="s") for _ in range(n)])


class _Reward:
    name = "judge"

    def __init__(self, behaviour):
        self.behaviour = behaviour

    async def score(self, group):
        return self.behaviour(group)


def _raise(exc):
    def f(group):
        raise exc
    return f


async def test_results_pass_through():
    res = await score_group(_Reward(lambda g: [RewardResult(value=float(i)) for i in range(len(g))]), _group(3))
    assert [r.value for r in res] == [0.0, 1.0, 2.0]


async def test_a_reward_that_raises_is_recorded_on_every_trajectory():
    res = await score_group(_Reward(_raise(RuntimeError("endpoint down"))), _group(2))
    assert [(r.value, r.error) for r in res] == [(None, "judge raised RuntimeError: endpoint down")] * 2


async def test_a_wrong_number_of_results_raises():
    with pytest.raises(ConfigError, match="reward 'judge' returned 1 results for a group of 2"):
        await score_group(_Reward(lambda g: [RewardResult(value=1.0)]), _group(2))
    with pytest.raises(ConfigError, match="teacher 'judge' returned 0 results"):
        check_results(_Reward(None), _group(1), [], what="teacher")


async def test_a_config_error_from_the_reward_is_not_hidden():
    with pytest.raises(ConfigError, match="bad rubric"):
        await score_group(_Reward(_raise(ConfigError("bad rubric"))), _group(1))
