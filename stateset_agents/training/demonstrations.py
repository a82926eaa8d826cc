"""Demonstrations for SFT, as trajectories whose agent turns carry the exact tokens the policy would see and emit.

Each agent turn of a demonstration is a :class:`~stateset_agents.types.Completion` with ``prompt_ids`` (the agent's
own prompt for that turn: :meth:`MultiTurnAgent.build_prompt` templated by the policy's tokenizer, exactly what it
sees at inference) and ``completion_ids`` (the demonstrated message, tokenised, then the end-of-turn token so the
model learns to stop). So SFT trains on the same per-turn samples and masks as GRPO: only the agent's tokens.

Three sources (``demonstrations.from``):

- ``reference``: each train scenario's reference solution, replayed through the env against the scripted user once
  per seed 0..seeds-1 (the user's lines vary with the seed); a replay is kept only when its outcome is a success;
- ``rollouts``: ``k`` episodes per train scenario sampled with the current policy; the successes are kept
  (rejection-sampling fine-tuning);
- ``jsonl``: a file of OpenAI-format conversations, one per line, ``{"messages": [...], "tools": [...]}``;
  assistant ``tool_calls`` become the documented ``<tool_call>`` text the env parses; ``tools`` defaults to the
  env pack's. Each assistant message is one agent turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..envs.conversation import END_MARKER
from ..envs.reference import reference_actions
from ..errors import ConfigError
from ..rollout import rollout, run_episode
from ..toolcalls import format_tool_call, parse_message
from ..types import Completion, Message, SamplingParams, ToolCall, Trajectory

__all__ = ["demo_completion", "jsonl_demonstrations", "reference_demonstrations", "rollout_demonstrations"]

CLOSING = f"Is there anything else I can help with? {END_MARKER}"
"""What a replayed reference says last when the user has not ended the conversation (as ``envs validate`` does)."""


def demo_completion(agent: Any, conversation: list[Message], tools: list[dict[str, Any]] | None,
                    text: str) -> Completion:
    """The completion an agent turn that says ``text`` would be: the agent's prompt ids and ``text``'s ids + EOS."""
    model = agent.model
    tok = getattr(model, "tokenizer", None)
    if tok is None or not hasattr(model, "prompt_ids"):
        raise ConfigError(f"demonstrations are tokenised for a local model; the agent's model is "
                          f"{type(model).__name__} - use an HFChatModel")
    if tok.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token, so a demonstrated turn cannot end; set eos_token")
    prompt = agent.build_prompt(conversation, tools)
    prompt_ids = model.prompt_ids(prompt, tools if agent.tools_in_template else None)
    ids = list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]
    parsed = parse_message(text.replace(END_MARKER, ""))
    calls = [ToolCall(id=f"call_{i + 1}", name=c.name, arguments=c.arguments)
             for i, c in enumerate(parsed.calls) if c.error is None and c.name and isinstance(c.arguments, dict)]
    return Completion(text=text, tool_calls=calls, finish_reason="tool_calls" if calls else "stop",
                      prompt_ids=prompt_ids, completion_ids=ids, model="demonstration")


class _Replay:
    """Plays fixed messages as the agent (for :func:`run_episode`), tokenised for ``agent``'s model."""

    def __init__(self, agent: Any, actions: Sequence[str]) -> None:
        self.agent, self.actions = agent, list(actions)
        self.sampling = agent.sampling
        self.action_text = agent.action_text

    async def act(self, conversation: list[Message], tools: list[dict[str, Any]] | None = None, *,
                  sampling: SamplingParams | None = None) -> Completion:
        if not self.actions:
            raise ValueError("the reference solution ran out of messages before the episode ended")
        return demo_completion(self.agent, conversation, tools, self.actions.pop(0))


def _success(t: Trajectory) -> bool:
    return t.error is None and bool(t.outcome and t.outcome.get("success"))


def _require(kept: int, needed: int, what: str, fix: str) -> None:
    if kept < needed:
        raise ConfigError(f"{what} gave {kept} successful demonstrations, fewer than min_success={needed}; {fix}")


