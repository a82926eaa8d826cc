"""Replaying a scenario's reference solution: the check that a scenario is solvable as written."""

from __future__ import annotations

from typing import Any

from ..toolcalls import format_tool_call
from .conversation import END_MARKER, ConversationEnv
from .pack import EnvPack, Scenario

__all__ = ["reference_actions", "replay_reference"]


def reference_actions(scenario: Scenario, *, notes: bool = True) -> list[str]:
    """The agent messages of the reference solution, one per step, in the documented tool-call format; a tool
    step's ``note`` (with ``notes``) comes first, on its own line, as an agent's history renders it."""
    out = []
    for s in scenario.reference:
        if s.tool is None:
            out.append(s.say or "")
            continue
        call = format_tool_call(s.tool, s.args)
        out.append(f"{s.note}\n{call}" if notes and s.note else call)
    return out


async def replay_reference(pack: EnvPack, scenario: Scenario, *, seed: int = 0) -> dict[str, Any]:
    """Play the reference solution against the scripted user; return ``info["outcome"]``.

    If the user has not ended the conversation after the last reference step, the agent ends it with
    the end marker. A reference that ends the episode early (the user gave up) shows in the outcome.
    """
    env = ConversationEnv(pack, scenario=scenario.id, split="all", max_turns=max(pack.max_turns,
                                                                                   len(scenario.reference) + 1))
    try:
        await env.areset(seed=seed)
        info: dict[str, Any] = {}
        done = False
        for action in reference_actions(scenario):
            _, _, term, trunc, info = await env.astep(action)
            if term or trunc:
                done = True
                break
        if not done:
            _, _, _, _, info = await env.astep(f"Is there anything else I can help with? {END_MARKER}")
        return info["outcome"]
    finally:
        env.close()
