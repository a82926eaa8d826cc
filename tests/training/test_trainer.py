"""GRPOTrainer: config, loss mask, learning, clipping, KL reference, GAE, checkpoints and resume, bad input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.errors import ConfigError, TrainingError
from stateset_agents.models.base import SamplingParams
from stateset_agents.models.hf import HFChatModel
from stateset_agents.rewards.base import TrajectoryReward, agent_text
from stateset_agents.rollout import rollout
from stateset_agents.training import GRPOConfig, load_config
from stateset_agents.training.batch import collate, samples_from_trajectories
from stateset_agents.training.build import build_trainer, make_env_factory
from stateset_agents.training.loop import RunLoop
from stateset_agents.training.trainer import GRPOTrainer

TOY = str(Path(__file__).parent / "toy_pack")


class TargetShare(TrajectoryReward):
    """Programmatic reward: the share of the agent's characters that belong to occurrences of ``target``."""

    name = "target_share"

    def __init__(self, target: str = " the") -> None:
        self.target = target

    def score_one(self, t):
        text = agent_text(t)
        return text.count(self.target) * len(self.target) / max(len(text), 1)


class CharCount(TrajectoryReward):
    """Programmatic reward that varies within every group: the agent's characters / 100."""

    name = "char_count"

    def score_one(self, t):
        return len(agent_text(t)) / 100


class NoneReward(TrajectoryReward):
    name = "never_applies"

    def score_one(self, t):
        return None


def make_trainer(path, tmp_path, reward=None, **overrides) -> GRPOTrainer:
    cfg = dict(model=str(path), env=TOY, max_steps=2, max_new_tokens=12, scenarios_per_step=4, group_size=8,
               output_dir=str(tmp_path / "run"), eval_before=False, eval_after=False, learning_rate=1e-2,
               use_lora=False, progress=False, save_every=0, seed=0)
    cfg.update(overrides)
    config = GRPOConfig(**cfg)
    agent = MultiTurnAgent(HFChatModel(path), domain=None)
    return GRPOTrainer(agent, make_env_factory(TOY), reward or TargetShare(), config)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}


