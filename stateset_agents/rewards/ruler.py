"""RulerReward: a relative LLM judge that scores a whole TrajectoryGroup in one call (after OpenPipe ART's RULER).

One ``score(group)`` makes one judge call (plus retries when the reply is invalid). The prompt holds the rubric,
the messages every conversation starts with (their longest common prefix) once, and then each conversation's
remaining messages under an id ``t1``..``tN`` (``tK`` is the K-th trajectory of the group). The judge answers
``{"scores": [{"id": "t1", "score": 0.8, "explanation": "..."}, ...]}``, scoring the conversations relative to
each other on 0..1.

The agent's text is an adversary's: a policy that does no real work may write a fake conversation header or a
ready-made score block into its messages. So each block is fenced by lines carrying a random nonce drawn per call
(``=== t1 (fence 3f9c...) ===`` ... ``=== end of t1 (fence 3f9c...) ===``), the system prompt names the nonce,
and message text is quoted: every line of it (split at every line boundary Python knows, ``\r``, ``\u2028`` and
``\x85`` included) starts with ``> `` under a ``[role]`` line, and tool names and arguments are JSON-escaped on
one line. No agent text can start a line, so none can open or close a fence.

The reply must be valid: it holds exactly one JSON object with a ``scores`` list (a judge that quotes a forged
score object next to its own is asked again), in which every id appears exactly once, no unknown id appears, and
every score is a number in [0, 1]. An invalid reply is answered, in the
same judge conversation, with a user message naming the problem, up to ``max_retries`` times. When no valid reply
comes, every trajectory gets ``value=None`` with the error: there is no heuristic stand-in for a judge score.
Failed trajectories (``trajectory.error`` set) are not sent to the judge and get ``value=None`` with their error.

Rubrics are data: a built-in name (``rewards/rubrics/NAME.md`` in a checkout, inside the wheel when installed),
a markdown/text/YAML file path, or the rubric text itself; see :func:`load_rubric`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError, ModelError, PackError, did_you_mean, error_location, validation_error_text
from ..models.base import ChatModel, SamplingParams
from ..models.structured import AskStats, NoValidAnswer, ask_json
from ..types import Completion, Message, RewardResult, Trajectory, TrajectoryGroup
from .base import failed_result
from .judge_cache import JudgeCache, cache_key
from .ruler_prompt import (
    InvalidJudgement,
    build_judge_messages,
    common_prefix_length,
    judgement_schema,
    parse_judgement,
    retry_message,
    validate_judgement,
)

__all__ = [
    "PROMPT_VERSION",
    "RulerReward",
    "build_judge_messages",
    "builtin_rubrics",
    "common_prefix_length",
    "judgement_schema",
    "load_rubric",
    "parse_judgement",
]

PROMPT_VERSION = "ruler-v2"
"""Part of every cache key: bump it when the prompt changes, so old verdicts are not reused."""

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
YAML_SUFFIXES = (".yaml", ".yml")
RUBRIC_SUFFIXES = TEXT_SUFFIXES + YAML_SUFFIXES


# ----------------------------------------------------------------------------------------------- rubrics


class RubricFile(BaseModel):
    """The YAML rubric format. It is rendered to text for the judge (see :func:`render_rubric`)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    """A heading, e.g. "Customer service"."""
    description: str | None = None
    """What the agent is there to do and how to judge it, in a sentence or two."""
    criteria: list[str] = Field(default_factory=list)
    """What matters, most important first."""
    anchors: dict[float, str] = Field(default_factory=dict)
    """Score -> what a conversation with that score looks like; scores in [0, 1] (e.g. 1.0, 0.5, 0.0)."""

    @field_validator("anchors")
    @classmethod
    def _anchors_in_range(cls, v: dict[float, str]) -> dict[float, str]:
        bad = [k for k in v if not 0.0 <= k <= 1.0]
        if bad:
            raise ValueError(f"anchor scores {bad} are outside [0, 1]; use keys like 1.0, 0.5, 0.0")
        return v


