"""GRPO's side of the training-inference mismatch (the math is in :mod:`.mismatch`): the rollout precision, the
trainer's own log-probs of the sampled tokens before the update, the sequence mask, the TIS-weighted
policy-gradient term and the ``mismatch/*`` / ``tis/*`` metrics. A mixin of :class:`~.grpo_update.GRPOUpdate`.

Three policies take part (decoupled PPO, as in verl's and slime's rollout correction): ``mu``, the sampler, whose
log-probs the rollout recorded (``Completion.logprobs``; int8 weights with ``rollout_precision: int8``);
``pi_old``, the trained weights at the start of the step, scored by the trainer's own forward with no gradient
(``Sample.prox_logprobs``); ``pi_theta``, the weights being updated. With ``tis_cap`` set, each token's loss is
``min(pi_old / mu, tis_cap) * clipped_surrogate(pi_theta / pi_old)``; with ``tis_cap: null`` it is
``clipped_surrogate(pi_theta / mu)``, so the clip range absorbs the mismatch (the trainer without correction).

``pi_old`` costs no extra forward when the step's samples form one optimiser update per pass (the default,
``gradient_accumulation_steps: null``): the first pass's forward runs on the step's starting weights, so its
log-probs, detached, are pi_old (TRL does the same). Otherwise (several updates per pass, whose later ones see
changed weights), and whenever ``mismatch_mask`` must decide before the loss is normalised, one no-grad forward
over the samples computes it first.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .batch import Sample
from .mismatch import mismatch_stats, sequence_mask, tis_weights
from .policy import sample_temperature

__all__ = ["METRIC_KEYS", "MismatchCorrection", "set_rollout_precision"]

METRIC_KEYS = ("mismatch/mean_log_ratio", "mismatch/mean_abs_log_ratio", "mismatch/max_abs_log_ratio",
               "mismatch/outside", "mismatch/tokens", "mismatch/masked_turns", "tis/mean_weight",
               "tis/capped_fraction")
"""Logged every step (None when nothing was measured or the option is off); per-turn keys are added as seen."""


def set_rollout_precision(chat_model: Any, config: Any) -> None:
    """Make the policy's engine sample at ``config.rollout_precision``; a clear error when it cannot."""
    want = config.rollout_precision
    engine = getattr(chat_model, "engine", None)
    if want in ("int8", "bf16"):
        if getattr(chat_model, "model", None) is None or not hasattr(engine, "set_precision"):
            raise ConfigError(f"rollout_precision {want!r} needs a local HFChatModel policy (its engine decodes with "
                              f"{want} weights), but the agent's model is {type(chat_model).__name__}; use "
                              "rollout_precision: fp32")
        try:
            engine.set_precision(want)
        except ValueError as e:
            raise ConfigError(f"rollout_precision {want!r} is not possible here: {e}; use rollout_precision: "
                              "fp32") from e
    elif hasattr(engine, "set_precision"):
        engine.set_precision("native")


def _store_prox(mb: list[Sample], logp: torch.Tensor) -> None:
    values = logp.detach().float().cpu().tolist()
    k = 0
    for s in mb:
        s.prox_logprobs = values[k:k + s.num_completion]
        k += s.num_completion


