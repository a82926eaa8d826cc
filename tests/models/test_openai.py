"""OpenAIChatModel against a real HTTP server on loopback (backed by the tiny HF model)."""

import pytest

from stateset_agents import ConfigError, Message, ModelError, SamplingParams
from stateset_agents.models import OpenAIChatModel
from tests.models.loopback_server import LoopbackServer

MSGS = [Message(role="system", content="be brief"), Message(role="user", content="where is my order?")]
S = SamplingParams(temperature=0, max_new_tokens=8, seed=1, stop=["\n\n"])


@pytest.fixture
def server(tiny_model):
    with LoopbackServer(tiny_model, api_key="sk-test") as s:
        yield s


async def test_chat_round_trip_matches_the_local_model(server, tiny_model):
    client = OpenAIChatModel(server.base_url, "tiny", api_key="sk-test", logprobs=True)
    c = await client.chat(MSGS, sampling=S)
    local = await tiny_model.chat(MSGS, sampling=S)
    assert c.text == local.text and c.logprobs == pytest.approx(local.logprobs)
    assert c.usage == {"prompt_tokens": len(local.prompt_ids), "completion_tokens": len(local.completion_ids)}
    body = server.requests[-1]["body"]
    assert body == {"model": "tiny", "messages": [m.to_openai() for m in MSGS], "temperature": 0.0,
                    "top_p": 1.0, "max_tokens": 8, "stop": ["\n\n"], "seed": 1, "logprobs": True}
    assert server.requests[-1]["auth"] == "Bearer sk-test"
    await client.aclose()


async def test_api_key_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test")
    client = OpenAIChatModel(server.base_url, "tiny", api_key_env="MY_KEY")
    await client.chat(MSGS, sampling=S)
    assert server.requests[-1]["auth"] == "Bearer sk-test"
    await client.aclose()


async def test_tools_are_sent_and_tool_messages_serialised(server):
    client = OpenAIChatModel(server.base_url, "tiny", api_key="sk-test")
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    from stateset_agents import ToolCall

    msgs = [*MSGS, Message(role="assistant", content="", tool_calls=[ToolCall(id="c1", name="lookup_order",
                                                                               arguments={"order_id": "A"})]),
            Message(role="tool", content='{"ok": true}', tool_call_id="c1", name="lookup_order")]
    await client.chat(msgs, sampling=S, tools=tools)
    body = server.requests[-1]["body"]
    assert body["tools"] == tools
    assert body["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"order_id": "A"}'
    await client.aclose()


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_retries_with_backoff_then_succeeds(server, status):
    client = OpenAIChatModel(server.base_url, "tiny", api_key="sk-test", backoff=0.01)
    server.fail_next = [status, status]
    c = await client.chat(MSGS, sampling=S)
    assert c.text is not None and client.stats["retries"] == 2 and client.stats["requests"] == 3
    await client.aclose()


async def test_gives_up_after_max_retries(server):
    client = OpenAIChatModel(server.base_url, "tiny", api_key="sk-test", backoff=0.01, max_retries=1)
    server.fail_next = [503, 503, 503]
    with pytest.raises(ModelError) as e:
        await client.chat(MSGS, sampling=S)
    assert str(e.value) == f"POST {server.base_url}/chat/completions returned 503 after 2 attempts: injected 503"
    await client.aclose()


async def test_other_4xx_fail_at_once_with_the_servers_message(server):
    client = OpenAIChatModel(server.base_url, "tiny", api_key="wrong", backoff=0.01)
    with pytest.raises(ModelError) as e:
        await client.chat(MSGS, sampling=S)
    assert str(e.value) == f"POST {server.base_url}/chat/completions returned 401: invalid api key"
    assert client.stats["requests"] == 1
    await client.aclose()


async def test_connection_errors_are_retried_then_reported():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    client = OpenAIChatModel(f"http://127.0.0.1:{port}/v1", "tiny", backoff=0.01, max_retries=2)
    with pytest.raises(ModelError, match="failed after 3 attempts: ConnectError: .* Is the server running"):
        await client.chat(MSGS, sampling=S)
    assert client.stats["retries"] == 2
    await client.aclose()


def test_bad_base_url():
    with pytest.raises(ConfigError, match="base_url 'localhost:8000' must start with http:// or https://"):
        OpenAIChatModel("localhost:8000", "m")


async def test_llm_user_over_http(server):
    """The LLM user simulator works through the OpenAI-compatible client too."""
    from stateset_agents import ConversationEnv, LLMUser

    user = LLMUser(OpenAIChatModel(server.base_url, "tiny", api_key="sk-test"), max_new_tokens=8)
    env = ConversationEnv("customer_service", scenario="cs-delayed-order-001", user=user)
    await env.areset(seed=0)
    obs, _, term, trunc, info = await env.astep("Could you give me your order number?")
    assert "error" not in info and info["observation_role"] == "user"
    assert server.requests[-1]["body"]["messages"][0]["role"] == "system"
    await user.model.aclose()
    env.close()
