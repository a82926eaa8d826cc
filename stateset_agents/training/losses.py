"""The GRPO math as small pure tensor functions, each checkable against its paper.

- :func:`group_advantages`: DeepSeekMath GRPO (Shao et al. 2024, arXiv 2402.03300) eq. for outcome supervision,
  ``A_i = (r_i - mean(r_group)) / std(r_group)``, with the Dr. GRPO option of not dividing by the std
  (Liu et al. 2025, arXiv 2503.20783) and the batch-std option; the std has a floor relative to the rewards' scale
  (:func:`reward_scale`), and :func:`has_variance` says whether a group carries any signal.
- :func:`token_logprobs`: ``log softmax(head(h) / T)[token]`` computed over chunks of tokens, each chunk
  recomputed in the backward pass, so the full-vocabulary logits of the whole batch never exist at once.
- :func:`clipped_surrogate`: PPO's clipped objective with DAPO's asymmetric clip (Yu et al. 2025,
  arXiv 2503.14476), at token level or GSPO's sequence level (Zheng et al. 2025, arXiv 2507.18071).
- :func:`k3_kl`: Schulman's k3 estimator of KL(pi || pi_ref), as in DeepSeekMath.
- :func:`loss_weights`: the three normalisations (grpo, dr_grpo, dapo) as per-token weights, so a loss summed over
  micro-batches (and processes) equals the loss computed on the whole batch at once.
- :func:`gae`: generalised advantage estimation (Schulman et al. 2015, arXiv 1506.02438) over agent turns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "clipped_surrogate",
    "entropy_from_hidden",
    "gae",
    "group_advantages",
    "has_variance",
    "importance_ratio",
    "k3_kl",
    "loss_weights",
    "reward_scale",
    "token_logprobs",
]

ScaleRewards = Literal["group", "batch", "none"]
LossType = Literal["grpo", "dr_grpo", "dapo"]
Head = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""The LM head: the model's own output module (``get_output_embeddings()``), or a bare ``[V, H]`` weight."""


def reward_scale(rewards: torch.Tensor) -> float:
    """``max(1, max |r|)``: what the relative thresholds (:func:`has_variance`, the std floor) are relative to."""
    return max(1.0, float(rewards.abs().max())) if rewards.numel() else 1.0


def has_variance(rewards: Sequence[float], rtol: float) -> bool:
    """Whether a group's rewards differ by more than ``rtol`` x :func:`reward_scale` (max - min); one reward: no."""
    if len(rewards) < 2:
        return False
    return max(rewards) - min(rewards) > rtol * reward_scale(torch.tensor(list(rewards), dtype=torch.float64))


def group_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, scale: ScaleRewards = "group",
                     eps: float = 1e-4, std_floor: float = 0.0) -> torch.Tensor:
    """Group-relative advantages for a flat batch.

    ``rewards[i]`` is trajectory ``i``'s reward and ``group_ids[i]`` its group. Each reward minus its group's mean,
    divided by the group's standard deviation (``scale="group"``), by the whole batch's (``"batch"``), or by
    nothing (``"none"``, Dr. GRPO). Standard deviations are the unbiased sample std (``torch.std``), as in TRL,
    raised to at least ``std_floor`` x :func:`reward_scale` of the same rewards, plus ``eps``: without the floor, a
    group whose rewards differ only by noise (1e-6) would get advantages of about +-1. A group of one has
    advantage 0.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal 1-D")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale={scale!r} is not one of 'group', 'batch', 'none'")
    rewards = rewards.double()
    adv = torch.zeros_like(rewards)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        r = rewards[idx]
        centred = r - r.mean()
        if scale == "group":
            centred = centred / (_floored_std(r, std_floor) + eps)
        adv[idx] = centred
    if scale == "batch":
        adv = adv / (_floored_std(rewards, std_floor) + eps)
    return adv.float()


def _floored_std(r: torch.Tensor, std_floor: float) -> float:
    std = float(r.std()) if r.numel() > 1 else 0.0
    return max(std, std_floor * reward_scale(r))


def _chunk_logprobs(hidden: torch.Tensor, head: Head, targets: torch.Tensor, temperature: float,
                    with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (hidden @ head.t() if isinstance(head, torch.Tensor) else head(hidden)).float() / temperature
    logz = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    if not with_entropy:
        return picked, torch.zeros_like(picked)
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return picked, entropy


def token_logprobs(hidden: torch.Tensor, weight: Head, targets: torch.Tensor, *, temperature: float = 1.0,
                   chunk_size: int = 1024, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of ``targets`` under ``softmax(head(hidden) / temperature)``, chunked.

    ``hidden``: ``[N, H]`` final hidden states of the positions that predict ``targets`` (``[N]``); ``weight``: the LM
    head, the model's own output module (so a bias or adapters on it count), or a bare ``[V, H]`` weight (then
    ``hidden @ weight.T``). A model whose forward changes the head's output (soft-capping, scaling) is refused by
    the trainer, since these would not be the log-probs it samples from. The ``[chunk, V]`` logits of one chunk exist at a time, and when gradients are needed each chunk
    runs under activation checkpointing, so the backward pass recomputes them instead of keeping all ``N x V``.
    Also returns the entropy of each position's distribution when ``with_entropy`` (for metrics; no gradient).
    """
    if hidden.dim() != 2 or targets.dim() != 1 or hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden {tuple(hidden.shape)} must be [N, H] and targets {tuple(targets.shape)} [N]")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 (log-probs of greedy decoding are not defined)")
    outs, ents = [], []
    params = [weight] if isinstance(weight, torch.Tensor) else list(getattr(weight, "parameters", list)())
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in params))
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if grad:
            lp, ent = checkpoint(_chunk_logprobs, h, weight, t, temperature, with_entropy, use_reentrant=False)
            ents.append(ent.detach())
        else:
            lp, ent = _chunk_logprobs(h, weight, t, temperature, with_entropy)
            ents.append(ent)
        outs.append(lp)
    if not outs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(outs), (torch.cat(ents) if with_entropy else None)


