"""Fakes for the Training-Free GRPO tests, injected through the real interfaces (Embedder, ChatModel, reward)."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable

import numpy as np

from stateset_agents.types import Completion, Message, RewardResult


class BagOfWords:
    """A deterministic sentence embedder: hashed word counts, L2-normalised (same words -> similarity 1)."""

    dim = 256

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-9)


def stage_of(messages: list[Message]) -> str:
    """Which learner stage a request is (from the original prompt, also on a retry)."""
    prompt = messages[1].content
    if '{"summary"' in prompt:
        return "summary"
    if '{"advantage"' in prompt:
        return "group"
    if '"sources"' in prompt:
        return "consolidate"
    raise AssertionError(f"unknown learner prompt: {prompt[:200]}")


class ScriptedLearner:
    """A ChatModel that answers learner prompts with ``respond(stage, messages) -> text`` and records every call.

    The completion carries token ids so that the loopback HTTP server can report usage.
    """

    def __init__(self, respond: Callable[[str, list[Message]], str]) -> None:
        self.respond = respond
        self.calls: list[tuple[str, list[Message]]] = []
        self.name = "scripted-learner"

    async def chat(self, messages, *, sampling, tools=None) -> Completion:
        stage = stage_of(messages)
        self.calls.append((stage, list(messages)))
        text = self.respond(stage, list(messages))
        return Completion(text=text, prompt_ids=[0] * 3, completion_ids=[0] * 2, logprobs=[0.0, 0.0])


def answer(obj) -> str:
    return json.dumps(obj)


class RankReward:
    """A programmatic reward for mechanics: the i-th trajectory of a group scores i / 10 (rewards always differ)."""

    name = "rank"

    async def score(self, group) -> list[RewardResult]:
        return [RewardResult(value=i / 10, components={"rank": i / 10}) for i in range(len(group))]


class ConstantGroupReward:
    """Every trajectory scores 1.0: no group has a reward spread, so nothing is learned."""

    name = "flat"

    async def score(self, group) -> list[RewardResult]:
        return [RewardResult(value=1.0, components={"flat": 1.0}) for _ in group.trajectories]
