"""The learner side of Training-Free GRPO: semantic advantages and library operations from a ChatModel.

For a group of rollouts of one scenario whose rewards differ, the learner (any ChatModel; it may be a stronger
model than the agent, e.g. an OpenAI-compatible endpoint):

1. summarises each scored trajectory (``summarize: true``; otherwise it reads the transcripts directly);
2. compares the better ones with the worse ones: the *semantic advantage* (why the better ones scored higher) and
   up to ``max_ops`` proposed operations on the library: ADD, MODIFY(id), DELETE(id), KEEP(id);

then, once per batch, it consolidates every group's proposals into one list (merging near-duplicates, resolving
conflicts), each final operation citing the proposals it came from (its provenance).

Every answer is one JSON object, parsed and validated with pydantic plus the library's rules (known ids, the word
limit). An invalid answer is sent back with the error and the model answers again, up to ``retries`` times; then
that group (or the batch's consolidation) is skipped and the error is reported. Nothing is ever made up in its
place. Whatever the learner proposes, :func:`resolve_conflicts` applies fixed rules before the library sees it.

JSON answers::

    summary:        {"summary": "..."}
    group:          {"advantage": "...", "operations": [{"op": "ADD", "text": "..."},
                                                        {"op": "MODIFY", "id": "E3", "text": "..."},
                                                        {"op": "DELETE", "id": "E5"}, {"op": "KEEP", "id": "E2"}]}
    consolidation:  {"operations": [{"op": "ADD", "text": "...", "sources": ["P1", "P4"]}, ...]}
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from ..agents.experience import ExperienceLibrary, Operation, Provenance
from ..models.base import SamplingParams
from ..models.structured import AskStats, NoValidAnswer, ask_json
from ..types import Message, Trajectory, TrajectoryGroup
from .consolidation import GroupProposal, consolidate_by_embedding, merge_provenance, resolve_conflicts
from .learner_answers import (
    BatchAnswer,
    GroupAnswer,
    LearnerFailed,
    LearnerOutputError,
    SummaryAnswer,
    check_ops,
    extract_json,
    group_schema,
    validate_answer,
)

__all__ = [
    "GroupProposal",
    "LearnerFailed",
    "LearnerOutputError",
    "SemanticLearner",
    "consolidate_by_embedding",
    "extract_json",
    "group_schema",
    "render_transcript",
    "resolve_conflicts",
]

T = TypeVar("T")

SYSTEM = ("You improve a conversational agent by writing short, general lessons (experiences) learned from "
          "comparing its conversations. You always answer with exactly one JSON object and nothing else.")


# ------------------------------------------------------------ transcripts
_ROLE = {"user": "Customer", "assistant": "Agent", "tool": "Tool result"}


def render_transcript(t: Trajectory, *, max_chars: int = 3000, max_message_chars: int = 400) -> str:
    """The conversation as ``Customer: ...`` / ``Agent: ...`` lines, shortened to ``max_chars``."""
    lines = []
    for m in t.messages:
        if m.role == "system":
            continue
        text = " ".join(m.content.split())
        if len(text) > max_message_chars:
            text = text[:max_message_chars] + " [...]"
        who = _ROLE.get(m.role, m.role) + (f" ({m.name})" if m.role == "tool" and m.name else "")
        lines.append(f"{who}: {text}")
    out = "\n".join(lines)
    if len(out) > max_chars:
        half = max_chars // 2
        out = f"{out[:half]}\n[... {len(out) - 2 * half} characters omitted ...]\n{out[-half:]}"
    return out


# ------------------------------------------------------------ the learner
class _Limited:
    """A ChatModel view that holds a semaphore around each call (the learner's concurrency bound)."""

    def __init__(self, model: Any, sem: asyncio.Semaphore) -> None:
        self.model, self.sem = model, sem

    async def chat(self, messages: list[Message], *, sampling: SamplingParams, tools: Any = None) -> Any:
        async with self.sem:
            return await self.model.chat(messages, sampling=sampling)


def _retry(problem: str) -> Message:
    return Message(role="user", content=f"That answer is not valid: {problem}. Answer again with the corrected JSON "
                                        "object only.")


class SemanticLearner:
    """Asks a ChatModel for summaries, semantic advantages and library operations (see the module docs).

    Args:
        model: the learner ChatModel.
        sampling: its sampling parameters (temperature, max_new_tokens).
        retries: extra attempts after an invalid answer, each with the error fed back.
        word_limit: most words per experience (the library's).
        max_ops: most operations one group may propose.
        summarize: summarise each trajectory first (one call each) instead of showing transcripts.
        max_chars: transcript length shown per trajectory.
        library_view: most experiences shown to the learner per group (the most similar to the scenario).
        concurrency: learner calls in flight at once.
        constrained: decode each answer under its JSON schema (the answer model's), so a small local learner
            returns parseable JSON; False for an endpoint that refuses ``response_format``.
    """

    def __init__(self, model: Any, *, sampling: SamplingParams, retries: int = 2, word_limit: int = 32,
                 max_ops: int = 3, summarize: bool = True, max_chars: int = 3000, library_view: int = 20,
                 concurrency: int = 8, constrained: bool = True) -> None:
        self.model, self.sampling, self.retries = model, sampling, retries
        self.word_limit, self.max_ops, self.summarize = word_limit, max_ops, summarize
        self.max_chars, self.library_view = max_chars, library_view
        self.concurrency = concurrency
        self.constrained = constrained
        self._sems: dict[int, asyncio.Semaphore] = {}
        self.stats = {"calls": 0, "retries": 0, "invalid_answers": 0}

    def _sem(self) -> asyncio.Semaphore:
        # one semaphore per event loop: train() and evaluation may run in different loops
        key = id(asyncio.get_running_loop())
        if key not in self._sems:
            self._sems = {key: asyncio.Semaphore(self.concurrency)}
        return self._sems[key]

    async def ask(self, stage: str, prompt: str, parse: Callable[[str], T], *, seed: int | None = None,
                  answer: type[BaseModel] | None = None, schema: dict[str, Any] | None = None) -> T:
        """One exchange with validation and retries (models/structured.ask_json); ``schema`` (default: ``answer``'s
        JSON schema) is the decoding constraint when ``constrained``. Raises LearnerFailed with every error."""
        messages = [Message(role="system", content=SYSTEM), Message(role="user", content=prompt)]
        stats = AskStats()
        sampling = self.sampling.model_copy(update={"seed": seed})
        if schema is None and answer is not None:
            schema = answer.model_json_schema()
        schema = schema if self.constrained else None
        try:
            return await ask_json(_Limited(self.model, self._sem()), messages, parse, sampling=sampling,
                                  schema=schema, retries=self.retries, what=f"learner: {stage}", stats=stats,
                                  retry_message=_retry)
        except NoValidAnswer as e:
            raise LearnerFailed(stage, e.problems) from e
        finally:
            self.stats["calls"] += stats.calls
            self.stats["retries"] += stats.retries
            self.stats["invalid_answers"] += stats.invalid_answers

    # ---------------------------------------------------------- one group
    async def propose(self, group: TrajectoryGroup, library: ExperienceLibrary, *, task: str, domain: str,
                      strength: float, step: int, seed: int | None = None) -> GroupProposal:
        scored = sorted((t for t in group.trajectories if t.reward is not None), key=lambda t: -float(t.reward))
        prop = GroupProposal(scenario_id=group.scenario_id, rewards=[float(t.reward) for t in scored],
                             strength=strength)
        calls0 = self.stats["calls"]
        try:
            if self.summarize:
                results = await asyncio.gather(*(
                    self.ask(f"summary of {group.scenario_id} T{i + 1}", self._summary_prompt(t, task),
                             self._parse_summary, seed=None if seed is None else seed + 101 * i,
                             answer=SummaryAnswer)
                    for i, t in enumerate(scored)), return_exceptions=True)
                for r in results:  # wait for all, then report the first failure (other exceptions propagate)
                    if isinstance(r, BaseException):
                        raise r
                prop.summaries = [str(r) for r in results]
            bodies = prop.summaries or [render_transcript(t, max_chars=self.max_chars) for t in scored]
            view = self._view(library, scored, task, domain)
            known = [e.id for e in view]
            answer = await self.ask(f"comparison of {group.scenario_id}",
                                    self._group_prompt(scored, bodies, view, task, domain),
                                    lambda text: self._parse_group(text, known), seed=seed, answer=GroupAnswer,
                                    schema=group_schema(known, max_ops=self.max_ops, word_limit=self.word_limit))
        except LearnerFailed as e:
            prop.error, prop.attempts = str(e), self.stats["calls"] - calls0
            return prop
        prop.attempts = self.stats["calls"] - calls0
        prop.advantage = answer.advantage
        prov = [Provenance(scenario_id=group.scenario_id, step=step, advantage=strength)]
        prop.ops = [Operation(op=o.op, id=o.id, text=o.text, domain=domain if o.op == "ADD" else None,
                              provenance=prov, reason=o.reason or answer.advantage)
                    for o in answer.operations if not (o.op == "KEEP" and o.id is None)]
        return prop

    def _view(self, library: ExperienceLibrary, scored: Sequence[Trajectory], task: str, domain: str) -> list[Any]:
        pool = [e for e in library.experiences if e.domain in (domain, "general")]
        if len(pool) <= self.library_view:
            return pool
        query = task + "\n" + render_transcript(scored[0], max_chars=600)
        return [e for e, _ in library.similar(query, self.library_view, domain=domain)]

    def _parse_summary(self, text: str) -> str:
        ans = validate_answer(SummaryAnswer, extract_json(text))
        return " ".join(ans.summary.split())

    def _parse_group(self, text: str, known: Sequence[str]) -> GroupAnswer:
        ans = validate_answer(GroupAnswer, extract_json(text))
        check_ops(ans.operations, known_ids=known, word_limit=self.word_limit, max_ops=self.max_ops)
        return ans

    def _summary_prompt(self, t: Trajectory, task: str) -> str:
        verdict = "succeeded" if t.outcome and t.outcome.get("success") else "did not succeed"
        return (f"{task}\n\nConversation (reward {float(t.reward):.3f}; the task {verdict}):\n"
                f"{render_transcript(t, max_chars=self.max_chars)}\n\n"
                "Summarise what the agent did at each step and what made the conversation go well or badly, in at "
                "most 60 words.\n"
                'Answer with JSON only: {"summary": "..."}')

    def _group_prompt(self, scored: Sequence[Trajectory], bodies: Sequence[str], view: Sequence[Any], task: str,
                      domain: str) -> str:
        convs = []
        for i, (t, body) in enumerate(zip(scored, bodies, strict=True)):
            verdict = "success" if t.outcome and t.outcome.get("success") else "no success"
            convs.append(f"[T{i + 1}] reward {float(t.reward):.3f} ({verdict}):\n{body}")
        lib = "\n".join(f"[{e.id}] {e.text}" for e in view) or "(none yet)"
        return (f"{task}\n\n{len(scored)} conversations of the agent on this task, best first (higher reward is "
                "better):\n\n" + "\n\n".join(convs) + f"\n\nCurrent experiences ({domain}):\n{lib}\n\n"
                "Compare the better conversations with the worse ones. In \"advantage\", say in one or two sentences "
                "what the better ones did that the worse ones did not. Then propose at most "
                f"{self.max_ops} operations on the experiences. Each text is a general lesson of at most "
                f"{self.word_limit} words that helps on similar tasks (no names, numbers or other details of this "
                "one conversation):\n"
                '- {"op": "ADD", "text": "..."}: a new lesson\n'
                '- {"op": "MODIFY", "id": "E1", "text": "..."}: rewrite an experience that is incomplete or wrong\n'
                '- {"op": "DELETE", "id": "E1"}: remove an experience that misled the worse conversations\n'
                '- {"op": "KEEP", "id": "E1"}: an experience the better conversations followed\n'
                'Answer with JSON only: {"advantage": "...", "operations": [...]}')

    # ---------------------------------------------------------- the batch
    async def consolidate(self, proposals: Sequence[GroupProposal], library: ExperienceLibrary, *,
                          seed: int | None = None) -> tuple[list[Operation], int]:
        """One learner call that merges near-duplicate proposals and resolves conflicts; then
        :func:`resolve_conflicts`. Returns (operations, proposals dropped). Raises LearnerFailed."""
        flat = [op for p in proposals for op in p.ops]
        if len(flat) <= 1:
            return resolve_conflicts(flat)
        names = [f"P{i + 1}" for i in range(len(flat))]
        touched = {o.id for o in flat if o.id}
        view = [e for e in library.experiences if e.id in touched]
        known = library.ids()
        answer = await self.ask("consolidation", self._batch_prompt(flat, names, view),
                                lambda text: self._parse_batch(text, known, names), seed=seed,
                                answer=BatchAnswer)
        by_name = dict(zip(names, flat, strict=True))
        ops, cited = [], set()
        for o in answer.operations:
            if o.op == "KEEP" and o.id is None:
                continue
            srcs = [by_name[s] for s in o.sources]
            cited.update(o.sources)
            domain = next((s.domain for s in srcs if s.domain), None) if o.op == "ADD" else None
            ops.append(Operation(op=o.op, id=o.id, text=o.text, domain=domain, provenance=merge_provenance(srcs),
                                 reason=o.reason or "; ".join(s.reason for s in srcs if s.reason)[:500]))
        out, dropped = resolve_conflicts(ops)
        return out, dropped + len(set(names) - cited)

    def _parse_batch(self, text: str, known: Sequence[str], names: Sequence[str]) -> BatchAnswer:
        ans = validate_answer(BatchAnswer, extract_json(text))
        check_ops(ans.operations, known_ids=known, word_limit=self.word_limit, sources=names)
        return ans

    def _batch_prompt(self, flat: Sequence[Operation], names: Sequence[str], view: Sequence[Any]) -> str:
        lines = []
        for name, o in zip(names, flat, strict=True):
            src = ", ".join(f"{p.scenario_id} (strength {p.advantage:.2f})" for p in o.provenance)
            target = f" {o.id}" if o.id else ""
            text = f' "{o.text}"' if o.text else ""
            lines.append(f"[{name}] {o.op}{target}{text}  from {src}")
        lib = "\n".join(f"[{e.id}] {e.text}" for e in view) or "(none of the proposals touch an existing one)"
        return ("Experiences the proposals refer to:\n" + lib + "\n\nProposed operations from the comparisons of "
                "this batch:\n" + "\n".join(lines) + "\n\n"
                "Consolidate them into the final list of operations: merge proposals that say the same thing into "
                "one (one ADD with a clear text), drop proposals that contradict a better supported one, and keep "
                f"the rest. Each text has at most {self.word_limit} words. Every operation lists in \"sources\" "
                "the proposals it comes from.\n"
                'Answer with JSON only: {"operations": [{"op": "ADD", "text": "...", "sources": ["P1", "P3"]}, '
                '{"op": "MODIFY", "id": "E1", "text": "...", "sources": ["P2"]}]}')