def render_rubric(r: RubricFile) -> str:
    parts = [f"# {r.title}"] if r.title else []
    if r.description:
        parts.append(r.description.strip())
    if r.criteria:
        parts.append("What matters, most important first:\n"
                     + "\n".join(f"{i}. {c.strip()}" for i, c in enumerate(r.criteria, 1)))
    if r.anchors:
        parts.append("Anchors:\n" + "\n".join(f"- {k:.1f}: {v.strip()}"
                                              for k, v in sorted(r.anchors.items(), reverse=True)))
    return "\n\n".join(parts)


def builtin_rubrics() -> dict[str, Path]:
    """Built-in rubric name -> file, from ``rubrics/`` of the rewards pack root (checkout or installed wheel)."""
    from ..envs.pack import pack_root

    root = pack_root("rewards") / "rubrics"
    if not root.is_dir():
        return {}
    return {p.stem: p for p in sorted(root.iterdir()) if p.is_file() and p.suffix in RUBRIC_SUFFIXES}


def _read_rubric_file(path: Path) -> str:
    if path.suffix not in RUBRIC_SUFFIXES:
        raise ConfigError(f"rubric file {str(path)!r} has suffix {path.suffix!r}; use one of {list(RUBRIC_SUFFIXES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read rubric file {str(path)!r}: {e}; check the path") from e
    if path.suffix in YAML_SUFFIXES:
        try:
            data = yaml.safe_load(text)
            text = render_rubric(RubricFile.model_validate(data))
        except yaml.YAMLError as e:
            raise PackError(f"{path}: not valid YAML: {e}", file=str(path)) from e
        except ValidationError as e:
            raise PackError(f"{path}: {validation_error_text(e, limit=1)}; a YAML rubric has title, description, "
                            "criteria (list) and anchors (score -> text)", file=str(path),
                            field=error_location(e.errors()[0]) or "(top level)") from e
    if not text.strip():
        raise ConfigError(f"rubric file {str(path)!r} is empty; write what a 1.0, 0.5 and 0.0 conversation look like")
    return text.strip()


def load_rubric(rubric: str | os.PathLike[str]) -> tuple[str, str]:
    """Resolve a rubric argument to ``(name, text)``.

    The rule, in order:

    1. a ``Path`` (any ``os.PathLike``) is a rubric file;
    2. a one-line string ending in ``.md``, ``.markdown``, ``.txt``, ``.yaml`` or ``.yml`` is a rubric file;
    3. a string naming a built-in rubric (``default``, ``customer_service``, ...) is that rubric;
    4. any other string without whitespace is taken as a misspelt name and raises :class:`ConfigError`;
    5. any other string (it contains whitespace) is the rubric text itself, used as given.

    Markdown and text files are used verbatim; YAML files are validated (:class:`RubricFile`) and rendered.
    The name is the built-in name, the file stem, or ``"inline"``.
    """
    if isinstance(rubric, os.PathLike):
        path = Path(rubric)
        if not path.is_file():
            raise ConfigError(f"rubric file {str(path)!r} does not exist; pass an existing .md/.yaml file, "
                              f"a built-in name ({', '.join(builtin_rubrics())}) or the rubric text")
        return path.stem, _read_rubric_file(path)
    if not isinstance(rubric, str):
        raise ConfigError(f"rubric must be a name, a path or the rubric text, not {type(rubric).__name__}")
    if "\n" not in rubric and rubric.strip().endswith(RUBRIC_SUFFIXES):
        return load_rubric(Path(rubric.strip()))
    builtins = builtin_rubrics()
    if rubric in builtins:
        return rubric, _read_rubric_file(builtins[rubric])
    if not rubric.strip():
        raise ConfigError("rubric is empty; pass a built-in name, a file path or the rubric text")
    if not any(ch.isspace() for ch in rubric.strip()):
        hint = did_you_mean(rubric, builtins)
        hint = " " + hint if hint else ""
        raise ConfigError(f"unknown rubric {rubric!r}: the built-in rubrics are {sorted(builtins)}.{hint} "
                          "A file path must end in .md, .yaml or .txt; literal rubric text must contain spaces")
    return "inline", rubric.strip()


