"""Token streaming: the engine's per-token hook, cancellation, and the DeltaDecoder that turns tokens into deltas."""

from __future__ import annotations

import asyncio

import pytest

from stateset_agents import Completion, Message, SamplingParams, ToolCall
from stateset_agents.serving.streaming import DeltaDecoder, StreamMismatchError, reply_content


async def test_on_token_sees_every_token_in_order_before_the_result(tiny_model):
    seen: list[tuple[int, float]] = []
    c = await tiny_model.chat([Message(role="user", content="hi")],
                              sampling=SamplingParams(temperature=1.0, max_new_tokens=12, seed=3),
                              on_token=lambda t, lp: seen.append((t, lp)))
    assert [t for t, _ in seen] == c.completion_ids
    assert [lp for _, lp in seen] == c.logprobs


async def test_a_cancelled_request_leaves_the_batch_early(tiny_model):
    engine = tiny_model.engine
    steps: list[int] = []
    long = SamplingParams(temperature=1.0, max_new_tokens=400, seed=1, stop=[])
    task = asyncio.create_task(tiny_model.chat([Message(role="user", content="hello")], sampling=long,
                                               on_token=lambda t, lp: steps.append(t)))
    while len(steps) < 3:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):  # the engine notices at its next step
        if engine.batch_size == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.batch_size == 0
    assert len(steps) < 400


def _deltas(tokenizer, text: str, stop=None) -> tuple[list[str], DeltaDecoder]:
    dec = DeltaDecoder(tokenizer, stop)
    return [d for t in tokenizer.encode(text, add_special_tokens=False) if (d := dec.push(t))], dec


@pytest.mark.parametrize("text", ["Your order ORD-1042 arrives on March 14.  ", "  leading spaces, then words",
                                  "accents: héllo naïve café 😀 done"])
def test_plain_text_deltas_add_up_to_the_text(tiny_model, text):
    deltas, dec = _deltas(tiny_model.tokenizer, text)
    assert len(deltas) > 1
    assert "".join(deltas) + dec.finish(text) == text
    assert not any("\ufffd" in d for d in deltas)


def test_tool_call_markup_is_never_streamed_as_content(tiny_model):
    text = 'Let me check. <tool_call>{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}</tool_call>'
    deltas, dec = _deltas(tiny_model.tokenizer, text)
    assert "".join(deltas) == "Let me check."
    c = Completion(text=text, tool_calls=[ToolCall(id="call_1", name="lookup_order", arguments={"order_id": "ORD-1"})])
    assert reply_content(c) == "Let me check."
    assert dec.finish(reply_content(c)) == ""


def test_a_bare_json_call_is_held_back_entirely(tiny_model):
    text = '{"name": "lookup_order", "arguments": {"order_id": "ORD-1"}}'
    deltas, dec = _deltas(tiny_model.tokenizer, text)
    assert deltas == []
    c = Completion(text=text, tool_calls=[ToolCall(id="call_1", name="lookup_order", arguments={"order_id": "ORD-1"})])
    assert reply_content(c) == "" and dec.finish("") == ""


def test_stop_strings_are_never_sent(tiny_model):
    deltas, dec = _deltas(tiny_model.tokenizer, "Thanks for waiting [END] and more", stop=["[END]"])
    assert "".join(deltas) == "Thanks for waiting"
    assert dec.finish("Thanks for waiting ") == " "


def test_finish_refuses_a_stream_that_would_not_add_up(tiny_model):
    deltas, dec = _deltas(tiny_model.tokenizer, "hello there friend")
    with pytest.raises(StreamMismatchError, match="is not a prefix of the final content"):
        dec.finish("goodbye")
