"""User simulators: the scripted rules, and LLMUser through the ChatModel protocol."""

import random

import pytest

from stateset_agents import Completion, ConversationEnv, LLMUser, Message, ReplayCache, SamplingParams
from stateset_agents.envs import format_tool_call

SCEN = "cs-delayed-order-001"


def _env(**kw):
    return ConversationEnv("customer_service", scenario=SCEN, **kw)


def test_fact_revealed_only_when_asked():
    env = _env()
    env.reset(seed=0)
    obs, *_ = env.step("I'm sorry to hear that. Let me look into it.")
    assert "ORD-1042" not in obs
    obs, *_ = env.step("Could you share your order number please?")
    assert obs == "The order number is ORD-1042."
    obs, *_ = env.step("And the order number again?")
    assert obs == "As I said, The order number is ORD-1042."
    env.close()


def test_proposals_are_accepted_or_refused():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    obs, *_ = env.step("Would you like a replacement instead?")
    assert obs == "No, I don't want replacement."
    obs, *_ = env.step("Would you like me to process a refund?")
    assert obs == "Yes, please go ahead."
    env.close()


def test_opening_is_drawn_with_np_random():
    openings = {_env().reset(seed=s)[0] for s in range(20)}
    assert len(openings) == 2  # the scenario has two opening variants


def test_goal_met_ends_with_thanks():
    env = _env()
    env.reset(seed=0)
    env.step(format_tool_call("track_shipment", {"order_id": "ORD-1042"}))
    obs, reward, term, _, info = env.step("It is now expected on March 14.")
    assert term and obs == "Great, that's everything I needed. Thanks!"
    assert info["outcome"]["ended_by"] == "user_goal_met" and reward == 1.0
    env.close()


class SeededModel:
    """A ChatModel whose reply depends only on the sampling seed (like a real sampler would)."""

    def __init__(self, replies, fail=False):
        self.replies, self.fail, self.calls = replies, fail, []

    async def chat(self, messages, *, sampling: SamplingParams, tools=None) -> Completion:
        self.calls.append((messages, sampling))
        if self.fail:
            raise ConnectionError("connection refused: http://127.0.0.1:9/v1/chat/completions")
        return Completion(text=random.Random(sampling.seed).choice(self.replies))


REPLIES = ["Where is my package?", "I already told you, it's late.", "Is it the UPS one?", "Please hurry."]


def _play_llm(user, seed, actions):
    env = _env(user=user)
    out = [env.reset(seed=seed)[0]]
    for a in actions:
        obs, _, term, trunc, info = env.step(a)
        out.append(obs)
        if term or trunc:
            break
    env.close()
    return out, info


def test_llm_user_prompt_plays_the_persona_from_the_customer_side():
    model = SeededModel(REPLIES)
    _play_llm(LLMUser(model), 1, ["Hello, what's your order number?"])
    messages, sampling = model.calls[0]
    assert messages[0].role == "system" and "Maria Lopez" in messages[0].content
    assert "Find out where the package is" in messages[0].content and "[DONE]" in messages[0].content
    assert [m.role for m in messages[1:]] == ["assistant", "user"]  # customer = assistant, agent = user
    assert messages[-1].content == "Hello, what's your order number?"
    assert sampling.seed is not None


def test_llm_user_seeded_episode_replays_exactly_from_the_cache(tmp_path):
    cache = ReplayCache(tmp_path / "replay.jsonl")
    actions = ["Hi! How can I help?", "Let me check that.", "One moment please."]
    first, _ = _play_llm(LLMUser(SeededModel(REPLIES), cache=cache), 5, actions)
    # A new process: the cache is reloaded from disk and the model now fails; replay needs no model call.
    replay, info = _play_llm(LLMUser(SeededModel(REPLIES, fail=True), cache=ReplayCache(tmp_path / "replay.jsonl")),
                             5, actions)
    assert replay == first and "error" not in info
    assert len(cache) == 3


def test_llm_user_stop_marker_ends_the_episode():
    first, info = _play_llm(LLMUser(SeededModel(["Thanks, that's all. [DONE]"])), 0, ["It arrives March 14."])
    assert first[-1] == "Thanks, that's all."
    assert info["outcome"]["ended_by"] == "user_stop_marker"


def test_failing_simulator_ends_the_episode_with_the_error():
    out, info = _play_llm(LLMUser(SeededModel(REPLIES, fail=True), model_id="local-vllm"), 0, ["Hello?"])
    assert out[-1] == ""
    assert info["error"] == ("UserSimulatorError: user simulator model 'local-vllm' failed: ConnectionError: "
                             "connection refused: http://127.0.0.1:9/v1/chat/completions")
    assert info["outcome"]["ended_by"] == "user_error" and info["outcome"]["error"] == info["error"]
    assert not any(m.role == "user" and m.content == "" for m in info["messages"])


def test_failing_simulator_reward_and_flags():
    env = _env(user=LLMUser(SeededModel(REPLIES, fail=True)))
    env.reset(seed=0)
    _, reward, term, trunc, info = env.step("Hello?")
    assert trunc and not term and reward == 0.0 and not info["outcome"]["success"]
    env.close()


def test_user_must_follow_the_protocol():
    with pytest.raises(TypeError, match="user must be 'scripted' or an object with `async reply"):
        _env(user="llm")


def test_message_type_in_prompt():
    assert isinstance(LLMUser(SeededModel(REPLIES)).sampling, SamplingParams)
    assert Message(role="user", content="x").role == "user"
