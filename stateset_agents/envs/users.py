"""User simulators: who the agent talks to.

A simulator implements ``async reply(ctx: UserContext) -> UserTurn``. ``ctx.agent_text is None`` asks
for the opening message. All randomness must come from ``ctx.np_random`` (the env's generator), so a
seeded episode replays exactly.

- :class:`ScriptedUser`: deterministic rules driven by the scenario.
- :class:`LLMUser`: any ChatModel playing the persona, with a replay cache.

A simulator that fails raises :class:`UserSimulatorError`; the env then ends the episode with the error
in ``info`` (never a made-up reply).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ModelError
from ..models.base import ChatModel, SamplingParams
from ..types import Message
from .pack import EnvPack, Scenario

__all__ = ["LLMUser", "ReplayCache", "ScriptedUser", "UserContext", "UserSimulator", "UserSimulatorError",
           "UserTurn"]


class UserSimulatorError(ModelError):
    """The user simulator could not produce a reply (e.g. its model endpoint is down)."""


@dataclass
class UserTurn:
    text: str
    done: bool = False
    reason: str | None = None
    """Why the user ended: ``goal_met``, ``gave_up`` or ``stop_marker``."""


@dataclass
class UserContext:
    pack: EnvPack
    scenario: Scenario
    messages: list[Message]
    """The conversation so far, system prompt and tool messages included."""
    agent_text: str | None
    """What the agent just said to the user (tool calls removed); None for the opening."""
    np_random: np.random.Generator
    seed: int | None
    goal_met: bool
    """Whether the scenario's goal holds now (checked by code on the database and told facts)."""
    progress: bool
    """Whether the agent made progress since the user's last turn: a tool call that worked, a
    required fact told for the first time, or a database change."""
    memory: dict[str, Any] = field(default_factory=dict)
    """Scratch space for one episode; the env gives a fresh dict at every reset."""


@runtime_checkable
class UserSimulator(Protocol):
    async def reply(self, ctx: UserContext) -> UserTurn: ...


_MOOD_LINES: dict[str, dict[str, list[str]]] = {
    "calm": {"pushback": ["Sorry, I'm not sure that answers my question.", "Could you help me with my actual issue?"],
             "give_up": ["I don't think we're getting anywhere. I'll try again another time."]},
    "frustrated": {"pushback": ["That doesn't help me at all.", "I've already explained this. Can you actually fix it?"],
                   "give_up": ["Forget it. This is a waste of my time."]},
    "angry": {"pushback": ["This is ridiculous. I want this sorted out NOW.", "Stop giving me the runaround!"],
              "give_up": ["Unbelievable. I'm done with this company."]},
    "confused": {"pushback": ["Sorry, I don't understand. What do I need to do?", "I'm lost. Can you explain?"],
                 "give_up": ["I'm too confused, I'll ask someone else. Bye."]},
    "anxious": {"pushback": ["I'm really worried about this. Can you please help?", "Is this going to be okay?"],
                "give_up": ["I'm too stressed about this. I'll call instead."]},
    "cheerful": {"pushback": ["Haha, okay, but what about my question?", "Sure, but can we get back to my issue?"],
                 "give_up": ["No worries, I'll figure it out some other way. Bye!"]},
    "skeptical": {"pushback": ["I'm not convinced. What are you actually going to do?", "That sounds like a script."],
                  "give_up": ["As I expected. Not worth my time."]},
    "rushed": {"pushback": ["I don't have time for this. Just fix it please.", "Quickly, please. What's the answer?"],
               "give_up": ["I have to go. Never mind."]},
}

_GENERIC_ANSWERS = ["I'm not sure, I just want this sorted out.", "I don't know. Does it matter?",
                    "I don't have that information, sorry."]

_PROPOSAL_RE = re.compile(
    r"\b(would you like|shall i|should i|do you want|want me to|can i go ahead|may i|i can (?:offer|issue|process|"
    r"send|schedule|cancel|refund|reset|book|arrange|set up|upgrade|change|update|escalate)|i could|how about|"
    r"would it help|is it ok|is that ok|okay if i|i'd like to offer|i recommend|i suggest|i'll go ahead)\b")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _has_any(text: str, phrases: list[str]) -> str | None:
    return next((p for p in phrases if _norm(p) in text), None)


def _pick(rng: np.random.Generator, items: list[str]) -> str:
    return items[int(rng.integers(len(items)))]


