"""HFChatModel and its batching engine, on the tiny model (and SmolLM2 in one slower test)."""

import asyncio
import math

import pytest
import torch

from stateset_agents import Message, ModelError, SamplingParams
from stateset_agents.models.sampling import _sample

GREEDY = SamplingParams(temperature=0, max_new_tokens=20)


def _prompts(n):
    # different lengths, so left padding and cache merging are exercised
    return [[Message(role="user", content="hello " * (i % 7 + 1) + f"request {i}")] for i in range(n)]


async def test_greedy_is_identical_alone_and_among_16_concurrent(tiny_model):
    prompts = _prompts(16)
    alone = [await tiny_model.chat(p, sampling=GREEDY) for p in prompts]
    together = await asyncio.gather(*[tiny_model.chat(p, sampling=GREEDY) for p in prompts])
    assert [c.completion_ids for c in together] == [c.completion_ids for c in alone]
    assert tiny_model.engine.stats.max_batch >= 8


async def test_requests_join_while_others_decode(tiny_model):
    long = SamplingParams(temperature=0, max_new_tokens=40)
    first = asyncio.create_task(tiny_model.chat(_prompts(1)[0], sampling=long))
    await asyncio.sleep(0.02)
    late = await asyncio.gather(*[tiny_model.chat(p, sampling=GREEDY) for p in _prompts(5)[1:]])
    alone = [await tiny_model.chat(p, sampling=GREEDY) for p in _prompts(5)[1:]]
    assert [c.completion_ids for c in late] == [c.completion_ids for c in alone]
    assert len((await first).completion_ids) == 40


async def test_completion_token_data(tiny_model):
    msgs = [Message(role="system", content="be brief"), Message(role="user", content="hi")]
    c = await tiny_model.chat(msgs, sampling=SamplingParams(temperature=1.0, max_new_tokens=12, seed=1))
    assert c.prompt_ids == tiny_model.prompt_ids(msgs)
    assert len(c.completion_ids) == len(c.logprobs) <= 12
    assert all(lp <= 0 for lp in c.logprobs)
    assert c.usage == {"prompt_tokens": len(c.prompt_ids), "completion_tokens": len(c.completion_ids)}
    assert c.finish_reason in ("stop", "length")


async def test_logprobs_match_a_full_forward_pass(tiny_model):
    """The engine's log-probs equal log_softmax(logits / T) recomputed on prompt + completion in one pass."""
    msgs = [Message(role="user", content="where is my order?")]
    t = 0.8
    c = await tiny_model.chat(msgs, sampling=SamplingParams(temperature=t, max_new_tokens=16, seed=4))
    ids = torch.tensor([c.prompt_ids + c.completion_ids])
    with torch.no_grad():
        logits = tiny_model.model(ids).logits[0, len(c.prompt_ids) - 1:-1].float()
    ref = torch.log_softmax(logits / t, -1).gather(1, torch.tensor(c.completion_ids)[:, None])[:, 0]
    assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)


async def test_seeded_sampling_is_reproducible_in_any_batch(tiny_model):
    s = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=3)
    p = _prompts(4)
    a = await asyncio.gather(*[tiny_model.chat(x, sampling=s) for x in p])
    b = [await tiny_model.chat(x, sampling=s) for x in p]
    assert [c.completion_ids for c in a] == [c.completion_ids for c in b]


async def test_stop_strings_and_max_tokens(tiny_model):
    s = SamplingParams(temperature=1.0, max_new_tokens=30, seed=11)
    free = await tiny_model.chat(_prompts(1)[0], sampling=s)
    assert free.finish_reason == "length" and len(free.completion_ids) == 30
    stop = free.text[len(free.text) // 2:len(free.text) // 2 + 2]
    c = await tiny_model.chat(_prompts(1)[0], sampling=s.model_copy(update={"stop": [stop]}))
    assert c.finish_reason == "stop" and len(c.completion_ids) < 30
    assert c.text == free.text[:free.text.find(stop)]


def test_top_p_sampling_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -5.0])
    s = SamplingParams(temperature=1.0, top_p=0.8)
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(300):
        tok, lp = _sample(logits, s, g)
        seen[tok] = lp
    assert set(seen) == {0, 1}  # the nucleus of mass 0.8 holds the two largest
    p = torch.softmax(logits, -1)[:2]
    assert math.isclose(seen[0], math.log(p[0] / p.sum()), rel_tol=1e-5)


