"""rollout(): concurrent episodes with the tiny model, token data, reproducibility, failures as data."""

import pytest

from stateset_agents import Completion, ConversationEnv, SamplingParams
from stateset_agents.agents import MultiTurnAgent
from stateset_agents.rollout import episode_seed, rollout

SCENARIOS = ["cs-delayed-order-001", "cs-refund-damaged-002"]


def _factory():
    return ConversationEnv("customer_service", split="all", max_turns=4)


@pytest.fixture
def agent(tiny_model):
    return MultiTurnAgent(tiny_model, sampling=SamplingParams(temperature=1.0, max_new_tokens=16), context_tokens=1024)


def _key(groups):
    return [(t.scenario_id, t.seed, [m.model_dump() for m in t.messages],
             [c.completion_ids for c in t.completions], t.outcome, t.error)
            for g in groups for t in g.trajectories]


async def test_groups_with_token_data(agent):
    groups = await rollout(agent, _factory, SCENARIOS, group_size=3, seed=1, progress=False)
    assert [g.scenario_id for g in groups] == SCENARIOS and all(len(g) == 3 for g in groups)
    for g in groups:
        for t in g.trajectories:
            assert t.error is None and t.outcome is not None and (t.terminated or t.truncated)
            agent_msgs = [m for m in t.messages if m.role == "assistant"]
            assert len(t.completions) == len(agent_msgs) >= 1
            for c in t.completions:
                assert c.prompt_ids and len(c.completion_ids) == len(c.logprobs)
    seeds = [t.seed for g in groups for t in g.trajectories]
    assert len(set(seeds)) == 6 and seeds[0] == episode_seed(1, SCENARIOS[0], 0)


async def test_seeded_rollouts_are_reproducible(agent):
    a = await rollout(agent, _factory, SCENARIOS, group_size=2, seed=7, progress=False)
    b = await rollout(agent, _factory, SCENARIOS, group_size=2, concurrency=1, seed=7, progress=False)
    assert _key(a) == _key(b)  # token-for-token, whatever the batch composition
    c = await rollout(agent, _factory, SCENARIOS, group_size=2, seed=8, progress=False)
    assert _key(a) != _key(c)


class Flaky:
    """A ChatModel that fails for one scenario's episodes."""

    async def chat(self, messages, *, sampling, tools=None):
        if any("ORD-1043" in m.content or "blender" in m.content for m in messages):
            raise ConnectionError("endpoint down")
        return Completion(text="Could you share your order number? [END]")


async def test_a_failing_episode_is_data_not_a_crash():
    groups = await rollout(MultiTurnAgent(Flaky()), _factory, SCENARIOS, group_size=2, progress=False)
    ok, bad = groups
    assert all(t.error is None and t.outcome["ended_by"] == "agent" for t in ok.trajectories)
    assert all(t.error == "ConnectionError: endpoint down" and t.outcome is None for t in bad.trajectories)
    assert all(t.messages and t.messages[1].role == "user" for t in bad.trajectories)


class Silent:
    async def chat(self, messages, *, sampling, tools=None):
        return Completion(text="", finish_reason="stop")


async def test_empty_agent_message_is_recorded():
    [g] = await rollout(MultiTurnAgent(Silent()), _factory, SCENARIOS[:1], group_size=1, progress=False)
    t = g.trajectories[0]
    assert t.error == "AgentOutputError: the agent produced an empty message at turn 1 (finish_reason='stop')"
    assert t.failure == "empty_reply"  # the agent's own failure: a trainer scores it (rollout.AGENT_FAILURES)
    assert len(t.completions) == 1


async def test_bad_arguments(agent):
    with pytest.raises(ValueError, match="group_size=0 must be >= 1"):
        await rollout(agent, _factory, SCENARIOS, group_size=0)
