"""Constrained tool calls (agents/tool_grammar.py): the tiny model, whose free output is gibberish, writes under
the grammar only messages or calls of the offered tools with arguments the env accepts."""

import asyncio
import json

import pytest

from stateset_agents import ConfigError, Message, SamplingParams
from stateset_agents.agents import MultiTurnAgent, conversation_values, tool_turn_grammar
from stateset_agents.envs.tools import validate_args
from stateset_agents.models.openai import OpenAIChatModel
from stateset_agents.toolcalls import parse_message

TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                      "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                                     "required": ["order_id"]}}},
    {"name": "issue_refund", "description": "Refund an order.",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"},
                                                     "amount": {"type": "number", "minimum": 0}},
                    "required": ["order_id", "amount"]}},
]
SCHEMAS = {"lookup_order": TOOLS[0]["function"]["parameters"], "issue_refund": TOOLS[1]["parameters"]}


def _check_turn(text: str) -> str:
    """'message' or 'call'; fails the test if the turn is neither a plain message nor valid calls."""
    parsed = parse_message(text)
    if not parsed.calls:
        assert "<" not in text and text.strip(), text
        return "message"
    for c in parsed.calls:
        assert c.error is None, (text, c.error)
        assert c.name in SCHEMAS, text
        validate_args(c.arguments, SCHEMAS[c.name])  # what the env checks: raises ToolError if it would refuse
    return "call"


async def test_untrained_tiny_model_writes_only_messages_or_valid_calls_under_the_grammar(tiny_model):
    agent = MultiTurnAgent(tiny_model, domain=None, constrain_tool_calls=True)
    conv = [Message(role="user", content="my parcel is late")]
    cs = await asyncio.gather(*[agent.act(conv, TOOLS, sampling=SamplingParams(temperature=1.0, max_new_tokens=160,
                                                                               seed=i)) for i in range(32)])
    finished = [c for c in cs if c.finish_reason != "length"]
    kinds = [_check_turn(c.text) for c in finished]  # every finished turn: a clean message or valid calls
    assert "call" in kinds and "message" in kinds, kinds
    for c in cs:  # a turn cut by the budget is still a prefix of a valid one: text, then only the documented tag
        assert c.sampling.grammar == tool_turn_grammar(TOOLS)
        if "<" in c.text:
            assert c.text.split("<", 1)[1].startswith('tool_call>{"'), c.text
    # the same model unconstrained writes no valid call at all
    free = MultiTurnAgent(tiny_model, domain=None)
    fs = await asyncio.gather(*[free.act(conv, TOOLS, sampling=SamplingParams(temperature=1.0, max_new_tokens=160,
                                                                               seed=i)) for i in range(32)])
    assert not any(x.error is None and x.name in SCHEMAS for f in fs for x in parse_message(f.text).calls)
    assert all(f.sampling.grammar is None for f in fs)


def test_grammar_offers_each_tool_once_name_first_with_closed_arguments():
    g = tool_turn_grammar(TOOLS)
    assert '"<tool_call>{\\"name\\": \\"lookup_order\\", \\"arguments\\": "' in g
    schemas = [json.loads(line.split("%json ", 1)[1]) for line in g.splitlines() if "%json" in line]
    assert len(schemas) == 2 and all(s["additionalProperties"] is False for s in schemas)
    assert schemas[1]["required"] == ["order_id", "amount"]
    assert tool_turn_grammar(TOOLS) is g  # cached: one compile per tool set


def test_bad_tools_are_refused_with_the_tool_named():
    with pytest.raises(ConfigError, match="has no name"):
        tool_turn_grammar([{"description": "x"}])
    with pytest.raises(ConfigError, match="'lookup_order': parameters must be"):
        tool_turn_grammar([{"name": "lookup_order", "parameters": "order_id"}])
    with pytest.raises(ConfigError, match="at least one tool"):
        tool_turn_grammar([])


async def test_an_openai_endpoint_refuses_a_grammar_in_one_line():
    m = OpenAIChatModel("http://127.0.0.1:9/v1", model="x")
    with pytest.raises(ConfigError, match="needs a local model"):
        await m.chat([Message(role="user", content="hi")], sampling=SamplingParams(grammar="start: /a/"))


# ------------------------------------------------------------------ grounded references
GROUNDED = {"lookup_order": ["order_id"], "issue_refund": ["order_id"]}


def test_conversation_values_are_the_customers_and_the_tools_words_only():
    conv = [Message(role="system", content="Ask for the order id, e.g. ORD-0"),
            Message(role="user", content="Hi, my order is A-1002. Email: ann.lee@example.com!"),
            Message(role="assistant", content="Let me check order_id your_order_id"),
            Message(role="tool", name="find_customer", tool_call_id="call_1",
                    content='{"name": "find_customer", "ok": true, "result": {"matches": [{"_key": "C-100"}]}}'),
            Message(role="tool", name="lookup_order", tool_call_id="call_3",
                    content='{"name": "lookup_order", "ok": false, "error": "no orders record with order_id=\'Z-9\'"}'),
            Message(role="tool", name="lookup_order", tool_call_id="call_2", content="plain text ORD-7")]
    values = conversation_values(conv)
    assert {"A-1002", "ann.lee@example.com", "C-100", "ORD-7"} <= set(values)
    # not the system prompt, the agent, a tool's envelope or error, nor the sentence's punctuation
    assert not {"ORD-0", "your_order_id", "find_customer", "Z-9", "order_id", "A-1002.", "Email:"} & set(values)
    assert values == sorted(set(values))


