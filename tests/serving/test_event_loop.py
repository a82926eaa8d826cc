"""One client with a conversation of 200 maximum-size messages does not stall the others: the agent's context
budget is computed in linear time and off the event loop, so /healthz keeps answering within a second."""

from __future__ import annotations

import threading
import time

import httpx

from stateset_agents import Message

from .conftest import AUTH, make_config
from .harness import ServerThread


def _text(i: int, chars: int) -> str:
    words = ("order", "refund", "screen", "cracked", "shipping", "thanks", f"ORD-{i}")
    out = " ".join(words[(i + k) % len(words)] for k in range(chars))
    return out[:chars]


def test_a_huge_conversation_does_not_block_other_clients(tmp_path, tiny_model):
    config = make_config(tmp_path, max_body_bytes=256 * 1024)
    chars, limit = config.max_message_chars, config.max_conversation_messages
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=600) as c:
        cid = c.post("/api/conversations", json={"domain": "customer_service", "context_tokens": 1024,
                                                 "max_tokens": 4}).json()["id"]
        history = [Message(role="user" if i % 2 == 0 else "assistant", content=_text(i, chars if i else 20))
                   for i in range(limit - 2)]
        s.service.conversations.append(cid, history)  # a short opening, then 197 messages of the maximum size
        result: dict = {}

        def post() -> None:
            start = time.monotonic()
            # the newest message at the maximum size: 32,000 characters are more tokens than the tiny model has
            # positions, so the turn is refused (400 naming the field), after the whole budget computation
            result["too_long"] = c.post(f"/api/conversations/{cid}/messages", json={"content": _text(999, chars)})
            result["refused_s"] = time.monotonic() - start
            result["response"] = c.post(f"/api/conversations/{cid}/messages", json={"content": "still there?"})
            result["seconds"] = time.monotonic() - start

        worker = threading.Thread(target=post)
        worker.start()
        latencies = []
        with httpx.Client(base_url=s.url, timeout=5) as other:
            while worker.is_alive() or len(latencies) < 5:
                t0 = time.monotonic()
                assert other.get("/healthz").status_code == 200
                latencies.append(time.monotonic() - t0)
                time.sleep(0.05)
        worker.join()
    refused = result["too_long"]
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "content", refused.text
    assert "more than the model's 2048 positions" in refused.json()["error"]["message"]
    r = result["response"]
    assert r.status_code == 200, r.text
    assert r.json()["messages"] == limit
    assert max(latencies) < 1.0, (max(latencies), result["seconds"], len(latencies))
    print(f"\n/healthz: {len(latencies)} requests, max {max(latencies):.3f} s; refused turn {result['refused_s']:.1f} s,"
          f" both turns {result['seconds']:.1f} s")