def entropy_from_hidden(hidden: torch.Tensor, weight: Head, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each row's next-token distribution (no gradient); for metrics."""
    with torch.no_grad():
        _, ent = token_logprobs(hidden, weight, torch.zeros(hidden.shape[0], dtype=torch.long,
                                                            device=hidden.device),
                                temperature=temperature, with_entropy=True)
    return ent


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor, *, level: str = "token",
                     seq_index: torch.Tensor | None = None) -> torch.Tensor:
    """The per-token importance ratio, unclipped: ``exp(logp - old_logp)`` (``level="token"``), or GSPO's
    ``exp(mean over the sequence's tokens of (logp - old_logp))`` given to each of its tokens (``"sequence"``)."""
    log_ratio = logp - old_logp
    if level == "token":
        return torch.exp(log_ratio)
    if level != "sequence":
        raise ValueError(f"level={level!r} is not 'token' or 'sequence'")
    if seq_index is None:
        raise ValueError("level='sequence' needs seq_index (the sequence of every token)")
    n = int(seq_index.max().item()) + 1 if seq_index.numel() else 0
    sums = torch.zeros(n, dtype=log_ratio.dtype, device=log_ratio.device).index_add(0, seq_index, log_ratio)
    counts = torch.zeros(n, dtype=log_ratio.dtype, device=log_ratio.device).index_add(
        0, seq_index, torch.ones_like(log_ratio))
    seq_log_ratio = sums / counts.clamp(min=1)
    # GSPO: one length-normalised ratio per sequence; its gradient reaches every token's log-prob equally.
    return torch.exp(seq_log_ratio[seq_index])


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *,
                      epsilon: float = 0.2, epsilon_high: float | None = None, level: str = "token",
                      seq_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO loss ``-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A)`` and whether each token was clipped.

    All inputs are flat over the tokens under the loss (``[N]``). ``level="token"``: ``rho = exp(logp - old_logp)``
    per token. ``level="sequence"`` (GSPO): ``rho`` is one number per sequence,
    ``exp(mean over the sequence's tokens of (logp - old_logp))``, given to each of its tokens; ``seq_index[i]`` says
    which sequence token ``i`` belongs to. A token counts as clipped when the clipped term is the one chosen and it
    differs from the unclipped one (the gradient through it is zero).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = importance_ratio(logp, old_logp, level=level, seq_index=seq_index)
    unclipped = ratio * advantages
    clipped_ratio = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)
    clipped = clipped_ratio * advantages
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped) & (clipped_ratio != ratio)
    return loss, was_clipped


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def loss_weights(tokens_per_trajectory: Sequence[int], loss_type: LossType, *, max_tokens: int | None = None,
                 total_trajectories: int | None = None, total_tokens: int | None = None) -> list[float]:
    """The weight every token of each trajectory gets, so that ``loss = sum(weight * per_token_loss)``.

    - ``grpo`` (DeepSeekMath): mean over a trajectory's tokens, then mean over trajectories:
      ``1 / (|o_i| * G)``.
    - ``dr_grpo`` (Dr. GRPO): a constant denominator instead of each length: ``1 / (max_tokens * G)``, where
      ``max_tokens`` is the generation budget of one trajectory.
    - ``dapo`` (DAPO): every token counts the same: ``1 / sum(|o_i|)``.

    ``G`` and ``sum(|o_i|)`` default to this list's count and sum; pass the totals of the whole optimiser batch
    (across micro-batches and processes) to normalise a part of it exactly as the whole.
    """
    g = total_trajectories if total_trajectories is not None else len(tokens_per_trajectory)
    total = total_tokens if total_tokens is not None else sum(tokens_per_trajectory)
    if g <= 0:
        return []
    if loss_type == "grpo":
        return [1.0 / (n * g) if n else 0.0 for n in tokens_per_trajectory]
    if loss_type == "dr_grpo":
        if not max_tokens or max_tokens <= 0:
            raise ValueError("loss_type 'dr_grpo' needs max_tokens (the generation budget of one trajectory)")
        return [1.0 / (max_tokens * g)] * len(tokens_per_trajectory)
    if loss_type == "dapo":
        return [1.0 / total if total else 0.0] * len(tokens_per_trajectory)
    raise ValueError(f"loss_type={loss_type!r} is not one of 'grpo', 'dr_grpo', 'dapo'")


def gae(rewards: Sequence[float], values: Sequence[float], *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[list[float], list[float]]:
    """GAE over one trajectory's agent turns. Returns (advantages, returns).

    ``rewards[t]`` is the reward after turn ``t`` (the trajectory's reward on the last turn, 0 before) and
    ``values[t]`` the value estimate at turn ``t``; the value after the last turn is 0 (the episode ended).
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = sum_l (gamma lam)^l delta_{t+l}``, ``returns_t = A_t + V_t``.
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards but {len(values)} values; one of each per turn")
    adv = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_v = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + v for a, v in zip(adv, values, strict=True)]