# ---------------------------------------------------------------- config
def test_config_yaml_and_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: default\nbeta: 0.04\nloss_type: grpo\nimportance_sampling_level: sequence\n")
    cfg = load_config(f, output_dir="x")
    assert cfg.beta == 0.04 and cfg.loss_type == "grpo" and cfg.output_dir == "x"
    f.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown field 'learning_rat'"):
        load_config(f)
    f.write_text("warmup_steps: 5\nmax_steps: 5\n")
    with pytest.raises(ConfigError, match="warmup_steps=5 must be smaller than max_steps=5"):
        load_config(f)
    f.write_text("group_size: 1\n")
    with pytest.raises(ConfigError, match="field 'group_size'"):
        load_config(f)
    f.write_text("advantage_estimator: gae\nimportance_sampling_level: sequence\n")
    with pytest.raises(ConfigError, match="use importance_sampling_level 'token'"):
        load_config(f)
    f.write_text("algorithm: ppo\n")
    with pytest.raises(ConfigError, match="'ppo' is not one of 'grpo', 'sft', 'training_free'"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    # every field has a docstring line (docs/training.md is generated from the same text)
    assert all(GRPOConfig.model_fields[n].description or n for n in GRPOConfig.model_fields)


# ---------------------------------------------------------------- the loss mask
async def test_loss_mask_covers_exactly_the_agent_turns(tiny_model_path):
    """Multi-turn customer-service episodes (user, tool and system messages): the tokens under the loss decode to
    exactly the agent's messages, turn by turn, and nothing else."""
    model = HFChatModel(tiny_model_path)
    agent = MultiTurnAgent(model, sampling=SamplingParams(temperature=1.0, max_new_tokens=10))
    groups = await rollout(agent, make_env_factory("customer_service", max_turns=3), ["cs-account-unlock-030"], 2,
                           progress=False)
    trajs = groups[0].trajectories
    assert [t.error for t in trajs] == [None, None]
    samples = samples_from_trajectories(trajs)
    assert len(samples) == sum(len(t.completions) for t in trajs) >= 4
    b = collate(samples, model.tokenizer.pad_token_id)
    for r, s in enumerate(samples):
        ids = b.targets[b.rows == r].tolist()
        assert ids == s.input_ids[s.completion_start:]
        # the hidden state that predicts token p sits at p - 1
        assert (b.positions[b.rows == r] + 1).tolist() == list(range(s.completion_start, len(s.input_ids)))
        text = model.tokenizer.decode(ids, skip_special_tokens=True)
        t = trajs[s.traj_index]
        agent_msgs = [m.content for m in t.messages if m.role == "assistant"]
        assert len(agent_msgs) == len(t.completions)
        # the agent's message is this text (the env replaces control characters in what it shows the user)
        assert text == t.completions[s.turn_index].text
        shown = "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)
        assert shown.strip() == agent_msgs[s.turn_index].strip()
        prompt = model.tokenizer.decode(s.input_ids[:s.completion_start])
        assert "<|im_start|>user" in prompt and "<|im_start|>system" in prompt
    assert any(m.role == "user" for t in trajs for m in t.messages[2:])  # really multi-turn
    model.close()


# ---------------------------------------------------------------- it learns
def test_tiny_model_learns_a_programmatic_reward(tiny_model_path, tmp_path):
    """The tiny model, full fine-tune, on the toy pack: the mean reward of the last 10 of 40 steps exceeds the first
    10's by at least 0.3 (measured: about 0.07 -> 0.94)."""
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=40)
    trainer.train()
    rewards = [json.loads(line)["reward"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rewards) == 40
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"mean reward first 10 steps {first:.3f}, last 10 {last:.3f}")
    assert last - first >= 0.3


def test_metrics_are_logged_per_step(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=2)
    trainer.train()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "reward_std", "components/target_share", "success_rate", "clip_fraction", "entropy",
                "grad_norm", "new_tokens_per_s", "time/total", "zero_variance_groups", "lr", "loss", "peak_rss_mb"):
        assert key in rows[0], key
    assert rows[0]["kl"] is None  # beta = 0: no reference, nothing made up
    assert rows[0]["entropy"] > 0 and rows[0]["grad_norm"] > 0
    from stateset_agents.training.report import plot_run

    png = plot_run(tmp_path / "run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_iterations_make_clipping_engage(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, num_iterations=4,
                           learning_rate=5e-2, gradient_accumulation_steps=1, micro_batch_size=8)
    m = asyncio.run(trainer.astep())
    assert m["optimizer_updates"] == 32  # 4 iterations x 8 micro-batches of 8 (32 episodes of 2 turns)
    assert m["clip_fraction"] > 0
    assert m["mean_ratio"] != pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("overrides", [
    {"loss_type": "grpo"}, {"loss_type": "dr_grpo"}, {"importance_sampling_level": "sequence"},
    {"scale_rewards": "batch"}, {"scale_rewards": "none", "mask_truncated": True},
])
def test_variants_take_a_real_step(tiny_model_path, tmp_path, overrides):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, **overrides)
    before = weights(trainer)
    m = asyncio.run(trainer.astep())
    after = weights(trainer)
    if m["loss_tokens"]:
        assert any(not torch.equal(before[k], after[k]) for k in before)
    else:  # mask_truncated can leave nothing under the loss: then nothing moves
        assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- reference policy, LoRA, GAE
