"""Episode mechanics, bad inputs and their exact messages, seeding."""

import asyncio

import gymnasium as gym
import pytest

from stateset_agents import ConversationEnv, EpisodeError, SyncInAsyncError, UnknownScenarioError
from stateset_agents.envs import END_MARKER, format_tool_call

SCEN = "cs-delayed-order-001"


@pytest.fixture
def env():
    e = ConversationEnv("customer_service", scenario=SCEN)
    yield e
    e.close()


def test_non_string_action(env):
    env.reset(seed=0)
    with pytest.raises(ValueError) as e:
        env.step(42)
    assert str(e.value) == "action must be a str (the agent's message), got int: 42"


def test_empty_action(env):
    env.reset(seed=0)
    with pytest.raises(ValueError) as e:
        env.step("   ")
    assert str(e.value) == ("action '   ' is empty; send the agent's message text (at least one "
                            "non-space character)")


def test_over_long_action(env):
    env.reset(seed=0)
    with pytest.raises(ValueError) as e:
        env.step("x" * 5000)
    assert str(e.value) == ("action has 5000 characters; the limit is 4096 (MAX_ACTION_CHARS). "
                            "Shorten the message or split it over turns")


def test_step_before_reset(env):
    with pytest.raises(EpisodeError) as e:
        env.step("hello")
    assert str(e.value) == "step() called before reset(); call reset() (or areset()) first"


def test_step_after_end(env):
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(f"Goodbye. {END_MARKER}")
    assert terminated and not truncated
    assert info["outcome"]["ended_by"] == "agent"
    with pytest.raises(EpisodeError) as e:
        env.step("hello again")
    assert str(e.value) == (f"the episode of scenario {SCEN!r} has ended (agent); call reset() to start a new one")


def test_unknown_scenario_lists_close_matches():
    with pytest.raises(UnknownScenarioError) as e:
        ConversationEnv("customer_service", scenario="cs-delayed-order-01")
    assert "unknown scenario 'cs-delayed-order-01' in pack 'customer_service'" in str(e.value)
    assert "Did you mean 'cs-delayed-order-001'" in str(e.value)


def test_unknown_env_id_says_did_you_mean():
    with pytest.raises(gym.error.Error, match="Did you mean: `CustomerService`"):
        gym.make("stateset/CustomerServce-v0")


def test_unknown_reset_option(env):
    with pytest.raises(ValueError, match=r"unknown reset option\(s\) \['secnario'\]"):
        env.reset(seed=0, options={"secnario": SCEN})


async def test_sync_methods_refuse_inside_a_running_loop(env):
    with pytest.raises(SyncInAsyncError) as e:
        env.reset(seed=0)
    assert str(e.value) == ("ConversationEnv.reset()/step() called inside a running event loop; use "
                            "`await env.areset(...)` / `await env.astep(...)` instead")
    obs, _ = await env.areset(seed=0)
    assert obs


async def test_async_core_plays_an_episode(env):
    obs, info = await env.areset(seed=0)
    assert info["observation_role"] == "user"
    obs, reward, term, trunc, info = await env.astep(format_tool_call("track_shipment", {"order_id": "ORD-1042"}))
    assert info["observation_role"] == "tool" and '"estimated_delivery": "March 14"' in obs
    assert reward == 0.0 and not term and not trunc
    obs, reward, term, trunc, info = await env.astep("The carrier now estimates March 14.")
    assert term and reward == 1.0 and info["outcome"]["ended_by"] == "user_goal_met"
    roles = [m.role for m in info["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]


def test_max_turns_truncates():
    env = ConversationEnv("customer_service", scenario=SCEN, max_turns=2)
    env.reset(seed=0)
    env.step(format_tool_call("lookup_order", {"order_id": "ORD-1042"}))
    _, reward, term, trunc, info = env.step(format_tool_call("lookup_order", {"order_id": "ORD-1042"}))
    assert trunc and not term
    assert info["outcome"]["ended_by"] == "max_turns" and info["outcome"]["turns_used"] == 2
    assert reward == float(info["outcome"]["success"]) == 0.0  # the reward is success, 0 or 1
    env.close()


def test_max_turns_must_allow_a_reply():
    with pytest.raises(ValueError, match="max_turns=1 is too small; use at least 2"):
        ConversationEnv("customer_service", max_turns=1)


def test_bad_split():
    with pytest.raises(ValueError, match="split 'dev' is not one of 'train', 'test', 'all'"):
        ConversationEnv("customer_service", split="dev")


def _play(seed, actions):
    env = ConversationEnv("customer_service", split="all")
    out = [env.reset(seed=seed)]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info["messages"]))
        if term or trunc:
            break
    env.close()
    return out


def test_seeded_episodes_replay_exactly():
    actions = ["Can you tell me more?", "I see.", "What else?", "Hmm."]
    assert _play(7, actions) == _play(7, actions)


def test_reset_without_scenario_draws_from_the_split_with_np_random():
    env = ConversationEnv("customer_service", split="all")
    drawn = {env.reset(seed=s)[1]["scenario_id"] for s in range(40)}
    assert len(drawn) > 1
    assert [env.reset(seed=3)[1]["scenario_id"] for _ in range(3)] == [env.reset(seed=3)[1]["scenario_id"]] * 3
    env.close()


def test_options_scenario_overrides(env):
    _, info = env.reset(seed=0, options={"scenario": "cs-refund-damaged-002"})
    assert info["scenario_id"] == "cs-refund-damaged-002"


def test_info_is_fresh_on_every_call(env):
    _, info1 = env.reset(seed=0)
    _, _, _, _, info2 = env.step("Hello, how can I help?")
    info1["messages"][0].content = "changed"
    assert info2["messages"][0].content != "changed"


def test_render_ansi():
    env = ConversationEnv("customer_service", scenario=SCEN, render_mode="ansi")
    env.reset(seed=0)
    env.step(format_tool_call("track_shipment", {"order_id": "ORD-1042"}))
    text = env.render()
    assert text.startswith("[user] ") and "-> track_shipment" in text and "[tool:track_shipment]" in text
    env.close()


def test_sync_after_async_loop_closed_still_works():
    env = ConversationEnv("customer_service", scenario=SCEN)
    asyncio.run(env.areset(seed=0))
    obs, *_ = env.step("Could you give me your order number?")
    assert obs == "The order number is ORD-1042."
    env.close()
