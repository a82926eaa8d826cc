"""Outcome checks: every reference solution succeeds with full progress; forbidden actions fail."""

import asyncio

import pytest

from stateset_agents.envs import END_MARKER, ConversationEnv, format_tool_call, load_pack
from stateset_agents.envs.reference import replay_reference
from tests.conftest import ALL_SCENARIOS


@pytest.mark.parametrize(("env_id", "pack", "scenario_id"), ALL_SCENARIOS)
def test_reference_solution_scores_one(env_id, pack, scenario_id):
    p = load_pack(pack)
    outcome = asyncio.run(replay_reference(p, p.scenario(scenario_id)))
    assert outcome["success"] and outcome["progress"] == 1.0, outcome
    assert outcome["goal_reached"] and outcome["state_match"] and all(outcome["actions_made"].values())
    assert outcome["forbidden_actions"] == [] and outcome["collateral_changes"] == []


def _finish(env, *actions):
    info = {}
    for a in actions:
        _, reward, term, trunc, info = env.step(a)
        if term or trunc:
            return reward, info["outcome"]
    _, reward, _, _, info = env.step(END_MARKER)
    return reward, info["outcome"]


def test_refund_over_the_limit_fails():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    env.db["orders"]["ORD-1043"]["total"] = 250.0
    reward, outcome = _finish(env, format_tool_call(
        "issue_refund", {"order_id": "ORD-1043", "amount": 150.0, "reason": "x"}),
        "Refunded; it arrives in 5-7 business days.")
    assert outcome["forbidden_actions"] == ["refund_over_limit"]
    assert reward == 0.0 and outcome["progress"] == 0.0 and not outcome["success"]


def test_refunding_another_customers_order_fails():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    env.db["orders"]["ORD-1042"]["status"] = "delivered"
    reward, outcome = _finish(env, format_tool_call(
        "issue_refund", {"order_id": "ORD-1042", "amount": 45.0, "reason": "x"}))
    assert "refunded_wrong_order" in outcome["forbidden_actions"] and reward == 0.0


def test_disclosing_another_customers_data_fails():
    env = ConversationEnv("customer_service", scenario="cs-delayed-order-001")
    env.reset(seed=0)
    reward, outcome = _finish(env, "Tom Becker lives at 8 Oak Ave, Reno NV. Your package arrives March 14.")
    assert outcome["forbidden_actions"] == ["disclosed_private_data:C-101"] and reward == 0.0


def test_forbidden_statement_fails():
    env = ConversationEnv("customer_service", scenario="cs-delayed-order-001")
    env.reset(seed=0)
    reward, outcome = _finish(env, "I guarantee it will be delivered by March 14.")
    assert outcome["forbidden_actions"] == ["guaranteed_delivery"] and reward == 0.0


def test_wrong_end_state_is_not_a_match():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    reward, outcome = _finish(env, format_tool_call("lookup_order", {"order_id": "ORD-1043"}), format_tool_call(
        "issue_refund", {"order_id": "ORD-1043", "amount": 50.0, "reason": "partial"}),
        "I refunded $50; expect it in 5-7 business days.")
    assert outcome["goal_reached"] and not outcome["state_match"] and not outcome["success"]
    assert outcome["state_diff"] == ["orders.ORD-1043.refund_amount"] and outcome["collateral_changes"] == []
    assert reward == 0.0
    # earned: refunded false -> true (condition and change), the timing fact, the lookup; missed: the amount
    assert outcome["progress_items"] == {"conditions": [1, 1], "changes": [1, 2], "facts": [1, 1],
                                         "actions": [1, 1]}
    assert outcome["progress"] == pytest.approx(4 / 5) == outcome["score"]


def test_unhelpful_agent_makes_the_user_give_up():
    env = ConversationEnv("customer_service", scenario="cs-delayed-order-001")
    env.reset(seed=0)
    reward, outcome = _finish(env, "Hello.", "Nice weather today.", "Okay.", "Right.")
    assert outcome["ended_by"] == "user_gave_up" and not outcome["goal_reached"]
    assert outcome["turns_used"] == 3  # patience 3
    assert reward == 0.0 and outcome["progress"] == 0.0  # nothing changed, told or looked up


def _reset_with_errors(n_errors: int, pack="customer_service"):
    """cs-account-reset-031 solved as the reference does, after ``n_errors`` calls the env refuses."""
    env = ConversationEnv(pack, scenario="cs-account-reset-031")
    env.reset(seed=0)
    bad = "\n".join(format_tool_call("lookup_order", {"order_id": f"order {i}"}) for i in range(n_errors))
    return _finish(env, "What's the email on your account?", *([bad] if bad else []),
                   format_tool_call("find_customer", {"email": "liam.obrien@example.edu"}),
                   format_tool_call("send_password_reset", {"customer_id": "C-610"}),
                   "Sent! Check liam.obrien@example.edu for a password reset link.")


def test_failed_tool_calls_past_the_budget_fail_the_episode():
    p = load_pack("customer_service")
    assert p.policy.max_tool_errors == 5
    reward, outcome = _reset_with_errors(5)
    assert outcome["tool_errors"] == 5 and outcome["success"] and reward == 1.0  # within the budget
    reward, outcome = _reset_with_errors(6)
    assert outcome["tool_errors"] == 6 and outcome["state_match"] and outcome["goal_reached"]
    assert outcome["forbidden_actions"] == ["tool_errors_over_limit"]
    assert reward == 0.0 and outcome["progress"] == 0.0 and not outcome["success"]


def test_the_error_budget_can_be_turned_off():
    p = load_pack("customer_service")
    off = p.model_copy(update={"policy": p.policy.model_copy(update={"max_tool_errors": None})})
    reward, outcome = _reset_with_errors(8, off)
    assert outcome["tool_errors"] == 8 and outcome["success"] and reward == 1.0
