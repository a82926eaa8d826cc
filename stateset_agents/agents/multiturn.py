"""MultiTurnAgent: a ChatModel with a domain strategy, tools in the prompt, and a context budget.

Prompt layout, per turn: one system message = the domain strategy (``strategies.yaml``), then the
environment's instructions (the conversation's own system message), then the tools with the call format, then the
lessons of an experience library when one is given (Training-Free GRPO; last, because they are retrieved per
conversation and everything before them is shared by every prompt of a pack, which the engine caches); then the
conversation (user, assistant and tool messages).

Context budget: when the prompt would exceed ``context_tokens`` (counted with the model's tokenizer when it
has one, else estimated at 4 characters per token), the oldest turns are dropped, always keeping the system
message and the first user message; a single note ``[N earlier messages omitted]`` takes their place. Tool
messages are dropped together with the assistant message that called them. If even the newest message and the
kept ones do not fit, the prompt is sent anyway with only them.

Trimming takes linear time: each message is tokenised once on its own (its chat-template cost), the smallest cut
that fits is found by arithmetic on those counts, and the chosen prompt is counted once more, exactly, to confirm
(a template whose messages are not separated by special tokens can make the sum differ; then the next cut is
tried). A conversation of more than ``HEAVY_CHARS`` characters is trimmed in a worker thread, so a server's
event loop keeps answering other clients meanwhile.

Which tokens are the agent's own: each turn's :class:`Completion` carries the exact ``prompt_ids`` the model
saw and the ``completion_ids`` it sampled. The trainer scores the completion tokens given the prompt tokens,
so condensing older turns never mislabels a token: everything in ``prompt_ids`` is context, and only
``completion_ids`` are the agent's.
"""

from __future__ import annotations

import asyncio
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..errors import ConfigError
from ..models.base import ChatModel, SamplingParams
from ..types import Completion, Message

if TYPE_CHECKING:
    from .experience import ExperienceLibrary

__all__ = ["HEAVY_CHARS", "MultiTurnAgent", "strategies"]

HEAVY_CHARS = 50_000
"""Conversations longer than this (in characters) are trimmed off the event loop (``asyncio.to_thread``)."""


