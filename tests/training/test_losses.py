"""The GRPO math against values worked out by hand."""

import math

import pytest
import torch

from stateset_agents.training.losses import (
    clipped_surrogate,
    gae,
    group_advantages,
    k3_kl,
    loss_weights,
    token_logprobs,
)

S3 = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0, 1]


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    one = torch.zeros(4, dtype=torch.long)
    adv = group_advantages(r, one, "group")
    assert adv.tolist() == pytest.approx([0.5 / (S3 + 1e-4), -0.5 / (S3 + 1e-4)] * 1 + [-0.5 / (S3 + 1e-4),
                                                                                          0.5 / (S3 + 1e-4)])
    assert group_advantages(r, one, "none").tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])
    two = torch.tensor([0, 0, 1, 1])
    # groups [1, 0] and [0, 1]: centred [.5, -.5, -.5, .5]; batch std of [1, 0, 0, 1]
    assert group_advantages(r, two, "batch").tolist() == pytest.approx([0.5 / (S3 + 1e-4)] + [-0.5 / (S3 + 1e-4)]
                                                                       * 2 + [0.5 / (S3 + 1e-4)])
    # a group with equal rewards gets 0; a group of one gets 0
    eq = group_advantages(torch.tensor([1.0, 2.0, 3.0, 3.0, 7.0]), torch.tensor([0, 0, 1, 1, 2]), "group")
    assert eq[2:].tolist() == [0.0, 0.0, 0.0]
    assert eq[0] == pytest.approx(-0.5 / (math.sqrt(0.5) + 1e-4))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="scale='x'"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "x")
    with pytest.raises(ValueError, match="must be equal 1-D"):
        group_advantages(torch.zeros(2), torch.zeros(3, dtype=torch.long))


def test_token_logprobs_by_hand():
    hidden = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # logits [1, 0, 0]
    lp, _ = token_logprobs(hidden, weight, torch.tensor([0]))
    assert lp.item() == pytest.approx(1 - math.log(math.e + 2))
    lp, ent = token_logprobs(hidden, weight, torch.tensor([0]), temperature=2.0, with_entropy=True)
    assert lp.item() == pytest.approx(0.5 - math.log(math.exp(0.5) + 2))
    p = torch.softmax(torch.tensor([0.5, 0.0, 0.0]), 0)
    assert ent.item() == pytest.approx(float(-(p * p.log()).sum()), rel=1e-5)
    with pytest.raises(ValueError, match="temperature=0"):
        token_logprobs(hidden, weight, torch.tensor([0]), temperature=0)


def test_token_logprobs_chunked_equals_full_in_value_and_gradient():
    torch.manual_seed(0)
    h = torch.randn(37, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    lp, ent = token_logprobs(h, w, t, temperature=0.7, chunk_size=5, with_entropy=True)
    (lp * torch.arange(37.0)).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    full = torch.log_softmax((h @ w.t()) / 0.7, -1).gather(-1, t[:, None]).squeeze(-1)
    (full * torch.arange(37.0)).sum().backward()
    assert torch.allclose(lp, full, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)
    probs = torch.softmax((h @ w.t()) / 0.7, -1)
    assert torch.allclose(ent, -(probs * probs.log()).sum(-1).detach(), atol=1e-4)


def test_clipped_surrogate_token_level_by_hand():
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.0, 1.5]))
    old = torch.zeros(5)
    adv = torch.tensor([1.0, -1.0, -1.0, 2.0, 1.0])
    loss, clipped = clipped_surrogate(logp[:4], old[:4], adv[:4], epsilon=0.2)
    # ratio 1.5, A=1 -> clip to 1.2; A=-1 -> min(-1.5, -1.2) = -1.5 unclipped; ratio .5, A=-1 -> .8 * -1 clipped;
    # ratio 1 -> 2
    assert loss.tolist() == pytest.approx([-1.2, 1.5, 0.8, -2.0])
    assert clipped.tolist() == [True, False, True, False]
    loss, clipped = clipped_surrogate(logp[4:], old[4:], adv[4:], epsilon=0.2, epsilon_high=0.28)
    assert loss.tolist() == pytest.approx([-1.28])


def test_clipped_surrogate_sequence_level_gspo_by_hand():
    # sequence 0: log-ratios [log 2, 0] -> one ratio exp(log 2 / 2) = sqrt 2; sequence 1: [0] -> 1
    logp = torch.tensor([math.log(2), 0.0, 0.0], requires_grad=True)
    loss, clipped = clipped_surrogate(logp, torch.zeros(3), torch.tensor([1.0, 1.0, -1.0]), epsilon=0.2,
                                      level="sequence", seq_index=torch.tensor([0, 0, 1]))
    assert loss.tolist() == pytest.approx([-1.2, -1.2, 1.0])
    assert clipped.tolist() == [True, True, False]
    loss2, _ = clipped_surrogate(logp, torch.zeros(3), torch.tensor([-1.0, -1.0, -1.0]), epsilon=0.2,
                                 level="sequence", seq_index=torch.tensor([0, 0, 1]))
    loss2.sum().backward()
    # unclipped sequence 0 (ratio sqrt 2 > 1.2 but A < 0): d/dlogp_j of 2 * sqrt2 * ... each token gets 1/2 of it
    assert logp.grad[0].item() == pytest.approx(logp.grad[1].item())
    with pytest.raises(ValueError, match="seq_index"):
        clipped_surrogate(logp, torch.zeros(3), torch.ones(3), level="sequence")


def test_k3_kl_by_hand():
    kl = k3_kl(torch.tensor([0.0, -1.0]), torch.tensor([math.log(0.5), -1.0]))
    assert kl.tolist() == pytest.approx([0.5 + math.log(2) - 1, 0.0])


def test_loss_weights_by_hand():
    assert loss_weights([2, 4], "grpo") == pytest.approx([1 / 4, 1 / 8])
    assert loss_weights([2, 4], "dr_grpo", max_tokens=10) == pytest.approx([1 / 20, 1 / 20])
    assert loss_weights([2, 4], "dapo") == pytest.approx([1 / 6, 1 / 6])
    # a part of a batch, normalised by the whole batch's totals
    assert loss_weights([2], "dapo", total_tokens=6, total_trajectories=2) == pytest.approx([1 / 6])
    assert loss_weights([2], "grpo", total_trajectories=2) == pytest.approx([1 / 4])
    with pytest.raises(ValueError, match="max_tokens"):
        loss_weights([2], "dr_grpo")
    with pytest.raises(ValueError, match="loss_type='x'"):
        loss_weights([2], "x")


def test_gae_by_hand():
    adv, ret = gae([0.0, 1.0], [0.5, 0.2], gamma=1.0, lam=1.0)
    assert adv == pytest.approx([0.5, 0.8]) and ret == pytest.approx([1.0, 1.0])
    adv, ret = gae([0.0, 1.0], [0.5, 0.2], gamma=0.9, lam=0.5)
    assert adv == pytest.approx([-0.32 + 0.45 * 0.8, 0.8]) and ret == pytest.approx([0.54, 1.0])
    with pytest.raises(ValueError, match="one of each per turn"):
        gae([1.0], [0.1, 0.2])
