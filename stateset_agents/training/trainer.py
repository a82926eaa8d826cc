"""GRPOTrainer: multi-turn group-relative policy optimisation of a local chat model.

One step (see ../shared/DESIGN.md, "Data flow"):

1. draw ``scenarios_per_step`` scenarios (seeded by ``seed`` and the step, so a resumed run draws the same);
   this process takes its share (:class:`DistContext`);
2. roll out ``group_size`` episodes of each with the policy itself (its batching engine), recording every agent
   turn's prompt ids, sampled ids and their log-probs under the sampling distribution (the old policy);
3. score each group with the reward (:func:`assign_rewards`): an episode the agent's own output ended (empty or
   overlong reply, context overflow) stays in its group with ``failure_reward``; episodes that failed outside
   the agent (user simulator, model backend, env) and ``None`` results (not applicable) get no advantage and no
   loss, counted per reason in ``failures/*``; if nothing in the whole batch was scored, a :class:`TrainingError`
   stops the run;
4. advantages: group-relative (GRPO) or GAE over agent turns with a value head;
5. ``num_iterations`` passes of the clipped surrogate (+ ``beta`` x k3 KL to the reference policy) over the agent
   tokens only; each pass is split into optimiser updates of whole groups in a seeded random order
   (:func:`plan_updates`), each normalised per ``loss_type`` over its own tokens; gradient clipping; AdamW; the LR
   schedule steps once per step; raw importance-ratio statistics (``ratio/*``) are logged before clipping;
   the sampler's log-probs (mu) are checked against the trainer's own (pi_old) before any correction
   (``mismatch/*``), and each token's loss is weighted by ``min(pi_old / mu, tis_cap)`` (:mod:`.grpo_mismatch`);
6. metrics for the run loop (:mod:`.loop`: ``metrics.jsonl``, the live display, TensorBoard, W&B, checkpoints).

The parts: :class:`~.policy.Policy` (the weights, LoRA or full, replicated or FSDP2, and the one sampling
temperature, which every completion records and the loss reads back from the samples), :mod:`.scoring` (step 3),
:mod:`.advantages` (step 4, estimators by name), :mod:`.grpo_update` (step 5).

The reference policy: with LoRA, the same model with its adapters disabled (no second copy); with a full
fine-tune, a frozen copy made at the start, only when ``beta > 0``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, TrainingError
from ..rewards.base import RewardFunction
from ..rollout import rollout
from ..types import SamplingParams, Trajectory, TrajectoryGroup
from .advantages import ESTIMATORS
from .batch import Sample, samples_from_trajectories
from .dist import DistContext
from .grpo_config import GRPOConfig
from .grpo_mismatch import set_rollout_precision
from .grpo_update import GRPOUpdate, plan_updates
from .loop import RunLoop, Writer, step_seed
from .model_checks import refuse_dropout, refuse_rescaled_logits
from .policy import Policy, lr_lambda
from .rollout_log import TRAIN_TRANSCRIPTS, log_train_episodes
from .scenarios import pick_scenarios
from .scoring import DROP_REASONS, assign_rewards, group_signal, score_groups

__all__ = ["DROP_REASONS", "GRPOTrainer", "assign_rewards", "group_signal", "plan_updates", "refuse_dropout",
           "refuse_rescaled_logits", "step_seed"]


class GRPOTrainer(GRPOUpdate):
    """Train ``agent``'s local model with GRPO on ``env_factory``'s scenarios, scored by ``reward``.

    Args:
        agent: a :class:`~stateset_agents.agents.MultiTurnAgent` whose model is a local ``HFChatModel`` (the policy:
            it generates the rollouts and is updated in place, so the next rollout uses the new weights).
        env_factory: returns a fresh :class:`~stateset_agents.envs.ConversationEnv` per episode.
        reward: any RewardFunction; its total is optimised and every component logged.
        config: a :class:`GRPOConfig`.
        dist: rank and world size (default: from torchrun's environment, else one process).
        evaluator: optional ``async f(trainer, tag) -> dict`` run before/after training and every ``eval_every``.
    """

    name = "grpo"
    logs: tuple[str, ...] = (TRAIN_TRANSCRIPTS,)

    def __init__(self, agent: Any, env_factory: Callable[[], Any], reward: RewardFunction, config: GRPOConfig,
                 *, dist: DistContext | None = None,
                 evaluator: Callable[[GRPOTrainer, str], Any] | None = None) -> None:
        if not isinstance(config, GRPOConfig):
            raise ConfigError(f"config must be a GRPOConfig, got {type(config).__name__}; "
                              "use stateset_agents.training.load_config(path)")
        if not isinstance(reward, RewardFunction):
            raise ConfigError(f"reward {reward!r} is not a RewardFunction (needs `name` and async `score(group)`)")
        self.agent, self.env_factory, self.reward, self.config = agent, env_factory, reward, config
        self.dist = dist or DistContext()
        self.evaluator = evaluator
        self.run_dir = Path(config.output_dir)
        self.step, self.total_steps = 0, config.max_steps
        probe = env_factory()
        try:
            self.pack, self.max_turns = probe.pack, probe.max_turns
            pool = [s.id for s in probe.pack.split(config.train_split)]
        finally:
            probe.close()
        self.scenarios = pick_scenarios(pool, config.scenarios, "scenarios", config.train_split, self.pack.name)
        if not self.scenarios:
            raise ConfigError(f"pack {self.pack.name!r} has no scenarios in split {config.train_split!r}; "
                              "choose another train_split or add scenarios")
        torch.manual_seed(config.seed)
        if getattr(getattr(agent, "model", None), "model", None) is not None:
            refuse_dropout(agent.model.model, config)  # before adapters exist (LoRA dropout is checked too)
        set_rollout_precision(getattr(agent, "model", None), config)  # int8: the engine samples from int8 weights
        self.policy = Policy(agent.model, config, dist=self.dist,
                             sampling=SamplingParams(temperature=config.temperature,
                                                     max_new_tokens=config.max_new_tokens))
        self.chat_model, self.tokenizer, self.device = agent.model, self.policy.tokenizer, self.policy.device
        self.model, self.is_lora, self.fsdp = self.policy.model, self.policy.is_lora, self.policy.fsdp
        self.params = self.policy.params
        self.ref_model = None
        if not self.is_lora and config.beta > 0:  # a frozen copy, only when the KL term needs it
            import copy

            self.ref_model = copy.deepcopy(self.policy.causal_lm).eval().requires_grad_(False)
        self.share_prompts = True  # forward a prompt shared by several samples once (same gradients, less compute)
        self.optimizer = self.policy.optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, config.max_steps))
        self.estimator = ESTIMATORS[config.advantage_estimator](config, self.policy, self.dist)

    @property
    def value_head(self) -> torch.nn.Linear | None:
        return getattr(self.estimator, "head", None)

    # ------------------------------------------------------------------ the run (training/loop.py)
    def train(self, *, resume: bool | str = False) -> dict[str, Any]:
        """Run to ``max_steps`` (from the last checkpoint when ``resume``; ``"auto"``: when there is one)."""
        return RunLoop(self).run(resume=resume)

    async def atrain(self, *, resume: bool | str = False) -> dict[str, Any]:
        return await RunLoop(self).arun(resume=resume)

    async def evaluate(self, tag: str) -> dict[str, Any] | None:
        return await self.evaluator(self, tag) if self.evaluator is not None else None

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` now (see :class:`~.loop.RunLoop`)."""
        return RunLoop(self).save_checkpoint()

    def load_checkpoint(self, path: str | Path) -> None:
        RunLoop(self).load_checkpoint(path)

    def checkpoint(self) -> Writer:
        weights, value = self.policy.writer(self.optimizer), self.estimator.writer()
        scheduler = self.scheduler.state_dict()
        return lambda tmp: {**weights(tmp), **value(tmp), "scheduler": scheduler}

    def load_checkpoint_state(self, path: Path, state: dict[str, Any]) -> None:
        self.policy.load(path, state, self.optimizer)
        self.estimator.load(path)
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------------ 1. the step's scenarios
    def draw_scenarios(self, step: int) -> list[str]:
        """The step's scenarios (the same on every process): a seeded draw without replacement, repeating the
        pool when ``scenarios_per_step`` exceeds it."""
        rng = np.random.default_rng(step_seed(self.config.seed, step, "scenarios"))
        n = self.config.scenarios_per_step
        out: list[str] = []
        while len(out) < n:
            perm = rng.permutation(len(self.scenarios))
            out += [self.scenarios[i] for i in perm[: n - len(out)]]
        return out

    # ------------------------------------------------------------------ 2.-6. one step
    async def astep(self) -> dict[str, Any]:
        """Step ``self.step``: roll out, score, advantages, update; advance ``self.step``; return the metrics."""
        cfg = self.config
        t0 = time.perf_counter()
        step = self.step
        mine = self.dist.shard(self.draw_scenarios(step))
        self.model.eval()
        self.agent.sampling = self.policy.sampling  # the one SamplingParams; each completion records it
        groups = await rollout(self.agent, self.env_factory, mine, cfg.group_size,
                               concurrency=cfg.rollout_concurrency, seed=step_seed(cfg.seed, step, "rollout"),
                               progress=False) if mine else []
        t_rollout = time.perf_counter() - t0
        results, failures = await score_groups(self.reward, groups, cfg.failure_reward)
        log_train_episodes(self, groups, results, step=step + 1)  # train_transcripts.jsonl, as in metrics.jsonl
        t_score = time.perf_counter() - t0 - t_rollout

        trajs = [t for g in groups for t in g.trajectories]
        n_valid_local = sum(t.reward is not None for t in trajs)
        n_valid, n_total = self.dist.all_reduce_sum([n_valid_local, len(trajs)])
        if n_valid == 0:
            errors = sorted({t.error for t in trajs if t.error} | {
                r.error for res in results for r in res if r.error})[:3]
            raise TrainingError(
                f"step {step}: the reward {self.reward.name!r} returned None (not applicable) for all "
                f"{int(n_total)} trajectories, so there is nothing to learn from; errors seen: {errors or 'none'}. "
                "Check the reward preset against the environment, and the rollouts' errors")

        advantages, zero_var = self._advantages(groups)
        samples = self._samples(trajs, advantages, groups, zero_var)
        t_adv = time.perf_counter() - t0 - t_rollout - t_score
        update = self._update(samples, trajs)
        with warnings.catch_warnings():  # a step with nothing under the loss still advances the schedule
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*before.*optimizer.step",
                                    category=UserWarning)
            self.scheduler.step()
        self.step += 1
        new_tokens = sum(len(c.completion_ids or []) for t in trajs for c in t.completions)
        metrics = self._metrics(step, groups, trajs, zero_var, update, new_tokens,
                                {"rollout": t_rollout, "score": t_score, "advantages": t_adv,
                                 "update": update.pop("_time"), "total": time.perf_counter() - t0})
        totals = self.dist.all_reduce_sum(list(failures.values()))
        metrics.update({f"failures/{k}": int(v) for k, v in zip(failures, totals, strict=True)})
        return metrics

    # ------------------------------------------------------------------ 4. advantages
    def _advantages(self, groups: Sequence[TrajectoryGroup]) -> tuple[dict[int, float], set[int]]:
        """Per trajectory id(), its advantage; and the indices of groups with zero reward variance."""
        return self.estimator.group_advantages(groups)

    def _samples(self, trajs: list[Trajectory], advantages: dict[int, float], groups: Sequence[TrajectoryGroup],
                 zero_var: set[int]) -> list[Sample]:
        cfg = self.config
        # a group without reward variance has advantage 0, but with beta > 0 its KL term is still part of the
        # objective, so it is only skipped (to save compute) when there is no KL term
        skipping = cfg.skip_zero_variance_groups and cfg.beta == 0
        skip = {id(t) for gi in zero_var for t in groups[gi].trajectories} if skipping else set()
        if self.estimator.per_turn:
            skip = set()  # GAE advantages differ per turn even when a group's rewards are equal
        idx = [i for i, t in enumerate(trajs) if t.reward is not None and id(t) not in skip]
        samples = samples_from_trajectories(trajs, idx, mask_truncated=cfg.mask_truncated)
        self.estimator.assign(samples, trajs, advantages)
        group_of = [gi for gi, g in enumerate(groups) for _ in g.trajectories]
        for s in samples:
            s.extra["group"] = group_of[s.traj_index]  # updates take whole groups (see plan_updates)
        if cfg.beta > 0:
            self._reference_logprobs(samples)
        return samples

    # ------------------------------------------------------------------ 6. metrics
    def _metrics(self, step: int, groups: Sequence[TrajectoryGroup], trajs: list[Trajectory], zero_var: set[int],
                 update: dict[str, Any], new_tokens: int, times: dict[str, float]) -> dict[str, Any]:
        comp_names = sorted({k for t in trajs for k in t.components})
        local = [
            sum(t.reward for t in trajs if t.reward is not None),
            sum(t.reward ** 2 for t in trajs if t.reward is not None),
            sum(t.reward is not None for t in trajs),
            sum(bool(t.outcome and t.outcome.get("success")) for t in trajs),
            len(trajs),
            sum(t.error is not None for t in trajs),
            len(zero_var), len(groups), new_tokens,
        ]
        for c in comp_names:
            vals = [t.components.get(c) for t in trajs]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            local += [sum(vals), len(vals)]
        # every process must reduce the same list: gather component names first when distributed
        if self.dist.distributed:
            names = sorted({n for ns in self.dist.all_gather_object(comp_names) for n in ns})
            if names != comp_names:
                comp_names = names
                local = local[:9]
                for c in comp_names:
                    vals = [t.components.get(c) for t in trajs]
                    vals = [v for v in vals if v is not None and math.isfinite(v)]
                    local += [sum(vals), len(vals)]
        tot = self.dist.all_reduce_sum(local)
        rs, rs2, rn, succ, n, errs, zv, ng, ntok = tot[:9]
        mean = rs / rn if rn else None
        std = math.sqrt(max(0.0, rs2 / rn - mean * mean)) if rn else None
        m: dict[str, Any] = {
            "reward": mean, "reward_std": std,
            "success_rate": succ / n if n else None, "trajectories": int(n), "scored": int(rn),
            "episode_errors": int(errs), "zero_variance_groups": zv / ng if ng else None,
            "lr": self.scheduler.get_last_lr()[0], "new_tokens": int(ntok),
            "new_tokens_per_s": ntok / times["rollout"] if times["rollout"] > 0 else None,
        }
        for i, c in enumerate(comp_names):
            s, k = tot[9 + 2 * i], tot[10 + 2 * i]
            m[f"components/{c}"] = s / k if k else None
        kinds = group_signal(groups, self.config.zero_variance_rtol)
        n_out, n_shape, n_none = self.dist.all_reduce_sum([kinds.count(k) for k in ("outcome", "shaping", "none")])
        m.update({"groups/outcome_variance": int(n_out), "groups/shaping_variance_only": int(n_shape),
                  "groups/no_variance": int(n_none)})
        m.update({k: v for k, v in update.items()})
        m.update({f"time/{k}": v for k, v in times.items()})
        if torch.cuda.is_available() and self.device.type == "cuda":
            m["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m


    @staticmethod
    def short(m: dict[str, Any]) -> str:
        return _short(m)


def _short(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return (f"reward {f(m.get('reward'))}  success {f(m.get('success_rate'))}  kl {f(m.get('kl'))}  "
            f"clip {f(m.get('clip_fraction'))}  {m.get('new_tokens_per_s') or 0:.0f} tok/s")
