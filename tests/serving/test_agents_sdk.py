"""The OpenAI Agents SDK (`openai-agents`) as a real client of `stateset-agents serve`: an agent with a function
tool through the SDK's Chat Completions model class, plain and streamed, over loopback with the tiny model."""

from __future__ import annotations

import json
import os
from typing import Literal

import pytest

os.environ.setdefault("OPENAI_AGENTS_DISABLE_TRACING", "1")  # the SDK would otherwise export traces to OpenAI

from agents import (  # noqa: E402
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from .conftest import API_KEY  # noqa: E402

set_tracing_disabled(True)


@pytest.fixture
async def client(server):
    c = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    yield c
    await c.close()


def _agent(client: AsyncOpenAI, calls: list[str], tool_choice: str) -> Agent:
    @function_tool
    def lookup_order(order_id: Literal["ORD-1042", "ORD-2077"]) -> str:
        """Look up an order by its id."""
        calls.append(order_id)
        return json.dumps({"order_id": order_id, "status": "shipped", "eta": "March 14"})

    return Agent(name="support", instructions="You help customers with their orders.", tools=[lookup_order],
                 model=OpenAIChatCompletionsModel(model="default", openai_client=client),
                 model_settings=ModelSettings(tool_choice=tool_choice, max_tokens=48, temperature=0.7))


async def test_sdk_agent_calls_a_function_tool_and_answers(client):
    calls: list[str] = []
    result = await Runner.run(_agent(client, calls, "lookup_order"), "Where is my order?", max_turns=4)
    assert calls and calls[0] in ("ORD-1042", "ORD-2077")  # the SDK ran our tool with the server's arguments
    kinds = [type(i) for i in result.new_items]
    assert ToolCallItem in kinds and ToolCallOutputItem in kinds
    assert isinstance(result.final_output, str)  # after the call the SDK resets tool_choice and the model answers


async def test_sdk_agent_streams_the_tool_call_and_the_answer(client):
    calls: list[str] = []
    run = Runner.run_streamed(_agent(client, calls, "required"), "Where is my order?", max_turns=4)
    events = [e async for e in run.stream_events()]
    items = [e.item for e in events if e.type == "run_item_stream_event"]
    assert any(isinstance(i, ToolCallItem) for i in items) and calls
    assert isinstance(run.final_output, str)


async def test_sdk_agent_with_auto_tool_choice_gets_a_reply(client):
    calls: list[str] = []
    result = await Runner.run(_agent(client, calls, "auto"), "Hello!", max_turns=4)
    assert isinstance(result.final_output, str) and result.final_output


async def test_sdk_tool_choice_none_never_calls(client):
    calls: list[str] = []
    await Runner.run(_agent(client, calls, "none"), "Where is my order?", max_turns=2)
    assert calls == []
