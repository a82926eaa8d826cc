"""GRPO with quantized rollouts (``rollout_precision``), the raw mismatch metrics and truncated importance sampling
(training/grpo_mismatch.py): a known injected perturbation is measured exactly and corrected; int8 rollouts with
correction learn the toy task as well as fp32 rollouts; bad settings fail with one clear line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.errors import ConfigError
from stateset_agents.models.hf import HFChatModel
from stateset_agents.training import GRPOConfig, load_config
from stateset_agents.training.batch import Sample
from stateset_agents.training.build import make_env_factory
from stateset_agents.training.trainer import GRPOTrainer
from stateset_agents.types import Message
from tests.training.test_trainer import TOY, TargetShare, make_trainer


# ---------------------------------------------------------------- config and setup errors
@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch, native):
    """`auto` resolves at load time: bf16 training and rollouts on a CPU with AVX512-BF16/AMX (or a bf16 GPU), fp32
    on one that would emulate bf16 (over 10x slower there); explicit settings are left alone."""
    import stateset_agents.models._compat as compat

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert compat.native_bf16("cpu") is native
    c = GRPOConfig(mixed_precision="auto", rollout_precision="auto", device="cpu")
    assert (c.mixed_precision, c.rollout_precision) == (("bf16", "bf16") if native else ("no", "fp32"))
    c = GRPOConfig(mixed_precision="bf16", rollout_precision="int8", device="cpu")
    assert (c.mixed_precision, c.rollout_precision) == ("bf16", "int8")


def test_bad_settings_fail_with_one_clear_line(tmp_path, tiny_model_path):
    f = tmp_path / "c.yaml"
    for text, expected in [
        ("rollout_precision: int4\n",
         "field 'rollout_precision': Input should be 'fp32', 'bf16', 'int8' or 'auto' (got 'int4')"),
        ("tis_cap: 0.5\n", "field 'tis_cap': Input should be greater than or equal to 1 (got 0.5)"),
        ("mismatch_mask: 1\n", "field 'mismatch_mask': Input should be greater than 1 (got 1)"),
        ("rollout_precision: int8\ndevice: cuda\n", "rollout_precision 'int8' runs torch's CPU int8 kernel"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")) as e:
            load_config(f)
        assert "\n" not in str(e.value)
    assert GRPOConfig(tis_cap=None).tis_cap is None  # null turns TIS off

    class Remote:  # a model without weights or an engine (an OpenAI-compatible endpoint)
        name = "remote"

    cfg = GRPOConfig(model=str(tiny_model_path), env=TOY, rollout_precision="int8", output_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"'int8' needs a local HFChatModel .* is Remote; use rollout_precision: fp32"):
        GRPOTrainer(MultiTurnAgent(Remote(), domain=None), make_env_factory(TOY), TargetShare(), cfg)
    slow = HFChatModel(tiny_model_path, fast_decode=False)
    with pytest.raises(ConfigError, match=r"not possible here: .*fast_decode=False; use rollout_precision: fp32"):
        GRPOTrainer(MultiTurnAgent(slow, domain=None), make_env_factory(TOY), TargetShare(), cfg)
    slow.close()


def test_int8_rollouts_log_their_mismatch_every_step(tiny_model_path, tmp_path):
    """int8 rollouts: the engine decodes on its int8 path, and metrics.jsonl carries the raw mismatch (overall and
    per agent turn) and the TIS weights each step; fp32 rollouts measure (almost) none."""
    rows = {}
    for precision in ("fp32", "int8"):
        trainer = make_trainer(tiny_model_path, tmp_path / precision, max_steps=2, rollout_precision=precision)
        assert trainer.chat_model.engine.stats.decode_path == ("fast-int8" if precision == "int8" else "fast-native")
        trainer.train()
        rows[precision] = [json.loads(x) for x in (tmp_path / precision / "run" / "metrics.jsonl").read_text()
                           .splitlines()]
    for r in rows["int8"]:
        assert r["mismatch/tokens"] == r["loss_tokens"] > 0
        assert 1e-4 < r["mismatch/mean_abs_log_ratio"] <= r["mismatch/max_abs_log_ratio"]
        assert 0 <= r["mismatch/outside"] <= 1 and r["tis/mean_weight"] > 0 and r["mismatch/masked_turns"] is None
        assert {"mismatch/turn0/mean_abs", "mismatch/turn1/max_abs", "mismatch/turn1/outside"} <= set(r)
    for r in rows["fp32"]:
        assert r["mismatch/max_abs_log_ratio"] < 1e-4 and r["tis/mean_weight"] == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- an injected perturbation, exactly
NOISE = 0.3
"""Std of the perturbation added to the policy's logits to make the behaviour policy mu."""


