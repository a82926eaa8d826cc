"""GRPO's optimisation of one step's samples: optimiser updates of whole groups (each normalised over its own
tokens), micro-batches, the clipped surrogate with KL, the raw importance-ratio statistics; and the reference
log-probs. A mixin of :class:`~.trainer.GRPOTrainer` (it reads the trainer's config, policy and estimator)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from ..types import Trajectory
from .batch import Sample, collate, pack_turns, unpack_prox
from .grpo_mismatch import MismatchCorrection
from .loop import step_seed
from .losses import importance_ratio, k3_kl, loss_weights, token_logprobs
from .policy import sample_temperature

__all__ = ["GRPOUpdate", "plan_updates"]

EMPTY_UPDATE = ("loss", "kl", "clip_fraction", "entropy", "mean_ratio", "ratio/mean", "ratio/min", "ratio/max",
                "ratio/outside_clip", "ratio/first_update_max_dev", "grad_norm", "value_loss")
"""The update's metrics that are None when nothing was under the loss."""


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


class GRPOUpdate(MismatchCorrection):
    """The update half of :class:`~.trainer.GRPOTrainer`."""

    config: Any
    policy: Any
    estimator: Any

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
        return self.share_prompts and self.policy.can_share_prefix() and cfg.advantage_estimator == "grpo"

    def _collate(self, mb: list[Sample]) -> Any:
        return self.policy.collate(mb, share=self._share_prompts())

    @torch.no_grad()
    def _reference_logprobs(self, samples: list[Sample]) -> None:
        """Log-probs of the loss tokens under the reference policy (adapters disabled, or the frozen copy), at the
        temperature the tokens were sampled with."""
        weight_ctx = self.model.disable_adapter() if self.is_lora else nullcontext()
        ref = self.model if self.is_lora else self.ref_model
        with weight_ctx:
            for mb in self._micro_batches(samples):
                b = collate(mb, self.policy.pad_id, self.device)
                lm = ref.get_base_model() if hasattr(ref, "get_base_model") else ref
                hidden = lm.base_model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                       use_cache=False).last_hidden_state
                lp, _ = token_logprobs(hidden[b.rows, b.positions], lm.get_output_embeddings(), b.targets,
                                       temperature=sample_temperature(mb), chunk_size=self.config.logprob_chunk_size)
                lp = lp.float().cpu().tolist()
                k = 0
                for s in mb:
                    s.ref_logprobs = lp[k:k + s.num_completion]
                    k += s.num_completion

    # ------------------------------------------------------------------ the update
    def _update(self, samples: list[Sample], trajs: list[Trajectory]) -> dict[str, Any]:
        cfg = self.config
        t0 = time.perf_counter()
        self.policy.before_update()  # the decode snapshot and caches go: they are rebuilt from the new weights
        self.model.train()
        if self.fsdp is not None:
            self.fsdp.shard()
        scored, dropped = samples, 0
        if cfg.mismatch_mask is not None:  # the mask decides before the loss is normalised over what is left
            self._forward_prox(samples)
            samples, dropped = self._mask_turns(samples)
        samples = self._pack(samples)
        plan, passes, totals = self._plan_updates(samples)
        if not plan:  # nothing under the loss anywhere (e.g. every group had equal rewards): no update
            self.model.eval()
            if self.fsdp is not None:
                self.fsdp.gather()
            return {**dict.fromkeys(EMPTY_UPDATE), "loss_tokens": 0, "optimizer_updates": 0, "train_sequences": 0,
                    **self._mismatch_metrics(scored, dropped), "_time": time.perf_counter() - t0}
        if len(plan) > 1 and cfg.mismatch_mask is None:  # later updates of a pass see changed weights
            self._forward_prox(samples)
        sums = dict.fromkeys(("loss", "kl", "clipped", "entropy", "tokens", "weighted_ratio", "value_loss",
                              "value_rows", "ratio_outside"), 0.0)
        # raw (unclipped) ratio extremes; the first update's deviation from 1 checks engine vs trainer log-probs
        ends = {"min": math.inf, "max": -math.inf, "first_dev": 0.0}
        grad_norms: list[float] = []
        updates = 0
        for _ in range(cfg.num_iterations):
            for u, mbs in enumerate(plan):
                # None, not zeros: the first backward then stores its gradient without an extra buffer
                self.optimizer.zero_grad(set_to_none=True)
                self.estimator.zero_grad()
                for j in range(passes[u]):  # every process runs the same number of passes per update
                    if j < len(mbs):
                        self._micro_step(mbs[j], totals[u], updates, sums, ends)
                    elif self.fsdp is not None:  # every process must join every FSDP collective
                        self.fsdp.idle_pass(self.policy.sampling.temperature, cfg.logprob_chunk_size)
                self.dist.all_reduce_gradients(self.params)
                grad_norms.append(self.dist.clip_grad_norm(self.params, cfg.max_grad_norm))
                self.optimizer.step()
                self.estimator.step()
                updates += 1
        self.model.eval()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients before the next rollout
        self.policy.after_update()  # the engine's cached prefixes used the old weights; FSDP: whole weights again
        unpack_prox(samples)  # the mismatch statistics are per turn
        return {**self._update_metrics(sums, ends, grad_norms, updates), **self._mismatch_metrics(scored, dropped),
                "train_sequences": len(samples), "_time": time.perf_counter() - t0}

    def _pack(self, samples: list[Sample]) -> list[Sample]:
        """``pack_turns``: each trajectory's turns as one sequence where GRPO's loss is the same either way (one
        advantage per trajectory, token-level ratios); the turns themselves otherwise."""
        cfg = self.config
        if not cfg.pack_turns or self.estimator.per_turn or cfg.importance_sampling_level != "token":
            return samples
        return pack_turns(sorted(samples, key=lambda s: (s.traj_index, s.turn_index)), per_token=True)

    def _micro_step(self, mb: list[Sample], n_samples: int, updates: int, sums: dict[str, float],
                    ends: dict[str, float]) -> None:
        """Forward and backward one micro-batch (its loss already normalised over its update); add to the sums.

        ``n_samples``: the update's samples over all processes (the value loss's mean)."""
        cfg = self.config
        b = self._collate(mb)
        hidden, logp, ent = self._policy_logprobs(b, sample_temperature(mb))
        prox = self._prox_tensor(mb, logp, updates)
        per_token, clipped, old = self._pg_terms(logp, b, prox)
        if cfg.beta > 0:
            kl = k3_kl(logp, b.ref_logprobs)
            per_token = per_token + cfg.beta * kl
            sums["kl"] += float(kl.detach().sum())
        loss = (per_token * b.weights).sum()
        vloss = self.estimator.value_loss(hidden, b, n_samples)
        if vloss is not None:
            loss = loss + vloss
            sums["value_loss"] += float(vloss.detach()) * n_samples
            sums["value_rows"] += b.input_ids.shape[0]
        loss.backward()
        sums["loss"] += float(loss.detach())
        sums["clipped"] += float(clipped.float().sum())
        sums["entropy"] += float(ent.sum()) if ent is not None else 0.0
        sums["tokens"] += int(b.targets.numel())
        ratio = importance_ratio(logp.detach(), old, level=cfg.importance_sampling_level, seq_index=b.rows)
        sums["weighted_ratio"] += float(ratio.sum())
        sums["ratio_outside"] += float(((ratio < 1 - cfg.epsilon) | (ratio > 1 + cfg.clip_high)).sum())
        if ratio.numel():
            ends["min"], ends["max"] = min(ends["min"], float(ratio.min())), max(ends["max"], float(ratio.max()))
            if updates == 0:
                ends["first_dev"] = max(ends["first_dev"], float((ratio - 1).abs().max()))

    def _update_metrics(self, sums: dict[str, float], ends: dict[str, float], grad_norms: list[float],
                        updates: int) -> dict[str, Any]:
        cfg = self.config
        totals = self.dist.all_reduce_sum(list(sums.values()))
        s = dict(zip(sums.keys(), totals, strict=True))
        tok = max(s["tokens"], 1.0)
        if self.dist.distributed:
            gathered = self.dist.all_gather_object((ends["min"], ends["max"], ends["first_dev"]))
            ends = {"min": min(e[0] for e in gathered), "max": max(e[1] for e in gathered),
                    "first_dev": max(e[2] for e in gathered)}
        return {
            "ratio/mean": s["weighted_ratio"] / tok, "ratio/min": ends["min"], "ratio/max": ends["max"],
            "ratio/outside_clip": s["ratio_outside"] / tok, "ratio/first_update_max_dev": ends["first_dev"],
            "loss": s["loss"] / max(updates, 1),  # each update's loss is a mean over its own tokens
            "kl": s["kl"] / tok if cfg.beta > 0 else None,
            "clip_fraction": s["clipped"] / tok,
            "entropy": s["entropy"] / tok,
            "mean_ratio": s["weighted_ratio"] / tok,
            "grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "value_loss": (s["value_loss"] / max(s["value_rows"], 1)) if self.estimator.per_turn else None,
            "loss_tokens": int(s["tokens"] / max(cfg.num_iterations, 1)),
            "optimizer_updates": updates,
        }

    def _policy_logprobs(self, b: Any, temperature: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The policy's hidden states, log-probs of the loss tokens and entropies for a collated batch, at the
        temperature its tokens were sampled with (default: the policy's sampling temperature)."""
        return self.policy.logprobs(b, self.policy.sampling.temperature if temperature is None else temperature)
