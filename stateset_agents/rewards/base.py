"""The RewardFunction contract.

A reward function is async and group-aware::

    async def score(group: TrajectoryGroup) -> list[RewardResult]   # one result per trajectory, in order

``RewardResult(value, components, explanation, error)``: ``value=None`` means "not applicable" (for example the
trajectory failed, or a judge could not produce a valid score); it is excluded downstream and never replaced by
a made-up number. ``components`` names every part that went into ``value``.

A failed trajectory (``trajectory.error`` set) is never scored as if it worked: the built-in functions return
``value=None`` with ``error="trajectory failed: ..."`` for it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import Message, RewardResult, Trajectory, TrajectoryGroup

__all__ = ["RewardFunction", "TrajectoryReward", "agent_messages", "agent_text", "failed_result"]


@runtime_checkable
class RewardFunction(Protocol):
    name: str

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]: ...


def failed_result(t: Trajectory) -> RewardResult:
    return RewardResult(value=None, error=f"trajectory failed: {t.error}")


def agent_messages(t: Trajectory) -> list[Message]:
    """The agent's own messages (role assistant)."""
    return [m for m in t.messages if m.role == "assistant"]


def agent_text(t: Trajectory) -> str:
    """Everything the agent said to the user, tool calls removed, one message per line."""
    from ..toolcalls import TOOL_CALL_TAG, parse_message

    return "\n".join(parse_message(m.content).text if TOOL_CALL_TAG in m.content else m.content
                     for m in agent_messages(t)).strip()


class TrajectoryReward:
    """Base for rewards that score each trajectory on its own: implement ``score_one``.

    ``score_one`` returns a float, or None when the reward does not apply to this trajectory (with
    ``explain`` giving the reason where useful). Failed trajectories never reach it.
    """

    name: str = "reward"

    def score_one(self, t: Trajectory) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def explain(self, t: Trajectory, value: float | None) -> str:
        return ""

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        out = []
        for t in group.trajectories:
            if t.error is not None:
                out.append(failed_result(t))
                continue
            v = self.score_one(t)
            out.append(RewardResult(value=v, components={self.name: v}, explanation=self.explain(t, v)))
        return out