def test_lora_reference_is_the_same_model_with_adapters_off(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), use_lora=True, beta=0.5, learning_rate=5e-2,
                           lora_target_modules=["q_proj", "v_proj", "gate_proj"])
    assert trainer.ref_model is None  # no second copy
    frozen = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if not v.requires_grad}
    m1 = asyncio.run(trainer.astep())
    m2 = asyncio.run(trainer.astep())
    assert m1["kl"] == pytest.approx(0.0, abs=1e-7)  # adapters start as the identity (B = 0)
    assert m2["kl"] > 0
    for k, v in trainer.model.named_parameters():
        if not v.requires_grad:
            assert torch.equal(frozen[k], v), f"frozen weight {k} changed"
    assert all("lora_" in k for k, v in trainer.model.named_parameters() if v.requires_grad)


def test_full_finetune_reference_copy_only_with_beta(tiny_model_path, tmp_path):
    assert make_trainer(tiny_model_path, tmp_path, beta=0.0).ref_model is None
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), beta=0.2)
    assert trainer.ref_model is not None and not any(p.requires_grad for p in trainer.ref_model.parameters())
    asyncio.run(trainer.astep())
    m = asyncio.run(trainer.astep())
    assert m["kl"] > 0


def test_gae_trains_a_value_head(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), advantage_estimator="gae", gamma=0.9, gae_lambda=0.9)
    w0 = trainer.value_head.weight.detach().clone()
    m = asyncio.run(trainer.astep())
    assert m["value_loss"] is not None and m["value_loss"] > 0
    assert not torch.equal(w0, trainer.value_head.weight)
    assert m["loss_tokens"] > 0


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("use_lora", [True, False])
def test_resume_continues_exactly(tiny_model_path, tmp_path, use_lora):
    """4 steps straight == 2 steps, then a new trainer resuming from the checkpoint for 2 more: the trainable
    weights agree within 1e-6 (same draws, rollouts, optimiser, scheduler and RNG state).

    Rollouts here run one episode at a time (``rollout_concurrency=1``): with concurrent episodes the engine's batch
    composition depends on thread timing, which moves fp32 log-probs by ~1e-7 and can flip a sampled token, so two
    runs are equal in distribution but not bit for bit (docs/training.md, "Reproducibility")."""
    kw = dict(use_lora=use_lora, learning_rate=1e-2, lr_scheduler="linear", warmup_steps=1, max_steps=4,
              rollout_concurrency=1, save_every=1)
    straight = make_trainer(tiny_model_path, tmp_path / "a", CharCount(), **kw)
    straight.train()
    first = make_trainer(tiny_model_path, tmp_path / "b", CharCount(), **kw)
    loop = RunLoop(first)
    asyncio.run(loop.one_step())
    asyncio.run(loop.one_step())
    loop.save_checkpoint()  # the run is stopped here (as if killed after its step-2 checkpoint)
    second = make_trainer(tiny_model_path, tmp_path / "b", CharCount(), **kw)
    second.train(resume=True)
    assert second.step == 4
    a, b = weights(straight), weights(second)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ra = [json.loads(x)["reward"] for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x)["reward"] for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert ra == pytest.approx(rb, abs=1e-9)
    ckpts = sorted(p.name for p in (tmp_path / "b/run/checkpoints").iterdir())
    assert ckpts == ["step-3", "step-4"]  # keep_checkpoints=2, no temp folders left
    files = {p.suffix for p in (tmp_path / "b/run/checkpoints/step-4").rglob("*") if p.is_file()}
    assert files <= {".safetensors", ".json", ".yaml", ".md", ".txt", ".jinja"}  # nothing to unpickle


