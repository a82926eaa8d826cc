"""Training-inference mismatch (training/mismatch.py): a known injected gap is measured exactly, and truncated
importance sampling recovers the on-policy gradient from off-policy samples."""

import math

import pytest
import torch

from stateset_agents.training.mismatch import mismatch_stats, sequence_mask, tis_weights


def test_an_injected_gap_is_measured_exactly():
    train = torch.log(torch.tensor([0.5, 0.25, 0.1, 0.4, 0.3]))
    delta = torch.tensor([0.0, math.log(2.0), -0.1, 0.05, 9.0])  # log(pi/mu): token 1 twice as likely under pi
    behaviour = train - delta
    mask = torch.tensor([1, 1, 1, 1, 0])  # the last token is not the agent's: ignored
    turns = torch.tensor([0, 0, 1, 1, 1])
    s = mismatch_stats(train, behaviour, mask, turns)
    assert s["mismatch/max_abs_log_ratio"] == pytest.approx(math.log(2.0))
    assert s["mismatch/mean_abs_log_ratio"] == pytest.approx((math.log(2.0) + 0.1 + 0.05) / 4)
    assert s["mismatch/mean_log_ratio"] == pytest.approx((math.log(2.0) - 0.1 + 0.05) / 4)
    assert s["mismatch/outside"] == pytest.approx(1 / 4)  # only ratio 2.0 is outside [0.8, 1.25]
    assert s["mismatch/turn0/mean_abs"] == pytest.approx(math.log(2.0) / 2)
    assert s["mismatch/turn1/mean_abs"] == pytest.approx(0.075)
    assert s["mismatch/tokens"] == 4


def test_tis_weights_are_truncated_and_carry_no_gradient():
    train = torch.tensor([0.0, -1.0, -3.0], requires_grad=True)
    behaviour = torch.tensor([0.0, -2.0, -0.5])
    w = tis_weights(train, behaviour, cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 2.0, math.exp(-2.5)]))  # e^1 > 2 is capped
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap=0"):
        tis_weights(train, behaviour, cap=0)


def test_sequences_too_far_off_policy_are_masked_whole():
    train = torch.zeros(6)
    behaviour = torch.tensor([0.0, 0.0, -2.0, -2.0, 0.1, -0.1])  # sequence 1 has ratio e^2 per token
    seq = torch.tensor([0, 0, 1, 1, 2, 2])
    assert sequence_mask(train, behaviour, seq, threshold=2.0).tolist() == [1, 1, 0, 0, 1, 1]


def test_tis_recovers_the_on_policy_gradient_from_perturbed_samples():
    """A categorical policy over 8 actions with fixed advantages. Samples come from a perturbed behaviour policy
    (as an int8 sampler's would). The REINFORCE estimate with TIS weights matches the exact on-policy gradient;
    without them it is biased by the perturbation."""
    torch.manual_seed(0)
    theta = torch.randn(8, requires_grad=True)
    adv = torch.linspace(-1, 1, 8)
    pi = torch.softmax(theta, 0)
    exact = torch.autograd.grad((pi * adv).sum(), theta)[0]  # d/dtheta E_pi[A]
    mu_logits = theta.detach() + 0.4 * torch.randn(8)  # the behaviour policy: a known perturbation
    mu = torch.softmax(mu_logits, 0)
    n = 200_000
    a = torch.multinomial(mu, n, replacement=True, generator=torch.Generator().manual_seed(1))
    logp = torch.log_softmax(theta, 0)[a]
    w = tis_weights(logp, torch.log(mu)[a], cap=10.0)
    corrected = torch.autograd.grad((w * adv[a] * logp).mean(), theta, retain_graph=True)[0]
    naive = torch.autograd.grad((adv[a] * logp).mean(), theta)[0]
    err = float((corrected - exact).norm() / exact.norm())
    bias = float((naive - exact).norm() / exact.norm())
    assert err < 0.05, err
    assert bias > 4 * err, (bias, err)
