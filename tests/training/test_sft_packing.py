"""SFT's cost levers: pack_turns (one sequence per demonstration, the same loss and gradient as separate turns),
lora_layers (adapters only in the last N layers, nothing below them trained) and mixed_precision (bf16 autocast)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.envs import load_pack
from stateset_agents.errors import ConfigError
from stateset_agents.models.hf import HFChatModel
from stateset_agents.training.batch import pack_turns, samples_from_trajectories
from stateset_agents.training.demonstrations import reference_demonstrations

from .test_sft import make_sft


def _demos(tiny_model_path):
    pack = load_pack("customer_service")
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None, context_tokens=4096)
    ids = [s.id for s in pack.split("train")[:3]]
    trajs, _ = asyncio.run(reference_demonstrations(agent, pack, ids, seeds=1))
    return samples_from_trajectories(trajs, need_logprobs=False)


def _loss_and_grad(trainer, samples):
    policy = trainer.policy
    policy.model.zero_grad(set_to_none=True)
    total = 0.0
    for s in samples:
        _, logp, _ = policy.logprobs(policy.collate([s], share=False), temperature=1.0)
        loss = -logp.sum()
        loss.backward()
        total += float(loss.detach())
    grads = {n: p.grad.detach().clone() for n, p in policy.model.named_parameters() if p.grad is not None}
    return total, grads


def test_packed_turns_give_the_loss_and_gradient_of_separate_turns(tiny_model_path, tmp_path):
    turns = _demos(tiny_model_path)
    packed = pack_turns(turns)
    assert len(packed) == 3 < len(turns)  # one sequence per demonstration here
    assert sum(s.num_completion for s in packed) == sum(s.num_completion for s in turns)
    assert sum(len(s.input_ids) for s in packed) < sum(len(s.input_ids) for s in turns) / 2
    trainer = make_sft(tiny_model_path, tmp_path)
    loss_turns, g_turns = _loss_and_grad(trainer, turns)
    loss_packed, g_packed = _loss_and_grad(trainer, packed)
    assert loss_packed == pytest.approx(loss_turns, rel=1e-5)
    assert all(torch.allclose(g_packed[n], g, atol=1e-5, rtol=1e-4) for n, g in g_turns.items())
    with pytest.raises(ValueError, match="pack_turns is for demonstrations"):
        pack_turns([turns[0].__class__(**{**turns[0].__dict__, "old_logprobs": [0.0] * turns[0].num_completion})])


def test_lora_layers_adapts_only_the_last_layers(tiny_model_path, tmp_path):
    trainer = make_sft(tiny_model_path, tmp_path, use_lora=True, lora_r=4, lora_alpha=8, lora_layers=1)
    n = trainer.policy.model.get_base_model().config.num_hidden_layers
    trained = {name for name, p in trainer.policy.model.named_parameters() if p.requires_grad}
    assert trained and all(f"layers.{n - 1}." in name and "lora_" in name for name in trained)
    with pytest.raises(ConfigError, match=f"lora_layers=99 but the model has {n} decoder layers"):
        make_sft(tiny_model_path, tmp_path / "b", use_lora=True, lora_layers=99)


def test_bf16_mixed_precision_trains_with_fp32_log_probs(tiny_model_path, tmp_path):
    trainer = make_sft(tiny_model_path, tmp_path, mixed_precision="bf16", epochs=1, max_steps=2)
    summary = trainer.train()
    policy = trainer.policy
    b = policy.collate(trainer.samples[:2])
    _, logp, _ = policy.logprobs(b, temperature=1.0)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    assert all(p.dtype == torch.float32 for p in policy.params)
    assert summary["steps"] == 2


def test_a_reference_note_is_written_before_its_call_in_the_same_turn(tiny_model_path):
    # A tool step's note is the agent's reason, written in the same turn before the call: the demonstrated turn is
    # "note\n<tool_call>...", the call still runs, the turn count is unchanged, the next turn's prompt renders the
    # history exactly as the agent wrote it (so the demonstration still packs into one sequence), and
    # `notes: false` demonstrates the bare calls.
    pack = load_pack("customer_service")
    s = pack.scenario("cs-return-start-016")
    ref = [st.model_copy(update={"note": f"Step {i} is next."}) if st.tool else st for i, st in enumerate(s.reference)]
    s = s.model_copy(update={"reference": ref})
    pack = pack.model_copy(update={"scenarios": [x if x.id != s.id else s for x in pack.scenarios]})
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None, context_tokens=4096)
    (with_notes,), _ = asyncio.run(reference_demonstrations(agent, pack, [s.id], seeds=1))
    (bare,), _ = asyncio.run(reference_demonstrations(agent, pack, [s.id], seeds=1, notes=False))
    assert with_notes.outcome["success"] and bare.outcome["success"]
    calls = [c for c in with_notes.completions if c.tool_calls]
    assert [c.text.split("\n")[0] for c in calls] == ["Step 1 is next.", "Step 2 is next."]
    assert all(c.text.split("\n", 1)[1].startswith("<tool_call>") for c in calls)
    assert [c.tool_calls[0].name for c in calls] == ["lookup_order", "create_return"]
    assert len(with_notes.completions) == len(bare.completions)
    assert not any("Step" in c.text for c in bare.completions)
    for trajs in ([with_notes], [bare]):
        turns = samples_from_trajectories(trajs, need_logprobs=False)
        packed = pack_turns(turns)
        assert len(packed) == 1 and packed[0].num_completion == sum(t.num_completion for t in turns)