def test_grounded_arguments_take_only_the_conversations_values_and_wait_for_one():
    g = tool_turn_grammar(TOOLS, grounded=GROUNDED, values=["B-7", "A-1"])
    schemas = [json.loads(line.split("%json ", 1)[1]) for line in g.splitlines() if "%json" in line]
    assert [s["properties"]["order_id"]["enum"] for s in schemas] == [["A-1", "B-7"]] * 2
    assert schemas[1]["properties"]["amount"] == {"type": "number", "minimum": 0}  # other arguments as before
    assert tool_turn_grammar(TOOLS, grounded=GROUNDED, values=[]) == "start: MESSAGE\nMESSAGE: /[^<]+/\n"
    only_refund = tool_turn_grammar(TOOLS, grounded={"issue_refund": ["order_id"]}, values=[])
    assert "lookup_order" in only_refund and "issue_refund" not in only_refund
    with pytest.raises(ConfigError, match=r"grounded argument lookup_order\.orderid is not a parameter"):
        tool_turn_grammar(TOOLS, grounded={"lookup_order": ["orderid"]}, values=["A-1"])


async def test_untrained_tiny_model_under_grounding_names_only_records_it_was_told(tiny_model):
    agent = MultiTurnAgent(tiny_model, domain=None, constrain_tool_calls=True, grounded_args=GROUNDED)
    conv = [Message(role="user", content="my parcel A-1002 is late, I am ann@example.com")]
    values = set(conversation_values(conv))
    cs = await asyncio.gather(*[agent.act(conv, TOOLS, sampling=SamplingParams(temperature=1.0, max_new_tokens=160,
                                                                               seed=i)) for i in range(32)])
    calls = [x for c in cs if c.finish_reason != "length" for x in parse_message(c.text).calls]
    assert calls and all(x.error is None and x.arguments["order_id"] in values for x in calls), calls
    # before the customer has said anything a record could be named by, the turn can only be a message
    none = await agent.act([Message(role="user", content="hello")], TOOLS[:1],
                           sampling=SamplingParams(temperature=1.0, max_new_tokens=40, seed=0))
    assert "<tool_call>" not in none.text and none.text.strip()


def test_the_customer_service_pack_references_its_records_by_key_and_match_arguments():
    from stateset_agents.envs import load_pack

    refs = load_pack("customer_service").reference_args()
    assert refs["lookup_order"] == ["order_id"] and refs["find_customer"] == ["email"]
    assert refs["list_orders"] == ["customer_id"] and refs["send_password_reset"] == ["customer_id"]
    assert "escalate_to_supervisor" not in refs  # a create tool names no existing record


def test_grounding_without_the_grammar_is_refused_in_one_line():
    from stateset_agents.training.config import load_config

    with pytest.raises(ConfigError, match="set eval_tool_grammar: true as well"):
        load_config({"algorithm": "sft", "env": "customer_service", "eval_grounded_args": True})


def test_eval_decoding_sets_the_runs_grounding_and_restores_the_agent(tiny_model):
    from stateset_agents.training.build import config_env_factory
    from stateset_agents.training.config import load_config
    from stateset_agents.training.evaluate import eval_decoding

    cfg = load_config({"algorithm": "sft", "env": "customer_service", "eval_tool_grammar": True,
                            "eval_grounded_args": True, "eval_temperature": 0.0, "max_new_tokens": 33})
    agent = MultiTurnAgent(tiny_model, domain=None)
    before = agent.sampling
    with eval_decoding(agent, cfg, config_env_factory(cfg)):
        assert agent.constrain_tool_calls is True and agent.grounded_args["lookup_order"] == ["order_id"]
        assert agent.sampling.max_new_tokens == 33 and agent.sampling.temperature == 0.0
    assert agent.sampling is before and agent.constrain_tool_calls is False and agent.grounded_args is None


def test_a_grounded_argument_takes_only_words_its_own_schema_allows():
    tools = [{"name": "lookup_order", "description": "Look up an order.",
              "parameters": {"type": "object", "properties": {"order_id": {"type": "string",
                                                                           "pattern": "^[Oo][Rr][Dd]-[0-9]+$"}},
                             "required": ["order_id"]}}]
    g = tool_turn_grammar(tools, grounded={"lookup_order": ["order_id"]}, values=["ORD-7", "my", "your", "ord-8x"])
    schema = json.loads(g.split("%json ", 1)[1].splitlines()[0])
    assert schema["properties"]["order_id"]["enum"] == ["ORD-7"]
    # the customer has said words, none an order id: the tool is not offered yet (no "my" or "your" as an id)
    assert tool_turn_grammar(tools, grounded={"lookup_order": ["order_id"]}, values=["my", "your"]) == \
        "start: MESSAGE\nMESSAGE: /[^<]+/\n"


async def test_tiny_model_under_the_customer_service_packs_grounding_calls_only_records_it_was_told(tiny_model):
    from stateset_agents.envs import load_pack

    pack = load_pack("customer_service")
    tools, schemas = [t.openai_schema() for t in pack.tools], {t.name: t.parameters for t in pack.tools}
    refs = pack.reference_args()
    agent = MultiTurnAgent(tiny_model, domain=None, constrain_tool_calls=True, grounded_args=refs)
    conv = [Message(role="user", content="my order ORD-1042 is late; my email is ann.lee@example.com")]
    cs = await asyncio.gather(*[agent.act(conv, tools, sampling=SamplingParams(temperature=1.0, max_new_tokens=120,
                                                                               seed=i)) for i in range(16)])
    calls = [x for c in cs if c.finish_reason != "length" for x in parse_message(c.text).calls]
    assert calls, [c.text for c in cs]
    for x in calls:
        assert x.error is None, x
        validate_args(x.arguments, schemas[x.name])  # the pack's own schema, patterns included
        assert all(x.arguments[a] in {"ORD-1042", "ann.lee@example.com"} for a in refs.get(x.name, [])), x
