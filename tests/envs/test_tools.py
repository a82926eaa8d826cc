"""The tool engine, and every tool of every built-in pack exercised by some reference solution."""

import copy

import pytest

from stateset_agents.envs import BUILTIN_ENVS, ConversationEnv, builtin_pack_dirs, format_tool_call, load_pack
from stateset_agents.envs.pack import EnvPack
from stateset_agents.envs.tools import ToolError, run_tool

PACKS = [n for n in BUILTIN_ENVS.values() if n in builtin_pack_dirs()]


@pytest.fixture
def cs():
    pack = load_pack("customer_service")
    return pack, copy.deepcopy(pack.scenario("cs-refund-damaged-002").database)


@pytest.mark.parametrize("name", PACKS)
def test_every_tool_is_used_by_a_reference_solution(name):
    pack = load_pack(name)
    used = {step.tool for s in pack.scenarios for step in s.reference if step.tool}
    assert {t.name for t in pack.tools} - used == set()


@pytest.mark.parametrize("name", PACKS)
def test_every_tool_runs_in_a_real_episode(name):
    pack = load_pack(name)
    seen = set()
    for s in pack.scenarios:
        env = ConversationEnv(pack, scenario=s.id, split="all", max_turns=50)
        env.reset(seed=0)
        for step in s.reference:
            if step.tool and step.tool not in seen:
                obs, *_, info = env.step(format_tool_call(step.tool, step.args))
                assert '"ok": true' in obs, (s.id, step.tool, obs)
                seen.add(step.tool)
            elif step.tool:
                env.step(format_tool_call(step.tool, step.args))
            else:
                *_, term, trunc, _ = env.step(step.say)
                if term or trunc:
                    break
        env.close()
    assert seen == {t.name for t in pack.tools}


def test_get(cs):
    pack, db = cs
    out = run_tool(pack, "lookup_order", {"order_id": "ord-1043"}, db)
    assert out["_key"] == "ORD-1043" and out["total"] == 89.0


def test_get_missing_record(cs):
    pack, db = cs
    with pytest.raises(ToolError, match=r"no orders record with order_id='ORD-9'; check the value with the customer"):
        run_tool(pack, "lookup_order", {"order_id": "ORD-9"}, db)


def test_find(cs):
    pack, db = cs
    out = run_tool(pack, "find_customer", {"email": "TOM.BECKER@example.com"}, db)
    assert out["count"] == 1 and out["matches"][0]["_key"] == "C-101"


def test_update_and_require(cs):
    pack, db = cs
    with pytest.raises(ToolError, match="only pending or processing orders can be cancelled"):
        run_tool(pack, "cancel_order", {"order_id": "ORD-1043"}, db)
    out = run_tool(pack, "issue_refund", {"order_id": "ORD-1043", "amount": 89.0, "reason": "cracked"}, db)
    assert out["updated"] == "ORD-1043" and db["orders"]["ORD-1043"]["refund_amount"] == 89.0
    with pytest.raises(ToolError, match="already been refunded"):
        run_tool(pack, "issue_refund", {"order_id": "ORD-1043", "amount": 1.0, "reason": "again"}, db)


def test_create_gives_deterministic_ids(cs):
    pack, db = cs
    a = run_tool(pack, "escalate_to_supervisor", {"customer_id": "C-101", "summary": "x"}, db)
    b = run_tool(pack, "escalate_to_supervisor", {"customer_id": "C-101", "summary": "y"}, db)
    assert (a["created"], b["created"]) == ("ESC-1", "ESC-2")


def test_hidden_fields_are_not_shown(cs):
    pack, db = cs
    db["customers"]["C-101"]["password_hint"] = "dog's name"
    out = run_tool(pack, "send_password_reset", {"customer_id": "C-101"}, db)
    assert "password_hint" not in out and out["reset_link_sent"] is True


@pytest.mark.parametrize(("args", "message"), [
    ({}, "missing required argument 'order_id'; required: ['order_id', 'amount', 'reason']"),
    ({"order_id": "ORD-1043", "amount": "89", "reason": "x"}, "argument 'amount' must be of type number, got str '89'"),
    ({"order_id": "ORD-1043", "amount": 0, "reason": "x"}, "argument 'amount' must be >= 0.01, got 0"),
    ({"order_id": "ORD-1043", "amount": 5, "reason": "x", "rush": True},
     "unknown argument(s) ['rush']; this tool takes ['amount', 'order_id', 'reason']"),
])
def test_bad_arguments(cs, args, message):
    pack, db = cs
    with pytest.raises(ToolError) as e:
        run_tool(pack, "issue_refund", args, db)
    assert str(e.value) == message


def test_unknown_tool(cs):
    pack, db = cs
    with pytest.raises(ToolError, match="unknown tool 'refund_everything'; available tools: lookup_order, "):
        run_tool(pack, "refund_everything", {}, db)


def test_tool_errors_are_observations_the_agent_can_recover_from():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    obs, _, term, trunc, info = env.step(format_tool_call("issue_refund", {"order_id": "ORD-1043"}))
    assert not (term or trunc) and info["tool_errors"] == 1
    assert '"ok": false' in obs and "missing required argument 'amount'" in obs
    obs, *_, info = env.step("<tool_call>not json</tool_call>")
    assert info["tool_errors"] == 2 and "not valid JSON" in obs
    obs, *_, info = env.step(format_tool_call("issue_refund", {"order_id": "ORD-1043", "amount": 89.0, "reason": "x"}))
    assert '"ok": true' in obs and info["tool_errors"] == 2 and info["tool_calls"] == 3
    env.close()


def test_failed_tool_call_leaves_the_database_untouched():
    env = ConversationEnv("customer_service", scenario="cs-refund-damaged-002")
    env.reset(seed=0)
    before = copy.deepcopy(env.db)
    env.step(format_tool_call("cancel_order", {"order_id": "ORD-1043"}))
    assert env.db == before
    env.close()


def test_pack_type():
    assert isinstance(load_pack("customer_service"), EnvPack)


def test_an_argument_outside_its_pattern_is_refused_naming_the_pattern(cs):
    pack, db = cs
    with pytest.raises(ToolError, match=r"argument 'order_id' must match .*, got 'my'; check the value"):
        run_tool(pack, "lookup_order", {"order_id": "my"}, db)
    assert run_tool(pack, "lookup_order", {"order_id": "ord-1043"}, db)["_key"] == "ORD-1043"  # keys ignore case


def test_a_tool_pattern_that_is_not_a_regular_expression_is_refused_in_one_line():
    from pydantic import ValidationError

    from stateset_agents.envs.pack_schema import ToolSpec

    with pytest.raises(ValidationError, match=r"argument 'order_id': pattern '\[ORD' is not a valid regular"):
        ToolSpec(name="lookup_order", description="x", effect={"kind": "get", "table": "orders", "key": "order_id"},
                 parameters={"type": "object", "properties": {"order_id": {"type": "string", "pattern": "[ORD"}}})
