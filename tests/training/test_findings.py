"""The correctness findings of issue 14, one section each; every test here failed on the code before its fix."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from stateset_agents.errors import ConfigError, TrainingError
from stateset_agents.rewards.base import agent_text
from stateset_agents.training.batch import Sample, collate
from stateset_agents.training.losses import has_variance
from tests.training.test_trainer import CharCount, make_trainer


# ---------------------------------------------------------------- 9: a torn last line in metrics.jsonl
def test_metrics_reader_skips_only_a_torn_last_line(tmp_path):
    from stateset_agents.training.metrics_io import keep_rows_through_step, read_rows

    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "rew')
    assert read_rows(f) == [{"step": 1}, {"step": 2}]
    keep_rows_through_step(f, 1)
    assert f.read_text() == '{"step": 1}\n'
    f.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(TrainingError, match=r"metrics.jsonl: line 2 is not JSON .* not the last line"):
        read_rows(f)
    assert read_rows(tmp_path / "missing.jsonl") == []


def test_grpo_resumes_after_a_torn_metrics_line(tiny_model_path, tmp_path):
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, save_every=1).train()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "reward": 0.')  # killed mid-write
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=3, save_every=1).train(resume=True)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


# ---------------------------------------------------------------- 6: the model's own LM head
def _gemma2_folder(tiny_model_path, dest, softcap):
    """The tiny tokenizer with a tiny Gemma2 (its forward soft-caps the logits: ``cap * tanh(logits / cap)``)."""
    import shutil

    from transformers import Gemma2Config, Gemma2ForCausalLM

    shutil.copytree(tiny_model_path, dest)
    for f in dest.glob("model*.safetensors"):
        f.unlink()
    vocab = json.loads((tiny_model_path / "config.json").read_text())["vocab_size"]
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=softcap,
                       max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    Gemma2ForCausalLM(cfg).save_pretrained(dest)
    return dest


def test_a_model_whose_forward_rescales_the_head_output_is_refused(tiny_model_path, tmp_path):
    folder = _gemma2_folder(Path(tiny_model_path), tmp_path / "gemma2", softcap=0.5)
    with pytest.raises(ConfigError, match=r"final_logit_softcapping=0.5.*differ from its LM head's"):
        make_trainer(folder, tmp_path, CharCount())


def test_loss_logprobs_equal_the_models_own_forward(tiny_model_path, tmp_path):
    """The trainer's log-probs are log_softmax of the model's own forward logits (here a Gemma2 with soft-capping
    turned off, whose head and embeddings are tied and scaled differently from Llama's)."""
    folder = _gemma2_folder(Path(tiny_model_path), tmp_path / "gemma2", softcap=None)
    trainer = make_trainer(folder, tmp_path, CharCount(), max_steps=1)
    ids = torch.tensor([[5, 9, 17, 33, 65, 129]])
    b = collate([Sample(input_ids=ids[0].tolist(), completion_start=2, old_logprobs=[0.0] * 4, traj_index=0,
                        turn_index=0, truncated=False)], 0)
    with torch.no_grad():
        _, logp, _ = trainer._policy_logprobs(b)
        full = torch.log_softmax(trainer.model(input_ids=ids).logits.float(), -1)[0, 1:-1]
    assert torch.allclose(logp, full.gather(-1, ids[0, 2:, None]).squeeze(-1), atol=1e-5)


# ---------------------------------------------------------------- 7: dropout in the training forward
def test_lora_dropout_is_refused(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError, match=r"lora_dropout=0.1 .* set lora_dropout: 0"):
        make_trainer(tiny_model_path, tmp_path, CharCount(), use_lora=True, lora_dropout=0.1)


def test_model_dropout_is_refused(tiny_model_path, tmp_path):
    import shutil

    folder = tmp_path / "dropout_model"
    shutil.copytree(tiny_model_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["attention_dropout"] = 0.2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"attention_dropout=0.2"):
        make_trainer(folder, tmp_path, CharCount())


# ---------------------------------------------------------------- 8: GSPO's clip range
def test_sequence_level_clip_range_defaults_to_the_gspo_papers():
    from stateset_agents.training import GRPOConfig

    gspo = GRPOConfig(importance_sampling_level="sequence")
    assert (gspo.epsilon, gspo.clip_high) == (3e-4, 4e-4)
    assert GRPOConfig.model_validate(gspo.model_dump()).clip_high == 4e-4  # config.yaml round trip
    explicit = GRPOConfig(importance_sampling_level="sequence", epsilon=0.01)
    assert (explicit.epsilon, explicit.clip_high) == (0.01, 0.01)
    assert (GRPOConfig().epsilon, GRPOConfig().clip_high) == (0.2, 0.2)  # token level unchanged


# ---------------------------------------------------------------- 3, 4: groups without reward signal
def _group(sid, rewards, successes=None):
    from stateset_agents.types import Trajectory, TrajectoryGroup

    successes = successes or [False] * len(rewards)
    return TrajectoryGroup(scenario_id=sid, trajectories=[
        Trajectory(scenario_id=sid, reward=r, outcome={"success": s}) for r, s in zip(rewards, successes, strict=True)])


def test_shaping_noise_is_not_blown_up_into_unit_advantages(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount())
    noise = _group("a", [0.5 + 1e-6 * i for i in range(4)])  # embedding-similarity jitter: no signal
    small = _group("b", [0.50, 0.51, 0.50, 0.51])  # a real but small shaping difference
    outcome = _group("c", [0.0, 1.0, 0.0, 0.0], [False, True, False, False])
    adv, zero_var = trainer._advantages([noise, small, outcome])
    assert zero_var == {0}
    assert max(abs(adv[id(t)]) for t in small.trajectories) < 0.1  # std floor 0.1: +-0.05, not +-0.87
    assert [round(adv[id(t)], 3) for t in outcome.trajectories] == [-0.5, 1.5, -0.5, -0.5]


def test_groups_are_counted_by_the_kind_of_reward_variance(tiny_model_path, tmp_path):
    from stateset_agents.training.trainer import group_signal

    groups = [_group("a", [0.5, 0.5]), _group("b", [0.2, 0.3]), _group("c", [0.0, 1.0], [False, True]),
              _group("d", [0.5, 0.5 + 1e-7])]
    assert group_signal(groups, rtol=1e-3) == ["none", "shaping", "outcome", "none"]
    m = asyncio.run(make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1).astep())
    assert m["groups/outcome_variance"] + m["groups/shaping_variance_only"] + m["groups/no_variance"] == 4
    assert m["groups/shaping_variance_only"] >= 1  # characters vary, the toy outcome does not