class _Counted:
    """A ChatModel view of ``RulerReward._call`` (which counts calls, tokens and latency)."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def chat(self, messages: list[Message], *, sampling: SamplingParams, tools: Any = None) -> Completion:
        return await self._call(messages, sampling)


def judge_identity(judge: Any) -> str | None:
    """``ClassName:name`` from the judge's ``name`` (or ``model``) attribute; None when it has neither."""
    name = getattr(judge, "name", None) or getattr(judge, "model", None)
    return f"{type(judge).__name__}:{name}" if isinstance(name, str) and name else None


def _wire(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


class RulerReward:
    """Relative group judge: one judge call scores every trajectory of a group on 0..1 against a rubric.

    Args:
        judge: any ChatModel (a local :class:`HFChatModel`, an :class:`OpenAIChatModel` endpoint, ...).
        rubric: a built-in name, a file path or the rubric text (the rule: :func:`load_rubric`).
        judge_id: the judge's identity in cache keys; default ``ClassName:name`` from the judge's ``name`` or
            ``model`` attribute. Set it when that name does not pin down the weights (e.g. a fine-tuned folder).
        cache: a :class:`JudgeCache`, or a path to its SQLite file; None (default) caches nothing.
        max_retries: how many times an invalid reply is fed back to the judge before giving up.
        sampling: the judge's sampling; default greedy (temperature 0) with ``max_new_tokens = 48 + 80 * N``.
        name: the reward's name and the key of its component.
        constrained: decode the verdict under its JSON schema (:func:`judgement_schema`: every id once, scores in
            [0, 1]): local models apply the grammar token by token, OpenAI-compatible endpoints get it as
            ``response_format``. False for an endpoint that refuses ``response_format``.

    ``stats``: ``calls`` (judge calls, retries included), ``cache_hits``, ``retries``, ``failures`` (groups left
    without a valid judgement), ``prompt_tokens`` and ``completion_tokens`` (from ``Completion.usage``) and
    ``latency_s`` (total seconds spent in judge calls).
    """

    def __init__(self, judge: ChatModel, rubric: str | os.PathLike[str] = "default", *, judge_id: str | None = None,
                 cache: JudgeCache | str | os.PathLike[str] | None = None, max_retries: int = 2,
                 sampling: SamplingParams | None = None, name: str = "ruler", constrained: bool = True) -> None:
        if not callable(getattr(judge, "chat", None)):
            raise ConfigError(f"judge {judge!r} has no chat() method; pass a ChatModel (HFChatModel, OpenAIChatModel)")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r} must be an integer >= 0")
        if judge_id is not None and not judge_id.strip():
            raise ConfigError("judge_id is empty; pass a name that identifies the judge model, or leave it None")
        self.judge = judge
        self.rubric_name, self.rubric = load_rubric(rubric)
        self.judge_id = judge_id or judge_identity(judge)
        self.cache = JudgeCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        if self.cache is not None and self.judge_id is None:
            raise ConfigError(f"cannot cache verdicts of judge {type(judge).__name__}: it has no `name` or `model` "
                              "attribute to identify it; pass judge_id='...' naming the judge model")
        self.max_retries = max_retries
        self.sampling = sampling
        self.name = name
        self.constrained = constrained
        self.stats: dict[str, float] = {"calls": 0, "cache_hits": 0, "retries": 0, "failures": 0,
                                        "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0}

    def __repr__(self) -> str:
        return f"RulerReward(judge={self.judge_id!r}, rubric={self.rubric_name!r}, name={self.name!r})"

    def sampling_for(self, n: int) -> SamplingParams:
        return self.sampling or SamplingParams(temperature=0.0, max_new_tokens=48 + 80 * n)

    def cache_key_for(self, conversations: list[tuple[str, list[Message]]]) -> str:
        """Prompt version, rubric, judge, the judge's sampling settings and the conversations (not the fence)."""
        sampling = self.sampling_for(len(conversations)).model_dump(mode="json")
        return cache_key({"version": PROMPT_VERSION, "rubric": self.rubric, "judge": self.judge_id,
                          "sampling": sampling, "constrained": self.constrained, "conversations": [[cid, _wire(msgs)] for cid, msgs in conversations]})

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        conversations = [(f"t{i + 1}", t.messages) for i, t in enumerate(group.trajectories) if t.error is None]
        if not conversations:
            return [failed_result(t) for t in group.trajectories]
        ids = [cid for cid, _ in conversations]
        key = self.cache_key_for(conversations) if self.cache is not None else None
        verdict = await self._cached(key, ids)
        if verdict is None:
            verdict = await self._judge(build_judge_messages(self.rubric, conversations), ids)
            if isinstance(verdict, dict) and key is not None:
                await asyncio.to_thread(self.cache.put, key, _to_json(verdict))  # type: ignore[union-attr]
        return self._results(group.trajectories, verdict)

    async def _cached(self, key: str | None, ids: list[str]) -> dict[str, tuple[float, str]] | None:
        if key is None:
            return None
        stored = await asyncio.to_thread(self.cache.get, key)  # type: ignore[union-attr]
        if stored is None:
            return None
        try:
            verdict = validate_judgement(stored, ids)
        except InvalidJudgement as e:
            raise ConfigError(f"judge cache {self.cache!r}: entry {key[:12]}... does not fit this group ({e}); "
                              "delete the cache file to start fresh") from e
        self.stats["cache_hits"] += 1
        return verdict

    async def _judge(self, messages: list[Message], ids: list[str]) -> dict[str, tuple[float, str]] | str:
        """A valid verdict, or the reason there is none (one home for the retries: models/structured.py)."""
        stats = AskStats()
        try:
            return await ask_json(_Counted(self._call), messages, lambda text: parse_judgement(text, ids),
                                  sampling=self.sampling_for(len(ids)), retries=self.max_retries,
                                  schema=judgement_schema(ids) if self.constrained else None,
                                  what="RULER judge", retry_message=lambda problem: retry_message(problem, ids),
                                  stats=stats)
        except ModelError as e:
            self.stats["failures"] += 1
            return f"RULER judge call failed: {e}"
        except NoValidAnswer as e:
            self.stats["failures"] += 1
            return f"{e}. Use a stronger judge model, or raise max_retries"
        finally:
            self.stats["retries"] += stats.retries

    async def _call(self, messages: list[Message], sampling: SamplingParams) -> Completion:
        self.stats["calls"] += 1
        start = time.perf_counter()
        try:
            reply = await self.judge.chat(messages, sampling=sampling)
        finally:
            self.stats["latency_s"] += time.perf_counter() - start
        self.stats["prompt_tokens"] += reply.usage.get("prompt_tokens", 0)
        self.stats["completion_tokens"] += reply.usage.get("completion_tokens", 0)
        return reply

    def _results(self, trajectories: list[Trajectory],
                 verdict: dict[str, tuple[float, str]] | str) -> list[RewardResult]:
        out = []
        for i, t in enumerate(trajectories):
            if t.error is not None:
                out.append(failed_result(t))
            elif isinstance(verdict, str):
                out.append(RewardResult(value=None, components={self.name: None}, error=verdict))
            else:
                value, explanation = verdict[f"t{i + 1}"]
                out.append(RewardResult(value=value, components={self.name: value}, explanation=explanation))
        return out


def _to_json(verdict: dict[str, tuple[float, str]]) -> dict[str, Any]:
    return {"scores": [{"id": cid, "score": s, "explanation": e} for cid, (s, e) in verdict.items()]}
