"""From scored trajectories to training sequences with a loss mask.

Every agent turn of a trajectory is one training sequence: the exact ``prompt_ids`` the model saw at that turn
followed by the ``completion_ids`` it sampled (both recorded by the rollout). Only the completion tokens are under
the loss; the prompt (system, user, tool messages and the agent's own earlier turns, re-templated) is context.
Each turn carries its trajectory's advantage (GRPO) or its own (GAE), the rollout's log-probs of its tokens as the
old policy's, and the per-token loss weight of its trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..types import Trajectory

__all__ = ["Sample", "collate", "pack_turns", "samples_from_trajectories", "unpack_prox"]


@dataclass
class Sample:
    """One agent turn as a training sequence."""

    input_ids: list[int]
    completion_start: int
    """Index in ``input_ids`` of the first completion token."""
    old_logprobs: list[float] | None
    """Log-probs of the completion tokens under the sampling policy (None for a demonstration)."""
    traj_index: int
    turn_index: int
    truncated: bool
    """The turn hit ``max_new_tokens``."""
    temperature: float | None = None
    """The temperature its completion was sampled at (``Completion.sampling``); None for a demonstration."""
    advantage: float = 0.0
    weight: float = 0.0
    """Loss weight of each of its tokens (see losses.loss_weights)."""
    ref_logprobs: list[float] | None = None
    prox_logprobs: list[float] | None = None
    """The trainer's own log-probs of the completion tokens before this step's first update (pi_old; GRPO's
    mismatch correction, see training/grpo_mismatch.py); ``old_logprobs`` are the sampler's (mu)."""
    value: float | None = None
    ret: float | None = None
    extra: dict = field(default_factory=dict)
    spans: list[tuple[int, int]] | None = None
    """Several agent turns packed into one sequence (:func:`pack_turns`): the ``[start, end)`` ranges of
    ``input_ids`` under the loss. None: one turn, ``[completion_start, len(input_ids))``."""

    def loss_spans(self) -> list[tuple[int, int]]:
        return self.spans if self.spans is not None else [(self.completion_start, len(self.input_ids))]

    @property
    def num_completion(self) -> int:
        return sum(b - a for a, b in self.loss_spans())


def _joinable(last: Sample, s: Sample) -> bool:
    """``s`` continues ``last``: the same trajectory, and its prompt starts with all of ``last``'s tokens."""
    return (last.traj_index == s.traj_index and len(s.input_ids) > len(last.input_ids)
            and s.input_ids[:len(last.input_ids)] == last.input_ids and s.completion_start >= len(last.input_ids))


def _same_policy_data(last: Sample, s: Sample) -> bool:
    """Both turns carry per-token data of the same kinds and one advantage, weight and temperature (GRPO's
    per-trajectory quantities), and no per-turn value estimate (GAE)."""
    kinds = all((getattr(last, f) is None) == (getattr(s, f) is None)
                for f in ("old_logprobs", "ref_logprobs", "prox_logprobs"))
    return (kinds and last.advantage == s.advantage and last.weight == s.weight and last.temperature == s.temperature
            and last.value is None and s.value is None)


def pack_turns(samples: Sequence[Sample], *, per_token: bool = False) -> list[Sample]:
    """Merge each trajectory's consecutive agent turns into one sequence wherever a turn's tokens (prompt and
    completion) are a prefix of the next turn's prompt: the conversation once, with every agent turn under the loss.

    Causal attention gives every token the same context either way, so the loss and its gradient are those of the
    separate turns (up to rounding), for a fraction of the tokens. A turn whose prompt does not extend the previous
    one (the context budget condensed older turns, the template re-renders history, or a sampled completion
    re-tokenises differently) starts a new sequence.

    Without ``per_token`` the samples must be demonstrations (no log-probs: SFT). With it (GRPO), the turns' rollout,
    reference and pi_old log-probs are concatenated in token order; turns merge only when they share one advantage,
    weight and temperature and carry no per-turn value (GAE's advantages differ per turn: not packed). Each packed
    sample lists its turns in ``extra["parts"]`` (see :func:`unpack_prox`).
    """
    out: list[Sample] = []
    for s in samples:
        has_policy_data = s.old_logprobs is not None or s.ref_logprobs is not None
        if has_policy_data and not per_token:
            raise ValueError("pack_turns is for demonstrations (no log-probs); pass per_token=True for rollouts")
        last = out[-1] if out else None
        if last is not None and _joinable(last, s) and (not per_token or _same_policy_data(last, s)):
            last.spans = [*last.loss_spans(), (s.completion_start, len(s.input_ids))]
            last.input_ids = list(s.input_ids)
            last.truncated = last.truncated or s.truncated
            for f in ("old_logprobs", "ref_logprobs", "prox_logprobs"):
                if getattr(last, f) is not None:
                    setattr(last, f, [*getattr(last, f), *getattr(s, f)])
            if per_token:
                last.extra["parts"].append(s)
            continue
        merged = Sample(input_ids=list(s.input_ids), completion_start=s.completion_start,
                        old_logprobs=_copy(s.old_logprobs), traj_index=s.traj_index, turn_index=s.turn_index,
                        truncated=s.truncated, temperature=s.temperature, weight=s.weight, advantage=s.advantage,
                        ref_logprobs=_copy(s.ref_logprobs), prox_logprobs=_copy(s.prox_logprobs), value=s.value,
                        ret=s.ret, extra=dict(s.extra), spans=list(s.spans) if s.spans is not None else None)
        if per_token:
            merged.extra["parts"] = [s]
        out.append(merged)
    return out


