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
6. metrics to ``metrics.jsonl`` (and the live display, TensorBoard, W&B); a checkpoint every ``save_every`` steps.

The reference policy: with LoRA, the same model with its adapters disabled (no second copy); with a full
fine-tune, a frozen copy made at the start, only when ``beta > 0``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, TrainingError
from ..models.base import SamplingParams
from ..rewards.base import RewardFunction, RewardResult
from ..rollout import AGENT_FAILURES, rollout
from ..types import Trajectory, TrajectoryGroup
from .batch import Sample, collate, samples_from_trajectories
from .checkpoint import (
    latest_checkpoint,
    load_optimizer,
    optimizer_tensors,
    restore_rng,
    rng_tensors,
    save_atomically,
)
from .config import GRPOConfig
from .dist import DistContext
from .losses import (
    clipped_surrogate,
    gae,
    group_advantages,
    has_variance,
    importance_ratio,
    k3_kl,
    loss_weights,
    reward_scale,
    token_logprobs,
)
from .metrics_io import keep_rows_through_step
from .prefix import (
    MIN_SHARED_PREFIX,
    PrefixBatch,
    collate_shared_prefix,
    common_prefix_len,
    shared_prefix_hidden,
)

__all__ = ["GRPOTrainer", "step_seed"]


def _peak_rss_mb() -> float | None:
    """This process's host-memory high-water mark. Linux: ``VmHWM`` (``ru_maxrss`` survives ``exec``, so a job
    started by a large parent, such as the server, would report the parent's peak); elsewhere ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def step_seed(seed: int, step: int, what: str) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{what}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _lr_lambda(config: GRPOConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.lr_scheduler == "constant":
            return 1.0
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        if config.lr_scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


#: config fields through which a transformers forward changes the LM head's output after the head
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logit_soft_cap", "softcap")
_DROPOUT_FIELDS = ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout")


def refuse_rescaled_logits(lm: Any) -> None:
    """Raise ConfigError when ``lm``'s forward logits differ from ``lm_head(last hidden state)``.

    The loss computes log-probs from the last hidden state through the model's own head in chunks; a forward that
    soft-caps or scales the logits after the head (Gemma 2's ``final_logit_softcapping``, Cohere's
    ``logit_scale``, Granite's ``logits_scaling``) would make them differ from the sampling log-probs, biasing
    every importance ratio silently. Checked on one short probe sequence at setup."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if head is None or getattr(lm, "base_model", None) is None:
        raise ConfigError(f"GRPO needs a transformers causal LM with an output embedding; got {type(lm).__name__}")
    device = next(lm.parameters()).device
    ids = (torch.arange(2, 10, device=device) % lm.config.vocab_size).unsqueeze(0)
    was_training = lm.training
    lm.eval()
    with torch.no_grad():
        full = lm(input_ids=ids, use_cache=False).logits.float()
        mine = head(lm.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    lm.train(was_training)
    if not torch.allclose(full, mine, rtol=1e-4, atol=1e-4 * float(full.abs().max()) + 1e-6):
        found = {k: getattr(lm.config, k) for k in _LOGIT_TRANSFORMS if getattr(lm.config, k, None) is not None}
        shown = ", ".join(f"{k}={v}" for k, v in found.items()) or "no known config field"
        raise ConfigError(f"{type(lm).__name__} ({shown}): its forward logits differ from its LM head's output "
                          "(soft-capping or scaling after the head), which the GRPO loss does not reproduce; turn "
                          "that off in the model's config.json (e.g. final_logit_softcapping: null) or train "
                          "another model")


def refuse_dropout(lm: Any, cfg: GRPOConfig) -> None:
    """Raise ConfigError when the training forward would use dropout: the engine samples without it, so the
    importance ratio of the first optimiser pass would not be 1 and the clipped surrogate would be off-policy."""
    if cfg.use_lora and cfg.lora_dropout > 0:
        raise ConfigError(f"lora_dropout={cfg.lora_dropout} makes the training forward differ from the sampling "
                          "forward (rollouts sample without dropout); set lora_dropout: 0")
    found = {k: getattr(lm.config, k) for k in _DROPOUT_FIELDS
             if isinstance(getattr(lm.config, k, None), float) and getattr(lm.config, k) > 0}
    found.update({name: m.p for name, m in lm.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0})
    if found:
        shown = ", ".join(f"{k}={v}" for k, v in list(found.items())[:4])
        raise ConfigError(f"the model uses dropout ({shown}), which makes the training forward differ from the "
                          "sampling forward; set these to 0 in the model's config.json")


#: why an episode gets no reward and leaves the loss: a failure outside the agent (the user simulator, the model
#: backend, the env), or a reward that did not apply (None) or failed (an error, a non-finite value)
DROP_REASONS = ("user_simulator", "model_error", "env_error", "reward_none", "reward_error")


def assign_rewards(group: TrajectoryGroup, results: Sequence[RewardResult],
                   failure_reward: float | str) -> dict[str, int]:
    """Set each trajectory's ``reward`` and ``components`` from the reward's ``results``; return a count per reason
    (:data:`DROP_REASONS` for those left without a reward, ``rollout.AGENT_FAILURES`` for those scored as failures).

    An episode that the agent's own output ended (an empty or overlong reply, a conversation too long for the
    context) stays in its group with ``failure_reward``: ``"group_min"`` is the lowest reward of the group's
    scored episodes (0 when there is none), so the policy is pushed away from what it did there."""
    counts: dict[str, int] = {}
    for t, r in zip(group.trajectories, results, strict=True):
        t.components = dict(r.components)
        t.reward = None
        if t.failure in AGENT_FAILURES:
            continue
        if t.error is not None:
            reason = t.failure if t.failure in DROP_REASONS else "env_error"
        elif r.value is None or not math.isfinite(r.value):
            reason = "reward_error" if (r.error or r.value is not None) else "reward_none"
        else:
            t.reward = float(r.value)
            continue
        counts[reason] = counts.get(reason, 0) + 1
    failed = [t for t in group.trajectories if t.failure in AGENT_FAILURES]
    if failed:
        scored = [t.reward for t in group.trajectories if t.reward is not None]
        value = (min(scored) if scored else 0.0) if failure_reward == "group_min" else float(failure_reward)
        for t in failed:
            t.reward = value
            counts[t.failure] = counts.get(t.failure, 0) + 1
    return counts


def plan_updates(samples: Sequence[Sample], n_updates: int, size: int,
                 rng: np.random.Generator) -> list[list[Sample]]:
    """Split a step's samples into ``n_updates`` optimiser updates of at most ``size`` samples each.

    Groups (``sample.extra["group"]``) are taken whole, in a random order drawn from ``rng``, so no update
    always sees the same prompts (sorting by prompt, as micro-batching inside an update does, would give the
    first update of every step the same scenarios); a group larger than the room left straddles two updates.
    Updates after the samples run out are empty (another process may still have samples for them)."""
    by_group: dict[Any, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.traj_index, s.turn_index)):
        by_group.setdefault(s.extra.get("group"), []).append(s)
    keys = list(by_group)
    flat = [s for k in rng.permutation(len(keys)) for s in by_group[keys[k]]]
    return [flat[u * size:(u + 1) * size] for u in range(n_updates)]


def group_signal(groups: Sequence[TrajectoryGroup], rtol: float) -> list[str]:
    """Per group, where its reward variance comes from: ``outcome`` (the episodes' success differs), ``shaping``
    (rewards differ, success does not: only shaping components such as similarity vary) or ``none`` (see
    :func:`~.losses.has_variance`). Only scored episodes count."""
    out = []
    for g in groups:
        scored = [t for t in g.trajectories if t.reward is not None]
        if not has_variance([t.reward for t in scored], rtol):
            out.append("none")
        elif len({bool(t.outcome and t.outcome.get("success")) for t in scored}) > 1:
            out.append("outcome")
        else:
            out.append("shaping")
    return out


class GRPOTrainer:
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

    def __init__(self, agent: Any, env_factory: Callable[[], Any], reward: RewardFunction, config: GRPOConfig,
                 *, dist: DistContext | None = None,
                 evaluator: Callable[[GRPOTrainer, str], Any] | None = None) -> None:
        if not isinstance(config, GRPOConfig):
            raise ConfigError(f"config must be a GRPOConfig, got {type(config).__name__}; "
                              "use stateset_agents.training.load_config(path)")
        if not isinstance(reward, RewardFunction):
            raise ConfigError(f"reward {reward!r} is not a RewardFunction (needs `name` and async `score(group)`)")
        policy = getattr(agent, "model", None)
        if getattr(policy, "model", None) is None or getattr(policy, "tokenizer", None) is None:
            raise ConfigError(f"GRPOTrainer trains a local model, but the agent's model is {type(policy).__name__}; "
                              "use an HFChatModel (e.g. stateset_agents.models.default_model())")
        self.agent, self.env_factory, self.reward, self.config = agent, env_factory, reward, config
        self.chat_model = policy
        self.tokenizer = policy.tokenizer
        self.dist = dist or DistContext()
        self.evaluator = evaluator
        self.run_dir = Path(config.output_dir)
        self.step = 0
        self.history: list[dict[str, Any]] = []

        probe = env_factory()
        try:
            self.pack = probe.pack
            self.max_turns = probe.max_turns
            pool = [s.id for s in probe.pack.split(config.train_split)]
        finally:
            probe.close()
        if config.scenarios is not None:
            unknown = [s for s in config.scenarios if s not in pool]
            if unknown:
                raise ConfigError(f"scenarios {unknown} are not in split {config.train_split!r} of pack "
                                  f"{self.pack.name!r}; choose from {pool}")
            pool = list(config.scenarios)
        if not pool:
            raise ConfigError(f"pack {self.pack.name!r} has no scenarios in split {config.train_split!r}; "
                              "choose another train_split or add scenarios")
        self.scenarios = pool
        torch.manual_seed(config.seed)
        self._setup_model()
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the policy has no trainable parameters; check use_lora / lora_target_modules")
        self.params = params
        self.dist.broadcast_parameters(self.params)
        self.share_prompts = True  # forward a prompt shared by several samples once (same gradients, less compute)
        self.fsdp: Any = None
        if config.fsdp:  # shard the full model over the processes (see training/fsdp.py)
            from .fsdp import FSDPPolicy

            self.fsdp = FSDPPolicy(self._causal_lm(self.model), self.dist, pad_id=self._pad_id())
            params = self.params = self.fsdp.params
        # The fused kernel (one pass over each tensor) is several times faster than the per-tensor loop, which
        # is torch's default on CPU; FSDP's sharded (DTensor) parameters use the multi-tensor path instead.
        impl = {"foreach": True} if self.fsdp is not None else {"fused": True}
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.adam_betas,
                                           weight_decay=config.weight_decay, **impl)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config))
        self.value_head: torch.nn.Linear | None = None
        self.value_optimizer: torch.optim.Optimizer | None = None
        if config.advantage_estimator == "gae":
            hidden = self.model.config.hidden_size
            self.value_head = torch.nn.Linear(hidden, 1).to(self.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
            self.dist.broadcast_parameters(self.value_head.parameters())
            self.value_optimizer = torch.optim.Adam(self.value_head.parameters(), lr=config.value_learning_rate)
        self._trackers: list[Any] = []

    # ------------------------------------------------------------------ model setup
    def _setup_model(self) -> None:
        cfg = self.config
        base = self.chat_model.model
        self.device = next(base.parameters()).device
        self.is_lora = False
        if cfg.use_lora:
            from peft import LoraConfig, PeftModel, get_peft_model

            if isinstance(base, PeftModel):
                self.model = base
            else:
                lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                  target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")
                try:
                    # Injects the adapters into `base` in place: the generation engine, which holds `base`,
                    # samples with them from now on.
                    with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5
                        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                                category=FutureWarning)
                        self.model = get_peft_model(base, lora)
                except ValueError as e:
                    raise ConfigError(f"LoRA could not be applied: {e}; set lora_target_modules to module names "
                                      "of this model (e.g. q_proj, v_proj)") from e
            self.is_lora = True
            self.ref_model = None
        else:
            self.model = base
            for p in base.parameters():
                p.requires_grad_(True)
            self.ref_model = None
            if cfg.beta > 0:
                self.ref_model = copy.deepcopy(base).eval()
                for p in self.ref_model.parameters():
                    p.requires_grad_(False)
        refuse_dropout(self._causal_lm(self.model), cfg)
        refuse_rescaled_logits(self._causal_lm(self.model))
        if cfg.gradient_checkpointing:
            inner = self._causal_lm(self.model)
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.is_lora:
                inner.enable_input_require_grads()

    @staticmethod
    def _causal_lm(model: Any) -> Any:
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def _forward_hidden(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lm = self._causal_lm(model)
        out = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def _head(self, model: Any) -> Any:
        """The model's own LM head module (its bias and adapters included); see :func:`refuse_rescaled_logits`."""
        return self._causal_lm(model).get_output_embeddings()

    # ------------------------------------------------------------------ the run
    def train(self, *, resume: bool | str = False) -> dict[str, Any]:
        """Run to ``max_steps`` (from the last checkpoint when ``resume``); return a summary.

        ``resume="auto"``: from the last checkpoint if there is one, else from the start (what the CLI does after a
        torchrun restart). Resuming drops the lines of ``metrics.jsonl`` after the checkpoint's step, which the
        interrupted run wrote and this one writes again."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.atrain(resume=resume))
        raise ConfigError("GRPOTrainer.train() was called inside a running event loop; await trainer.atrain()")

    async def atrain(self, *, resume: bool | str = False) -> dict[str, Any]:
        cfg = self.config
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is None and resume != "auto":
                raise ConfigError(f"--resume: no checkpoint in {str(self.run_dir / 'checkpoints')!r}; "
                                  "start without --resume")
            if ckpt is not None:
                self.load_checkpoint(ckpt)
            if self.dist.is_main:
                keep_rows_through_step(self.run_dir / "metrics.jsonl", self.step)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
            self._open_trackers()
        evals: dict[str, Any] = {}
        if self.evaluator is not None and cfg.eval_before and self.step == 0:
            evals["before"] = await self.evaluator(self, "before")
        display = self._display()
        with display as live:
            while self.step < cfg.max_steps:
                metrics = await self.astep()
                if live is not None:
                    live.update(self._task, advance=1, info=_short(metrics))
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
                if self.evaluator is not None and cfg.eval_every and self.step % cfg.eval_every == 0 \
                        and self.step < cfg.max_steps:
                    await self.evaluator(self, f"step-{self.step}")
        self.save_checkpoint()
        if self.evaluator is not None and cfg.eval_after:
            evals["after"] = await self.evaluator(self, "after")
        self._close_trackers()
        return {"steps": self.step, "run_dir": str(self.run_dir), "last": self.history[-1] if self.history else {},
                "evals": evals}

    def _display(self) -> Any:
        if not (self.config.progress and self.dist.is_main):
            self._task = None
            return nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("GRPO"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"))
        self._task = progress.add_task("steps", total=self.config.max_steps, completed=self.step, info="")
        return progress

    # ------------------------------------------------------------------ one step
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

    async def astep(self) -> dict[str, Any]:
        """Roll out, score, update once; returns the step's metrics (also logged)."""
        cfg = self.config
        t0 = time.perf_counter()
        step = self.step
        mine = self.dist.shard(self.draw_scenarios(step))
        self.model.eval()
        sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        self.agent.sampling = sampling
        groups = await rollout(self.agent, self.env_factory, mine, cfg.group_size,
                               concurrency=cfg.rollout_concurrency, seed=step_seed(cfg.seed, step, "rollout"),
                               progress=False) if mine else []
        t_rollout = time.perf_counter() - t0
        results = await asyncio.gather(*(self.reward.score(g) for g in groups))
        for g, res in zip(groups, results, strict=True):
            if len(res) != len(g):
                raise TrainingError(f"reward {self.reward.name!r} returned {len(res)} results for a group of "
                                    f"{len(g)}; a RewardFunction returns one result per trajectory")
        failures = dict.fromkeys((*AGENT_FAILURES, *DROP_REASONS), 0)
        for g, res in zip(groups, results, strict=True):
            for reason, n in assign_rewards(g, res, cfg.failure_reward).items():
                failures[reason] += n
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
        self.history.append(metrics)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            for tr in self._trackers:
                tr(metrics, self.step)
        return metrics

    # ------------------------------------------------------------------ advantages
    def _advantages(self, groups: Sequence[TrajectoryGroup]) -> tuple[dict[int, float], set[int]]:
        """Per trajectory id(), its advantage (GRPO); and the ids of groups with zero reward variance."""
        cfg = self.config
        rewards, gids, ids = [], [], []
        zero_var: set[int] = set()
        for gi, g in enumerate(groups):
            vals = [t.reward for t in g.trajectories if t.reward is not None]
            if not has_variance(vals, cfg.zero_variance_rtol):
                zero_var.add(gi)
            for t in g.trajectories:
                if t.reward is not None:
                    rewards.append(t.reward)
                    gids.append(gi)
                    ids.append(id(t))
        out: dict[int, float] = {}
        if not rewards:
            return out, zero_var
        r = torch.tensor(rewards, dtype=torch.float64)
        g = torch.tensor(gids)
        if cfg.scale_rewards == "batch" and self.dist.distributed:
            adv = group_advantages(r, g, "none").double()
            s, s2, n = self.dist.all_reduce_sum([float(r.sum()), float((r * r).sum()), float(r.numel())])
            var = max(0.0, (s2 - s * s / n) / max(n - 1, 1))
            scale = max(self.dist.all_gather_object(reward_scale(r)))
            adv = adv / (max(math.sqrt(var), cfg.advantage_std_floor * scale) + 1e-4)
        else:
            adv = group_advantages(r, g, cfg.scale_rewards, std_floor=cfg.advantage_std_floor)
        for i, a in zip(ids, adv.tolist(), strict=True):
            out[i] = a
        return out, zero_var

    def _samples(self, trajs: list[Trajectory], advantages: dict[int, float], groups: Sequence[TrajectoryGroup],
                 zero_var: set[int]) -> list[Sample]:
        cfg = self.config
        # a group without reward variance has advantage 0, but with beta > 0 its KL term is still part of the
        # objective, so it is only skipped (to save compute) when there is no KL term
        skipping = cfg.skip_zero_variance_groups and cfg.beta == 0
        skip = {id(t) for gi in zero_var for t in groups[gi].trajectories} if skipping else set()
        if cfg.advantage_estimator == "gae":
            skip = set()  # GAE advantages differ per turn even when a group's rewards are equal
        idx = [i for i, t in enumerate(trajs) if t.reward is not None and id(t) not in skip]
        samples = samples_from_trajectories(trajs, idx, mask_truncated=cfg.mask_truncated)
        if cfg.advantage_estimator == "gae":
            self._gae(samples, trajs)
        else:
            for s in samples:
                s.advantage = advantages[id(trajs[s.traj_index])]
        group_of = [gi for gi, g in enumerate(groups) for _ in g.trajectories]
        for s in samples:
            s.extra["group"] = group_of[s.traj_index]  # updates take whole groups (see plan_updates)
        if cfg.beta > 0:
            self._reference_logprobs(samples)
        return samples

    def _plan_updates(self, samples: list[Sample]) -> tuple[list[list[list[Sample]]], list[int], list[int]]:
        """The step's optimiser updates (per update, this process's micro-batches), with every sample's loss
        weight normalised over its own update (over all processes); the forward passes per update (the most any
        process has); the samples per update (all processes). ``([], [], [])`` when no process has samples.

        Normalising per update (not over the whole batch) keeps each update's gradient at the scale of a full
        batch's, so ``max_grad_norm`` and the learning rate mean the same with any ``gradient_accumulation_steps``."""
        cfg, m = self.config, self.config.micro_batch_size
        local_mbs = math.ceil(len(samples) / m)
        n_mb = max(self.dist.all_gather_object(local_mbs)) if self.dist.distributed else local_mbs
        if n_mb == 0:
            return [], [], []
        per_update = cfg.gradient_accumulation_steps or n_mb
        rng = np.random.default_rng(step_seed(cfg.seed, self.step, f"updates:{self.dist.rank}"))
        chunks = plan_updates(samples, math.ceil(n_mb / per_update), per_update * m, rng)
        stats = []
        for chunk in chunks:
            tokens: dict[int, int] = {}
            for s in chunk:
                tokens[s.traj_index] = tokens.get(s.traj_index, 0) + s.num_completion
            stats += [len(tokens), sum(tokens.values()), len(chunk)]
        totals = self.dist.all_reduce_sum(stats)
        budget = cfg.max_new_tokens * self.max_turns
        for u, chunk in enumerate(chunks):
            order = sorted({s.traj_index for s in chunk})
            tok = {i: sum(s.num_completion for s in chunk if s.traj_index == i) for i in order}
            w = loss_weights([tok[i] for i in order], cfg.loss_type, max_tokens=budget,
                             total_trajectories=int(totals[3 * u]), total_tokens=int(totals[3 * u + 1]))
            weight = dict(zip(order, w, strict=True))
            for s in chunk:
                s.weight = weight[s.traj_index]
        plan = [self._micro_batches(c, share=self._share_prompts()) for c in chunks]
        counts = [len(p) for p in plan]
        passes = ([max(c) for c in zip(*self.dist.all_gather_object(counts), strict=True)]
                  if self.dist.distributed else counts)
        return plan, passes, [int(totals[3 * u + 2]) for u in range(len(chunks))]

    def _micro_batches(self, samples: list[Sample], share: bool = False) -> list[list[Sample]]:
        """Micro-batches of at most ``micro_batch_size`` samples. With ``share``, samples are ordered by their
        prompt tokens, so each micro-batch holds prompts with the longest common prefixes (the pack's system
        message shared by all, more where episodes drew the same opening line; see training/prefix.py); else by
        length."""
        m = self.config.micro_batch_size
        key = (lambda s: s.input_ids[:s.completion_start]) if share else (lambda s: len(s.input_ids))
        ordered = sorted(samples, key=lambda s: (key(s), s.traj_index, s.turn_index))  # ties: a fixed order
        return [ordered[i:i + m] for i in range(0, len(ordered), m)]

    def _share_prompts(self) -> bool:
        """Whether the update forwards a prompt shared by several samples once (see training/prefix.py)."""
        cfg = self.config
        return (self.share_prompts and self.fsdp is None and not cfg.gradient_checkpointing
                and cfg.advantage_estimator == "grpo")

    def _collate(self, mb: list[Sample]) -> Any:
        if self._share_prompts() and len(mb) > 1 and common_prefix_len(mb) >= MIN_SHARED_PREFIX:
            return collate_shared_prefix(mb, self._pad_id(), self.device)
        return collate(mb, self._pad_id(), self.device)

    def _pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @torch.no_grad()
    def _reference_logprobs(self, samples: list[Sample]) -> None:
        weight_ctx = self.model.disable_adapter() if self.is_lora else nullcontext()
        ref = self.model if self.is_lora else self.ref_model
        with weight_ctx:
            for mb in self._micro_batches(samples):
                b = collate(mb, self._pad_id(), self.device)
                hidden = self._forward_hidden(ref, b.input_ids, b.attention_mask)
                lp, _ = token_logprobs(hidden[b.rows, b.positions], self._head(ref), b.targets,
                                       temperature=self.config.temperature, chunk_size=self.config.logprob_chunk_size)
                lp = lp.float().cpu().tolist()
                k = 0
                for s in mb:
                    s.ref_logprobs = lp[k:k + s.num_completion]
                    k += s.num_completion

    @torch.no_grad()
    def _gae(self, samples: list[Sample], trajs: list[Trajectory]) -> None:
        cfg = self.config
        assert self.value_head is not None
        for mb in self._micro_batches(samples):
            b = collate(mb, self._pad_id(), self.device)
            hidden = self._forward_hidden(self.model, b.input_ids, b.attention_mask)
            v = self.value_head(hidden[torch.arange(len(mb), device=self.device), b.value_positions].float())
            for s, val in zip(mb, v.squeeze(-1).tolist(), strict=True):
                s.value = val
        by_traj: dict[int, list[Sample]] = {}
        for s in samples:
            by_traj.setdefault(s.traj_index, []).append(s)
        for i, turns in by_traj.items():
            turns.sort(key=lambda s: s.turn_index)
            rewards = [0.0] * len(turns)
            rewards[-1] = float(trajs[i].reward)
            adv, ret = gae(rewards, [s.value for s in turns], gamma=cfg.gamma, lam=cfg.gae_lambda)
            for s, a, r in zip(turns, adv, ret, strict=True):
                s.advantage, s.ret = a, r
        if cfg.scale_rewards != "none" and samples:
            a = [s.advantage for s in samples]
            s1, s2, n = self.dist.all_reduce_sum([sum(a), sum(x * x for x in a), len(a)])
            mean = s1 / n
            std = math.sqrt(max(0.0, s2 / n - mean * mean))
            for s in samples:
                s.advantage = (s.advantage - mean) / (std + 1e-4)

    # ------------------------------------------------------------------ the update
    def _update(self, samples: list[Sample], trajs: list[Trajectory]) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        self.model.train()
        plan, passes, totals = self._plan_updates(samples)
        if not plan:  # nothing under the loss anywhere (e.g. every group had equal rewards): no update
            self.model.eval()
            return {"loss": None, "kl": None, "clip_fraction": None, "entropy": None, "mean_ratio": None,
                    "ratio/mean": None, "ratio/min": None, "ratio/max": None, "ratio/outside_clip": None,
                    "ratio/first_update_max_dev": None,
                    "grad_norm": None, "value_loss": None, "loss_tokens": 0, "optimizer_updates": 0,
                    "_time": time.perf_counter() - t0}
        if self.fsdp is not None:
            self.fsdp.shard()
        sums = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "entropy": 0.0, "tokens": 0.0, "weighted_ratio": 0.0,
                "value_loss": 0.0, "value_rows": 0.0, "ratio_outside": 0.0}
        # raw (unclipped) ratio extremes; the first update's deviation from 1 checks engine vs trainer log-probs
        ratio_min, ratio_max, first_dev = math.inf, -math.inf, 0.0
        grad_norms: list[float] = []
        updates = 0
        head_weight = None
        for _ in range(cfg.num_iterations):
            for u, mbs in enumerate(plan):
                # None, not zeros: the first backward then stores its gradient without an extra buffer
                self.optimizer.zero_grad(set_to_none=True)
                if self.value_optimizer is not None:
                    self.value_optimizer.zero_grad(set_to_none=True)
                n_samples = totals[u]  # this update's samples over all processes (the value loss's mean)
                for j in range(passes[u]):  # every process runs the same number of passes per update
                    if j >= len(mbs):
                        if self.fsdp is not None:  # every process must join every FSDP collective
                            self.fsdp.idle_pass(cfg.temperature, cfg.logprob_chunk_size)
                        continue
                    b = self._collate(mbs[j])
                    hidden, logp, ent = self._policy_logprobs(b)
                    per_token, clipped = clipped_surrogate(
                        logp, b.old_logprobs, b.advantages, epsilon=cfg.epsilon, epsilon_high=cfg.clip_high,
                        level=cfg.importance_sampling_level, seq_index=b.rows)
                    if cfg.beta > 0:
                        kl = k3_kl(logp, b.ref_logprobs)
                        per_token = per_token + cfg.beta * kl
                        sums["kl"] += float(kl.detach().sum())
                    loss = (per_token * b.weights).sum()
                    if self.value_head is not None and b.returns is not None:
                        rows = torch.arange(b.input_ids.shape[0], device=self.device)
                        v = self.value_head(hidden[rows, b.value_positions].detach().float()).squeeze(-1)
                        vloss = ((v - b.returns) ** 2).sum() / max(n_samples, 1)
                        loss = loss + vloss
                        sums["value_loss"] += float(vloss.detach()) * n_samples
                        sums["value_rows"] += len(rows)
                    loss.backward()
                    n = int(b.targets.numel())
                    sums["loss"] += float(loss.detach())
                    sums["clipped"] += float(clipped.float().sum())
                    sums["entropy"] += float(ent.sum()) if ent is not None else 0.0
                    sums["tokens"] += n
                    ratio = importance_ratio(logp.detach(), b.old_logprobs, level=cfg.importance_sampling_level,
                                             seq_index=b.rows)
                    sums["weighted_ratio"] += float(ratio.sum())
                    sums["ratio_outside"] += float(((ratio < 1 - cfg.epsilon) | (ratio > 1 + cfg.clip_high)).sum())
                    if ratio.numel():
                        ratio_min, ratio_max = min(ratio_min, float(ratio.min())), max(ratio_max, float(ratio.max()))
                        if updates == 0:
                            first_dev = max(first_dev, float((ratio - 1).abs().max()))
                self.dist.all_reduce_gradients(self.params)
                if self.value_head is not None:
                    self.dist.all_reduce_gradients(self.value_head.parameters())
                grad_norms.append(self.dist.clip_grad_norm(self.params, cfg.max_grad_norm))
                self.optimizer.step()
                if self.value_optimizer is not None:
                    self.value_optimizer.step()
                updates += 1
        self.model.eval()
        del head_weight
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout
        self.chat_model.engine.clear_prefix_cache()  # its cached prompt-prefix keys/values used the old weights
        if self.fsdp is not None:
            self.fsdp.gather()  # whole weights again for the next rollout
        totals = self.dist.all_reduce_sum(list(sums.values()))
        s = dict(zip(sums.keys(), totals, strict=True))
        tok = max(s["tokens"], 1.0)
        if self.dist.distributed:
            ends = self.dist.all_gather_object((ratio_min, ratio_max, first_dev))
            ratio_min, ratio_max = min(e[0] for e in ends), max(e[1] for e in ends)
            first_dev = max(e[2] for e in ends)
        return {
            "ratio/mean": s["weighted_ratio"] / tok, "ratio/min": ratio_min, "ratio/max": ratio_max,
            "ratio/outside_clip": s["ratio_outside"] / tok, "ratio/first_update_max_dev": first_dev,
            "loss": s["loss"] / max(updates, 1),  # each update's loss is a mean over its own tokens
            "kl": s["kl"] / tok if cfg.beta > 0 else None,
            "clip_fraction": s["clipped"] / tok,
            "entropy": s["entropy"] / tok,
            "mean_ratio": s["weighted_ratio"] / tok,
            "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "value_loss": (s["value_loss"] / max(s["value_rows"], 1)) if self.value_head is not None else None,
            "loss_tokens": int(s["tokens"] / max(cfg.num_iterations, 1)),
            "optimizer_updates": updates,
            "_time": time.perf_counter() - t0,
        }

    def _policy_logprobs(self, b: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's hidden states, log-probs of the loss tokens and entropies for a collated batch."""
        cfg = self.config
        if self.fsdp is not None:
            return self.fsdp.forward(b, cfg.temperature, cfg.logprob_chunk_size)
        if isinstance(b, PrefixBatch):
            hidden = shared_prefix_hidden(self._causal_lm(self.model).base_model, b)
        else:
            hidden = self._forward_hidden(self.model, b.input_ids, b.attention_mask)
        logp, ent = token_logprobs(hidden[b.rows, b.positions], self._head(self.model), b.targets,
                                   temperature=cfg.temperature, chunk_size=cfg.logprob_chunk_size, with_entropy=True)
        return hidden, logp, ent

    # ------------------------------------------------------------------ metrics
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
            "step": step + 1, "time": time.time(), "reward": mean, "reward_std": std,
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
        m["peak_rss_mb"] = _peak_rss_mb()  # this process's high-water mark so far (host memory)
        if torch.cuda.is_available() and self.device.type == "cuda":
            m["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return m

    # ------------------------------------------------------------------ trackers
    def _open_trackers(self) -> None:
        self._trackers = []
        for name in self.config.report_to:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as e:
                    raise ConfigError("report_to: tensorboard needs the tracking extra: "
                                      "pip install 'stateset-agents[tracking]'") from e
                writer = SummaryWriter(str(self.run_dir / "tensorboard"))
                self._trackers.append(lambda m, s, w=writer: [w.add_scalar(k, v, s) for k, v in m.items()
                                                              if isinstance(v, (int, float)) and k != "time"])
            elif name == "wandb":
                try:
                    import wandb
                except ImportError as e:
                    raise ConfigError("report_to: wandb needs the tracking extra: "
                                      "pip install 'stateset-agents[tracking]'") from e
                run = wandb.init(config=self.config.model_dump(mode="json"), dir=str(self.run_dir))
                self._trackers.append(lambda m, s, r=run: r.log(
                    {k: v for k, v in m.items() if isinstance(v, (int, float))}, step=s))

    def _close_trackers(self) -> None:
        self._trackers = []

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (main process only); keep the newest ``keep_checkpoints``.

        With several processes, first check that they all hold bit-identical trainable weights (their SHA-256
        digests are recorded in ``trainer_state.json`` under ``replicas``)."""
        replicas = None
        if self.dist.distributed and self.fsdp is None:
            replicas = self.dist.replica_digests((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
            if len(set(replicas)) > 1:
                raise TrainingError(f"step {self.step}: the processes hold different weights (digests {replicas}); "
                                    "data-parallel replicas must stay identical - this is a bug, please report it")
        full = self.fsdp.full_state(self.optimizer) if self.fsdp is not None else None  # collective
        self.dist.barrier()
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        from safetensors.torch import save_file

        dest = self.run_dir / "checkpoints" / f"step-{self.step}"

        def write(tmp: Path) -> None:
            if self.is_lora:
                self.model.save_pretrained(tmp)
            else:
                self.model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": full[0]} if full else {}))
                self.tokenizer.save_pretrained(tmp)
            if full is not None:
                from .fsdp import optimizer_state_to_files

                ot, om = optimizer_state_to_files(full[1])
            else:
                ot, om = optimizer_tensors(self.optimizer)
            save_file(ot, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(om), encoding="utf-8")
            if self.value_head is not None and self.value_optimizer is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                          str(tmp / "value_head.safetensors"))
                vt, vm = optimizer_tensors(self.value_optimizer)
                save_file(vt, str(tmp / "value_optimizer.safetensors"))
                (tmp / "value_optimizer.json").write_text(json.dumps(vm), encoding="utf-8")
            rt, rm = rng_tensors()
            save_file(rt, str(tmp / "rng.safetensors"))
            (tmp / "config.yaml").write_text(self.config.to_yaml(), encoding="utf-8")
            state = {"step": self.step, "scheduler": self.scheduler.state_dict(), "rng": rm,
                     "is_lora": self.is_lora, "format": "stateset_agents.grpo", "version": 1,
                     "world_size": self.dist.world_size, "replicas": replicas, "fsdp": self.fsdp is not None}
            (tmp / "trainer_state.json").write_text(json.dumps(state, default=_json_default), encoding="utf-8")

        save_atomically(dest, write)
        olds = sorted((p for p in dest.parent.iterdir() if p.is_dir() and p.name.startswith("step-")
                       and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        for p in olds[:-self.config.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
        self.dist.barrier()
        return dest

    def load_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Restore weights, optimiser, scheduler, RNG states and the step from a checkpoint folder."""
        from safetensors.torch import load_file

        path = Path(path)
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise ConfigError(f"{str(path)!r} is not a checkpoint (no trainer_state.json)")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state.get("is_lora") != self.is_lora:
            raise ConfigError(f"checkpoint {str(path)!r} has is_lora={state.get('is_lora')} but this run has "
                              f"use_lora={self.is_lora}; resume with the same config")
        if state.get("fsdp", False) and self.fsdp is None:
            raise ConfigError(f"checkpoint {str(path)!r} was written with fsdp: true (optimiser state by parameter "
                              "name); resume it with fsdp: true")
        if self.is_lora:
            from peft import set_peft_model_state_dict

            weights = load_file(str(path / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.model, weights)
        else:
            from safetensors import safe_open

            files = sorted(path.glob("model*.safetensors"))
            if not files:
                raise ConfigError(f"checkpoint {str(path)!r} has no model*.safetensors")
            sd = {}
            for f in files:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                        sd[k] = h.get_tensor(k)
            if self.fsdp is not None:
                from .fsdp import optimizer_state_from_files

                self.fsdp.load_full_state(sd, self.optimizer, optimizer_state_from_files(
                    load_file(str(path / "optimizer.safetensors")),
                    json.loads((path / "optimizer.json").read_text(encoding="utf-8"))))
            else:
                missing, unexpected = self.model.load_state_dict(sd, strict=False)
                bad = [k for k in missing if "lm_head" not in k]
                if bad or unexpected:
                    raise ConfigError(f"checkpoint {str(path)!r} does not match the model: missing {bad[:5]}, "
                                      f"unexpected {unexpected[:5]}")
        if self.fsdp is None:
            load_optimizer(self.optimizer, load_file(str(path / "optimizer.safetensors")),
                           json.loads((path / "optimizer.json").read_text(encoding="utf-8")))
        if self.value_head is not None and self.value_optimizer is not None:
            self.value_head.load_state_dict(load_file(str(path / "value_head.safetensors")))
            load_optimizer(self.value_optimizer, load_file(str(path / "value_optimizer.safetensors")),
                           json.loads((path / "value_optimizer.json").read_text(encoding="utf-8")))
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
        self.step = int(state["step"])
        if self.fsdp is None:
            self.dist.broadcast_parameters(self.params)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _short(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return (f"reward {f(m.get('reward'))}  success {f(m.get('success_rate'))}  kl {f(m.get('kl'))}  "
            f"clip {f(m.get('clip_fraction'))}  {m.get('new_tokens_per_s') or 0:.0f} tok/s")
