"""Interop with TRL reward functions.

TRL's GRPOTrainer calls reward functions as ``fn(prompts, completions, **kwargs) -> list[float | None]``, where
``prompts``/``completions`` are strings (standard format) or lists of ``{"role", "content"}`` dicts
(conversational format), and dataset columns arrive as keyword lists. ``None`` means "not applicable".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable
from typing import Any

from ..types import Message, RewardResult, Trajectory, TrajectoryGroup
from .base import RewardFunction

__all__ = ["as_trl_reward", "from_trl_reward"]


def _as_messages(x: Any, role: str) -> list[Message]:
    if isinstance(x, str):
        return [Message(role=role, content=x)]  # type: ignore[arg-type]
    return [Message(role=m["role"], content=m.get("content") or "") for m in x]


def _run_sync(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside a loop: run on a fresh one
        return pool.submit(asyncio.run, coro).result()


def as_trl_reward(fn: RewardFunction) -> Callable[..., list[float | None]]:
    """Our reward as a TRL reward function. Completions sharing a prompt form one TrajectoryGroup (so
    group-aware rewards such as RULER see the group); the scenario id comes from a ``scenario_id`` dataset column
    when there is one. Returns one float or None per completion, in order."""

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts and {len(completions)} completions; TRL passes one "
                             "prompt per completion")
        sids = kwargs.get("scenario_id") or ["trl"] * len(prompts)
        keys: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            keys.setdefault(f"{sids[i]}\x00{p!r}", []).append(i)
        out: list[float | None] = [None] * len(prompts)

        async def run() -> None:
            for idxs in keys.values():
                trajs = [Trajectory(scenario_id=str(sids[i]),
                                    messages=_as_messages(prompts[i], "user") + _as_messages(completions[i], "assistant"))
                         for i in idxs]
                results = await fn.score(TrajectoryGroup(scenario_id=str(sids[idxs[0]]), trajectories=trajs))
                for i, r in zip(idxs, results, strict=True):
                    out[i] = r.value

        _run_sync(run())
        return out

    reward.__name__ = getattr(fn, "name", "stateset_reward")
    return reward


class _FromTrl:
    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn, self.name = fn, name

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        prompts, completions, idx = [], [], []
        out: list[RewardResult] = []
        for i, t in enumerate(group.trajectories):
            out.append(RewardResult(value=None, error=f"trajectory failed: {t.error}"))
            if t.error is not None:
                continue
            last = max((j for j, m in enumerate(t.messages) if m.role == "assistant"), default=None)
            if last is None:
                out[i] = RewardResult(value=None, explanation="no agent message")
                continue
            prompts.append([m.to_openai() for m in t.messages[:last]])
            completions.append([t.messages[last].to_openai()])
            idx.append(i)
        if idx:
            sids = [group.scenario_id] * len(idx)
            values = self.fn(prompts=prompts, completions=completions, scenario_id=sids)
            if inspect.isawaitable(values):
                values = await values
            values = list(values)
            if len(values) != len(idx):
                raise ValueError(f"TRL reward {self.name!r} returned {len(values)} values for {len(idx)} completions")
            for i, v in zip(idx, values, strict=True):
                val = None if v is None else float(v)
                out[i] = RewardResult(value=val, components={self.name: val})
        return out


def from_trl_reward(fn: Callable[..., Any], name: str | None = None) -> RewardFunction:
    """A TRL-style function as our RewardFunction. Each trajectory becomes one conversational prompt (every message
    before the agent's last message) and one completion (that message); ``scenario_id`` is passed as a keyword
    list. Sync and async functions both work; ``None`` values stay ``None``."""
    return _FromTrl(fn, name or getattr(fn, "__name__", "trl_reward"))