def test_greedy_logprob_is_the_untempered_model_logprob():
    logits = torch.tensor([0.5, 3.0, 1.0])
    tok, lp = _sample(logits, SamplingParams(temperature=0), torch.Generator())
    assert tok == 1 and math.isclose(lp, float(torch.log_softmax(logits, -1)[1]), rel_tol=1e-6)


async def test_engine_errors_reach_the_caller(tiny_model_path):
    from stateset_agents.models.hf import HFChatModel

    m = HFChatModel(tiny_model_path)
    too_long = [Message(role="user", content="hello " * 3000)]
    with pytest.raises(ModelError, match=r"prompt of \d+ tokens \+ max_new_tokens=20 exceeds the model's 2048 positions"):
        await m.chat(too_long, sampling=GREEDY)

    class Broken:
        def __call__(self, **kwargs):
            raise RuntimeError("CUDA out of memory (simulated)")

        def parameters(self):
            return iter([torch.zeros(1)])

    m.engine.model = Broken()
    results = await asyncio.gather(*[m.chat(p, sampling=GREEDY) for p in _prompts(3)], return_exceptions=True)
    assert all(isinstance(r, ModelError) for r in results)
    assert str(results[0]) == "generation with 'tiny0' failed: RuntimeError: CUDA out of memory (simulated)"
    m.close()


def test_bad_folder():
    from stateset_agents import ConfigError
    from stateset_agents.models.hf import HFChatModel

    with pytest.raises(ConfigError, match="'/nonexistent' is not a model folder"):
        HFChatModel("/nonexistent")


@pytest.mark.slow
async def test_smollm2_greedy_alone_equals_batched():
    from stateset_agents.models import default_model

    m = default_model()
    prompts = [[Message(role="user", content=q)] for q in [
        "Where is my order?", "I want a refund for a broken lamp, please.", "How do I reset my password?",
        "My internet keeps dropping every evening since Monday.", "Can you book a demo for Tuesday?",
        "What does the Team plan cost?", "My package arrived damaged.", "Cancel my order please."] * 2]
    s = SamplingParams(temperature=0, max_new_tokens=16)
    together = await asyncio.gather(*[m.chat(p, sampling=s) for p in prompts])
    alone = await m.chat(prompts[3], sampling=s)
    assert together[3].completion_ids == alone.completion_ids
    assert len(alone.text) > 10
    m.close()


def _shared_prefix_prompts(n):
    system = Message(role="system", content="You are the support agent of a shop. " * 6)  # well over 64 tokens
    return [[system, Message(role="user", content="hello " * (i % 5 + 1) + f"request {i}")] for i in range(n)]


