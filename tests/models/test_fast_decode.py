"""The engine's fast decode path (models/fast_decode.py): same logits as the transformers forward, LoRA through a
merged-weight snapshot that never touches the trained weights, int8 weights with a measured difference."""

import asyncio
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, MistralConfig, MistralForCausalLM

from stateset_agents import Message, SamplingParams
from stateset_agents.models.fast_decode import DecodeWeights, unsupported_reason
from stateset_agents.models.hf import HFChatModel
from stateset_agents.models.kv_cache import _buffered


@pytest.fixture
def tiny(tiny_model_path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def _lora(model, seed=0):
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        m = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    for name, p in m.named_parameters():
        if "lora_B" in name:  # peft starts B at zero (delta 0): make the adapters matter
            p.data = torch.randn(p.shape, generator=g) * 0.2
    return m.eval()


def _decode_both(model, fast: DecodeWeights, steps: int = 5):
    """Left-padded batch of 3 prompts: prefill with transformers, then decode the same tokens with both paths
    (each with its own copy of the cache); returns the per-step logits of each."""
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [0, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18, 19]])
    mask = (torch.arange(6)[None, :] >= torch.tensor([[2], [1], [0]])).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out_hf, out_fast = [], []
    with torch.inference_mode():
        caches = []
        for _ in range(2):
            c = DynamicCache()
            model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=c, use_cache=True)
            for layer in c.layers:
                _buffered(layer)
            caches.append(c)
        tok = torch.tensor([[20], [21], [22]])
        p = pos[:, -1:] + 1
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
            hf = model(input_ids=tok, attention_mask=mask, position_ids=p, cache=caches[0], use_cache=True,
                       cache_position=torch.tensor([mask.shape[1] - 1])).logits[:, -1]
            fa = fast.step(tok, p, caches[1], mask)
            out_hf.append(hf)
            out_fast.append(fa)
            tok, p = hf.argmax(-1, keepdim=True), p + 1
    return torch.stack(out_hf), torch.stack(out_fast)


def test_fast_step_matches_the_transformers_forward(tiny):
    hf, fast = _decode_both(tiny, DecodeWeights(tiny))
    assert torch.allclose(hf, fast, atol=1e-5), float((hf - fast).abs().max())


def test_onednn_projections_match_f_linear_and_the_fallback(tiny, monkeypatch):
    from stateset_agents.models import fast_decode

    if not fast_decode._onednn_linear_ok():
        pytest.skip("this torch build has no oneDNN inner product")
    fast = DecodeWeights(tiny)
    assert fast.kernel == "onednn"
    g = torch.Generator().manual_seed(0)
    lin = fast.layers[0].gate_up
    for rows in (1, 2, 3, 4, 5, 8, 17, 33, 130):  # the skinny decode shapes and a prefill's
        x = torch.randn(rows, lin.weight.shape[1], generator=g)
        assert torch.allclose(lin(x), F.linear(x, lin.weight), atol=1e-5, rtol=1e-5), rows
    monkeypatch.setattr(fast_decode, "_ONEDNN", False)  # as on a torch build without the op
    plain = DecodeWeights(tiny)
    assert plain.kernel == "linear"
    _, a = _decode_both(tiny, fast)
    _, b = _decode_both(tiny, plain)
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_lora_decodes_through_merged_weights_without_touching_the_trained_ones(tiny):
    m = _lora(tiny)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    hf, fast = _decode_both(m, DecodeWeights(m))
    assert torch.allclose(hf, fast, atol=1e-5), float((hf - fast).abs().max())
    plain_hf, _ = _decode_both(tiny.__class__.from_pretrained(tiny.name_or_path).eval(), DecodeWeights(tiny))
    assert (hf - plain_hf).abs().max() > 1e-2  # the adapters really change the output
    for _ in range(100):  # the "merge/unmerge" of a rollout is a snapshot: 100 of them leave the weights exact
        DecodeWeights(m)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_disabled_adapters_decode_as_the_base_model(tiny):
    m = _lora(tiny)
    with m.disable_adapter():
        hf, fast = _decode_both(m, DecodeWeights(m))
    assert torch.allclose(hf, fast, atol=1e-5)


def test_int8_weights_differ_a_little_and_measurably(tiny):
    hf, fast = _decode_both(tiny, DecodeWeights(tiny, "int8"))
    lp_hf, lp_q = torch.log_softmax(hf, -1), torch.log_softmax(fast, -1)
    gap = (lp_hf - lp_q).abs().max()
    assert 0 < gap < 0.5, float(gap)
    native, q8 = DecodeWeights(tiny), DecodeWeights(tiny, "int8")
    assert q8.nbytes < native.nbytes / 3


def test_models_the_fast_path_does_not_cover_are_named():
    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2)
    reason = unsupported_reason(MistralForCausalLM(cfg))
    assert reason == "model_type 'mistral' is not 'llama'"
    with pytest.raises(ValueError, match="does not support this model: model_type 'mistral'"):
        DecodeWeights(MistralForCausalLM(cfg))


