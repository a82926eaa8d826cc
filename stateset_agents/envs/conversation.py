"""ConversationEnv: a Gymnasium environment whose actions and observations are chat messages.

An episode: ``reset`` draws (or takes) a scenario, copies its database, and returns the user's first
message. Each ``step(action)`` takes the agent's message text:

- If the text contains tool calls (see :mod:`stateset_agents.toolcalls`), they run against the
  episode's database and the observation is their results (``info["observation_role"] == "tool"``),
  one JSON object per line: ``{"name": ..., "ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``.
- Otherwise the user simulator answers and the observation is its reply (role ``user``).
- The agent ends the episode by including :data:`END_MARKER` (``[END]``) in its message.

The episode terminates when the user ends it (goal met, or gave up) or the agent does, and is truncated
after ``max_turns`` agent messages, or when the user simulator fails (the error is in ``info["error"]``).
The reward is 0 until the last step, whose reward is ``info["outcome"]["success"]`` as 0.0 or 1.0
(partial credit is in ``info["outcome"]["progress"]``; see :mod:`stateset_agents.envs.outcome`).

The core is async (``areset``/``astep``); ``reset``/``step`` run it on a private event loop and refuse to
run inside a running loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from ..errors import EpisodeError, PackError, SyncInAsyncError
from ..toolcalls import parse_message
from ..types import Message, ToolCall
from .outcome import EpisodeRecord, compute_outcome, disclosures, forbidden_statements_in, goal_reached
from .pack import EnvPack, Scenario, load_pack
from .tools import Database, ToolError, forbidden_hits, run_tool, validate_args
from .users import ScriptedUser, UserContext, UserSimulator, UserTurn

__all__ = ["END_MARKER", "MAX_ACTION_CHARS", "MAX_OBSERVATION_CHARS", "TEXT_CHARSET", "ConversationEnv"]

END_MARKER = "[END]"
MAX_ACTION_CHARS = 4096
"""Longest accepted agent message, in characters."""
MAX_OBSERVATION_CHARS = 8192
"""Longest observation; longer tool results are cut and end with "…[truncated]"."""


def _charset() -> frozenset[str]:
    ranges = [(0x20, 0x7E), (0xA0, 0xD7FF), (0xE000, 0xFFFD), (0x1F000, 0x1FAFF)]
    chars = {"\n", "\t"}
    for lo, hi in ranges:
        chars.update(chr(c) for c in range(lo, hi + 1))
    return frozenset(chars)


TEXT_CHARSET = _charset()
"""Tab, newline, printable ASCII, the rest of the Basic Multilingual Plane (accents, curly quotes, CJK)
and the emoji blocks. Characters outside it are replaced with U+FFFD in messages and observations."""


_SPACES: dict[tuple[int, int], spaces.Text] = {}


def _text_space(min_length: int, max_length: int) -> spaces.Text:
    """A Text space over TEXT_CHARSET. Building its charset tables takes ~0.1 s, so one prototype per
    shape is built and each env gets a shallow copy (shared read-only tables, its own RNG)."""
    key = (min_length, max_length)
    if key not in _SPACES:
        _SPACES[key] = spaces.Text(max_length=max_length, min_length=min_length, charset=TEXT_CHARSET)
    space = copy.copy(_SPACES[key])
    space._np_random = None  # sampled lazily from a fresh seed, like a new space
    return space


def _clean(text: str) -> str:
    return "".join(c if c in TEXT_CHARSET else "\ufffd" for c in text)


def _fit(text: str) -> str:
    text = _clean(text)
    if len(text) > MAX_OBSERVATION_CHARS:
        tail = "…[truncated]"
        text = text[: MAX_OBSERVATION_CHARS - len(tail)] + tail
    return text


class ConversationEnv(gym.Env[str, str]):
    """A multi-turn conversation with a simulated user, over a domain pack.

    Args:
        pack: a built-in pack name (``customer_service``, ``tech_support``, ``sales``), a pack folder,
            or a loaded :class:`EnvPack`.
        scenario: play only this scenario id; otherwise each ``reset`` draws one from ``split`` with
            ``self.np_random`` (or takes ``options={"scenario": id}``).
        split: ``train``, ``test`` or ``all``.
        user: ``"scripted"`` (default) or any :class:`UserSimulator` (e.g. ``LLMUser``).
        max_turns: agent messages before truncation; default from the pack.
        render_mode: ``"ansi"`` or None.
        prompt: ``"full"`` (default) opens with the pack's ``system_prompt``; ``"compact"`` with its
            ``compact_prompt`` (instructions trimmed for small models) when it has one.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, pack: str | EnvPack = "customer_service", *, scenario: str | None = None,
                 split: str = "train", user: str | UserSimulator = "scripted", max_turns: int | None = None,
                 render_mode: str | None = None, prompt: str = "full") -> None:
        if prompt not in ("full", "compact"):
            raise ValueError(f"prompt={prompt!r} is not one of 'full', 'compact'")
        self.prompt = prompt
        self.pack = pack if isinstance(pack, EnvPack) else load_pack(pack)
        if split not in ("train", "test", "all"):
            raise PackError(f"split {split!r} is not one of 'train', 'test', 'all'")
        self.split = split
        self._pool = self.pack.split(split)
        self.fixed_scenario = self.pack.scenario(scenario) if scenario is not None else None
        if not self._pool and self.fixed_scenario is None:
            raise PackError(f"pack {self.pack.name!r} has no scenarios in split {split!r}")
        if user == "scripted":
            user = ScriptedUser()
        if not isinstance(user, UserSimulator):
            raise TypeError(f"user must be 'scripted' or an object with `async reply(ctx)`, got {user!r}")
        self.user = user
        self.max_turns = max_turns if max_turns is not None else self.pack.max_turns
        if self.max_turns < 2:
            raise ValueError(f"max_turns={self.max_turns} is too small; use at least 2")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r} is not supported; use 'ansi' or None")
        self.render_mode = render_mode
        self.observation_space = _text_space(0, MAX_OBSERVATION_CHARS)
        self.action_space = _text_space(1, MAX_ACTION_CHARS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._done = False

    # ---------------------------------------------------------------- async core
    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Start an episode; returns the user's first message and info (see class docstring)."""
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"scenario"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; the only option is 'scenario'")
        if options.get("scenario") is not None:
            self.scenario: Scenario = self.pack.scenario(options["scenario"])
        elif self.fixed_scenario is not None:
            self.scenario = self.fixed_scenario
        else:
            self.scenario = self._pool[int(self.np_random.integers(len(self._pool)))]
        self._seed = seed
        self.db: Database = copy.deepcopy(self.scenario.database)
        self.messages: list[Message] = [Message(role="system", content=self.instructions())]
        self._turns = self._tool_calls = self._tool_errors = 0
        self._record = EpisodeRecord(self.pack, self.scenario)
        self._forbidden: list[str] = []
        self._progress = False
        self._memory: dict[str, Any] = {}
        self._ended_by: str | None = None
        self._error: str | None = None
        self._outcome: dict[str, Any] | None = None
        self._started, self._done = True, False
        turn = await self._ask_user(None)
        if turn is None:  # the simulator failed on the opening: nothing to play
            raise EpisodeError(f"user simulator failed to open scenario {self.scenario.id!r}: {self._error}")
        self.messages.append(Message(role="user", content=_clean(turn.text)))
        return _fit(turn.text), self._info("user")

    def instructions(self) -> str:
        """The system message an episode opens with: the pack's ``compact_prompt`` under ``prompt="compact"`` when
        it has one, else its ``system_prompt``."""
        if self.prompt == "compact" and self.pack.compact_prompt:
            return self.pack.compact_prompt
        return self.pack.system_prompt

    async def astep(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Play the agent's message; see the class docstring for what comes back."""
        if not self._started:
            raise EpisodeError("step() called before reset(); call reset() (or areset()) first")
        if self._done:
            raise EpisodeError(f"the episode of scenario {self.scenario.id!r} has ended "
                               f"({self._ended_by}); call reset() to start a new one")
        self._check_action(action)
        self._turns += 1
        agent_ends = END_MARKER in action
        parsed = parse_message(action.replace(END_MARKER, ""))
        text = _clean(parsed.text)
        calls = [ToolCall(id=f"call_{self._tool_calls + i + 1}", name=c.name or "<unparsed>",
                          arguments=c.arguments if isinstance(c.arguments, dict) else {})
                 for i, c in enumerate(parsed.calls)]
        self.messages.append(Message(role="assistant", content=text, tool_calls=calls or None))
        self._judge_text(text)
        terminated = truncated = False
        if parsed.calls:
            obs = self._run_calls(parsed.calls, calls)
            role = "tool"
            if agent_ends:
                terminated, self._ended_by = True, "agent"
        elif agent_ends:
            obs, role = "", "user"
            terminated, self._ended_by = True, "agent"
        else:
            turn = await self._ask_user(text)
            role = "user"
            if turn is None:
                obs, truncated, self._ended_by = "", True, "user_error"
            else:
                obs = _fit(turn.text)
                self.messages.append(Message(role="user", content=_clean(turn.text)))
                if turn.done:
                    terminated, self._ended_by = True, f"user_{turn.reason or 'ended'}"
        if not (terminated or truncated) and self._turns >= self.max_turns:
            truncated, self._ended_by = True, "max_turns"
        reward = 0.0
        if terminated or truncated:
            self._done = True
            self._outcome = compute_outcome(
                self.pack, self.scenario, self.db, record=self._record, forbidden=self._forbidden,
                turns_used=self._turns, tool_calls=self._tool_calls, tool_errors=self._tool_errors,
                ended_by=self._ended_by or "", error=self._error)
            reward = float(self._outcome["success"])
        return obs, reward, terminated, truncated, self._info(role)

    # ---------------------------------------------------------------- helpers
    def _check_action(self, action: Any) -> None:
        if not isinstance(action, str):
            raise ValueError(f"action must be a str (the agent's message), got {type(action).__name__}: "
                             f"{action!r:.80}")
        if not action.strip():
            raise ValueError(f"action {action!r} is empty; send the agent's message text (at least one "
                             "non-space character)")
        if len(action) > MAX_ACTION_CHARS:
            raise ValueError(f"action has {len(action)} characters; the limit is {MAX_ACTION_CHARS} "
                             "(MAX_ACTION_CHARS). Shorten the message or split it over turns")

    def _judge_text(self, text: str) -> None:
        if not text:
            return
        if self._record.on_agent_text(text):
            self._progress = True
        self._forbidden += forbidden_statements_in(self.pack, self.scenario, text)
        self._forbidden += [f"disclosed_private_data:{k}" for k in disclosures(self.pack, self.scenario,
                                                                                  self.db, text)]

    def _run_calls(self, parsed: list, calls: list[ToolCall]) -> str:
        lines = []
        for p, call in zip(parsed, calls, strict=True):
            self._tool_calls += 1
            if p.error:
                payload: dict[str, Any] = {"name": p.name, "ok": False, "error": p.error}
            else:
                before = copy.deepcopy(self.db)
                try:
                    spec = self.pack.tool(p.name)
                    if spec is not None:
                        validate_args(p.arguments, spec.parameters)
                        self._forbidden += forbidden_hits(self.pack, self.scenario.forbidden_actions,
                                                          p.name, p.arguments, self.db)
                    result = run_tool(self.pack, p.name, p.arguments, self.db)
                    payload = {"name": p.name, "ok": True, "result": result}
                    self._progress = True
                except ToolError as e:
                    self.db = before
                    payload = {"name": p.name, "ok": False, "error": str(e)}
            if not payload["ok"]:
                self._tool_errors += 1
            content = json.dumps(payload, ensure_ascii=False, default=str)
            self._record.on_tool_result(p.name or "", p.arguments if isinstance(p.arguments, dict) else {},
                                        bool(payload["ok"]), content)
            self.messages.append(Message(role="tool", content=_clean(content), tool_call_id=call.id, name=call.name))
            lines.append(content)
        return _fit("\n".join(lines))

    async def _ask_user(self, agent_text: str | None) -> UserTurn | None:
        told_goal = goal_reached(self.pack, self.scenario, self.db, self._record.told)
        ctx = UserContext(pack=self.pack, scenario=self.scenario, messages=list(self.messages),
                          agent_text=agent_text, np_random=self.np_random, seed=self._seed,
                          goal_met=told_goal, progress=self._progress, memory=self._memory)
        try:
            turn = await self.user.reply(ctx)
        except Exception as e:  # a failing simulator ends the episode; the error is data, not a reply
            self._error = f"{type(e).__name__}: {e}"
            return None
        self._progress = False
        return turn

    def _info(self, role: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "scenario_id": self.scenario.id,
            "split": self.scenario.split,
            "observation_role": role,
            "turn": self._turns,
            "messages": [m.model_copy(deep=True) for m in self.messages],
            "tools": self.pack.tools_openai(compact=self.prompt == "compact"),
            "tool_calls": self._tool_calls,
            "tool_errors": self._tool_errors,
            "forbidden_actions": sorted(set(self._forbidden)),
        }
        if self._error:
            info["error"] = self._error
        if self._outcome is not None:
            info["outcome"] = copy.deepcopy(self._outcome)
        return info

    # ---------------------------------------------------------------- sync API
    def _run(self, coro: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise SyncInAsyncError("ConversationEnv.reset()/step() called inside a running event loop; "
                                   "use `await env.areset(...)` / `await env.astep(...)` instead")
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        """Sync wrapper of :meth:`areset`."""
        return self._run(self.areset(seed=seed, options=options))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Sync wrapper of :meth:`astep`."""
        return self._run(self.astep(action))

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if not self._started:
            return ""
        out = []
        for m in self.messages[1:]:
            head = m.role if m.role != "tool" else f"tool:{m.name}"
            body = m.content
            if m.tool_calls:
                body += "".join(f"\n  -> {c.name}({json.dumps(c.arguments)})" for c in m.tool_calls)
            out.append(f"[{head}] {body}")
        return "\n".join(out)

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed() and not loop.is_running():
            loop.close()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()
        self._loop = None
        super().close()

