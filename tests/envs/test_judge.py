"""The outcome judge of issue 13: claims checked against the database, grounded facts, required actions and
progress that counts only what the agent changed or obtained."""

import pytest

from stateset_agents.envs import END_MARKER, ConversationEnv, format_tool_call, load_pack
from stateset_agents.envs.claims import claims_in
from stateset_agents.envs.grounding import evidence_for
from stateset_agents.envs.outcome import action_matches
from stateset_agents.envs.pack import ClaimSpec, RequiredAction

CS = load_pack("customer_service")
CLAIMS = CS.policy.claims


def _play(pack, scenario, *actions, end=True):
    env = ConversationEnv(pack, scenario=scenario, split="all")
    env.reset(seed=0)
    info, reward = {}, 0.0
    for a in actions:
        _, reward, term, trunc, info = env.step(a)
        if term or trunc:
            return reward, info["outcome"]
    if not end:
        raise AssertionError("episode still running")
    _, reward, _, _, info = env.step(END_MARKER)
    return reward, info["outcome"]


def call(name, **args):
    return format_tool_call(name, args)


# ------------------------------------------------------------------ claims and negations
@pytest.mark.parametrize(("text", "claims"), [
    ("I have cancelled your order.", ["cancelled"]),
    ("I've refunded the full $89 to your card.", ["refunded"]),
    ("Your refund has been issued.", ["refunded"]),
    ("Good news: your account is unlocked and I emailed the reset link.", ["unlocked", "reset_link_sent"]),
    ("Your account is no longer locked.", ["unlocked"]),
    ("I’ve sent you a password reset link.", ["reset_link_sent"]),  # curly apostrophe
    ("I can't cancel it, but I've escalated it to a supervisor.", ["escalated"]),
    ("I sent a replacement pair today.", ["replacement_sent"]),
    ("The charge was reversed on February 11.", ["charge_reversed"]),
])
def test_claims_are_detected(text, claims):
    assert claims_in(CLAIMS, text) == claims


@pytest.mark.parametrize("text", [
    "I can't cancel it because it has already shipped.",
    "I'm unable to unlock the account.",
    "Your order was not cancelled.",
    "It hasn't been refunded yet.",
    "Would you like it cancelled?",
    "Once the return arrives, you'll be refunded.",
    "If you want, I can issue a refund.",
    "You will be refunded within 5-7 business days.",
    "Nothing was refunded on this order.",
    "I could have it cancelled for you.",
    "Your account isn't locked, so it doesn't need to be unlocked.",
])
def test_negated_conditional_and_question_forms_are_not_claims(text):
    assert claims_in(CLAIMS, text) == []


def test_a_false_claim_fails_the_episode():
    reward, o = _play("customer_service", "cs-refund-damaged-002", call("lookup_order", order_id="ORD-1043"),
                      "I've refunded the full $89; it will show up in 5-7 business days.")
    assert o["forbidden_actions"] == ["false_claim:refunded"]
    assert reward == 0.0 and not o["success"] and o["progress"] == 0.0


def test_a_backed_claim_is_fine():
    reward, o = _play("customer_service", "cs-refund-damaged-002", call("lookup_order", order_id="ORD-1043"),
                      call("issue_refund", order_id="ORD-1043", amount=89.0, reason="cracked"),
                      "I've refunded the full $89; it will show up in 5-7 business days.")
    assert o["forbidden_actions"] == [] and o["success"] and reward == 1.0


def test_claiming_an_unlock_that_did_not_happen():
    """`unlocked` has changed: true, so accounts that were never locked do not back it."""
    _, o = _play("customer_service", "cs-account-not-locked-033",
                 call("find_customer", email="grace.liu@example.com"), "Done, your account is unlocked.")
    assert "false_claim:unlocked" in o["forbidden_actions"]


def test_a_scenario_claim_replaces_the_packs_claim_of_the_same_id():
    pack = CS.model_copy(deep=True)
    s = pack.scenario("cs-refund-damaged-002")
    s.claims = [ClaimSpec(id="refunded", pattern=r"\bmoney is back\b", table="orders",
                          where=[{"left": "$record.refunded", "op": "==", "right": True}])]
    _, o = _play(pack, s.id, call("lookup_order", order_id="ORD-1043"), "Your money is back. I refunded it.")
    assert o["forbidden_actions"] == ["false_claim:refunded"]  # "money is back" now; "refunded" no longer


# ------------------------------------------------------------------ grounded facts
def test_grounding_is_inferred_from_the_database():
    ev = evidence_for(CS, CS.scenario("cs-delayed-order-001"))
    assert ev["new_eta"] == [["march 14"], ["march 14"], ["march 14"]]  # "14th of march" borrows "march 14"
    assert evidence_for(CS, CS.scenario("cs-refund-damaged-002")) == {"refund_timing": None}  # policy, not data
    assert evidence_for(CS, CS.scenario("cs-order-total-008"))["total"] == [[312.75], [312.75]]


def _without_required_actions(scenario_id):
    pack = CS.model_copy(deep=True)
    pack.scenario(scenario_id).required_actions = []
    return pack


def test_a_grounded_fact_said_before_any_tool_result_is_not_told():
    pack = _without_required_actions("cs-delayed-order-001")
    _, o = _play(pack, "cs-delayed-order-001", "Your package arrives March 14.")
    assert o["facts_told"] == {"new_eta": False}