async def test_prefix_cache_gives_the_tokens_and_logprobs_of_a_full_prefill(tiny_model_path):
    from stateset_agents.models.hf import HFChatModel

    cached = HFChatModel(tiny_model_path, conversation_cache_tokens=0)  # the shared prefix alone
    plain = HFChatModel(tiny_model_path, prefix_cache_tokens=0)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=16)
    prompts = _shared_prefix_prompts(8)
    try:
        for _ in range(2):  # the second round reuses the prefix built in the first
            got = await asyncio.gather(*[cached.chat(p, sampling=sampling.model_copy(update={"seed": i}))
                                         for i, p in enumerate(prompts)])
            want = await asyncio.gather(*[plain.chat(p, sampling=sampling.model_copy(update={"seed": i}))
                                          for i, p in enumerate(prompts)])
            assert [c.completion_ids for c in got] == [c.completion_ids for c in want]
            for g, w in zip(got, want, strict=True):
                assert g.prompt_ids == w.prompt_ids
                assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-4)
        s = cached.engine.stats
        # the prefix path served every admission (normally one build in the first round, reused in the second; a
        # loaded machine may admit a round in two bursts, each of which may build, so the count is not pinned)
        assert s.prefix_builds >= 1 and s.prefix_hits >= 2
        assert s.prefix_tokens_reused >= 64 * 16
        assert plain.engine.stats.prefix_hits == 0
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "tool_grammar"])
async def test_conversation_cache_continues_a_finished_turn_exactly(tiny_model_path, constrained):
    """Multi-turn: each next prompt extends the previous turn's prompt and completion; the engine reuses that turn's
    keys and values and prefills only the new messages, with the tokens and log-probs of a full prefill. A turn under
    the tool-call grammar too: the mask acts on sampled tokens only."""
    from stateset_agents.agents import tool_turn_grammar
    from stateset_agents.models.hf import HFChatModel

    tools = [{"name": "lookup_order", "description": "Look up an order.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}]
    cached, plain = HFChatModel(tiny_model_path), HFChatModel(tiny_model_path, prefix_cache_tokens=0)
    sampling = SamplingParams(temperature=1.0, max_new_tokens=24 if constrained else 12,
                              grammar=tool_turn_grammar(tools) if constrained else None)
    convs = [[Message(role="system", content="You help customers with their orders. " * 8),
              Message(role="user", content=f"Where is order {i}?")] for i in range(4)]
    try:
        for turn in range(3):
            got = await asyncio.gather(*[cached.chat(c, sampling=sampling.model_copy(update={"seed": 10 * turn + i}))
                                         for i, c in enumerate(convs)])
            want = await asyncio.gather(*[plain.chat(c, sampling=sampling.model_copy(update={"seed": 10 * turn + i}))
                                          for i, c in enumerate(convs)])
            for g, w in zip(got, want, strict=True):
                assert g.prompt_ids == w.prompt_ids and g.completion_ids == w.completion_ids
                assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-4)
            for c, g in zip(convs, got, strict=True):
                c += [Message(role="assistant", content=g.text), Message(role="user", content="And then?")]
        s = cached.engine.stats
        assert s.conversation_hits >= 4 and s.conversation_tokens_reused > 4 * 64
        assert plain.engine.stats.conversation_hits == 0
    finally:
        cached.close()
        plain.close()


async def test_prefix_cache_is_dropped_when_the_weights_change(tiny_model_path):
    from stateset_agents.models.hf import HFChatModel

    cached = HFChatModel(tiny_model_path)
    prompts = _shared_prefix_prompts(4)
    try:
        await asyncio.gather(*[cached.chat(p, sampling=GREEDY) for p in prompts])
        # one build, or two on a loaded machine where the 4 requests are admitted in two bursts and the second
        # burst shares a longer prefix with the first
        first = cached.engine.stats.prefix_builds
        assert first in (1, 2)
        with torch.no_grad():  # an optimiser step, as far as the engine can tell
            for p in cached.model.parameters():
                p.mul_(1.5)
        got = await asyncio.gather(*[cached.chat(p, sampling=GREEDY) for p in prompts])
        fresh = HFChatModel(tiny_model_path, prefix_cache_tokens=0)
        with torch.no_grad():
            for p in fresh.model.parameters():
                p.mul_(1.5)
        want = await asyncio.gather(*[fresh.chat(p, sampling=GREEDY) for p in prompts])
        fresh.close()
        assert [c.completion_ids for c in got] == [c.completion_ids for c in want]
        flat = [lp for c in got for lp in c.logprobs]
        assert flat == pytest.approx([lp for c in want for lp in c.logprobs], abs=1e-4)
        # rebuilt with the new weights (on a loaded machine the 4 requests may be admitted in two bursts, and the
        # second burst may share a longer prefix with the first and build once more)
        rebuilt = cached.engine.stats.prefix_builds
        assert rebuilt > first
        cached.engine.clear_prefix_cache()
        cached.engine.clear_prefix_cache()
        await cached.chat(prompts[1], sampling=GREEDY)
        assert cached.engine.stats.prefix_builds == rebuilt + 1  # built again after the explicit clear
    finally:
        cached.close()
