"""The RewardFunction contract.

A reward function is async and group-aware::

    async def score(group: TrajectoryGroup) -> list[RewardResult]   # one result per trajectory, in order

``RewardResult(value, components, explanation, error)``: ``value=None`` means "not applicable" (for example the
trajectory failed, or a judge could not produce a valid score); it is excluded downstream and never replaced by
a made-up number. ``components`` names every part that went into ``value``.

A failed trajectory (``trajectory.error`` set) is never scored as if it worked: the built-in functions return
``value=None`` with ``error="trajectory failed: ..."`` for it.

Every caller that scores a group (the trainers, evaluation, composition) goes through :func:`score_group`, so
one error policy holds everywhere: a reward that raises (a judge endpoint down) leaves every trajectory of the
group with ``value=None`` and an error naming the reward, recorded and never scored as 0; a reward that breaks the
contract (a wrong number of results, or a :class:`~stateset_agents.errors.ConfigError`) raises at once.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..types import Message, RewardResult, Trajectory, TrajectoryGroup

__all__ = ["RewardFunction", "TrajectoryReward", "agent_messages", "agent_text", "check_results", "failed_result",
           "score_group"]


@runtime_checkable
class RewardFunction(Protocol):
    name: str

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]: ...


def failed_result(t: Trajectory) -> RewardResult:
    return RewardResult(value=None, error=f"trajectory failed: {t.error}")


def check_results(reward: Any, group: TrajectoryGroup, results: list[RewardResult], *, what: str = "reward"
                  ) -> list[RewardResult]:
    """``results`` when there is one per trajectory of ``group``; else a :class:`ConfigError` naming the reward."""
    if len(results) != len(group):
        raise ConfigError(f"{what} {getattr(reward, 'name', reward)!r} returned {len(results)} results for a group "
                          f"of {len(group)}; a RewardFunction returns one result per trajectory")
    return results


async def score_group(reward: Any, group: TrajectoryGroup) -> list[RewardResult]:
    """``reward.score(group)`` under the one error policy (see the module docs): a reward that raises gives every
    trajectory ``RewardResult(value=None, error="NAME raised TYPE: MESSAGE")``; a wrong number of results, or a
    ``ConfigError`` from the reward, raises."""
    try:
        results = list(await reward.score(group))
    except ConfigError:
        raise
    except Exception as e:  # recorded on every trajectory and counted downstream, never scored as 0
        name = getattr(reward, "name", type(reward).__name__)
        return [RewardResult(value=None, error=f"{name} raised {type(e).__name__}: {e}") for _ in group.trajectories]
    return check_results(reward, group, results)


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
