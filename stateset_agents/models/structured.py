"""Ask a model for a JSON answer, validate it, and retry with the problem fed back: the one home for it.

The RULER judge and the Training-Free learner both need a JSON object from a model that may be small. Each
passes a ``parse`` function (text -> value, raising :class:`InvalidAnswer` with a message the model can act on)
and, optionally, a JSON ``schema``. With a schema, the request carries ``SamplingParams.json_schema``: local
models decode under the grammar (models/grammar.py), so the text is always a syntactically valid document of
the right shape, and OpenAI-compatible endpoints get it as ``response_format``. ``parse`` still runs: a schema
says nothing about, say, ids that must match the conversations being judged.

On an invalid answer the model's reply and a user message naming the problem are appended and the model answers
again, up to ``retries`` times (each retry with ``seed + attempt`` when a seed is set, so it can differ). When no
valid answer comes, :class:`NoValidAnswer` carries every problem in order. A failing model call
(:class:`ModelError`) is not retried here: it propagates to the caller, who decides (RULER fails the group, the
learner skips it); a model that is down is not an invalid answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..types import Completion, Message, SamplingParams

__all__ = ["AskStats", "InvalidAnswer", "NoValidAnswer", "ask_json", "first_json_object"]

T = TypeVar("T")


class InvalidAnswer(ValueError):
    """A reply that cannot be used; the message is shown to the model on the retry."""


class NoValidAnswer(RuntimeError):
    """No valid answer within the retries. ``problems`` holds each attempt's problem, ``last`` the last reply."""

    def __init__(self, what: str, problems: list[str], last: Completion | None) -> None:
        n = len(problems)
        super().__init__(f"{what}: no valid answer in {n} attempt{'s' if n != 1 else ''}; "
                         f"last problem: {problems[-1] if problems else 'none'}")
        self.problems, self.last = problems, last


@dataclass
class AskStats:
    calls: int = 0
    retries: int = 0
    invalid_answers: int = 0
    cut_off: int = 0
    """Invalid answers that ended at ``max_new_tokens``."""
    problems: list[str] = field(default_factory=list)


def first_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` (code fences and prose around it are ignored)."""
    import json

    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(obj, dict):
                return obj
        start = text.find("{", start + 1)
    raise InvalidAnswer("the reply contains no JSON object")


def _retry_text(problem: str) -> str:
    return f"That answer cannot be used: {problem}. Answer again with the corrected JSON object only."


async def ask_json(model: Any, messages: list[Message], parse: Callable[[str], T], *, sampling: SamplingParams,
                   schema: dict[str, Any] | None = None, retries: int = 2, what: str = "model",
                   retry_message: Callable[[str], Message] | None = None,
                   stats: AskStats | None = None) -> T:
    """``parse(reply.text)`` of the first valid reply; :class:`NoValidAnswer` after ``retries`` extra attempts.

    Args:
        model: any ChatModel.
        messages: the request; not modified (retries extend a copy).
        parse: text -> value; raises :class:`InvalidAnswer` (or ValueError) naming the problem.
        sampling: the sampling parameters; ``json_schema`` is set from ``schema`` when given.
        schema: a JSON schema the answer must follow (constrained decoding where the model supports it).
        retries: extra attempts after an invalid answer.
        what: who is asked, for the error message ("RULER judge", "learner: summary").
        retry_message: builds the user message sent after an invalid answer (default: names the problem).
        stats: counters to update (calls, retries, invalid answers, cut-off answers).
    """
    stats = stats if stats is not None else AskStats()
    if schema is not None:
        sampling = sampling.model_copy(update={"json_schema": schema})
    conversation = list(messages)
    problems: list[str] = []
    last: Completion | None = None
    for attempt in range(retries + 1):
        s = sampling if attempt == 0 or sampling.seed is None else sampling.model_copy(
            update={"seed": sampling.seed + attempt})
        stats.calls += 1
        stats.retries += attempt > 0
        last = await model.chat(conversation, sampling=s)
        try:
            return parse(last.text)
        except ValueError as e:  # InvalidAnswer and the callers' own ValueError subclasses
            problem = str(e)
            if last.finish_reason == "length":
                stats.cut_off += 1
                problem += (f" (the reply was cut off at max_new_tokens={s.max_new_tokens}; "
                            "answer with the JSON object only, briefly)")
            stats.invalid_answers += 1
            problems.append(problem)
            stats.problems.append(problem)
        if attempt < retries:
            follow = retry_message(problem) if retry_message else Message(role="user", content=_retry_text(problem))
            conversation += [Message(role="assistant", content=last.text), follow]
    raise NoValidAnswer(what, problems, last)