class ScenarioDigit(CharCount):
    """Programmatic reward equal within every group (the scenario id's last digit / 10): no group has variance."""

    name = "scenario_digit"

    def score_one(self, t):
        return int(t.scenario_id[-1]) / 10


@pytest.mark.parametrize("use_lora", [False, True])
def test_zero_variance_groups_keep_their_kl_term(tiny_model_path, tmp_path, use_lora):
    trainer = make_trainer(tiny_model_path, tmp_path, ScenarioDigit(), max_steps=1, beta=0.1, use_lora=use_lora)
    m = asyncio.run(trainer.astep())
    assert m["zero_variance_groups"] == 1.0
    assert m["loss_tokens"] > 0 and m["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    trainer.config.beta = 0.0  # without a KL term, the skip only saves compute
    assert asyncio.run(trainer.astep())["loss_tokens"] == 0


# ---------------------------------------------------------------- 5: the importance ratio on the first pass
@pytest.mark.parametrize("use_lora", [False, True])
def test_importance_ratio_is_one_on_the_first_optimiser_pass(tiny_model_path, tmp_path, use_lora):
    """The trainer's log-probs of the sampled tokens equal the engine's (the rollout's) before the first update of
    every step, for LoRA and a full fine-tune, also after earlier steps changed the weights."""
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=3, use_lora=use_lora,
                           gradient_accumulation_steps=1, micro_batch_size=8)
    for _ in range(3):
        m = asyncio.run(trainer.astep())
        assert m["optimizer_updates"] > 1 and m["loss_tokens"] > 0
        assert m["ratio/first_update_max_dev"] < 1e-4, m["ratio/first_update_max_dev"]
        # the ratio is taken against the trainer's own pre-update log-probs (TIS); the engine's match them
        assert m["mismatch/max_abs_log_ratio"] < 1e-4, m["mismatch/max_abs_log_ratio"]
        # later updates of the same pass see weights the earlier ones changed: raw, unclipped statistics
        assert m["ratio/min"] <= 1.0 + 1e-3 and m["ratio/max"] >= 1.0 - 1e-3 and m["ratio/min"] <= m["ratio/max"]
        assert 0.0 <= m["ratio/outside_clip"] <= 1.0 and m["ratio/mean"] > 0


