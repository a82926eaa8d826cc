import pytest
from pydantic import ValidationError

from stateset_agents import Completion, Message, RewardResult, ToolCall, Trajectory, TrajectoryGroup


def test_message_forbids_unknown_fields():
    with pytest.raises(ValidationError, match="extra_forbidden"):
        Message(role="user", content="hi", colour="red")


def test_tool_message_needs_call_id():
    with pytest.raises(ValidationError, match="tool message needs tool_call_id"):
        Message(role="tool", content="{}")


def test_only_assistant_carries_tool_calls():
    call = ToolCall(id="c1", name="lookup_order", arguments={"order_id": "ORD-1"})
    with pytest.raises(ValidationError, match="only assistant messages carry tool_calls"):
        Message(role="user", content="", tool_calls=[call])
    m = Message(role="assistant", content="", tool_calls=[call])
    assert m.to_openai()["tool_calls"][0]["function"] == {"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}


def test_completion_needs_one_logprob_per_token():
    with pytest.raises(ValidationError, match="logprobs has 1 entries but completion_ids has 2"):
        Completion(text="hi", completion_ids=[1, 2], logprobs=[-0.1])
    assert Completion(text="hi", completion_ids=[1, 2], logprobs=[-0.1, -0.2]).logprobs == [-0.1, -0.2]


def test_reward_result_none_means_not_applicable():
    r = RewardResult(value=None, components={"judge": None}, error="judge output malformed")
    assert r.value is None and r.components["judge"] is None


def test_group_holds_one_scenario():
    a, b = Trajectory(scenario_id="a"), Trajectory(scenario_id="b")
    assert len(TrajectoryGroup(scenario_id="a", trajectories=[a, a])) == 2
    with pytest.raises(ValidationError, match="trajectory of scenario 'b' in the group of 'a'"):
        TrajectoryGroup(scenario_id="a", trajectories=[a, b])


def test_failed_trajectory_is_data():
    t = Trajectory(scenario_id="a", error="ModelError: endpoint down")
    assert not t.ok and t.reward is None