def _one_token_policy(trainer):
    """The prompt, the policy's next-token log-probs there (with gradient) and a perturbed behaviour policy."""
    prompt = trainer.chat_model.prompt_ids([Message(role="user", content="Where is my order?")])
    lm = trainer.policy.causal_lm
    logp = torch.log_softmax(lm(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    g = torch.Generator().manual_seed(0)
    mu = torch.log_softmax(logp.detach() + NOISE * torch.randn(logp.shape, generator=g), -1)
    adv = torch.randn(logp.shape, generator=g)
    return prompt, logp, mu, adv


def _quadrature_samples(prompt, mu, adv):
    """Every vocabulary token as a one-token turn with the behaviour log-prob mu(v) and advantage
    ``V * mu(v) * A(v)``: with the per-token (dapo) weights 1/V, the trainer's loss is then the exact expectation
    over tokens drawn from mu, no sampling noise. Even tokens are agent turn 0, odd ones turn 1."""
    v = mu.numel()
    return [Sample(input_ids=prompt + [t], completion_start=len(prompt), old_logprobs=[float(mu[t])], traj_index=t,
                   turn_index=t % 2, truncated=False, temperature=1.0,
                   advantage=float(v * mu[t].exp() * adv[t]), extra={"group": t}) for t in range(v)]


def _update_gradient(trainer, samples):
    grads = []
    clip = trainer.dist.clip_grad_norm

    def spy(params, max_norm):
        params = list(params)
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        return clip(params, max_norm)

    trainer.dist.clip_grad_norm = spy
    m = trainer._update(samples, [])
    assert m["optimizer_updates"] == len(grads) == 1
    return grads[0], m


def _flat(loss, params):
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, retain_graph=True)]).clone()


@pytest.mark.parametrize("tis_cap", [2.0, None])
def test_an_injected_perturbation_is_measured_exactly_and_corrected(tiny_model_path, tmp_path, tis_cap):
    """The behaviour log-probs are the policy's perturbed by a known gap delta = log pi - log mu per token. The step's
    mismatch metrics equal delta's statistics. With TIS (cap 2) the update's gradient is exactly
    ``-sum_v mu min(pi / mu, 2) A grad log pi`` and within 5% of the on-policy gradient ``-grad sum_v pi A``;
    without correction (the ratio taken against mu, its clip range absorbing the gap) it is biased: tokens whose
    ratio pi / mu leaves [0.8, 1.2] get no gradient."""
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=1, micro_batch_size=128, max_grad_norm=None,
                           tis_cap=tis_cap)
    prompt, logp, mu, adv = _one_token_policy(trainer)
    delta = (logp.detach() - mu).double()  # what the metrics must report
    ratio = delta.exp()
    exact = _flat(-(logp.exp() * adv).sum(), trainer.params)  # the on-policy gradient
    if tis_cap is not None:
        w = ratio.clamp(max=tis_cap).float()
        expected = _flat(-(mu.exp() * w * adv * logp).sum(), trainer.params)  # (before the update moves weights)
    else:  # PPO against mu: pi A grad log pi where the ratio pi / mu is inside the clip range (or clipping helps)
        clipped = ((adv > 0) & (ratio > 1.2)) | ((adv < 0) & (ratio < 0.8))
        expected = _flat(-(logp.exp() * adv * ~clipped).sum(), trainer.params)
    grad, m = _update_gradient(trainer, _quadrature_samples(prompt, mu, adv))

    assert m["mismatch/tokens"] == delta.numel()
    assert m["mismatch/mean_log_ratio"] == pytest.approx(float(delta.mean()), abs=1e-5)
    assert m["mismatch/mean_abs_log_ratio"] == pytest.approx(float(delta.abs().mean()), abs=1e-5)
    assert m["mismatch/max_abs_log_ratio"] == pytest.approx(float(delta.abs().max()), abs=1e-5)
    assert m["mismatch/outside"] == pytest.approx(float(((ratio < 0.8) | (ratio > 1.25)).double().mean()), abs=1e-3)
    for k in (0, 1):
        assert m[f"mismatch/turn{k}/mean_abs"] == pytest.approx(float(delta[k::2].abs().mean()), abs=1e-5)
        assert m[f"mismatch/turn{k}/max_abs"] == pytest.approx(float(delta[k::2].abs().max()), abs=1e-5)

    err = float((grad - exact).norm() / exact.norm())
    print(f"tis_cap={tis_cap}: relative distance to the on-policy gradient {err:.4f}")
    assert torch.allclose(grad, expected, rtol=1e-3, atol=1e-5 * float(expected.abs().max()))
    if tis_cap is not None:
        assert m["tis/capped_fraction"] == pytest.approx(float((ratio >= tis_cap).double().mean()), abs=1e-3)
        assert err < 0.05
    else:
        assert m["tis/mean_weight"] is None
        assert err > 0.2  # biased: measured about 0.4 (with TIS: about 0.01)


