"""The OpenAI-compatible endpoints on the real server (uvicorn on loopback) with the tiny model: the official
openai client, real token streaming, tool calls, log-probs, auth refusals, bad requests, /metrics, /healthz."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from stateset_agents import Completion, Message, SamplingParams, ToolCall
from stateset_agents.serving import ServeConfig
from stateset_agents.toolcalls import parse_message

from .conftest import API_KEY, AUTH, make_config
from .harness import ServerThread

HI = [{"role": "user", "content": "Where is my order?"}]


@pytest.fixture
def oai(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


# ---------------------------------------------------------------- the official client, unchanged
def test_openai_client_chat_and_models(oai, server, tiny_model):
    models = oai.models.list()
    assert [m.id for m in models.data] == [tiny_model.name]
    r = oai.chat.completions.create(model=tiny_model.name, messages=HI, max_tokens=12, temperature=0, seed=0)
    local = asyncio.run(tiny_model.chat([Message(role="user", content="Where is my order?")],
                                        sampling=SamplingParams(temperature=0, max_new_tokens=12)))
    assert r.choices[0].message.content == local.text
    assert r.choices[0].finish_reason == local.finish_reason
    assert r.usage.prompt_tokens == len(local.prompt_ids)
    assert r.usage.completion_tokens == len(local.completion_ids)
    assert r.model == tiny_model.name and r.id.startswith("chatcmpl-")


def test_streaming_sends_real_tokens_that_add_up_to_the_non_streamed_reply(oai, tiny_model):
    for seed in range(4):
        kw = dict(model="default", messages=HI, max_tokens=24, temperature=1.0, seed=seed)
        whole = oai.chat.completions.create(**kw).choices[0]
        chunks = list(oai.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
        assert chunks[-1].usage.completion_tokens == 24 or whole.finish_reason == "stop"
        # more than one content chunk: the reply arrives token by token, not as one finished text
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1


def test_logprobs_are_the_engines_sampled_token_logprobs(client, tiny_model):
    body = {"model": "default", "messages": HI, "max_tokens": 10, "temperature": 0.8, "seed": 5, "logprobs": True}
    r = client.post("/v1/chat/completions", json=body).json()
    lps = [t["logprob"] for t in r["choices"][0]["logprobs"]["content"]]
    local = asyncio.run(tiny_model.chat([Message(role="user", content="Where is my order?")],
                                        sampling=SamplingParams(temperature=0.8, max_new_tokens=10, seed=5)))
    assert torch.allclose(torch.tensor(lps), torch.tensor(local.logprobs), atol=1e-5)
    streamed = []
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    streamed += [t["logprob"] for t in (choice.get("logprobs") or {}).get("content", [])]
    assert streamed == pytest.approx(lps, abs=1e-5)


def test_n_choices_are_seeded_seed_plus_index(client, tiny_model):
    r = client.post("/v1/chat/completions", json={"model": "default", "messages": HI, "max_tokens": 8, "n": 3,
                                                   "seed": 1}).json()
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    local = [asyncio.run(tiny_model.chat([Message(role="user", content="Where is my order?")],
                                         sampling=SamplingParams(max_new_tokens=8, seed=1 + i))) for i in range(3)]
    assert [c["message"]["content"] for c in r["choices"]] == [c.text for c in local]
    assert r["usage"]["completion_tokens"] == sum(len(c.completion_ids) for c in local)


# ---------------------------------------------------------------- tool calls
class ScriptedModel:
    """The server's view of an HFChatModel (tokenizer, engine, prompt_ids, chat with on_token) that always replies
    with one fixed text, token by token: the tiny model never writes a well-formed tool call by chance."""

    def __init__(self, tiny, text: str) -> None:
        self.tiny, self.text, self.name = tiny, text, "scripted"
        self.tokenizer, self.model, self.engine = tiny.tokenizer, tiny.model, tiny.engine

    def prompt_ids(self, messages, tools=None):
        return self.tiny.prompt_ids(messages, tools)

    async def chat(self, messages, *, sampling, tools=None, on_token=None) -> Completion:
        ids = self.tokenizer.encode(self.text, add_special_tokens=False)
        for t in ids:
            if on_token is not None:
                on_token(t, -1.0)
            await asyncio.sleep(0)
        calls = [ToolCall(id=f"call_{i + 1}", name=c.name, arguments=c.arguments)
                 for i, c in enumerate(parse_message(self.text).calls)]
        return Completion(text=self.text, tool_calls=calls, finish_reason="tool_calls" if calls else "stop",
                          prompt_ids=self.prompt_ids(messages), completion_ids=ids, logprobs=[-1.0] * len(ids),
                          usage={"prompt_tokens": 3, "completion_tokens": len(ids)})


CALL = 'Checking now. <tool_call>{"name": "lookup_order", "arguments": {"order_id": "ORD-1042"}}</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}}}}]


def test_tool_calls_in_openai_format_streamed_and_not(tiny_model, tmp_path):
    with ServerThread(make_config(tmp_path), model=ScriptedModel(tiny_model, CALL)) as s, \
            openai.OpenAI(base_url=s.url + "/v1", api_key=API_KEY, max_retries=0) as oai:
        r = oai.chat.completions.create(model="scripted", messages=HI, tools=TOOLS, max_tokens=64)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls"
        assert msg.content == "Checking now."
        (call,) = msg.tool_calls
        assert call.type == "function" and call.function.name == "lookup_order"
        assert json.loads(call.function.arguments) == {"order_id": "ORD-1042"}
        chunks = list(oai.chat.completions.create(model="scripted", messages=HI, tools=TOOLS, max_tokens=64,
                                                  stream=True))
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
        assert content == "Checking now."
        assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == \
            [(0, "lookup_order", {"order_id": "ORD-1042"})]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        # the assistant's call and the tool's answer go back in, as any OpenAI client sends them
        follow = oai.chat.completions.create(model="scripted", max_tokens=8, messages=[
            *HI, msg.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'}])
        assert follow.choices[0].message.tool_calls
        none = oai.chat.completions.create(model="scripted", messages=HI, tool_choice="none", max_tokens=64)
        assert none.choices[0].message.content == CALL and not none.choices[0].message.tool_calls


# ---------------------------------------------------------------- auth
def test_auth_is_required_everywhere_but_healthz(server):
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics"),
                         ("GET", "/api/conversations"), ("POST", "/api/conversations"), ("GET", "/api/jobs"),
                         ("GET", "/docs")]:
        r = httpx.request(method, server.url + path, json={})
        assert r.status_code == 401, path
        assert r.json()["error"]["message"] == "missing API key: send the header 'Authorization: Bearer <key>'"
    bad = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer wrong-key-123"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key-123", max_retries=0) as oai, \
            pytest.raises(openai.AuthenticationError):
        oai.models.list()
    spec = httpx.get(server.url + "/openapi.json", headers=AUTH).json()  # the API's own description, with the key
    assert {"/v1/chat/completions", "/api/conversations", "/api/jobs", "/metrics"} <= set(spec["paths"])


def test_config_refuses_an_open_bind_without_a_key(tmp_path):
    with pytest.raises(ValueError, match="not a loopback address and no API key is set"):
        ServeConfig(host="0.0.0.0", state_dir=tmp_path)
    assert ServeConfig(state_dir=tmp_path).host == "127.0.0.1"
    assert ServeConfig(host="0.0.0.0", api_key="a-long-key", state_dir=tmp_path).host == "0.0.0.0"


# ---------------------------------------------------------------- bad requests: JSON errors naming the field
@pytest.mark.parametrize(("body", "status", "param", "message"), [
    ({"model": "default", "messages": [{"role": "bot", "content": "x"}]}, 400, "messages.0.role",
     "field 'messages.0.role': Input should be 'system', 'developer', 'user', 'assistant' or 'tool' (got 'bot')"),
    ({"model": "default", "messages": HI, "max_tokens": 65}, 400, "max_tokens",
     "field 'max_tokens': 65 is above this server's limit of 64 (max_tokens_limit); ask for fewer tokens"),
    ({"model": "default", "messages": HI * 17}, 400, "messages",
     "field 'messages': 17 messages is above this server's limit of 16 (max_messages)"),
    ({"model": "default", "messages": []}, 400, "messages", "field 'messages': List should have at least 1 item"),
    ({"model": "default"}, 400, "messages", "field 'messages' is required"),
    ({"model": "default", "messages": HI, "temprature": 1}, 400, "temprature",
     "unknown field 'temprature': remove it or check its spelling"),
    ({"model": "default", "messages": HI, "frequency_penalty": 0.5}, 400, "frequency_penalty",
     "field 'frequency_penalty': 0.5 is not supported"),
    ({"model": "default", "messages": HI, "n": 4}, 400, "n", "field 'n': 4 is above this server's limit of 3"),
    ({"model": "default", "messages": HI, "n": 2, "stream": True}, 400, "n", "streaming returns one choice"),
    ({"model": "gpt-9", "messages": HI}, 404, "model", "field 'model': 'gpt-9' is not served here"),
    ({"model": "default", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0",
     "a tool message needs tool_call_id"),
    ({"model": "default", "messages": HI, "temperature": 3}, 400, "temperature",
     "field 'temperature': Input should be less than or equal to 2"),
])
def test_bad_requests_name_the_field(client, body, status, param, message):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param
    assert message in err["message"]


def test_body_size_and_invalid_json(client):
    big = {"model": "default", "messages": [{"role": "user", "content": "x" * (65 * 1024)}]}
    r = client.post("/v1/chat/completions", json=big)
    assert r.status_code == 413 and "larger than the limit of 65536 bytes" in r.json()["error"]["message"]

    def chunked():  # no Content-Length: the bound still holds
        for _ in range(70):
            yield b"x" * 1024

    r = client.post("/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["error"]["message"].startswith("no endpoint GET /v1/nope")


def test_prompt_longer_than_the_model_is_refused(tmp_path, tiny_model):
    with ServerThread(make_config(tmp_path, max_messages=4), model=tiny_model) as s:
        long = [{"role": "user", "content": "hello " * 2100}]
        r = httpx.post(s.url + "/v1/chat/completions", headers=AUTH,
                       json={"model": "default", "messages": long, "max_tokens": 8})
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert "more than the model's 2048 positions" in r.json()["error"]["message"]


# ---------------------------------------------------------------- metrics and health
def test_metrics_in_prometheus_format(client):
    client.post("/v1/chat/completions", json={"model": "default", "messages": HI, "max_tokens": 4})
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "default", "messages": HI, "max_tokens": 4, "stream": True}) as r:
        r.read()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in ['stateset_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
                 'stateset_http_request_duration_seconds_bucket{le="0.005",route="/v1/chat/completions"}',
                 "stateset_engine_new_tokens_total ", "stateset_engine_new_tokens_per_second ",
                 "stateset_engine_batch_size ", "stateset_engine_max_batch_size ", "stateset_jobs_active 0.0",
                 "stateset_chat_time_to_first_token_seconds_count "]:
        assert line in text, line
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if not s.labels}
    assert samples["stateset_engine_new_tokens_total"] >= 8
    assert samples["stateset_engine_requests_total"] >= 2
    assert samples["stateset_chat_time_to_first_token_seconds_count"] >= 1


def test_a_client_that_leaves_mid_stream_frees_its_engine_row(tmp_path, tiny_model):
    engine = tiny_model.engine
    with ServerThread(make_config(tmp_path, max_tokens_limit=1900), model=tiny_model) as s:
        before = engine.stats.new_tokens
        body = {"model": "default", "messages": HI, "max_tokens": 1900, "temperature": 1.0, "stream": True}
        with httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c, \
                c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            while not next(lines).startswith('data: {"id"'):
                pass
        # the connection is closed: within a few decode steps the engine drops the request
        deadline = time.monotonic() + 30
        while (engine.batch_size or s.service.inflight) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.batch_size == 0 and s.service.inflight == 0
        assert engine.stats.new_tokens - before < 1900
        metrics = httpx.get(s.url + "/metrics", headers=AUTH).text
        assert 'stateset_http_requests_total{method="POST",route="/v1/chat/completions",status="499"} 1.0' in metrics


def test_generations_beyond_max_pending_get_429(tmp_path, tiny_model):
    with ServerThread(make_config(tmp_path, max_tokens_limit=1900, max_pending=1), model=tiny_model) as s, \
            httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        body = {"model": "default", "messages": HI, "max_tokens": 1900, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            while not next(lines).startswith('data: {"id"'):
                pass
            busy = c.post("/v1/chat/completions", json={"model": "default", "messages": HI, "max_tokens": 4})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["error"]["code"] == "server_busy"
            assert "the limit is 1 (max_pending)" in busy.json()["error"]["message"]