def test_resume_without_checkpoint_is_an_error(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        make_trainer(tiny_model_path, tmp_path).train(resume=True)


def test_crash_during_checkpoint_leaves_the_previous_one(tiny_model_path, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=1)
    trainer.train()
    good = sorted((tmp_path / "run/checkpoints/step-1").iterdir())
    trainer.step = 1  # write step-1 again, crashing half-way

    def boom(*a, **k):
        raise OSError("disk full")
    import stateset_agents.training.loop as loop_module  # the run loop writes every algorithm's checkpoints

    monkeypatch.setattr(loop_module, "rng_tensors", boom)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert sorted((tmp_path / "run/checkpoints/step-1").iterdir()) == good
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step-1"]


# ---------------------------------------------------------------- bad input
def test_bad_input_fails_before_compute(tiny_model_path, tmp_path):
    with pytest.raises(ConfigError, match="not a model folder"):
        build_trainer(GRPOConfig(model=str(tmp_path / "nope"), env=TOY, output_dir=str(tmp_path / "r")))
    with pytest.raises(ConfigError, match=r"scenarios \['nope-1'\] are not in split 'train'"):
        make_trainer(tiny_model_path, tmp_path, scenarios=["nope-1"])
    with pytest.raises(ConfigError, match="not a RewardFunction"):
        make_trainer(tiny_model_path, tmp_path, reward=lambda g: 1.0)
    from stateset_agents.errors import PackError

    with pytest.raises(PackError):
        build_trainer(GRPOConfig(model=str(tiny_model_path), env=str(tmp_path / "no-pack"),
                                 output_dir=str(tmp_path / "r")))


def test_the_evaluator_checks_eval_scenarios_with_close_matches(tmp_path):
    from stateset_agents.training.build import make_evaluator
    from stateset_agents.training.dist import DistContext

    cfg = GRPOConfig(model="unused", env=TOY, eval_split="train", eval_scenarios=["toy-0001"],
                     output_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"eval_scenarios \['toy-0001'\] are not in split 'train' of pack "
                       r"'toy_echo' \('toy-0001': did you mean 'toy-001'\?\)"):
        make_evaluator(cfg, make_env_factory(TOY), None, DistContext())


def test_empty_split_is_an_error(tiny_model_path, tmp_path):
    pack = tmp_path / "pack"
    (pack / "scenarios").mkdir(parents=True)
    (pack / "pack.yaml").write_text((Path(TOY) / "pack.yaml").read_text())
    text = (Path(TOY) / "scenarios" / "toy.yaml").read_text().replace("split: train", "split: test")
    (pack / "scenarios" / "toy.yaml").write_text(text)
    config = GRPOConfig(model=str(tiny_model_path), env=str(pack), output_dir=str(tmp_path / "r"))
    agent = MultiTurnAgent(HFChatModel(tiny_model_path), domain=None)
    with pytest.raises(ConfigError, match="has no scenarios in split 'train'"):
        GRPOTrainer(agent, make_env_factory(str(pack)), TargetShare(), config)


def test_reward_that_never_applies_stops_training(tiny_model_path, tmp_path):
    trainer = make_trainer(tiny_model_path, tmp_path, reward=NoneReward())
    before = weights(trainer)
    with pytest.raises(TrainingError, match="returned None .* for all 32 trajectories"):
        trainer.train()
    assert all(torch.equal(before[k], v) for k, v in weights(trainer).items())


# ---------------------------------------------------------------- SmolLM2: the loss is real
@pytest.mark.slow
def test_smollm2_lora_step_is_real(tmp_path):
    """SmolLM2 with LoRA on customer-service scenarios: weights change, KL > 0 with beta > 0 from the second step,
    gradients reach only the adapters."""
    from stateset_agents.models import default_model

    config = GRPOConfig(max_steps=2, max_new_tokens=16, max_turns=2, scenarios_per_step=1, group_size=2,
                        beta=0.1, learning_rate=1e-3, output_dir=str(tmp_path / "run"), eval_before=False,
                        eval_after=False, progress=False, save_every=0, scenarios=["cs-account-unlock-030"],
                        scale_rewards="none", skip_zero_variance_groups=False)
    from stateset_agents.rewards import load_reward

    agent = MultiTurnAgent(default_model(), domain="customer_service", context_tokens=1536)
    trainer = GRPOTrainer(agent, make_env_factory("customer_service", max_turns=2), load_reward("customer_service"),
                          config)
    base = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if not v.requires_grad}
    lora0 = weights(trainer)
    m1 = asyncio.run(trainer.astep())
    m2 = asyncio.run(trainer.astep())
    lora1 = weights(trainer)
    assert m1["loss_tokens"] > 0 and m2["loss_tokens"] > 0
    assert any(not torch.equal(lora0[k], lora1[k]) for k in lora0)
    assert m2["kl"] > 0
    assert all(torch.equal(base[k], v) for k, v in trainer.model.named_parameters() if not v.requires_grad)
    trainer.chat_model.close()


