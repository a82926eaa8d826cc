"""Rewards onto a step's trajectories, with one error policy: an episode the agent's own output ended is scored
as a failure and stays in its group; an episode that failed outside the agent, or a reward that does not apply, is
dropped and counted per reason. And where a group's reward variance comes from (outcome or shaping only)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from ..rewards.base import RewardResult, score_group
from ..rollout import AGENT_FAILURES
from ..types import TrajectoryGroup
from .losses import has_variance

__all__ = ["DROP_REASONS", "assign_rewards", "group_signal", "score_groups"]


#: why an episode gets no reward and leaves the loss: a failure outside the agent (the user simulator, the model
#: backend, the env), or a reward that did not apply (None) or failed (an error, a non-finite value)
DROP_REASONS = ("user_simulator", "model_error", "env_error", "reward_none", "reward_error")


def assign_rewards(group: TrajectoryGroup, results: Sequence[RewardResult],
                   failure_reward: float | str | None) -> dict[str, int]:
    """Set each trajectory's ``reward`` and ``components`` from the reward's ``results``; return a count per reason
    (:data:`DROP_REASONS` for those left without a reward, ``rollout.AGENT_FAILURES`` for those scored as failures).

    An episode that the agent's own output ended (an empty or overlong reply, a conversation too long for the
    context) stays in its group with ``failure_reward``: ``"group_min"`` is the lowest reward of the group's
    scored episodes (0 when there is none), so the policy is pushed away from what it did there. With
    ``failure_reward=None`` such episodes get no reward either (counted under their reason)."""
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
    if failed and failure_reward is None:
        for t in failed:
            counts[t.failure] = counts.get(t.failure, 0) + 1
    elif failed:
        scored = [t.reward for t in group.trajectories if t.reward is not None]
        value = (min(scored) if scored else 0.0) if failure_reward == "group_min" else float(failure_reward)
        for t in failed:
            t.reward = value
            counts[t.failure] = counts.get(t.failure, 0) + 1
    return counts


async def score_groups(reward: Any, groups: Sequence[TrajectoryGroup], failure_reward: float | str | None
                       ) -> tuple[list[list[RewardResult]], dict[str, int]]:
    """Score every group (concurrently, :func:`~stateset_agents.rewards.base.score_group`: a reward that raises is
    recorded on its trajectories and counted as ``reward_error``), assign the rewards; return the results and the
    counts per reason."""
    results = await asyncio.gather(*(score_group(reward, g) for g in groups))
    failures = dict.fromkeys((*AGENT_FAILURES, *DROP_REASONS), 0)
    for g, res in zip(groups, results, strict=True):
        for reason, n in assign_rewards(g, res, failure_reward).items():
            failures[reason] += n
    return list(results), failures


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
