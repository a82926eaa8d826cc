"""Constrained tool calls (agents/tool_grammar.py): the tiny model, whose free output is gibberish, writes under
the grammar only messages or calls of the offered tools with arguments the env accepts."""

import asyncio
import json

import pytest

from stateset_agents import ConfigError, Message, SamplingParams
from stateset_agents.agents import MultiTurnAgent, tool_turn_grammar
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