def test_a_grounded_fact_counts_after_a_tool_result_that_contained_it():
    pack = _without_required_actions("cs-delayed-order-001")
    _, o = _play(pack, "cs-delayed-order-001", call("lookup_order", order_id="ORD-1042"),
                 "Your package arrives March 14.")  # the order record has no date: still not grounded
    assert o["facts_told"] == {"new_eta": False}
    _, o = _play(pack, "cs-delayed-order-001", call("track_shipment", order_id="ORD-1042"),
                 "Your package arrives March 14.")
    assert o["facts_told"] == {"new_eta": True} and o["success"]


def test_a_failed_tool_call_grounds_nothing():
    pack = _without_required_actions("cs-order-total-008")
    s = pack.scenario("cs-order-total-008")
    phrase = s.required_facts[0].any_of[0]
    order = next(iter(s.database["orders"]))
    _, o = _play(pack, s.id, call("cancel_order", order_id=order, note=phrase), f"It was {phrase}.")
    assert o["facts_told"] == {"total": False}


def test_grounded_false_turns_the_rule_off_and_true_forces_it():
    pack = _without_required_actions("cs-delayed-order-001")
    pack.scenario("cs-delayed-order-001").required_facts[0].grounded = False
    _, o = _play(pack, "cs-delayed-order-001", "Your package arrives March 14.")
    assert o["facts_told"] == {"new_eta": True}
    pack = _without_required_actions("cs-refund-damaged-002")
    pack.scenario("cs-refund-damaged-002").required_facts[0].grounded = True
    assert evidence_for(pack, pack.scenario("cs-refund-damaged-002"))["refund_timing"][0] == ["5-7 business days"]


# ------------------------------------------------------------------ required actions
@pytest.mark.parametrize(("name", "args", "ok"), [
    ("find_customer", {"email": "diane.walsh@example.net"}, True),
    ("find_customer", {"email": "  Diane.Walsh@Example.NET "}, True),  # strings ignore case and spaces
    ("find_customer", {"email": "mark.walsh.cpa@example.com"}, False),
    ("lookup_order", {"email": "diane.walsh@example.net"}, False),
])
def test_action_matching(name, args, ok):
    assert action_matches(RequiredAction(tool="find_customer", args={"email": "diane.walsh@example.net"}),
                          name, args) is ok


def test_action_matching_numbers_and_extra_arguments():
    want = RequiredAction(tool="issue_refund", args={"order_id": "ORD-1", "amount": 89})
    assert action_matches(want, "issue_refund", {"order_id": "ord-1", "amount": 89.001, "reason": "x"})
    assert not action_matches(want, "issue_refund", {"order_id": "ORD-1", "amount": 88.5})
    assert not action_matches(want, "issue_refund", {"order_id": "ORD-1"})


def test_a_canned_refusal_without_the_verification_step_fails():
    refusal = ("I can't share the details on Mark's account, and I can't unlock it for you. "
               "Mark will need to contact us himself.")
    _, o = _play("customer_service", "cs-account-spouse-034", refusal)
    assert not o["success"] and o["progress"] == 0.0
    assert o["actions_made"] == {'find_customer({"email": "diane.walsh@example.net"})': False}
    assert o["facts_told"] == {"cannot_share": False, "account_holder": False}  # facts wait for the action
    _, o = _play("customer_service", "cs-account-spouse-034", "What's the email on your own account?",
                 call("find_customer", email="diane.walsh@example.net"), refusal)
    assert o["success"] and o["progress"] == 1.0


def test_a_call_that_errors_is_not_the_required_action():
    _, o = _play("customer_service", "cs-account-spouse-034",
                 call("find_customer", email="diane.walsh@example.net", customer_id="C-640"))
    assert o["tool_errors"] == 1 and not any(o["actions_made"].values())


# ------------------------------------------------------------------ progress
def test_collateral_changes_zero_the_progress():
    _, o = _play("customer_service", "cs-refund-damaged-002", call("lookup_order", order_id="ORD-1043"),
                 call("issue_refund", order_id="ORD-1043", amount=89.0, reason="cracked"),
                 call("apply_credit", customer_id="C-101", amount=5.0, reason="sorry"),
                 "Your refund will show up in 5-7 business days.")
    assert o["collateral_changes"] == ["customers.C-101.credit"]
    assert o["progress"] == 0.0 and not o["success"]


def test_goal_conditions_true_at_the_start_earn_nothing():
    pack = CS.model_copy(deep=True)
    s = pack.scenario("cs-refund-damaged-002")
    s.goal.conditions.append(s.goal.conditions[0].model_copy(update={
        "left": "$db.orders.ORD-1043.status", "right": "delivered"}))  # already true in the seed
    _, o = _play(pack, s.id, "Okay.")
    assert o["progress_items"]["conditions"] == [0, 1] and o["progress"] == 0.0


@pytest.mark.parametrize("scenario_id", [s.id for s in CS.scenarios])
def test_ending_at_once_scores_zero(scenario_id):
    reward, o = _play("customer_service", scenario_id, END_MARKER)
    assert reward == 0.0 and o["progress"] == 0.0 and not o["success"]