@cache
def strategies() -> dict[str, str]:
    """Domain -> strategy prompt, from ``strategies.yaml``."""
    with open(Path(__file__).with_name("strategies.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def _compact_line(fn: dict[str, Any]) -> str:
    """``name(arg, opt?): purpose``: the description's first sentence without its parentheses."""
    schema = fn.get("parameters", {})
    need = set(schema.get("required", []))
    args = ", ".join(k if k in need else f"{k}?" for k in schema.get("properties", {}))
    text = re.sub(r"\s*\([^)]*\)|,?\s*\be\.g\.[^.]*", "", fn.get("description", ""))
    purpose = text.split(". ")[0].strip().rstrip(".")
    return f"{fn['name']}({args})" + (f": {purpose}" if purpose else "")


def _tools_text(tools: list[dict[str, Any]], style: str = "full") -> str:
    if style == "compact":
        lines = ["Tools:", *(_compact_line(t.get("function", t)) for t in tools)]
        lines.append('Call one: <tool_call>{"name": "TOOL", "arguments": {...}}</tool_call>')
        return "\n".join(lines)
    lines = ["Tools you can call:"]
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters", {}).get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in params.items())
        lines.append(f"- {fn['name']}({args}): {fn.get('description', '')}")
    lines.append('Call a tool by writing <tool_call>{"name": "TOOL", "arguments": {...}}</tool_call> '
                 "and nothing else in that message.")
    return "\n".join(lines)


class MultiTurnAgent:
    """Plays the agent side of a ConversationEnv with any ChatModel.

    Args:
        model: the ChatModel (local or remote).
        domain: which strategy prompt to use (``customer_service``, ``tech_support``, ``sales``, ``educational``),
            or None for none.
        system_prompt: extra text appended to the strategy (replaces nothing).
        sampling: default sampling for each turn.
        context_tokens: the prompt budget described in the module docs.
        tools_in_template: also pass tools to the model's chat template (for models trained with tools).
        tool_prompt: ``"full"`` (default): the domain strategy, then one line per tool with its argument types and
            whole description; ``"compact"``: for small models, no strategy (the env's compact instructions say
            what to do) and one ``name(args): purpose`` line per tool. Pair it with the env's ``prompt="compact"``.
        constrain_tool_calls: decode each turn under :func:`~stateset_agents.agents.tool_turn_grammar` of the
            offered tools (local models): a message, or calls of those tools with arguments valid under their
            schemas. For evaluation and chat, not for a trained policy's rollouts (see agents/tool_grammar.py).
        grounded_args: with ``constrain_tool_calls``, ``{tool: [argument, ...]}`` whose values must be words the
            customer or a tool gave earlier in the conversation (an env pack's ``reference_args()``).
        experiences: an :class:`~stateset_agents.training.ExperienceLibrary` (Training-Free GRPO); each turn its
            ``to_prompt(conversation, domain=domain)`` is added at the end of the system message, after the
            tools. Deploy a learned library this way without any training.
    """

    def __init__(self, model: ChatModel, *, domain: str | None = "customer_service", system_prompt: str = "",
                 sampling: SamplingParams | None = None, context_tokens: int = 2048,
                 tools_in_template: bool = False, experiences: ExperienceLibrary | None = None,
                 tool_prompt: str = "full", constrain_tool_calls: bool = False,
                 grounded_args: dict[str, list[str]] | None = None) -> None:
        if tool_prompt not in ("full", "compact"):
            raise ConfigError(f"tool_prompt={tool_prompt!r} is not one of 'full', 'compact'")
        if domain is not None and domain not in strategies():
            raise ConfigError(f"unknown domain {domain!r}; choose one of {sorted(strategies())} or None")
        if context_tokens < 64:
            raise ConfigError(f"context_tokens={context_tokens} is too small; use at least 64")
        self.model = model
        self.domain = domain
        self.system_prompt = system_prompt
        self.sampling = sampling or SamplingParams(temperature=0.7, max_new_tokens=128)
        self.context_tokens = context_tokens
        self.tools_in_template = tools_in_template
        self.tool_prompt = tool_prompt
        self.constrain_tool_calls = constrain_tool_calls
        self.grounded_args = grounded_args
        if experiences is not None and not callable(getattr(experiences, "to_prompt", None)):
            raise ConfigError(f"experiences must be an ExperienceLibrary (with to_prompt), got "
                              f"{type(experiences).__name__}; load one with ExperienceLibrary.load(path)")
        self.experiences = experiences

    # ------------------------------------------------------------ prompt
    def _count(self, messages: list[Message]) -> int:
        tok = getattr(self.model, "tokenizer", None)
        if tok is not None and hasattr(self.model, "prompt_ids"):
            return len(self.model.prompt_ids(messages))
        return sum(len(m.content) + 16 for m in messages) // 4

    def build_prompt(self, conversation: list[Message], tools: list[dict[str, Any]] | None = None) -> list[Message]:
        """The messages the model sees for the next agent turn (see module docs)."""
        env_system = [m.content for m in conversation if m.role == "system"]
        parts = [strategies()[self.domain]] if self.domain and self.tool_prompt == "full" else []
        parts += env_system + ([self.system_prompt] if self.system_prompt else [])
        if tools:
            parts.append(_tools_text(tools, self.tool_prompt))
        if self.experiences is not None:  # last: what comes before it is the same for every conversation of a pack,
            lessons = self.experiences.to_prompt(conversation, domain=self.domain)  # so the engine's prefix cache
            if lessons:                                                            # covers it
                parts.append(lessons)
        system = Message(role="system", content="\n\n".join(parts))
        rest = [m for m in conversation if m.role != "system"]
        prompt = [system, *rest]
        if len(rest) <= 2:
            return prompt
        # A prompt of a few budgets' worth of characters is counted whole first (one tokenisation when it fits);
        # a longer one goes straight to the per-message counts, so every message is tokenised about once.
        if sum(len(m.content) for m in prompt) <= 8 * self.context_tokens and \
                self._count(prompt) <= self.context_tokens:
            return prompt
        return self._trim(system, rest)

    def _trim(self, system: Message, rest: list[Message]) -> list[Message]:
        """The smallest whole-turn cut that fits the budget, in linear time (see the module docs)."""
        meter = _Meter(self, system)
        costs = [meter.cost(m) for m in rest]
        head, tail, tail_costs = rest[:1], rest[1:], costs[1:]
        kept = sum(tail_costs)  # cost of tail[start:]
        if meter.total(costs[0] + kept) <= self.context_tokens and meter.exact([system, *rest]) <= self.context_tokens:
            return [system, *rest]
        start, slack = 0, 0
        while len(tail) - start > 1:
            cut = 1  # an assistant message and the tool results that answer it go together
            while start + cut < len(tail) and tail[start + cut].role == "tool":
                cut += 1
            kept -= sum(tail_costs[start:start + cut])
            start += cut
            if meter.total(costs[0] + kept) + slack > self.context_tokens:
                continue
            note = _note(len(rest) - 1 - (len(tail) - start))
            estimate = meter.total(costs[0] + meter.cost(note) + kept)
            if estimate + slack > self.context_tokens:
                continue
            candidate = [system, *head, note, *tail[start:]]
            exact = meter.exact(candidate)
            if exact <= self.context_tokens:
                return candidate
            slack = max(slack, exact - estimate)  # the template is not additive: demand that much room next time
        return [system, *head, _note(len(rest) - 1 - (len(tail) - start)), *tail[start:]]

    # ------------------------------------------------------------ acting
    async def act(self, conversation: list[Message], tools: list[dict[str, Any]] | None = None, *,
                  sampling: SamplingParams | None = None) -> Completion:
        """One agent turn: the model's completion for the conversation so far."""
        if sum(len(m.content) for m in conversation) > HEAVY_CHARS:
            prompt = await asyncio.to_thread(self.build_prompt, conversation, tools)
        else:
            prompt = self.build_prompt(conversation, tools)
        sampling = sampling or self.sampling
        if self.constrain_tool_calls and tools and sampling.grammar is None:
            from .tool_grammar import conversation_values, tool_turn_grammar

            grammar = (tool_turn_grammar(tools) if self.grounded_args is None else
                       tool_turn_grammar(tools, grounded=self.grounded_args, values=conversation_values(conversation)))
            sampling = sampling.model_copy(update={"grammar": grammar})
        return await self.model.chat(prompt, sampling=sampling,
                                     tools=tools if self.tools_in_template else None)

    @staticmethod
    def action_text(completion: Completion) -> str:
        """The env action for a completion: its text, plus structured tool calls in the documented format
        when the backend returned them separately (OpenAI-style ``tool_calls`` with empty text)."""
        from ..toolcalls import format_tool_call, parse_message

        text = completion.text
        if completion.tool_calls and not parse_message(text).calls:
            text = (text + "\n" if text.strip() else "") + "".join(
                format_tool_call(c.name, c.arguments) for c in completion.tool_calls)
        return text



def _note(dropped: int) -> Message:
    return Message(role="user", content=f"[{dropped} earlier messages omitted]")


class _Meter:
    """Token counts of prompts made of one system message and some messages, by adding per-message costs.

    With the model's tokenizer, a message's cost is what it adds to a prompt holding only an empty system
    message (its chat-template rendering, tokenised once); the system message's cost includes the generation
    prompt. Without one, the estimate is 4 characters per token, as in ``MultiTurnAgent._count``."""

    def __init__(self, agent: MultiTurnAgent, system: Message) -> None:
        self.agent = agent
        model = agent.model
        self.ids = model.prompt_ids if getattr(model, "tokenizer", None) is not None and \
            hasattr(model, "prompt_ids") else None
        self.empty = Message(role="system", content="")
        if self.ids is not None:
            self.empty_len = len(self.ids([self.empty]))
            self.base = len(self.ids([system]))
        else:
            self.base = len(system.content) + 16

    def cost(self, m: Message) -> int:
        if self.ids is None:
            return len(m.content) + 16
        return len(self.ids([self.empty, m])) - self.empty_len

    def total(self, costs: int) -> int:
        return self.base + costs if self.ids is not None else (self.base + costs) // 4

    def exact(self, prompt: list[Message]) -> int:
        return self.agent._count(prompt)