async def test_engine_rebuilds_its_snapshot_when_the_weights_change(tiny_model_path):
    model = HFChatModel(tiny_model_path)
    try:
        assert model.engine.stats.decode_path == "fast-native"
        msgs = [Message(role="user", content="where is my order?")]
        greedy = SamplingParams(temperature=0, max_new_tokens=12)
        first = await model.chat(msgs, sampling=greedy)
        with torch.no_grad():  # an optimiser step, as far as the engine can tell
            for p in model.model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        second = await model.chat(msgs, sampling=greedy)
        assert model.engine.stats.decode_snapshots == 2
        assert model.engine.stats.decode_kernel in ("onednn", "linear")
        assert first.completion_ids != second.completion_ids
        # the rebuilt snapshot still matches the transformers forward on the new weights
        ids = torch.tensor([second.prompt_ids + second.completion_ids])
        with torch.no_grad():
            logits = model.model(ids).logits[0, len(second.prompt_ids) - 1:-1]
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(second.completion_ids)[:, None])[:, 0]
        assert torch.allclose(ref, torch.tensor(second.logprobs), atol=1e-4)
    finally:
        model.close()


async def test_fast_and_transformers_paths_sample_the_same_tokens(tiny_model_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    fast = HFChatModel(tiny_model_path, tokenizer=tok,
                       model=AutoModelForCausalLM.from_pretrained(tiny_model_path).eval())
    slow = HFChatModel(tiny_model_path, fast_decode=False)
    try:
        assert slow.engine.stats.decode_path == "transformers (fast_decode=False)"
        prompts = [[Message(role="user", content="hello " * (i + 1))] for i in range(6)]
        s = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=i) for i in range(6)]
        a = await asyncio.gather(*[fast.chat(p, sampling=x) for p, x in zip(prompts, s, strict=True)])
        b = await asyncio.gather(*[slow.chat(p, sampling=x) for p, x in zip(prompts, s, strict=True)])
        assert [c.completion_ids for c in a] == [c.completion_ids for c in b]
    finally:
        fast.close()
        slow.close()


@pytest.mark.parametrize("lora", [False, True])
def test_prefill_through_the_snapshot_matches_transformers(tiny, lora):
    """A left-padded prompt batch, on an empty cache and on a cached shared prefix: the snapshot's prefill gives the
    transformers forward's last-position logits and a cache that decodes the same next step."""
    model = _lora(tiny) if lora else tiny
    fast = DecodeWeights(model)
    prefix = torch.tensor([[3, 4, 5, 6]])
    ids = torch.tensor([[0, 0, 7, 8, 9], [0, 10, 11, 12, 13], [14, 15, 16, 17, 18]])
    new_mask = (torch.arange(5)[None, :] >= torch.tensor([[2], [1], [0]])).long()
    for p in (0, prefix.shape[1]):
        mask = torch.cat([torch.ones(3, p, dtype=torch.long), new_mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
        caches = []
        with torch.inference_mode():
            for _ in range(2):
                c = DynamicCache()
                if p:
                    model(input_ids=prefix, attention_mask=torch.ones_like(prefix), cache=c, use_cache=True)
                    for layer in c.layers:
                        layer.keys, layer.values = layer.keys.expand(3, -1, -1, -1), layer.values.expand(3, -1, -1, -1)
                caches.append(c)
            hf = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=caches[0],
                       use_cache=True).logits[:, -1]
            fa = fast.prefill(ids, pos, caches[1], mask)
            assert torch.allclose(hf, fa, atol=1e-4), (p, (hf - fa).abs().max())
            for a, b in zip(caches[0].layers, caches[1].layers, strict=True):
                assert torch.allclose(a.keys[mask[:, None, :, None].bool().expand_as(a.keys)],
                                      b.keys[mask[:, None, :, None].bool().expand_as(b.keys)], atol=1e-4)
                assert torch.allclose(a.values, b.values, atol=1e-4) or torch.allclose(
                    a.values * mask[:, None, :, None], b.values * mask[:, None, :, None], atol=1e-4)


async def test_release_caches_frees_the_snapshot_only_when_idle(tiny_model_path):
    import weakref

    model = HFChatModel(tiny_model_path)
    try:
        msgs = [Message(role="user", content="where is my order?")]
        greedy = SamplingParams(temperature=0, max_new_tokens=8)
        first = await model.chat(msgs, sampling=greedy)
        eng = model.engine
        snap = weakref.ref(eng._fast)
        assert len(eng._seqs) > 0
        assert eng.release_caches() is True
        assert snap() is None and eng._prefix is None and len(eng._seqs) == 0
        again = await model.chat(msgs, sampling=greedy)  # rebuilt from the same weights: the same reply
        assert again.completion_ids == first.completion_ids and eng.stats.decode_snapshots == 2
        long = asyncio.ensure_future(model.chat(msgs, sampling=SamplingParams(temperature=0, max_new_tokens=64)))
        while eng.batch_size == 0:  # wait until it is decoding
            await asyncio.sleep(0.001)
        assert eng.release_caches() is False and eng._fast is not None  # in flight: nothing freed under it
        assert len((await long).completion_ids) > 0
    finally:
        model.close()