def test_the_sequence_mask_drops_exactly_the_turns_outside_its_band(tiny_model_path, tmp_path):
    """``mismatch_mask: 1.1``: one-token turns whose ratio pi / mu is outside [1/1.1, 1.1] leave the loss (and its
    normalisation); pi_old then comes from its own no-grad forward, which gives the same gradient as the first
    pass's (a mask too wide to drop anything)."""
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=1, micro_batch_size=128, max_grad_norm=None,
                           mismatch_mask=1.1)
    prompt, logp, mu, adv = _one_token_policy(trainer)
    delta = logp.detach() - mu
    _, m = _update_gradient(trainer, _quadrature_samples(prompt, mu, adv))
    kept = int((delta.abs() <= math.log(1.1)).sum())
    assert 0 < kept < delta.numel()
    assert m["loss_tokens"] == kept and m["mismatch/tokens"] == delta.numel()
    assert m["mismatch/masked_turns"] == pytest.approx(1 - kept / delta.numel())

    grads = []
    for mask in (None, 1e9):  # the same weights: the first pass's log-probs vs a separate no-grad forward
        t = make_trainer(tiny_model_path, tmp_path / str(mask), max_steps=1, micro_batch_size=128,
                         max_grad_norm=None, mismatch_mask=mask)
        grads.append(_update_gradient(t, _quadrature_samples(prompt, mu, adv))[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- it learns as well with int8 rollouts
def test_int8_rollouts_with_correction_learn_as_well_as_fp32(tiny_model_path, tmp_path):
    """The toy task of test_trainer (40 steps, the same seeds), once with fp32 rollouts and once with int8 rollouts
    + TIS (cap 2): both raise the mean reward of the last 10 steps over the first 10 by at least 0.3, and int8's
    last-10 mean is within 0.15 of fp32's."""
    result = {}
    for precision in ("fp32", "int8"):
        trainer = make_trainer(tiny_model_path, tmp_path / precision, max_steps=40, rollout_precision=precision)
        trainer.train()
        rows = [json.loads(x) for x in (tmp_path / precision / "run" / "metrics.jsonl").read_text().splitlines()]
        rewards = [r["reward"] for r in rows]
        result[precision] = (sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10,
                             max(r["mismatch/max_abs_log_ratio"] or 0 for r in rows))
    print({k: tuple(round(x, 4) for x in v) for k, v in result.items()})
    for first, last, _ in result.values():
        assert last - first >= 0.3
    assert abs(result["int8"][1] - result["fp32"][1]) <= 0.15
    assert result["int8"][2] > 1e-3 > result["fp32"][2]  # the int8 run really sampled from another policy
