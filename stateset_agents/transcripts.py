"""Transcripts: every episode as one JSON line a person can read and other tools can load.

    records = transcripts_from_groups(groups, rewards=scores, domain="customer_service")
    write_transcripts("eval_after.transcripts.jsonl", records)
    datasets.load_dataset("json", data_files="eval_after.transcripts.jsonl")   # one row per episode

A record (:class:`Transcript`) holds the conversation in OpenAI chat format (``role``, ``content``,
``tool_calls`` with ``function.arguments`` as a JSON string, ``tool_call_id`` and ``name`` on tool results), the
episode's seed, scenario and domain, the env's outcome, the reward and every reward component, and the error if
the episode failed. Every record of one file has the same keys, so Arrow (``datasets``, pandas, DuckDB) reads the
file with one schema:

- ``reward_components`` holds every component name seen in the file (``None`` where a trial lacks it);
- the outcome's ``facts_told`` (a mapping whose keys differ per scenario) becomes a list of ``{fact, told}``.

``EvalReport.save("eval_X.json")`` writes ``eval_X.transcripts.jsonl`` next to it, so ``stateset-agents eval
--json`` and both trainers' before/after evaluations leave transcripts in the run folder.
Files are written atomically (temp file, then rename); :func:`append_transcripts` adds lines for a long run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .atomic import write_text_atomic
from .errors import ConfigError
from .types import Message, RewardResult, Trajectory, TrajectoryGroup

__all__ = ["Transcript", "append_transcripts", "read_transcripts", "transcript", "transcripts_from_groups",
           "transcripts_path", "write_text_atomic", "write_transcripts"]

VERSION = 1


class Transcript(BaseModel):
    """One episode (one line of a transcripts file)."""

    model_config = ConfigDict(extra="forbid")

    version: int = VERSION
    tag: str | None = None
    """Which run produced it, when the writer says (e.g. ``train`` for a training run's rollouts)."""
    step: int | None = None
    """The training step of a rollout (as in ``metrics.jsonl``, so a resume can cut the file back); None for
    evaluations."""
    domain: str | None = None
    scenario_id: str
    trial: int | None = None
    """Index of the trial within the scenario's k (evaluation) or group (training)."""
    seed: int | None = None
    """The episode seed: the same seed replays the same user and sampling draws."""
    env_id: str | None = None
    messages: list[dict[str, Any]]
    """OpenAI chat format, system message included."""
    success: bool
    """``outcome["success"]`` and no error."""
    score: float | None = None
    """``outcome["score"]`` (partial credit in [0, 1]); None when the episode failed."""
    progress: float | None = None
    """``outcome["progress"]`` when the environment reports it."""
    goal_reached: bool | None = None
    ended_by: str | None = None
    turns: int = 0
    """Agent messages."""
    terminated: bool = False
    truncated: bool = False
    outcome: dict[str, Any] | None = None
    reward: float | None = None
    reward_components: dict[str, float | None] = Field(default_factory=dict)
    reward_explanation: str = ""
    reward_error: str | None = None
    error: str | None = None
    """Why the episode failed (then ``success`` is False)."""


def _message(m: Message) -> dict[str, Any]:
    calls = None
    if m.tool_calls:
        calls = [{"id": c.id, "type": "function",
                  "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                 for c in m.tool_calls]
    return {"role": m.role, "content": m.content, "tool_calls": calls, "tool_call_id": m.tool_call_id,
            "name": m.name}


def _outcome(o: dict[str, Any] | None) -> dict[str, Any] | None:
    if o is None:
        return None
    out = dict(o)
    if isinstance(out.get("facts_told"), dict):
        out["facts_told"] = [{"fact": k, "told": bool(v)} for k, v in out["facts_told"].items()]
    return out


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def transcript(t: Trajectory, *, result: RewardResult | None = None, domain: str | None = None,
               trial: int | None = None, tag: str | None = None, step: int | None = None) -> Transcript:
    """The record of one trajectory; ``result`` is its reward (default: what the trajectory carries)."""
    error = t.error if t.error is not None or t.outcome is not None else "the episode ended without an outcome"
    o = t.outcome or {}
    ok = error is None
    return Transcript(
        tag=tag, step=step, domain=domain, scenario_id=t.scenario_id, trial=trial, seed=t.seed, env_id=t.env_id,
        messages=[_message(m) for m in t.messages], success=ok and bool(o.get("success")),
        score=_number(o.get("score")) if ok else None, progress=_number(o.get("progress")),
        goal_reached=o.get("goal_reached") if ok else None, ended_by=o.get("ended_by"),
        turns=sum(m.role == "assistant" for m in t.messages), terminated=t.terminated, truncated=t.truncated,
        outcome=_outcome(t.outcome),
        reward=result.value if result is not None else t.reward,
        reward_components=dict(result.components if result is not None else t.components),
        reward_explanation=result.explanation if result is not None else "",
        reward_error=result.error if result is not None else None, error=error)


def transcripts_from_groups(groups: Iterable[TrajectoryGroup | Trajectory], *,
                            rewards: Sequence[Sequence[RewardResult | None]] | None = None,
                            domain: str | None = None, tag: str | None = None,
                            step: int | None = None) -> list[Transcript]:
    """Records of groups (trial = index in the group) or plain trajectories; ``rewards[i][j]`` scores trial j
    of group i (default: the reward the trajectories carry)."""
    out = []
    for i, g in enumerate(groups):
        trajs = g.trajectories if isinstance(g, TrajectoryGroup) else [g]
        for j, t in enumerate(trajs):
            r = rewards[i][j] if rewards is not None else None
            out.append(transcript(t, result=r, domain=domain, trial=j if isinstance(g, TrajectoryGroup) else None,
                                  tag=tag, step=step))
    return out


def _lines(records: Sequence[Transcript]) -> str:
    names = list(dict.fromkeys(n for r in records for n in r.reward_components))
    lines = []
    for r in records:
        row = r.model_dump(mode="json")
        row["reward_components"] = {n: r.reward_components.get(n) for n in names}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_transcripts(path: str | os.PathLike[str], records: Iterable[Transcript | Trajectory | TrajectoryGroup],
                      **kwargs: Any) -> Path:
    """Write records (or trajectories/groups, converted with :func:`transcripts_from_groups` and ``kwargs``)
    as JSONL, atomically; return the path."""
    return write_text_atomic(path, _lines(_as_records(records, kwargs)))


def append_transcripts(path: str | os.PathLike[str],
                       records: Iterable[Transcript | Trajectory | TrajectoryGroup], **kwargs: Any) -> Path:
    """Append records to a JSONL file in one write (a training run calls this once per step, with ``step=``).
    A line torn by a kill is skipped by :func:`read_transcripts`. Component names are unified within each call
    only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _lines(_as_records(records, kwargs))
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def _as_records(records: Iterable[Any], kwargs: dict[str, Any]) -> list[Transcript]:
    items = list(records)
    if all(isinstance(r, Transcript) for r in items):
        if kwargs:
            raise ConfigError(f"options {sorted(kwargs)} apply to trajectories, not to Transcript records")
        return items
    if any(isinstance(r, Transcript) for r in items):
        raise ConfigError("pass either Transcript records or trajectories/groups, not a mix")
    return transcripts_from_groups(items, **kwargs)


def transcripts_path(report_path: str | os.PathLike[str]) -> Path:
    """Where an evaluation report's transcripts go: ``eval_after.json`` -> ``eval_after.transcripts.jsonl``."""
    p = Path(report_path)
    return p.with_name(f"{p.stem if p.suffix == '.json' else p.name}.transcripts.jsonl")


def read_transcripts(path: str | os.PathLike[str]) -> list[Transcript]:
    """Read and check a transcripts file. A torn last line (a killed run) is skipped; any other bad line raises
    :class:`ConfigError` naming the file and line."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{str(p)!r} is a folder; pass a transcripts file (*.transcripts.jsonl), e.g. "
                          f"{str(p / 'eval_after.transcripts.jsonl')!r}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read transcripts {str(p)!r}: {e.strerror or e}; pass a file written by "
                          "`stateset-agents eval --json` or a training run (*.transcripts.jsonl)") from e
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Transcript.model_validate_json(line))
        except ValidationError as e:
            if i == len(lines) and not line.rstrip().endswith("}"):
                continue  # torn by a kill mid-write
            err = e.errors()[0]
            where = ".".join(map(str, err["loc"])) or "line"
            raise ConfigError(f"{p}:{i}: not a transcript record ({where}: {err['msg']}); pass a file written "
                              "by `stateset-agents eval --json` or a training run (*.transcripts.jsonl)") from e
    if not out:
        raise ConfigError(f"{p}: no transcript records; it is empty")
    return out
