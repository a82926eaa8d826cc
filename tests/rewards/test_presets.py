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
