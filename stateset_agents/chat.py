"""``stateset-agents chat``: play one episode and print it.

- default: the model plays the agent against the scripted user;
- ``--as agent``: you type the agent's messages against the simulated user;
- ``--as user``: you play the customer against the model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.console import Console
from rich.panel import Panel

from .envs import ConversationEnv
from .envs.users import UserContext, UserTurn
from .errors import ConfigError
from .types import Message

__all__ = ["HumanUser", "check_model_folder", "load_model", "play_chat"]

_STYLE = {"user": "cyan", "assistant": "green", "tool": "yellow"}


def load_model(spec: str | None, *, model_name: str = "default", api_key: str | None = None) -> Any:
    """``None`` or ``default`` -> the default SmolLM2; ``http(s)://...`` -> OpenAIChatModel; else a local model
    folder (:func:`~stateset_agents.models.default.model_folder`)."""
    from .models.default import default_model, model_folder

    if spec is None or spec == "default":
        return default_model()
    if spec.startswith(("http://", "https://")):
        from .models.openai import OpenAIChatModel

        return OpenAIChatModel(spec, model_name, api_key=api_key)
    from .models.hf import HFChatModel

    path = model_folder(spec)
    check_model_folder(spec)
    try:
        return HFChatModel(path)
    except (OSError, ValueError) as e:  # transformers' own "cannot load" errors: bad weights, tokenizer files
        raise ConfigError(f"cannot load model {spec!r}: {one_line_of(e)}; pass a folder written by "
                          "save_pretrained (config.json, weights, tokenizer)") from e


def check_model_folder(spec: str) -> None:
    """Fail in one line, before any weights load, when a model folder's ``config.json`` (or a LoRA adapter's
    ``adapter_config.json``) is not valid JSON. Folders without either file are left to the loader."""
    from pathlib import Path

    for name in ("config.json", "adapter_config.json"):
        f = Path(spec) / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"model folder {spec!r}: {name} is not valid JSON ({e}); restore it, or write the "
                              "folder again with save_pretrained") from e
        if not isinstance(data, dict):
            raise ConfigError(f"model folder {spec!r}: {name} holds a {type(data).__name__}, not an object; "
                              "write the folder again with save_pretrained")


def one_line_of(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class HumanUser:
    """A user simulator that asks a person at the terminal. An empty line or /quit ends the conversation."""

    def __init__(self, read=input) -> None:
        self.read = read

    async def reply(self, ctx: UserContext) -> UserTurn:
        if ctx.agent_text is None:
            text = await asyncio.to_thread(self.read, f"you ({ctx.scenario.user.name}) > ")
            return UserTurn(text.strip() or ctx.scenario.user.opening[0])
        text = (await asyncio.to_thread(self.read, "you > ")).strip()
        if not text or text == "/quit":
            return UserTurn("(leaves the conversation)", done=True, reason="stop_marker")
        return UserTurn(text)


def _show(console: Console, m: Message) -> None:
    body = m.content
    if m.tool_calls:
        body = (body + "\n" if body else "") + "\n".join(
            f"→ {c.name}({json.dumps(c.arguments, ensure_ascii=False)})" for c in m.tool_calls)
    title = m.role if m.role != "tool" else f"tool · {m.name}"
    console.print(Panel(body or "(empty)", title=title, title_align="left", border_style=_STYLE.get(m.role, "white")))


async def play_chat(env: ConversationEnv, *, model: Any = None, human: str | None = None, seed: int = 0,
                    console: Console | None = None, read=input, max_new_tokens: int = 128,
                    experiences: Any = None) -> dict[str, Any]:
    """Play one episode; return the final info. ``human`` is None, "agent" or "user". ``experiences``: an
    ExperienceLibrary injected into the model agent's prompt (Training-Free GRPO)."""
    from .agents import MultiTurnAgent
    from .models.base import SamplingParams

    console = console or Console()
    if human not in (None, "agent", "user"):
        raise ConfigError(f"--as {human!r} must be 'agent' or 'user'")
    if human == "user":
        env.user = HumanUser(read)
    agent = None if human == "agent" else MultiTurnAgent(
        model, domain=env.pack.domain if env.pack.domain in ("customer_service", "tech_support", "sales") else None,
        sampling=SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens, seed=seed), experiences=experiences)
    s = env.fixed_scenario
    _, info = await env.areset(seed=seed)
    s = env.scenario
    console.rule(f"{s.id} · {s.title}")
    console.print(f"[dim]{s.user.name} ({s.user.mood}): {s.user.persona}\nGoal: {s.goal.description}[/]")
    shown = 1
    for m in info["messages"][shown:]:
        _show(console, m)
    shown = len(info["messages"])
    while True:
        if agent is None:
            action = (await asyncio.to_thread(read, "agent > ")).strip() or "[END]"
        else:
            completion = await agent.act(info["messages"], info["tools"])
            action = agent.action_text(completion) or "[END]"
        _, reward, term, trunc, info = await env.astep(action)
        for m in info["messages"][shown:]:
            _show(console, m)
        shown = len(info["messages"])
        if term or trunc:
            o = info["outcome"]
            console.print(Panel(
                f"score {o['score']:.2f} · goal {o['goal_reached']} · state {o['state_match']} · facts "
                f"{o['facts_score']:.2f}\nforbidden {o['forbidden_actions']}\nended by {o['ended_by']}"
                + (f"\nerror: {info['error']}" if info.get("error") else ""), title="outcome",
                border_style="magenta"))
            return info
