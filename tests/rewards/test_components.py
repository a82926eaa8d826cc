import pytest

from stateset_agents import ConfigError, PackError, Trajectory
from stateset_agents.envs import format_tool_call
from stateset_agents.rewards import (
    EfficiencyReward,
    LengthWindowReward,
    LexiconReward,
    OutcomeReward,
    RepetitionPenalty,
    ToolUseReward,
)
from tests.rewards.helpers import group, play, reference, said

S = "cs-refund-damaged-002"


async def test_outcome_reads_the_env_judgement():
    good, bad = reference(S), play(S, ["Hello!", "Bye."])
    res = await OutcomeReward().score(group(good, bad))
    assert res[0].value == 1.0 and res[0].components == {"outcome": 1.0}
    assert res[1].value == good.outcome["score"] * 0 + bad.outcome["score"] < 1.0
    assert "goal=True" in res[0].explanation


async def test_failed_trajectory_is_not_scored():
    res = await OutcomeReward().score(group(reference(S), Trajectory(scenario_id=S, error="ModelError: down")))
    assert res[1].value is None and res[1].error == "trajectory failed: ModelError: down"


async def test_tool_use_counts_working_calls():
    t = play(S, [format_tool_call("lookup_order", {"order_id": "ORD-1043"}),
                 format_tool_call("lookup_order", {"order_id": "ORD-9"}),
                 "<tool_call>{oops}</tool_call>",
                 format_tool_call("issue_refund", {"order_id": "ORD-1043", "amount": 89.0, "reason": "x"})])
    no_tools = play(S, ["Hello"])
    res = await ToolUseReward().score(group(t, no_tools))
    assert res[0].value == 0.5 and res[1].value is None


async def test_efficiency():
    r = EfficiencyReward(max_turns=5)
    res = await r.score(group(said(S, "a"), said(S, "a", "b", "c"), said(S, *"abcdefg")))
    assert [x.value for x in res] == [1.0, 0.5, 0.0]
    with pytest.raises(ConfigError, match="max_turns=1 must be >= 2"):
        EfficiencyReward(max_turns=1)


async def test_length_window_ignores_tool_only_messages():
    t = said(S, "one two three four five six", format_tool_call("lookup_order", {"order_id": "A"}), "too short")
    res = await LengthWindowReward(min_words=5, max_words=10).score(group(t))
    assert res[0].value == 0.5
    with pytest.raises(ConfigError, match="need 0 <= min_words <= max_words"):
        LengthWindowReward(min_words=9, max_words=3)


async def test_repetition():
    res = await RepetitionPenalty(n=2).score(group(said(S, "the cat sat on the mat"),
                                                   said(S, "sorry sorry sorry sorry sorry"), said(S, "hi")))
    assert res[0].value == 1.0 and res[1].value == pytest.approx(0.25) and res[2].value is None


async def test_lexicons_are_named_heuristics():
    emp = LexiconReward("empathy")
    assert emp.name == "heuristic_empathy"
    res = await emp.score(group(said(S, "I'm sorry to hear that, I understand."), said(S, "Calm down."),
                                said(S, "Your refund is done.")))
    assert res[0].value == 1.0 and res[1].value == 0.0 and res[2].value == 0.0
    act = await LexiconReward("action_orientation").score(group(said(S, "I've issued the refund; you'll receive it.")))
    assert act[0].value == 1.0


def test_bad_lexicon(tmp_path):
    with pytest.raises(ConfigError, match="lexicon 'kindness' not found"):
        LexiconReward("kindness")
    bad = tmp_path / "x.yaml"
    bad.write_text("positive: nope\n")
    with pytest.raises(PackError, match="field 'positive': a lexicon needs a list"):
        LexiconReward(str(bad))
