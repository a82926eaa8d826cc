"""rollout(): run many episodes concurrently and collect TrajectoryGroups with token data.

Every scenario is played ``group_size`` times; all episodes run at once under ``concurrency`` (a semaphore),
so a local HFChatModel decodes their turns together in its batching engine. Each episode gets its own env from
``env_factory`` and a seed derived from ``seed``; each agent turn samples with a seed derived from the episode
seed and the turn, so with a seeded local model a rollout is reproducible. A failing episode (model error,
simulator error, an action the env rejects) is kept with its ``error`` and never crashes the batch.

Each failure also gets a reason code in ``Trajectory.failure`` (:data:`FAILURE_REASONS`). Those in
:data:`AGENT_FAILURES` are caused by the agent's own output: an empty reply, a reply longer than the env takes,
a conversation its replies made too long for the model's context. A trainer scores those (the policy should be
pushed away from them); the others (the user simulator, the model backend or the env failing) say nothing about
the policy's choices.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .agents import MultiTurnAgent
from .envs import ConversationEnv
from .envs.conversation import MAX_ACTION_CHARS
from .errors import ContextOverflowError
from .types import Completion, Trajectory, TrajectoryGroup

__all__ = ["AGENT_FAILURES", "FAILURE_REASONS", "episode_seed", "rollout", "run_episode"]

#: failures caused by the agent's own output
AGENT_FAILURES = ("empty_reply", "action_too_long", "context_overflow")
#: every reason code a rollout gives a failed episode: the agent's, then the user simulator (``info["error"]``),
#: the model backend (any other error from the agent's turn) and the env (an error from reset or step)
FAILURE_REASONS = (*AGENT_FAILURES, "user_simulator", "model_error", "env_error")


class AgentOutputError(ValueError):
    """The agent's reply cannot be sent: ``reason`` is one of :data:`AGENT_FAILURES`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def episode_seed(seed: int, scenario_id: str, index: int) -> int:
    """A stable 31-bit seed for episode ``index`` of ``scenario_id`` under the rollout seed."""
    digest = hashlib.sha256(f"{seed}:{scenario_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


async def run_episode(agent: MultiTurnAgent, env: ConversationEnv, scenario_id: str, seed: int,
                      on_tokens: Callable[[int], None] | None = None) -> Trajectory:
    """Play one episode; always returns a Trajectory (with ``error`` set if something failed)."""
    traj = Trajectory(scenario_id=scenario_id, env_id=getattr(env.spec, "id", None), seed=seed)
    completions: list[Completion] = []
    info: dict[str, Any] = {}
    try:
        _, info = await env.areset(seed=seed, options={"scenario": scenario_id})
        tools = info["tools"]
        for turn in range(10_000):
            sampling = agent.sampling.model_copy(update={"seed": (seed * 1009 + turn) & 0x7FFFFFFF})
            try:
                completion = await agent.act(info["messages"], tools, sampling=sampling)
            except ContextOverflowError:
                traj.failure = "context_overflow"
                raise
            except Exception:
                traj.failure = "model_error"
                raise
            completions.append(completion)
            if on_tokens is not None:
                on_tokens(len(completion.completion_ids or []) or completion.usage.get("completion_tokens", 0))
            action = agent.action_text(completion)
            _check_reply(action, turn, completion.finish_reason)
            traj.failure = "env_error"  # until the env has taken the action
            _, reward, terminated, truncated, info = await env.astep(action)
            traj.failure = None
            if terminated or truncated:
                traj.env_reward = reward
                traj.terminated, traj.truncated = terminated, truncated
                traj.outcome = info.get("outcome")
                traj.error = info.get("error")
                traj.failure = "user_simulator" if traj.error else None
                break
    except Exception as e:  # the episode is data: keep what happened and why it stopped
        traj.error = f"{type(e).__name__}: {e}"
        traj.failure = e.reason if isinstance(e, AgentOutputError) else (traj.failure or "env_error")
    traj.messages = list(info.get("messages", []))
    traj.completions = completions
    return traj


def _check_reply(action: str, turn: int, finish_reason: str | None) -> None:
    """Raise :class:`AgentOutputError` for a reply the env would refuse (empty, or over MAX_ACTION_CHARS)."""
    if not action.strip():
        raise AgentOutputError("empty_reply", f"the agent produced an empty message at turn {turn + 1} "
                                f"(finish_reason={finish_reason!r})")
    if len(action) > MAX_ACTION_CHARS:
        raise AgentOutputError("action_too_long", f"the agent's message at turn {turn + 1} has {len(action)} "
                                f"characters; the env takes at most {MAX_ACTION_CHARS}")


async def rollout(agent: MultiTurnAgent, env_factory: Callable[[], ConversationEnv], scenarios: Sequence[str],
                  group_size: int, *, concurrency: int = 32, seed: int = 0,
                  progress: bool = True) -> list[TrajectoryGroup]:
    """Run every scenario ``group_size`` times concurrently; return one TrajectoryGroup per scenario, in order."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency} must be >= 1")
    sem = asyncio.Semaphore(concurrency)
    total = len(scenarios) * group_size
    tokens = 0
    start = time.perf_counter()
    bar = Progress(TextColumn("rollout"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tps]}"),
                   TimeElapsedColumn(), disable=not progress, transient=True)
    task = bar.add_task("episodes", total=total, tps="")

    def count(n: int) -> None:
        nonlocal tokens
        tokens += n
        bar.update(task, tps=f"{tokens / max(time.perf_counter() - start, 1e-9):.0f} new tok/s")

    async def one(sid: str, k: int) -> Trajectory:
        async with sem:
            env = env_factory()
            try:
                return await run_episode(agent, env, sid, episode_seed(seed, sid, k), on_tokens=count)
            finally:
                env.close()
                bar.advance(task)

    with bar:
        results = await asyncio.gather(*[one(sid, k) for sid in scenarios for k in range(group_size)])
    return [TrajectoryGroup(scenario_id=sid, trajectories=list(results[i * group_size:(i + 1) * group_size]))
            for i, sid in enumerate(scenarios)]