def test_shared_prefix_update_equals_the_plain_update(tiny_model_path, tmp_path):
    """One step with the shared-prefix forward (micro-batches mixing different prompts that share the system
    message) computes the same gradient as the plain forward."""
    from stateset_agents.training.prefix import PrefixBatch

    runs = []
    for share in (True, False):
        trainer = make_trainer(tiny_model_path, tmp_path / str(share), max_steps=1, rollout_concurrency=1,
                               micro_batch_size=16, skip_zero_variance_groups=False)
        trainer.share_prompts = share
        seen: list[tuple[bool, int]] = []
        grads: dict[str, torch.Tensor] = {}
        plain_collate = trainer._collate

        def spy(mb, plain_collate=plain_collate, seen=seen):
            b = plain_collate(mb)
            seen.append((isinstance(b, PrefixBatch), len({tuple(s.input_ids[:s.completion_start]) for s in mb})))
            return b

        def record(optimizer, args, kwargs, trainer=trainer, grads=grads):
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
                          if p.grad is not None})

        trainer._collate = spy
        trainer.optimizer.register_step_pre_hook(record)
        m = asyncio.run(trainer.astep())
        runs.append((grads, seen, m))
    (g_shared, seen_shared, m_shared), (g_plain, seen_plain, m_plain) = runs
    assert any(is_prefix and prompts > 1 for is_prefix, prompts in seen_shared), seen_shared
    assert not any(is_prefix for is_prefix, _ in seen_plain)
    assert m_shared["reward"] == m_plain["reward"]  # the same episodes
    assert g_plain and g_shared.keys() == g_plain.keys()
    scale = max(float(g.abs().max()) for g in g_plain.values())
    diff = max(float((g_shared[k] - g_plain[k]).abs().max()) for k in g_plain)
    assert scale > 0 and diff < 1e-4 * scale, (scale, diff)


def test_report_plots_a_run_without_weight_updates(tmp_path):
    """A Training-Free run logs rewards but no loss statistics: the plot is made without warnings."""
    from stateset_agents.training.report import plot_run

    rows = [{"step": i + 1, "reward": 0.4 + 0.01 * i, "reward_std": 0.1, "success_rate": 0.0} for i in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_run(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_update_runs_without_the_engines_decode_snapshot(tiny_model_path, tmp_path):
    import weakref

    trainer = make_trainer(tiny_model_path, tmp_path, max_steps=2, skip_zero_variance_groups=False)
    engine = trainer.policy.chat_model.engine
    seen = []
    snapshot = lambda: None  # noqa: E731  (the first rollout's snapshot, once there is one)

    def record(optimizer, args, kwargs):  # at the optimiser step: the rollout's snapshot must be gone
        seen.append((engine._fast is None, engine._prefix is None, len(engine._seqs), snapshot()))

    trainer.optimizer.register_step_pre_hook(record)
    asyncio.run(trainer.astep())
    assert engine.stats.decode_snapshots == 1
    snapshot = weakref.ref(engine._fast) if engine._fast is not None else (lambda: None)
    asyncio.run(trainer.astep())  # the second rollout rebuilds it; its update frees the first one
    assert seen and all(s == (True, True, 0, None) for s in seen), seen
    assert engine.stats.decode_snapshots == 2
