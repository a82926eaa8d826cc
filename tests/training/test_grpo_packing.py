"""GRPO's pack_turns: each trajectory's agent turns trained as one sequence give the gradient of the turn-by-turn
update, carry the rollout / reference / pi_old log-probs in token order, and are left unpacked where GRPO's loss
is per turn (GAE, sequence-level ratios)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from stateset_agents.training.batch import Sample, pack_turns, unpack_prox

from .test_trainer import CharCount, make_trainer


def _turn(traj, k, ids, start, adv=1.0, lp=None):
    n = len(ids) - start
    return Sample(input_ids=ids, completion_start=start, old_logprobs=lp or [-0.1 * (k + 1)] * n, traj_index=traj,
                  turn_index=k, truncated=False, temperature=1.0, advantage=adv, weight=0.5,
                  ref_logprobs=[-0.2 * (k + 1)] * n, extra={"group": 0})


def test_per_token_packing_concatenates_policy_data_and_hands_pi_old_back():
    a = _turn(0, 0, [1, 2, 3, 4], 2)                  # prompt [1, 2], completion [3, 4]
    b = _turn(0, 1, [1, 2, 3, 4, 5, 6, 7], 5)         # extends a: prompt [.., 5], completion [6, 7]
    c = _turn(1, 0, [1, 2, 9], 2, adv=-1.0)           # another trajectory
    d = _turn(1, 1, [1, 2, 9, 8, 7], 4, adv=-0.5)     # extends c, but another advantage: not merged
    packed = pack_turns([a, b, c, d], per_token=True)
    assert len(packed) == 3
    p = packed[0]
    assert p.input_ids == b.input_ids and p.loss_spans() == [(2, 4), (5, 7)] and p.num_completion == 4
    assert p.old_logprobs == a.old_logprobs + b.old_logprobs and p.ref_logprobs == a.ref_logprobs + b.ref_logprobs
    assert p.extra["parts"] == [a, b] and p.extra["group"] == 0
    assert a.input_ids == [1, 2, 3, 4] and a.spans is None  # the turns themselves are untouched
    p.prox_logprobs = [-1.0, -2.0, -3.0, -4.0]
    unpack_prox(packed)
    assert a.prox_logprobs == [-1.0, -2.0] and b.prox_logprobs == [-3.0, -4.0]
    with pytest.raises(ValueError, match="per_token=True"):
        pack_turns([a])


def _extend_prompts(trajectories):
    """The random tiny model's completions (cut at max_new_tokens, arbitrary bytes) re-tokenise differently when
    the next turn's prompt re-renders them, so nothing would pack; make each later prompt start with the turn
    before it, as SmolLM2's canonical completions do."""
    for t in trajectories:
        for prev, cur in zip(t.completions, t.completions[1:], strict=False):
            a, b = list(prev.prompt_ids) + list(prev.completion_ids), list(cur.prompt_ids)
            i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            cur.prompt_ids = a + b[i:]


def _one_step(tiny_model_path, tmp_path, monkeypatch=None, **overrides):
    if monkeypatch is not None:
        import stateset_agents.training.trainer as trainer_module

        plain = trainer_module.samples_from_trajectories

        def extended(trajs, *args, **kwargs):
            _extend_prompts(trajs)
            return plain(trajs, *args, **kwargs)

        monkeypatch.setattr(trainer_module, "samples_from_trajectories", extended)
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=1, rollout_concurrency=1, micro_batch_size=4,
                           skip_zero_variance_groups=False, reward=CharCount(), **overrides)
    grads: dict[str, torch.Tensor] = {}

    def record(optimizer, args, kwargs):
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(record)
    return asyncio.run(trainer.astep()), grads


def test_packed_grpo_update_equals_the_turn_by_turn_update(tiny_model_path, tmp_path, monkeypatch):
    m_packed, g_packed = _one_step(tiny_model_path, tmp_path / "p", monkeypatch, pack_turns=True)
    m_turns, g_turns = _one_step(tiny_model_path, tmp_path / "t", monkeypatch, pack_turns=False)
    assert m_packed["reward"] == m_turns["reward"]  # the same episodes
    assert m_packed["loss_tokens"] == m_turns["loss_tokens"]
    assert m_packed["train_sequences"] < m_turns["train_sequences"]  # two agent turns an episode, packed
    # the per-turn mismatch statistics are still computed over every turn
    assert m_packed["mismatch/mean_abs_log_ratio"] == pytest.approx(m_turns["mismatch/mean_abs_log_ratio"], abs=1e-4)
    scale = max(float(g.abs().max()) for g in g_turns.values())
    diff = max(float((g_packed[k] - g_turns[k]).abs().max()) for k in g_turns)
    assert scale > 0 and diff < 1e-4 * scale, (scale, diff)


@pytest.mark.parametrize("overrides", [{"advantage_estimator": "gae"}, {"importance_sampling_level": "sequence"}])
def test_per_turn_losses_are_not_packed(tiny_model_path, tmp_path, monkeypatch, overrides):
    m, _ = _one_step(tiny_model_path, tmp_path, monkeypatch, pack_turns=True, **overrides)
    m_off, _ = _one_step(tiny_model_path, tmp_path / "off", monkeypatch, pack_turns=False, **overrides)
    assert m["train_sequences"] == m_off["train_sequences"]
