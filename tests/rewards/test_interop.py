"""TRL interop: our reward as a TRL reward function, and a TRL-style function as our reward."""

from stateset_agents import RewardResult
from stateset_agents.rewards import RepetitionPenalty, as_trl_reward, from_trl_reward
from tests.rewards.helpers import group, said


class GroupSize:
    """Scores each trajectory with the size of the group it was scored in (shows grouping)."""

    name = "group_size"

    async def score(self, g):
        return [RewardResult(value=float(len(g))) for _ in g.trajectories]


def test_as_trl_reward_standard_format_groups_by_prompt():
    fn = as_trl_reward(GroupSize())
    assert fn.__name__ == "group_size"
    out = fn(prompts=["p1", "p1", "p1", "p2"], completions=["a", "b", "c", "d"])
    assert out == [3.0, 3.0, 3.0, 1.0]


def test_as_trl_reward_conversational_format():
    fn = as_trl_reward(RepetitionPenalty(n=1))
    prompts = [[{"role": "user", "content": "hi"}]] * 2
    completions = [[{"role": "assistant", "content": "one two three"}], [{"role": "assistant", "content": "no no"}]]
    assert fn(prompts=prompts, completions=completions) == [1.0, 0.5]


async def test_as_trl_reward_inside_a_running_loop():
    assert as_trl_reward(RepetitionPenalty(n=1))(prompts=["p"], completions=["a a"]) == [0.5]


async def test_from_trl_reward_sync_and_async():
    def length(prompts, completions, **kwargs):
        assert kwargs["scenario_id"] == ["s", "s"]
        return [float(len(c[0]["content"])) if c[0]["content"] != "skip" else None for c in completions]

    async def alength(prompts, completions, **kwargs):
        return [float(len(prompts[i])) for i in range(len(prompts))]

    g = group(said("s", "hello"), said("s", "skip"))
    res = await from_trl_reward(length).score(g)
    assert [r.value for r in res] == [5.0, None] and res[0].components == {"length": 5.0}
    res = await from_trl_reward(alength, name="prompt_len").score(g)
    assert [r.value for r in res] == [1.0, 1.0]  # the prompt is everything before the agent's last message