def _copy(xs: list[float] | None) -> list[float] | None:
    return list(xs) if xs is not None else None


def unpack_prox(packed: Sequence[Sample]) -> None:
    """Hand each packed sample's pi_old log-probs (``prox_logprobs``, computed on the packed sequence) back to the
    turns it was made of (``extra["parts"]``), so per-turn statistics read them as if nothing had been packed."""
    for p in packed:
        parts = p.extra.get("parts")
        if not parts or p.prox_logprobs is None:
            continue
        k = 0
        for s in parts:
            s.prox_logprobs = p.prox_logprobs[k:k + s.num_completion]
            k += s.num_completion


def samples_from_trajectories(trajectories: Sequence[Trajectory], indices: Sequence[int] | None = None,
                              *, mask_truncated: bool = False, need_logprobs: bool = True) -> list[Sample]:
    """The agent turns of the given trajectories (all by default) that have token data and at least one token.

    Raises ValueError when a completion has no token data (a remote model's rollout cannot be trained on here);
    ``need_logprobs=False`` (SFT) needs only the token ids.
    """
    out = []
    for i in (indices if indices is not None else range(len(trajectories))):
        t = trajectories[i]
        for k, c in enumerate(t.completions):
            if c.prompt_ids is None or c.completion_ids is None or (need_logprobs and c.logprobs is None):
                raise ValueError(f"turn {k} of a trajectory of scenario {t.scenario_id!r} has no token data "
                                 f"(model {c.model!r}); training needs a local model whose completions carry "
                                 "prompt_ids, completion_ids" + (" and logprobs" if need_logprobs else ""))
            if c.sampling is not None and (c.sampling.json_schema is not None or c.sampling.grammar):
                raise ValueError(f"trajectory {t.scenario_id!r} turn {k}: the completion was decoded under a "
                                 "grammar (SamplingParams.json_schema or .grammar, e.g. constrain_tool_calls); "
                                 "the trainer's forward does not apply the "
                                 "grammar, so its log-probs would not match: train on unconstrained rollouts")
            if not c.completion_ids:
                continue
            truncated = c.finish_reason == "length"
            if mask_truncated and truncated:
                continue
            out.append(Sample(input_ids=list(c.prompt_ids) + list(c.completion_ids),
                              completion_start=len(c.prompt_ids),
                              old_logprobs=list(c.logprobs) if c.logprobs is not None else None,
                              traj_index=i, turn_index=k, truncated=truncated,
                              temperature=c.sampling.temperature if c.sampling is not None else None))
    return out


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    """For every loss token, its row (sequence) in the batch."""
    positions: torch.Tensor
    """For every loss token, the position whose hidden state predicts it (its own index - 1)."""
    targets: torch.Tensor
    old_logprobs: torch.Tensor | None
    """None when a sample has none (demonstrations)."""
    advantages: torch.Tensor
    weights: torch.Tensor
    ref_logprobs: torch.Tensor | None
    value_positions: torch.Tensor
    """Per row: the last prompt position (where the value head reads the state)."""
    returns: torch.Tensor | None


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device | str = "cpu") -> Batch:
    """Right-pad the sequences into one batch and flatten the loss tokens."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    rows, positions, targets, old, adv, w, ref = [], [], [], [], [], [], []
    for r, s in enumerate(samples):
        n = len(s.input_ids)
        ids[r, :n] = torch.tensor(s.input_ids)
        mask[r, :n] = 1
        for j, pos in enumerate(p for a, b in s.loss_spans() for p in range(a, b)):
            rows.append(r)
            positions.append(pos - 1)
            targets.append(s.input_ids[pos])
            if s.old_logprobs is not None:
                old.append(s.old_logprobs[j])
            adv.append(s.advantage)
            w.append(s.weight)
            if s.ref_logprobs is not None:
                ref.append(s.ref_logprobs[j])
    has_ref = all(s.ref_logprobs is not None for s in samples)
    has_old = all(s.old_logprobs is not None for s in samples)
    has_ret = all(s.ret is not None for s in samples)
    return Batch(
        input_ids=ids.to(device), attention_mask=mask.to(device),
        rows=torch.tensor(rows, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        targets=torch.tensor(targets, dtype=torch.long, device=device),
        old_logprobs=torch.tensor(old, dtype=torch.float32, device=device) if has_old else None,
        advantages=torch.tensor(adv, dtype=torch.float32, device=device),
        weights=torch.tensor(w, dtype=torch.float32, device=device),
        ref_logprobs=torch.tensor(ref, dtype=torch.float32, device=device) if has_ref else None,
        value_positions=torch.tensor([s.completion_start - 1 for s in samples], dtype=torch.long, device=device),
        returns=torch.tensor([s.ret for s in samples], dtype=torch.float32, device=device) if has_ret else None,
    )
