"""Constrained output through the server (tiny model, real uvicorn on loopback, the official openai client):
``response_format`` json_schema / json_object, ``tool_choice`` required and named, ``parallel_tool_calls``."""

from __future__ import annotations

import json

import openai
import pytest

from .conftest import API_KEY

HI = [{"role": "user", "content": "Where is my order?"}]
SCHEMA = {"type": "object", "properties": {"verdict": {"enum": ["pass", "fail"]}, "score": {"type": "integer",
          "minimum": 0, "maximum": 9}}, "required": ["verdict", "score"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                      "parameters": {"type": "object", "properties": {
                                          "order_id": {"type": "string", "enum": ["ORD-1", "ORD-2"]}},
                                          "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "escalate", "description": "Escalate to a supervisor.",
                                      "parameters": {"type": "object", "properties": {
                                          "urgent": {"type": "boolean"}}, "required": ["urgent"],
                                          "additionalProperties": False}}},
]


@pytest.fixture
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def test_json_schema_response_format_yields_valid_documents(oai):
    for seed in range(4):
        r = oai.chat.completions.create(model="default", messages=HI, max_tokens=48, seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}})
        doc = json.loads(r.choices[0].message.content)
        assert doc["verdict"] in ("pass", "fail") and 0 <= doc["score"] <= 9
        assert r.choices[0].finish_reason == "stop"


def test_json_object_response_format(oai):
    r = oai.chat.completions.create(model="default", messages=HI, max_tokens=64, seed=1,
                                    response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # the tiny model may run out of tokens inside an open string: then it says so
        assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")


def test_named_tool_choice_forces_that_call_plain_and_streamed(oai):
    choice = {"type": "function", "function": {"name": "lookup_order"}}
    r = oai.chat.completions.create(model="default", messages=HI, max_tokens=48, seed=0, tools=TOOLS,
                                    tool_choice=choice)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "lookup_order"
    assert json.loads(call.function.arguments)["order_id"] in ("ORD-1", "ORD-2")
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    chunks = list(oai.chat.completions.create(model="default", messages=HI, max_tokens=48, seed=0, tools=TOOLS,
                                              tool_choice=choice, stream=True))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)  # no JSON leaks as text
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [d.function.name for d in deltas] == ["lookup_order"]
    assert json.loads(deltas[0].function.arguments) == json.loads(call.function.arguments)  # same seed, same call
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_required_tool_choice_calls_one_of_the_tools(oai):
    names = set()
    for seed in range(6):
        r = oai.chat.completions.create(model="default", messages=HI, max_tokens=48, seed=seed, tools=TOOLS,
                                        tool_choice="required", parallel_tool_calls=False)
        (call,) = r.choices[0].message.tool_calls
        names.add(call.function.name)
        assert call.function.name in ("lookup_order", "escalate")
    assert names  # which tool is the model's choice; each reply is exactly one valid call


@pytest.mark.parametrize(("body", "param", "text"), [
    ({"tool_choice": "required"}, "tool_choice", "no 'tools' were given"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "refund"}}}, "tool_choice",
     "function 'refund' is not one of the tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "is not 'auto', 'none', 'required'"),
    ({"response_format": {"type": "yaml"}}, "response_format", "is not {'type': 'text'}"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format", "json_schema is not supported: Invalid type: objectx"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format",
     "cannot be combined with a forced tool_choice"),
])
def test_bad_constraints_are_refused_naming_the_field(oai, body, param, text):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="default", messages=HI, max_tokens=8, **body)
    err = e.value.body
    assert err["param"] == param and text in err["message"]
