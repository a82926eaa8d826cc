import pytest

from stateset_agents import ConfigError, PackError
from stateset_agents.rewards import load_reward
from tests.rewards.helpers import group, play, reference

PRESETS = ["customer_service", "tech_support", "sales", "educational", "creative_writing"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_builtin_preset_loads(name):
    r = load_reward(name)
    assert r.name == name and r.components
    assert "ruler" not in r.weights  # RULER only joins with a judge


async def test_customer_service_preset_scores_real_episodes():
    r = load_reward("customer_service")
    good, bad = reference("cs-delayed-order-001"), play("cs-delayed-order-001", ["Hello.", "Nice day."])
    res = await r.score(group(good, bad))
    assert res[0].value > res[1].value
    assert set(res[0].components) >= {"outcome", "tool_use", "efficiency", "similarity", "repetition",
                                      "heuristic_empathy"}
    assert res[0].components["outcome"] == 1.0
    assert res[1].components["outcome"] == 0.0  # small talk earns no progress


@pytest.mark.parametrize("name", ["customer_service", "tech_support", "sales"])
def test_domain_presets_score_progress_not_the_old_score(name):
    r = load_reward(name)
    outcome = next(fn for fn, _ in r.components if fn.name == "outcome")
    assert outcome.field == "progress"


async def test_outcome_field_success_and_progress_differ_on_partial_work():
    from stateset_agents.envs import format_tool_call
    from stateset_agents.rewards import OutcomeReward

    partial = play("cs-refund-damaged-002", [format_tool_call("lookup_order", {"order_id": "ORD-1043"}),
                                             format_tool_call("issue_refund", {"order_id": "ORD-1043",
                                                                               "amount": 50.0, "reason": "x"}),
                                             "Refunds take 5-7 business days."])
    progress = (await OutcomeReward().score(group(partial)))[0].value
    success = (await OutcomeReward(field="success").score(group(partial)))[0].value
    assert progress == pytest.approx(0.8) and success == 0.0


def test_unknown_outcome_field(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("name: x\ncomponents:\n  - {type: outcome, weight: 1, params: {field: score}}\n")
    with pytest.raises(ConfigError, match="OutcomeReward field 'score' is not one of 'progress', 'success'; use "
                       "progress for partial credit or success for 0/1"):
        load_reward(f)


def test_ruler_joins_when_a_judge_is_given():
    class Judge:
        async def chat(self, messages, *, sampling, tools=None):
            raise AssertionError("not called")

    r = load_reward("customer_service", judge=Judge())
    assert r.weights["ruler"] == 0.5


def test_unknown_preset():
    with pytest.raises(ConfigError, match="no reward preset 'customer'; built-in presets: creative_writing, "):
        load_reward("customer")


@pytest.mark.parametrize(("text", "message"), [
    ("name: x\ncomponents: []\n", "field 'components': List should have at least 1 item"),
    ("name: x\ncomponents:\n  - {type: vibes, weight: 1}\n", "field 'components.0.type': Input should be"),
    ("name: x\ncomponents:\n  - {type: outcome, weight: -1}\n", "field 'components.0.weight'"),
    ("name: x\ncombine: median\ncomponents:\n  - {type: outcome, weight: 1}\n", "field 'combine'"),
    ("name: x\ncomponents:\n  - {type: efficiency, weight: 1, params: {turns: 3}}\n",
     "field 'components.0.params': EfficiencyReward.__init__() got an unexpected keyword argument 'turns'"),
    ("name: x\ncomponents:\n  - {type: outcome, weight: 0}\n", "field 'components': every weight is 0"),
    ("name: [x\n", "cannot read reward preset"),
])
def test_malformed_preset_names_file_and_field(tmp_path, text, message):
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    with pytest.raises(PackError) as e:
        load_reward(f)
    assert str(e.value).startswith(f"{f}: ") and message in str(e.value)