def test_raw_ratio_statistics_are_taken_before_clipping(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, num_iterations=4,
                           learning_rate=5e-2, gradient_accumulation_steps=1, micro_batch_size=8)
    m = asyncio.run(trainer.astep())
    assert m["ratio/outside_clip"] > 0
    assert m["ratio/max"] > 1.2 or m["ratio/min"] < 0.8  # beyond the clip range [0.8, 1.2]: raw, not clipped


# ---------------------------------------------------------------- 2: normalised per optimiser update
def _spy_updates(trainer):
    """Per optimiser update: the sum of the loss weights of its tokens, its samples' groups, and its gradient."""
    updates = [{"weight": 0.0, "groups": []}]
    collate_fn, clip = trainer._collate, trainer.dist.clip_grad_norm

    def spy_collate(mb):
        b = collate_fn(mb)
        updates[-1]["weight"] += float(b.weights.sum())
        updates[-1]["groups"] += [s.extra.get("group") for s in mb]
        return b

    def spy_clip(params, max_norm):
        params = list(params)
        updates[-1]["grad"] = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
        updates.append({"weight": 0.0, "groups": []})
        return clip(params, max_norm)

    trainer._collate, trainer.dist.clip_grad_norm = spy_collate, spy_clip
    return updates


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_each_optimiser_update_is_normalised_on_its_own(tiny_model_path, tmp_path, loss_type):
    """gradient_accumulation_steps=1: every update's token weights sum to 1 (a mean over its own tokens or
    trajectories), not 1 / (number of updates), so max_grad_norm clips each update's real gradient."""
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, loss_type=loss_type,
                           gradient_accumulation_steps=1, micro_batch_size=8)
    updates = _spy_updates(trainer)
    m = asyncio.run(trainer.astep())
    updates = updates[:-1]
    assert len(updates) == m["optimizer_updates"] > 2
    assert [round(u["weight"], 5) for u in updates] == [1.0] * len(updates)


def test_one_update_of_micro_batches_equals_one_update_on_the_whole_batch(tiny_model_path, tmp_path):
    grads = []
    for mbs in (2, 256):
        trainer = make_trainer(tiny_model_path, tmp_path / str(mbs), CharCount(), max_steps=1, micro_batch_size=mbs,
                               max_grad_norm=None)
        updates = _spy_updates(trainer)
        m = asyncio.run(trainer.astep())
        assert m["optimizer_updates"] == 1
        grads.append(updates[0]["grad"])
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_groups_are_shuffled_across_updates(tiny_model_path, tmp_path):
    """Updates take whole groups in a seeded random order, not prompt-sorted slices: over a few steps the order
    of groups differs from step to step, and each update holds one group here (16 turns = 2 updates of 8; turns
    unpacked, so that the count is exact)."""
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=4, gradient_accumulation_steps=1,
                           micro_batch_size=8, scenarios_per_step=4, pack_turns=False)
    orders = []
    for _ in range(4):
        updates = _spy_updates(trainer)
        asyncio.run(trainer.astep())
        per_update = [sorted(set(u["groups"])) for u in updates[:-1]]
        assert all(len(g) == 1 for g in per_update)
        orders.append(tuple(dict.fromkeys(g[0] for g in per_update)))
        trainer._collate, trainer.dist.clip_grad_norm = type(trainer)._collate.__get__(trainer), \
            type(trainer.dist).clip_grad_norm.__get__(trainer.dist)
    assert len(set(orders)) > 1 and any(list(o) != sorted(o) for o in orders)