async def reference_demonstrations(agent: Any, pack: Any, scenarios: Sequence[str], seeds: int,
                                   min_success: int = 1, prompt: str = "full", notes: bool = True
                                   ) -> tuple[list[Trajectory], dict[str, Any]]:
    """Replay each scenario's reference once per seed (envs opened with ``prompt``; each tool step's ``note``
    written before its call with ``notes``); keep the successes."""
    from ..envs import ConversationEnv

    kept: list[Trajectory] = []
    failed: list[str] = []
    for sid in scenarios:
        scenario = pack.scenario(sid)
        actions = [*reference_actions(scenario, notes=notes), CLOSING]
        for seed in range(seeds):
            env = ConversationEnv(pack, scenario=sid, split="all", prompt=prompt,
                                  max_turns=max(pack.max_turns, len(scenario.reference) + 1))
            try:
                t = await run_episode(_Replay(agent, actions), env, sid, seed)
            finally:
                env.close()
            if _success(t):
                kept.append(t)
            else:
                failed.append(f"{sid}@seed{seed}")
    _require(len(kept), min_success, f"replaying the reference solutions of {len(scenarios)} scenarios x {seeds} "
             "seeds", "check the pack with `stateset-agents envs validate`")
    return kept, {"source": "reference", "episodes": len(scenarios) * seeds, "kept": len(kept),
                  "failed": failed[:20], "scenarios": len({t.scenario_id for t in kept})}


async def rollout_demonstrations(agent: Any, env_factory: Callable[[], Any], scenarios: Sequence[str], k: int, *,
                                 seed: int, concurrency: int, min_success: int = 1,
                                 on_groups: Callable[[list[Any]], Any] | None = None
                                 ) -> tuple[list[Trajectory], dict[str, Any]]:
    """``k`` episodes per scenario with the agent's current policy; keep the successes (rejection sampling).
    ``on_groups`` sees every episode first (grouped per scenario), e.g. to write them as transcripts."""
    groups = await rollout(agent, env_factory, list(scenarios), k, concurrency=concurrency, seed=seed,
                           progress=False)
    if on_groups is not None:
        on_groups(groups)
    trajs = [t for g in groups for t in g.trajectories]
    kept = [t for t in trajs if _success(t)]
    _require(len(kept), min_success, f"sampling {k} episodes of each of {len(scenarios)} scenarios with the policy",
             "start from a policy that sometimes succeeds (init_from an SFT run on reference demonstrations), "
             "raise k, or lower min_success")
    return kept, {"source": "rollouts", "episodes": len(trajs), "kept": len(kept),
                  "errors": sum(t.error is not None for t in trajs),
                  "scenarios": len({t.scenario_id for t in kept})}


def _message(raw: Any, where: str) -> Message:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a message is a JSON object, got {type(raw).__name__}")
    calls = []
    for j, c in enumerate(raw.get("tool_calls") or []):
        fn = c.get("function", c) if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ConfigError(f"{where}: tool_calls[{j}] needs function.name (OpenAI format)")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as e:
                raise ConfigError(f"{where}: tool_calls[{j}].function.arguments is not JSON ({e.msg}); "
                                  "write the arguments as a JSON object or its JSON string") from e
        if not isinstance(args, dict):
            raise ConfigError(f"{where}: tool_calls[{j}] arguments must be a JSON object, got {args!r:.60}")
        calls.append(ToolCall(id=str(c.get("id") or f"call_{j + 1}"), name=fn["name"], arguments=args))
    try:
        return Message(role=raw.get("role"), content=raw.get("content") or "", tool_calls=calls or None,
                       tool_call_id=raw.get("tool_call_id"), name=raw.get("name"))
    except ValueError as e:
        first = str(e).splitlines()[-1].strip() if str(e) else type(e).__name__
        raise ConfigError(f"{where}: not an OpenAI chat message: {first}") from e


def _action(m: Message) -> str:
    calls = "".join(format_tool_call(c.name, c.arguments) for c in m.tool_calls or [])
    return (m.content + ("\n" if m.content.strip() and calls else "") + calls) if calls else m.content


def jsonl_demonstrations(path: str | Path, agent: Any, default_tools: list[dict[str, Any]]
                         ) -> tuple[list[Trajectory], dict[str, Any]]:
    """Read OpenAI-format conversations (one JSON object per line); every assistant message is one agent turn."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"demonstrations.path {str(p)!r} does not exist; give a JSONL file of conversations "
                          '({"messages": [...]} per line)')
    out: list[Trajectory] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not JSON ({e.msg}); write one conversation object per line") from e
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise ConfigError(f'{where}: a line is {{"messages": [...], "tools": [...]?}}; no "messages" list')
        messages = [_message(m, f"{where} message {i}") for i, m in enumerate(row["messages"])]
        tools = row.get("tools", default_tools)
        completions = [demo_completion(agent, messages[:i], tools, _action(m))
                       for i, m in enumerate(messages) if m.role == "assistant" and _action(m).strip()]
        if not completions:
            raise ConfigError(f"{where}: the conversation has no assistant message to learn from")
        out.append(Trajectory(scenario_id=f"jsonl:{n}", messages=messages, completions=completions))
    if not out:
        raise ConfigError(f"demonstrations.path {str(p)!r} holds no conversations")
    return out, {"source": "jsonl", "path": str(p), "episodes": len(out), "kept": len(out)}
