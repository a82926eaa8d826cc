"""JSON-schema constrained decoding in the batching engine (llguidance), on the tiny model and SmolLM2."""

import asyncio
import json

import pytest
import torch

from stateset_agents import ConfigError, Message, SamplingParams
from stateset_agents.models.openai import OpenAIChatModel

SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "ok": {"type": "boolean"},
        "verdict": {"enum": ["pass", "fail"]},
    },
    "required": ["score", "ok", "verdict"],
    "additionalProperties": False,
}


def _valid(doc: dict) -> bool:
    return (set(doc) == {"score", "ok", "verdict"} and isinstance(doc["score"], int) and 0 <= doc["score"] <= 10
            and isinstance(doc["ok"], bool) and doc["verdict"] in ("pass", "fail"))


def _msgs(i: int) -> list[Message]:
    return [Message(role="user", content=f"judge conversation {i}")]


async def test_the_untrained_tiny_model_emits_only_schema_valid_json(tiny_model):
    """The tiny model's output is gibberish; under the grammar every completion is a valid document."""
    sampling = [SamplingParams(temperature=1.0, max_new_tokens=64, seed=i, json_schema=SCHEMA) for i in range(12)]
    cs = await asyncio.gather(*[tiny_model.chat(_msgs(i), sampling=s) for i, s in enumerate(sampling)])
    for c in cs:
        assert c.finish_reason == "stop", c.text
        assert _valid(json.loads(c.text)), c.text
        assert c.sampling.json_schema == SCHEMA
    # without the grammar the same model does not produce JSON at all
    free = await tiny_model.chat(_msgs(0), sampling=SamplingParams(temperature=1.0, max_new_tokens=64, seed=0))
    with pytest.raises(json.JSONDecodeError):
        json.loads(free.text)


async def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(tiny_model):
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    alone = [await tiny_model.chat(_msgs(i), sampling=greedy) for i in range(4)]
    mixed = await asyncio.gather(
        *[tiny_model.chat(_msgs(i), sampling=greedy) for i in range(4)],
        *[tiny_model.chat(_msgs(i), sampling=SamplingParams(temperature=1.0, max_new_tokens=64, seed=i,
                                                             json_schema=SCHEMA)) for i in range(4)])
    assert [c.completion_ids for c in mixed[:4]] == [c.completion_ids for c in alone]
    assert all(_valid(json.loads(c.text)) for c in mixed[4:])


async def test_logprobs_are_under_the_masked_distribution(tiny_model):
    """Each reported log-prob renormalises over the allowed tokens only, so it is at least the token's
    log-prob under the full distribution, and strictly higher wherever the grammar removed mass."""
    t = 1.0
    c = await tiny_model.chat(_msgs(1), sampling=SamplingParams(temperature=t, max_new_tokens=64, seed=3,
                                                                json_schema=SCHEMA))
    ids = torch.tensor([c.prompt_ids + c.completion_ids])
    with torch.no_grad():
        logits = tiny_model.model(ids).logits[0, len(c.prompt_ids) - 1:-1].float()
    full = torch.log_softmax(logits / t, -1).gather(1, torch.tensor(c.completion_ids)[:, None])[:, 0]
    got = torch.tensor(c.logprobs)
    assert torch.all(got >= full - 1e-4)
    assert torch.all(got <= 0)
    assert float((got - full).max()) > 1.0  # the mask removed real probability mass somewhere


async def test_a_schema_that_does_not_compile_is_refused_before_queueing(tiny_model):
    with pytest.raises(ConfigError, match="json_schema"):
        await tiny_model.chat(_msgs(0), sampling=SamplingParams(max_new_tokens=8, json_schema={"type": "objectx"}))
    assert tiny_model.engine.waiting == 0


async def test_length_cap_before_the_document_ends_is_reported_as_length(tiny_model):
    c = await tiny_model.chat(_msgs(2), sampling=SamplingParams(temperature=1.0, max_new_tokens=3, seed=0,
                                                                json_schema=SCHEMA))
    assert c.finish_reason == "length"
    assert len(c.completion_ids) == 3


def test_openai_client_sends_the_schema_as_response_format():
    m = OpenAIChatModel(base_url="http://127.0.0.1:1/v1", model="x")
    body = m.payload(_msgs(0), SamplingParams(json_schema=SCHEMA), None)
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "response", "schema": SCHEMA, "strict": True}}
    assert "response_format" not in m.payload(_msgs(0), SamplingParams(), None)


@pytest.mark.slow
async def test_smollm2_answers_a_judge_prompt_in_valid_json():
    from stateset_agents.models import default_model

    model = default_model()
    try:
        msgs = [Message(role="system", content="You grade customer-service replies. Answer in JSON."),
                Message(role="user", content="Reply: 'I refunded order ORD-1 for $20.' Score it from 0 to 10.")]
        cs = await asyncio.gather(*[model.chat(msgs, sampling=SamplingParams(
            temperature=0.7, max_new_tokens=48, seed=s, json_schema=SCHEMA)) for s in range(3)])
        for c in cs:
            assert _valid(json.loads(c.text)), c.text
    finally:
        model.close()
