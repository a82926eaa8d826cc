"""/api/conversations on the real server: create, talk (multi-turn through MultiTurnAgent), read, list, delete,
limits, and a restart that keeps every conversation."""

from __future__ import annotations

import asyncio
import concurrent.futures

import httpx
import pytest

from stateset_agents import Completion
from stateset_agents.agents.multiturn import strategies

from .conftest import AUTH, make_config
from .harness import ServerThread


class RecordingModel:
    """Wraps the tiny model and records the messages of every chat() call."""

    def __init__(self, tiny) -> None:
        self.tiny, self.calls = tiny, []
        self.name, self.tokenizer, self.model, self.engine = "recording", tiny.tokenizer, tiny.model, tiny.engine

    def prompt_ids(self, messages, tools=None):
        return self.tiny.prompt_ids(messages, tools)

    async def chat(self, messages, *, sampling, tools=None, on_token=None) -> Completion:
        self.calls.append((list(messages), sampling))
        return await self.tiny.chat(messages, sampling=sampling, tools=tools, on_token=on_token)


def test_a_conversation_from_start_to_delete(client):
    r = client.post("/api/conversations", json={"domain": "tech_support", "system_prompt": "Be brief."})
    assert r.status_code == 201
    conv = r.json()
    assert conv["domain"] == "tech_support" and conv["messages"] == [] and conv["id"].startswith("conv_")
    cid = conv["id"]
    first = client.post(f"/api/conversations/{cid}/messages", json={"content": "My router keeps dropping."}).json()
    assert first["reply"]["role"] == "assistant" and first["messages"] == 2
    assert first["usage"]["completion_tokens"] <= 8  # the server's conversation_max_tokens
    second = client.post(f"/api/conversations/{cid}/messages", json={"content": "Still broken."}).json()
    history = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[0]["content"] == "My router keeps dropping." and history[2]["content"] == "Still broken."
    assert history[1] == first["reply"] and history[3] == second["reply"]
    listed = client.get("/api/conversations").json()["data"]
    (row,) = [c for c in listed if c["id"] == cid]
    assert row["n_messages"] == 4 and row["domain"] == "tech_support"
    assert client.delete(f"/api/conversations/{cid}").json() == {"id": cid, "deleted": True}
    gone = client.get(f"/api/conversations/{cid}")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "conversation_id"
    assert client.delete(f"/api/conversations/{cid}").status_code == 404


def test_every_turn_sees_the_strategy_and_the_whole_history(tiny_model, tmp_path):
    model = RecordingModel(tiny_model)
    with ServerThread(make_config(tmp_path), model=model) as s, \
            httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        cid = c.post("/api/conversations", json={"domain": "sales", "temperature": 0.2, "max_tokens": 5}).json()["id"]
        c.post(f"/api/conversations/{cid}/messages", json={"content": "We are 12 people."})
        reply = c.post(f"/api/conversations/{cid}/messages", json={"content": "What does it cost?"}).json()
    messages, sampling = model.calls[-1]
    assert messages[0].role == "system" and messages[0].content.startswith(strategies()["sales"])
    assert [m.role for m in messages[1:]] == ["user", "assistant", "user"]
    assert messages[1].content == "We are 12 people." and messages[3].content == "What does it cost?"
    assert (sampling.temperature, sampling.max_new_tokens) == (0.2, 5)
    assert reply["messages"] == 4


def test_turns_of_one_conversation_run_one_at_a_time(client):
    cid = client.post("/api/conversations", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: client.post(f"/api/conversations/{cid}/messages",
                                                      json={"content": f"message {i}"}), range(4)))
    assert all(r.status_code == 200 for r in results)
    history = client.get(f"/api/conversations/{cid}").json()["messages"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 4
    assert sorted(m["content"] for m in history[::2]) == [f"message {i}" for i in range(4)]


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"domain": "plumbing"}, "domain", "field 'domain': 'plumbing' is not one of"),
    ({"max_tokens": 65}, "max_tokens", "field 'max_tokens': 65 is above this server's limit of 64"),
    ({"temperature": -1}, "temperature", "field 'temperature': Input should be greater than or equal to 0"),
    ({"domian": "sales"}, "domian", "unknown field 'domian'"),
])
def test_bad_new_conversations(client, body, param, message):
    r = client.post("/api/conversations", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    assert message in r.json()["error"]["message"]


def test_bad_turns_and_the_message_limit(tiny_model, tmp_path):
    with ServerThread(make_config(tmp_path, max_conversation_messages=4, max_message_chars=50),
                      model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        cid = c.post("/api/conversations", json={"domain": None}).json()["id"]
        r = c.post(f"/api/conversations/{cid}/messages", json={"content": ""})
        assert r.status_code == 400 and r.json()["error"]["param"] == "content"
        r = c.post(f"/api/conversations/{cid}/messages", json={"content": "x" * 51})
        assert r.status_code == 400 and "51 characters is above this server's limit of 50" in r.json()["error"]["message"]
        r = c.post("/api/conversations/conv_nope/messages", json={"content": "hi"})
        assert r.status_code == 404
        for _ in range(2):
            assert c.post(f"/api/conversations/{cid}/messages", json={"content": "hi"}).status_code == 200
        r = c.post(f"/api/conversations/{cid}/messages", json={"content": "hi"})
        assert r.status_code == 409 and "start a new conversation" in r.json()["error"]["message"]
        assert len(c.get(f"/api/conversations/{cid}").json()["messages"]) == 4  # the refused turn stored nothing


def test_a_failed_turn_stores_nothing(tiny_model, tmp_path):
    class Broken(RecordingModel):
        async def chat(self, messages, *, sampling, tools=None, on_token=None):
            from stateset_agents.errors import ModelError

            raise ModelError("generation with 'broken' failed: RuntimeError: out of memory")

    with ServerThread(make_config(tmp_path), model=Broken(tiny_model)) as s, \
            httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        cid = c.post("/api/conversations", json={}).json()["id"]
        r = c.post(f"/api/conversations/{cid}/messages", json={"content": "hi"})
        assert r.status_code == 500 and "out of memory" in r.json()["error"]["message"]
        assert c.get(f"/api/conversations/{cid}").json()["messages"] == []


def test_conversations_survive_a_restart(tiny_model, tmp_path):
    config = make_config(tmp_path)
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        cid = c.post("/api/conversations", json={"domain": "customer_service"}).json()["id"]
        c.post(f"/api/conversations/{cid}/messages", json={"content": "Where is ORD-1042?"})
        before = c.get(f"/api/conversations/{cid}").json()
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        assert c.get(f"/api/conversations/{cid}").json() == before
        after = c.post(f"/api/conversations/{cid}/messages", json={"content": "Thanks."}).json()
        assert after["messages"] == 4


def test_recording_model_is_a_real_passthrough(tiny_model):
    # the wrapper used above changes nothing about the replies
    from stateset_agents import Message, SamplingParams

    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    msgs = [Message(role="user", content="hi")]
    a = asyncio.run(RecordingModel(tiny_model).chat(msgs, sampling=greedy))
    assert a.completion_ids == asyncio.run(tiny_model.chat(msgs, sampling=greedy)).completion_ids
