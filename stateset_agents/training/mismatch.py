"""Training-inference mismatch: measure it, then correct it with truncated importance sampling.

When rollouts are sampled by a model that is not numerically the trained one (int8 decode weights here; bf16 or
fp8 inference engines on GPUs), the tokens come from a behaviour policy ``mu`` while the loss is written for the
trained policy ``pi_old``. PPO's ratio ``pi_theta / mu`` then mixes the policy change with the numerical gap,
and the gradient is biased. Following the mismatch literature (Yao et al. 2025, "Your efficient RL framework
secretly brings you off-policy RL training"; Liu et al. 2025 on sequence-level masking):

1. **measure** the raw gap every step, before any correction: per token ``log(pi_old / mu)`` (``pi_old`` from the
   trainer's own forward with no grad, ``mu`` the engine's sampled log-probs), its mean and max absolute value,
   the fraction of tokens whose ratio ``pi_old / mu`` is outside ``[0.8, 1.25]``, and the same per agent turn
   (:func:`mismatch_stats`);
2. **correct** with token-level truncated importance sampling: each token's loss is weighted by
   ``min(pi_old / mu, cap)`` (detached; default cap 2), and the PPO ratio is taken against ``pi_old``, not ``mu``
   (:func:`tis_weights`);
3. optionally **mask sequences** whose geometric-mean ratio ``exp(mean log(pi_old / mu))`` falls outside
   ``[1/s, s]`` (:func:`sequence_mask`): such a sequence is too far off-policy for a reweighted token to help.

These are pure tensor functions over flat per-token tensors; the trainer calls them (``rollout_precision``).
"""

from __future__ import annotations

import torch

__all__ = ["mismatch_stats", "sequence_mask", "tis_weights"]

IN_RANGE = (0.8, 1.25)
"""The ratio band reported as "close": tokens outside it are counted in ``mismatch/outside``."""


def mismatch_stats(train_logp: torch.Tensor, behaviour_logp: torch.Tensor, mask: torch.Tensor,
                   turn_ids: torch.Tensor | None = None, prefix: str = "mismatch") -> dict[str, float]:
    """Raw mismatch statistics over the tokens where ``mask`` is true.

    ``train_logp``: the trainer's log-probs of the sampled tokens (no grad, before any update this step);
    ``behaviour_logp``: the sampler's; ``turn_ids`` (optional): the agent-turn index of each token, for per-turn
    statistics (``<prefix>/turn<k>/mean_abs``, ``.../max_abs``, ``.../outside``).
    """
    m = mask.bool()
    d = (train_logp - behaviour_logp).detach()[m].double()
    if d.numel() == 0:
        return {}
    ratio = d.exp()
    lo, hi = IN_RANGE
    out = {
        f"{prefix}/mean_log_ratio": float(d.mean()),
        f"{prefix}/mean_abs_log_ratio": float(d.abs().mean()),
        f"{prefix}/max_abs_log_ratio": float(d.abs().max()),
        f"{prefix}/outside": float(((ratio < lo) | (ratio > hi)).double().mean()),
        f"{prefix}/tokens": float(d.numel()),
    }
    if turn_ids is not None:
        turns = turn_ids[m]
        for k in sorted(set(turns.tolist())):
            dk, rk = d[turns == k], ratio[turns == k]
            out[f"{prefix}/turn{k}/mean_abs"] = float(dk.abs().mean())
            out[f"{prefix}/turn{k}/max_abs"] = float(dk.abs().max())
            out[f"{prefix}/turn{k}/outside"] = float(((rk < lo) | (rk > hi)).double().mean())
    return out


def tis_weights(train_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Token-level truncated importance weights ``min(pi_old / mu, cap)``, detached (they weight the loss;
    no gradient flows through them)."""
    if cap <= 0:
        raise ValueError(f"cap={cap} must be > 0 (the literature's default is 2)")
    return torch.exp(train_logp.detach() - behaviour_logp.detach()).clamp(max=cap)


def sequence_mask(train_logp: torch.Tensor, behaviour_logp: torch.Tensor, seq_ids: torch.Tensor,
                  threshold: float) -> torch.Tensor:
    """Per-token mask (1 keep, 0 drop) that drops every token of a sequence whose geometric-mean ratio
    ``exp(mean_t log(pi_old / mu))`` is outside ``[1/threshold, threshold]``.

    ``seq_ids[i]`` names the sequence of token ``i`` (0..S-1).
    """
    if threshold <= 1:
        raise ValueError(f"threshold={threshold} must be > 1 (e.g. 2: keep sequences within a factor of 2)")
    d = (train_logp - behaviour_logp).detach().double()
    n = int(seq_ids.max()) + 1 if seq_ids.numel() else 0
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, seq_ids, d)
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, seq_ids, torch.ones_like(d))
    geo = (sums / counts.clamp(min=1)).exp()
    keep = (geo >= 1 / threshold) & (geo <= threshold)
    return keep[seq_ids].to(train_logp.dtype)