# ---------------------------------------------------------------- 1: the agent's own failures stay in the loss
def _short_context_model(tiny_model_path, dest, positions=115):
    """The tiny model with room for ``positions`` tokens: on the toy pack the second prompt is 90-116 tokens,
    so the agent's first reply (up to 12 tokens) makes about half the episodes overflow at their second turn."""
    import shutil

    shutil.copytree(tiny_model_path, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["max_position_embeddings"] = positions
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


class OddLengthNone(CharCount):
    """Programmatic reward that does not apply (None) to episodes whose agent text has an odd length."""

    name = "even_only"

    def score_one(self, t):
        n = len(agent_text(t))
        return None if n % 2 else n / 100


def test_context_overflow_is_the_agents_failure_and_gets_the_group_minimum(tiny_model_path, tmp_path):
    folder = _short_context_model(Path(tiny_model_path), tmp_path / "short")
    trainer = make_trainer(folder, tmp_path, CharCount(), max_steps=1)
    seen = {}
    score = trainer.reward.score

    async def spy(group):
        seen[group.scenario_id] = group
        return await score(group)

    trainer.reward.score = spy
    m = asyncio.run(trainer.astep())
    failed = [t for g in seen.values() for t in g.trajectories if t.failure == "context_overflow"]
    assert m["failures/context_overflow"] == len(failed) > 0
    assert all(t.error and "ContextOverflowError" in t.error for t in failed)
    for g in seen.values():
        ok = [t.reward for t in g.trajectories if t.failure is None]
        for t in g.trajectories:
            if t.failure == "context_overflow":
                assert t.reward == (min(ok) if ok else 0.0)  # in its group, at the group's lowest reward
    # their first turns are trained on: every turn of every group with reward variance is under the loss
    assert m["scored"] == m["trajectories"] == 32
    live = [g for g in seen.values() if has_variance([t.reward for t in g.trajectories], 1e-3)]
    assert any(t.failure for g in live for t in g.trajectories)
    assert m["loss_tokens"] == sum(len(c.completion_ids) for g in live for t in g.trajectories for c in t.completions)


def test_failure_reward_can_be_a_number(tiny_model_path, tmp_path):
    folder = _short_context_model(Path(tiny_model_path), tmp_path / "short")
    trainer = make_trainer(folder, tmp_path, CharCount(), max_steps=1, failure_reward=-1.0)
    m = asyncio.run(trainer.astep())
    assert m["failures/context_overflow"] > 0 and m["scored"] == 32
    assert m["reward"] < 0.2  # the -1s pull the mean down (CharCount alone is >= 0)


def test_failures_outside_the_agent_are_dropped_and_counted(tiny_model_path, tmp_path):
    m = asyncio.run(make_trainer(tiny_model_path, tmp_path, OddLengthNone(), max_steps=1).astep())
    assert m["failures/reward_none"] > 0
    assert m["scored"] == m["trajectories"] - m["failures/reward_none"]
    assert m["failures/context_overflow"] == m["failures/empty_reply"] == 0


async def test_rollout_names_each_failure(tiny_model_path, tmp_path):
    from stateset_agents.agents import MultiTurnAgent
    from stateset_agents.models.base import SamplingParams
    from stateset_agents.models.hf import HFChatModel
    from stateset_agents.rollout import AGENT_FAILURES, run_episode
    from stateset_agents.training.build import make_env_factory

    model = HFChatModel(_short_context_model(Path(tiny_model_path), tmp_path / "short", positions=50))
    agent = MultiTurnAgent(model, domain=None, sampling=SamplingParams(temperature=1.0, max_new_tokens=12))
    env = make_env_factory(str(Path(__file__).parent / "toy_pack"))()
    t = await run_episode(agent, env, "toy-000", seed=1)  # the first prompt (45 tokens) + 12 does not fit
    assert (t.failure, t.completions) == ("context_overflow", [])
    assert "context_overflow" in AGENT_FAILURES and "user_simulator" not in AGENT_FAILURES
    model.close()


# ---------------------------------------------------------------- 11: what a group's prompts share
async def test_a_groups_episodes_draw_their_own_opening_line(tiny_model, tmp_path):
    """Each episode draws its user's opening line (``np_random`` seeded per episode), so a group's first prompts
    differ when the scenario has several openings; what every prompt of a pack shares is the system message, and
    that is what the shared-prefix forward saves. training/prefix.py says so (it used to claim that a group's
    episodes share their whole first prompt)."""
    from stateset_agents.agents import MultiTurnAgent
    from stateset_agents.models.base import SamplingParams
    from stateset_agents.rollout import rollout
    from stateset_agents.training import prefix
    from stateset_agents.training.batch import samples_from_trajectories
    from stateset_agents.training.build import make_env_factory

    agent = MultiTurnAgent(tiny_model, sampling=SamplingParams(temperature=1.0, max_new_tokens=4))
    [g] = await rollout(agent, make_env_factory("customer_service", max_turns=2), ["cs-account-unlock-030"], 6,
                        progress=False)
    openings = {t.messages[1].content for t in g.trajectories}
    assert len(openings) == 2  # both of the scenario's opening lines were drawn
    first = [s for s in samples_from_trajectories(g.trajectories) if s.turn_index == 0]
    shared = prefix.common_prefix_len(first)
    assert shared >= prefix.MIN_SHARED_PREFIX and all(shared < s.completion_start for s in first)
    system = tiny_model.tokenizer.decode(first[0].input_ids[:shared])
    assert "<|im_start|>system" in system and not any(o in system for o in openings)
    assert "share their whole first prompt" not in prefix.__doc__