class ScriptedUser:
    """A deterministic, rule-based user driven by the scenario.

    Each reply, in order: if the goal holds, thank and end (``goal_met``). Otherwise reveal every hidden
    fact the agent asked for (by the fact's ``asked_by`` phrases); answer a proposal (refuse if it names a
    ``refuses`` phrase, agree if it names an ``accepts`` phrase); answer a question it has no fact for with
    a generic answer; else push back as the mood dictates. A turn without progress (see
    :attr:`UserContext.progress`, plus a fact revealed or a proposal accepted) counts as unhelpful; after
    ``patience`` unhelpful turns in a row the user gives up (``gave_up``).
    """

    async def reply(self, ctx: UserContext) -> UserTurn:
        user = ctx.scenario.user
        if ctx.agent_text is None:
            return UserTurn(_pick(ctx.np_random, user.opening))
        if ctx.goal_met:
            return UserTurn(user.thanks, done=True, reason="goal_met")
        text = _norm(ctx.agent_text)
        revealed: set[str] = ctx.memory.setdefault("revealed", set())
        parts: list[str] = []
        progress = ctx.progress
        for fact in user.facts:
            if _has_any(text, fact.asked_by):
                parts.append(fact.reply if fact.id not in revealed else f"As I said, {fact.reply}")
                progress = progress or fact.id not in revealed
                revealed.add(fact.id)
        if _PROPOSAL_RE.search(text):
            refused = _has_any(text, user.refuses)
            if refused:
                parts.append(f"No, I don't want {refused}.")
            elif _has_any(text, user.accepts):
                parts.append("Yes, please go ahead.")
                progress = True
        if not parts and "?" in text:
            parts.append(_pick(ctx.np_random, _GENERIC_ANSWERS))
        lines = _MOOD_LINES[user.mood]
        unhelpful = 0 if progress else ctx.memory.get("unhelpful", 0) + 1
        ctx.memory["unhelpful"] = unhelpful
        if unhelpful >= user.patience:
            return UserTurn(user.give_up or _pick(ctx.np_random, lines["give_up"]), done=True, reason="gave_up")
        if not parts:
            parts.append(_pick(ctx.np_random, lines["pushback"] + user.pushback))
        return UserTurn(" ".join(parts))


class ReplayCache:
    """Replies keyed by (model, scenario, seed, conversation); optionally persisted as JSON lines.

    A seeded LLMUser episode that hits the cache replays exactly, whatever the model would sample now.
    Thread- and process-safe appends (one ``write`` per line, file opened in append mode).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.exists():
            with open(self.path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        row = json.loads(line)
                        self._data[row["key"]] = row["reply"]

    @staticmethod
    def key(model_id: str, scenario_id: str, seed: int, messages: list[dict[str, Any]]) -> str:
        blob = json.dumps([model_id, scenario_id, seed, messages], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        out = self._data.get(key)
        if out is None:
            self.misses += 1
        else:
            self.hits += 1
        return out

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._data[key] = reply
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                line = json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n"
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)

    def __len__(self) -> int:
        return len(self._data)


_LLM_USER_PROMPT = """You are role-playing a customer talking to a {domain} agent. Stay in character.
Who you are: {name}. {persona}
Your mood: {mood}.
Your goal: {goal}
Things you know (say each one only when the agent asks for it):
{facts}
Write only your next message to the agent, one to three sentences. When your goal has been met, or you
decide to give up, write your final message and end it with {stop}."""


class LLMUser:
    """A ChatModel playing the scenario's persona.

    The opening message is the scenario's (drawn with ``np_random``), so the first observation does not
    depend on the model. Each later reply is sampled with a seed drawn from ``np_random`` and stored in
    the replay cache under (model_id, scenario, episode seed, conversation): replaying a seeded episode
    returns the same replies. Episodes without a seed are not cached. The reply ends the episode when it
    contains ``stop_marker`` (removed from the text). A model error raises :class:`UserSimulatorError`.
    """

    def __init__(self, model: ChatModel, *, model_id: str | None = None, temperature: float = 0.7,
                 max_new_tokens: int = 96, stop_marker: str = "[DONE]", cache: ReplayCache | None = None) -> None:
        self.model = model
        self.model_id = model_id or type(model).__name__
        self.sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens)
        self.stop_marker = stop_marker
        self.cache = cache if cache is not None else ReplayCache()

    def prompt(self, ctx: UserContext) -> list[Message]:
        s = ctx.scenario
        facts = "\n".join(f"- {f.value} ({f.id})" for f in s.user.facts) or "- (nothing special)"
        system = _LLM_USER_PROMPT.format(domain=ctx.pack.domain.replace("_", " "), name=s.user.name,
                                         persona=s.user.persona, mood=s.user.mood, goal=s.goal.description,
                                         facts=facts, stop=self.stop_marker)
        # The simulator sees the conversation from the customer's side: agent -> "user", customer -> "assistant".
        flipped = [Message(role="system", content=system)]
        for m in ctx.messages:
            if m.role == "assistant" and m.content:
                flipped.append(Message(role="user", content=m.content))
            elif m.role == "user":
                flipped.append(Message(role="assistant", content=m.content))
        return flipped

    async def reply(self, ctx: UserContext) -> UserTurn:
        if ctx.agent_text is None:
            return UserTurn(_pick(ctx.np_random, ctx.scenario.user.opening))
        messages = self.prompt(ctx)
        call_seed = int(ctx.np_random.integers(2**31 - 1))
        key = None
        text = None
        if ctx.seed is not None:
            key = ReplayCache.key(self.model_id, ctx.scenario.id, ctx.seed, [m.to_openai() for m in messages])
            text = self.cache.get(key)
        if text is None:
            try:
                completion = await self.model.chat(messages, sampling=self.sampling.model_copy(update={"seed": call_seed}))
            except Exception as e:  # any backend failure ends the episode with this error recorded
                raise UserSimulatorError(f"user simulator model {self.model_id!r} failed: "
                                         f"{type(e).__name__}: {e}") from e
            text = completion.text
            if key is not None:
                self.cache.put(key, text)
        done = self.stop_marker in text
        text = text.replace(self.stop_marker, "").strip()
        if not text and not done:
            raise UserSimulatorError(f"user simulator model {self.model_id!r} returned an empty reply")
        return UserTurn(text or "(ends the conversation)", done=done, reason="stop_marker" if done else None)