class MismatchCorrection:
    """pi_old, the mask, the corrected loss and the metrics (see the module docs)."""

    config: Any
    policy: Any
    dist: Any
    fsdp: Any

    # ------------------------------------------------------------------ pi_old
    def _forward_prox(self, samples: list[Sample]) -> None:
        """One no-grad forward over ``samples`` with the current weights: their ``prox_logprobs`` (pi_old)."""
        cfg = self.config
        share = self._share_prompts()  # type: ignore[attr-defined]
        mbs = self._micro_batches(samples, share=share)  # type: ignore[attr-defined]
        passes = max(self.dist.all_gather_object(len(mbs))) if self.fsdp is not None else len(mbs)
        with torch.no_grad():
            for j in range(passes):  # under FSDP every process joins every forward's collectives
                if j >= len(mbs):
                    self.fsdp.idle_forward(self.policy.sampling.temperature, cfg.logprob_chunk_size)
                    continue
                b = self.policy.collate(mbs[j], share=share)
                _, logp, _ = self._policy_logprobs(b, sample_temperature(mbs[j]))  # type: ignore[attr-defined]
                _store_prox(mbs[j], logp)

    def _prox_tensor(self, mb: list[Sample], logp: torch.Tensor, updates: int) -> torch.Tensor:
        """pi_old of a micro-batch's loss tokens: stored, or (first pass of a one-update step) this forward's."""
        if all(s.prox_logprobs is not None for s in mb):
            flat = [x for s in mb for x in s.prox_logprobs]  # type: ignore[union-attr]
            return torch.tensor(flat, dtype=torch.float32, device=logp.device)
        if updates:
            raise RuntimeError("pi_old was not computed before the first optimiser update; this is a bug")
        _store_prox(mb, logp)
        return logp.detach().float()

    # ------------------------------------------------------------------ the mask, the loss
    def _mask_turns(self, samples: list[Sample]) -> tuple[list[Sample], int]:
        """``mismatch_mask``: the samples whose geometric-mean ratio pi_old / mu is within the band, and how many
        were dropped (their pi_old must be known)."""
        if self.config.mismatch_mask is None or not samples:
            return samples, 0
        prox = torch.tensor([x for s in samples for x in s.prox_logprobs], dtype=torch.float64)  # type: ignore
        beh = torch.tensor([x for s in samples for x in s.old_logprobs], dtype=torch.float64)  # type: ignore
        seq = torch.tensor([i for i, s in enumerate(samples) for _ in range(s.num_completion)], dtype=torch.long)
        keep = sequence_mask(prox, beh, seq, self.config.mismatch_mask)
        first = torch.tensor([0] + [s.num_completion for s in samples[:-1]]).cumsum(0)
        kept = [s for s, k in zip(samples, keep[first].tolist(), strict=True) if k > 0]
        return kept, len(samples) - len(kept)

    def _pg_terms(self, logp: torch.Tensor, b: Any, prox: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
        """Per-token policy-gradient loss (TIS-weighted when ``tis_cap`` is set), whether each token was clipped,
        and the log-probs the PPO ratio was taken against."""
        from .losses import clipped_surrogate

        cfg = self.config
        old = prox if cfg.tis_cap is not None else b.old_logprobs
        per_token, clipped = clipped_surrogate(logp, old, b.advantages, epsilon=cfg.epsilon,
                                               epsilon_high=cfg.clip_high, level=cfg.importance_sampling_level,
                                               seq_index=b.rows)
        if cfg.tis_cap is not None:
            per_token = per_token * tis_weights(prox, b.old_logprobs, cfg.tis_cap)
        return per_token, clipped, old

    # ------------------------------------------------------------------ metrics
    def _mismatch_metrics(self, samples: list[Sample], dropped: int) -> dict[str, Any]:
        """The raw mismatch log(pi_old / mu) over every scored sample's tokens, before any correction, over all
        processes; TIS weight statistics; the share of turns the mask dropped."""
        cfg = self.config
        local = [(p, q, s.turn_index) for s in samples if s.prox_logprobs is not None
                 for p, q in zip(s.prox_logprobs, s.old_logprobs or [], strict=True)]
        turns_seen = sum(s.prox_logprobs is not None for s in samples)
        if self.dist.distributed:
            parts = self.dist.all_gather_object((local, turns_seen, dropped))
            local = [x for part in parts for x in part[0]]
            turns_seen, dropped = sum(p[1] for p in parts), sum(p[2] for p in parts)
        out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
        if not local:
            return out
        prox = torch.tensor([x[0] for x in local], dtype=torch.float64)
        beh = torch.tensor([x[1] for x in local], dtype=torch.float64)
        out.update(mismatch_stats(prox, beh, torch.ones_like(prox, dtype=torch.bool),
                                  torch.tensor([x[2] for x in local])))
        if cfg.mismatch_mask is not None:
            out["mismatch/masked_turns"] = dropped / max(turns_seen, 1)
        if cfg.tis_cap is not None:
            w = tis_weights(prox, beh, cfg.tis_cap)
            out["tis/mean_weight"] = float(w.mean())
            out["tis/capped_fraction"] = float((w >= cfg.tis_cap).double().mean())
        return out

