import math

import pytest

from stateset_agents import ConfigError, RewardResult, Trajectory
from stateset_agents.rewards import (
    GeometricMean,
    Minimum,
    OutcomeReward,
    RepetitionPenalty,
    WeightedMean,
    WeightedSum,
    reward_report,
)
from tests.rewards.helpers import group, said


class Fixed:
    """A reward returning given values (None = not applicable)."""

    def __init__(self, name, values, error=None):
        self.name, self.values, self.error = name, values, error

    async def score(self, g):
        return [RewardResult(value=v, components={self.name: v}, error=self.error if v is None else None)
                for v in self.values]


class Boom:
    name = "boom"

    async def score(self, g):
        raise RuntimeError("judge endpoint down")


G = group(*[said("s", f"reply {i}") for i in range(3)])


async def test_weighted_sum_logs_every_component_and_weight_zero_is_log_only():
    r = WeightedSum([(Fixed("a", [1.0, 0.0, 0.5]), 1.0), (Fixed("b", [0.0, 1.0, 1.0]), 0.5),
                     (Fixed("log", [9.0, 9.0, 9.0]), 0.0)])
    res = await r.score(G)
    assert [x.value for x in res] == [1.0, 0.5, 1.0]
    assert res[0].components == {"a": 1.0, "b": 0.0, "log": 9.0}


async def test_none_is_excluded_never_zero():
    r = WeightedSum([(Fixed("a", [1.0, 1.0, None]), 1.0), (Fixed("b", [0.5, None, None]), 1.0)])
    res = await r.score(G)
    assert res[0].value == 1.5
    assert res[1].value == 2.0  # only `a` applies: rescaled to the full weight, not a + 0
    assert res[2].value is None and res[2].error == "no component with weight > 0 applies"


async def test_weighted_mean_geometric_minimum():
    a, b = Fixed("a", [1.0, 0.25, 0.0]), Fixed("b", [0.5, 1.0, 1.0])
    mean = await WeightedMean([(a, 3.0), (b, 1.0)]).score(G)
    assert [x.value for x in mean] == [0.875, 0.4375, 0.25]
    geo = await GeometricMean([(a, 1.0), (b, 1.0)]).score(G)
    assert geo[0].value == pytest.approx(math.sqrt(0.5)) and geo[1].value == pytest.approx(0.5) and geo[2].value == 0.0
    mn = await Minimum([(a, 1.0), (b, 1.0), (Fixed("c", [0.0, 0.0, 0.0]), 0.0)]).score(G)
    assert [x.value for x in mn] == [0.5, 0.25, 0.0]


async def test_geometric_mean_rejects_negative_values():
    res = await GeometricMean([(Fixed("a", [-1.0, 1.0, 1.0]), 1.0)]).score(G)
    assert res[0].value is None and res[0].error == "geometric mean needs values in [0, 1], got -1.0"


async def test_group_normalisation():
    r = WeightedSum([(Fixed("a", [1.0, 2.0, 3.0]), 1.0)], normalize="zscore")
    res = await r.score(G)
    sd = math.sqrt(2 / 3)
    assert [x.value for x in res] == pytest.approx([-1 / sd, 0.0, 1 / sd])
    assert res[0].components["a"] == 1.0  # components keep their raw values
    mm = await WeightedSum([(Fixed("a", [1.0, 2.0, 3.0]), 1.0)], normalize="minmax").score(G)
    assert [x.value for x in mm] == [0.0, 0.5, 1.0]


async def test_a_crashing_component_is_recorded_and_the_rest_still_count():
    res = await WeightedSum([(Fixed("a", [1.0, 1.0, 1.0]), 1.0), (Boom(), 1.0)]).score(G)
    assert res[0].value == 2.0 and res[0].components["boom"] is None
    assert "error in boom: boom raised RuntimeError: judge endpoint down" in res[0].explanation


async def test_failed_trajectory_total_is_none():
    g = group(said("s", "hello there friend"), Trajectory(scenario_id="s", error="boom"))
    res = await WeightedSum([(OutcomeReward(), 1.0), (RepetitionPenalty(), 1.0)]).score(g)
    assert res[1].value is None and res[1].error == "trajectory failed: boom"


async def test_nested_components_are_flattened():
    inner = WeightedSum([(Fixed("x", [1.0, 1.0, 1.0]), 1.0)], name="inner")
    res = await WeightedSum([(inner, 1.0)]).score(G)
    assert res[0].components == {"inner": 1.0, "inner/x": 1.0}


def test_bad_configs():
    a = Fixed("a", [1.0])
    with pytest.raises(ConfigError, match=r"\['a'\] appear more than once"):
        WeightedSum([(a, 1.0), (a, 1.0)])
    with pytest.raises(ConfigError, match="weight of 'a' is -1; weights are numbers >= 0"):
        WeightedSum([(a, -1)])
    with pytest.raises(ConfigError, match="every weight is 0"):
        WeightedSum([(a, 0.0)])
    with pytest.raises(ConfigError, match="is not a RewardFunction"):
        WeightedSum([(lambda g: 1.0, 1.0)])
    with pytest.raises(ConfigError, match="normalize='l2' is not one of"):
        WeightedSum([(a, 1.0)], normalize="l2")


async def test_reward_report():
    r = WeightedSum([(Fixed("a", [1.0, 0.0, 0.5]), 1.0), (Fixed("b", [0.0, 1.0, None]), 1.0)])
    rep = reward_report(await r.score(G))
    assert rep.stats["a"] == {"mean": 0.5, "std": pytest.approx(math.sqrt(1 / 6)), "count": 3, "missing": 0}
    assert rep.stats["b"]["count"] == 2 and rep.stats["b"]["missing"] == 1
    assert rep.correlation["a"]["b"] == pytest.approx(-1.0)
    assert rep.correlation["a"]["a"] == pytest.approx(1.0)
    stats_table, corr_table = rep.tables()
    assert stats_table.row_count == 3 and corr_table.row_count == 3
    assert set(rep.to_dict()) == {"stats", "correlation"}
