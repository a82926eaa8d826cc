"""The demo: one scripted conversation per domain, printed with rich.

Each conversation is a scenario's reference solution (what an ideal agent does) played against the
ScriptedUser, so what you see is the real environment answering: tool results come from the episode's
database and the outcome is computed by code.
"""

from __future__ import annotations

import asyncio
import json

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .envs import BUILTIN_ENVS, ConversationEnv, load_pack
from .envs.reference import reference_actions

__all__ = ["play_demo"]

_STYLE = {"user": "cyan", "assistant": "green", "tool": "yellow"}


async def _play(pack_name: str, seed: int) -> tuple[ConversationEnv, dict]:
    pack = load_pack(pack_name)
    env = ConversationEnv(pack, split="train")
    await env.areset(seed=seed)
    info: dict = {}
    for action in reference_actions(env.scenario):
        _, _, term, trunc, info = await env.astep(action)
        if term or trunc:
            break
    else:
        _, _, _, _, info = await env.astep("Is there anything else I can help with? [END]")
    return env, info


def play_demo(console: Console | None = None, seed: int = 0) -> list[dict]:
    """Play and print one conversation per built-in domain; return their outcomes."""
    console = console or Console()
    outcomes = []
    for env_id, pack_name in BUILTIN_ENVS.items():
        env, info = asyncio.run(_play(pack_name, seed))
        s = env.scenario
        console.rule(f"[bold]{env_id}[/] · {s.id} · {s.title}")
        console.print(f"[dim]{s.user.name} ({s.user.mood}): {s.user.persona}[/]")
        for m in info["messages"][1:]:
            body = m.content
            if m.tool_calls:
                body = (body + "\n" if body else "") + "\n".join(
                    f"→ {c.name}({json.dumps(c.arguments, ensure_ascii=False)})" for c in m.tool_calls)
            title = m.role if m.role != "tool" else f"tool · {m.name}"
            console.print(Panel(body, title=title, title_align="left", border_style=_STYLE.get(m.role, "white")))
        o = info["outcome"]
        t = Table(show_header=False, box=None)
        for k in ("goal_reached", "state_match", "facts_score", "forbidden_actions", "turns_used", "ended_by", "score"):
            t.add_row(k, str(o[k]))
        console.print(Panel(t, title="outcome", border_style="magenta"))
        outcomes.append(o)
        env.close()
    return outcomes
