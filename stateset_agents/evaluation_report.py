"""The evaluation report: pass@k and pass^k, every trial kept, aggregates per domain and overall, its table,
its files (JSON and transcripts) and the merge of shard reports.

:func:`~stateset_agents.evaluation.aevaluate` produces an :class:`EvalReport`; the module docs of
:mod:`stateset_agents.evaluation` say what success, errors, reward, pass@k and pass^k mean. Everything here is
importable from :mod:`stateset_agents.evaluation` too.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator
from rich.table import Table

from .errors import ConfigError
from .transcripts import Transcript, read_transcripts, transcripts_path, write_text_atomic, write_transcripts

__all__ = [
    "ComponentStat",
    "DomainSummary",
    "EvalReport",
    "ScenarioResult",
    "TrialResult",
    "pass_at_k",
    "pass_hat_k",
    "summarize",
]


# ---------------------------------------------------------------- metrics
def _counts(successes: Sequence[Iterable[int]], k: int) -> list[tuple[int, int]]:
    """(n, c) per scenario, after checking every input; errors name the bad value and the fix."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1")
    if isinstance(successes, (str, bytes)) or not isinstance(successes, Sequence) or len(successes) == 0:
        raise ConfigError(f"successes={successes!r} must be a non-empty list with one list of 0/1 trial results "
                          "per scenario, e.g. [[1, 0, 1], [0, 0, 1]]")
    out = []
    for i, trials in enumerate(successes):
        if isinstance(trials, (str, bytes)) or not isinstance(trials, Iterable):
            raise ConfigError(f"successes[{i}]={trials!r} is not a list of 0/1 trial results; pass one list per "
                              "scenario, e.g. [[1, 0, 1], [0, 0, 1]]")
        trials = list(trials)
        if not trials:
            raise ConfigError(f"successes[{i}] is empty; every scenario needs at least one trial result")
        for j, v in enumerate(trials):
            if not isinstance(v, numbers.Integral) or v not in (0, 1):
                raise ConfigError(f"successes[{i}][{j}]={v!r}; trial results must be 0 or 1 (or False/True)")
        n = len(trials)
        if k > n:
            raise ConfigError(f"k={k} is larger than the {n} trials of successes[{i}]; pass@k and pass^k need at "
                              f"least k trials per scenario: run more trials or use k <= {n}")
        out.append((n, sum(int(v) for v in trials)))
    return out


def pass_at_k(successes: Sequence[Iterable[int]], k: int) -> float:
    """Mean over scenarios of ``1 - C(n-c, k) / C(n, k)``: the chance that at least one of k trials succeeds.

    ``successes`` holds one list of 0/1 trial results per scenario (``n`` trials, ``c`` successes each). This is
    the unbiased estimator of Chen et al. (2021); with ``k == 1`` it is the mean per-scenario success rate.
    Raises :class:`ConfigError` when the list or a scenario's list is empty, a result is not 0/1, or ``k > n``.
    """
    return sum(1.0 - math.comb(n - c, k) / math.comb(n, k) for n, c in _counts(successes, k)) / len(successes)


def pass_hat_k(successes: Sequence[Iterable[int]], k: int) -> float:
    """pass^k (tau-bench): mean over scenarios of ``C(c, k) / C(n, k)``, the chance that all k trials succeed.

    Same input and errors as :func:`pass_at_k`. ``pass^1 == pass@1``; pass^k falls with k unless the agent is
    reliably right, which is what it measures.
    """
    return sum(math.comb(c, k) / math.comb(n, k) for n, c in _counts(successes, k)) / len(successes)


# ---------------------------------------------------------------- report data
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialResult(_Strict):
    """One episode of a scenario."""

    seed: int
    """The episode seed (``rollout.episode_seed(seed, scenario_id, trial index)``)."""
    success: bool
    """``outcome["success"]``; False when the episode failed."""
    error: str | None = None
    """Why the episode failed, if it did (then ``success`` is False and the trial counts in ``errors``)."""
    outcome_score: float | None = None
    """``outcome["score"]`` in [0, 1] (partial credit); None when the episode failed."""
    goal_reached: bool | None = None
    progress: float | None = None
    """``outcome["progress"]``: the share of earned items (envs/outcome.py); None when the episode failed."""
    tool_calls: int | None = None
    """Tool calls the agent made; None when the episode failed."""
    tool_errors: int | None = None
    """Of those, the ones that failed (unparseable, unknown tool, bad arguments, refused by the tool)."""
    turns: int | None = None
    """Agent messages in the episode."""
    reward: float | None = None
    """The RewardFunction's total; None when not applicable, not scored, or the reward failed."""
    components: dict[str, float | None] = Field(default_factory=dict)
    reward_error: str | None = None


class ScenarioResult(_Strict):
    """The k trials of one scenario."""

    index: int
    """Position of (domain, scenario) in the whole evaluation list; shards are merged back in this order."""
    domain: str
    scenario_id: str
    trials: list[TrialResult]

    @property
    def successes(self) -> list[int]:
        return [int(t.success) for t in self.trials]


class ComponentStat(_Strict):
    mean: float | None
    """Mean over applicable values (None when there are none)."""
    count: int
    """Applicable (non-None) values."""
    missing: int
    """Trials where the component was None or absent."""


class DomainSummary(_Strict):
    """Aggregates over a set of scenarios (one domain, or all of them)."""

    domain: str
    scenarios: int
    trials: int
    successes: int
    errors: int
    """Trials whose episode failed (counted as failures too)."""
    success_rate: float | None
    """successes / trials, errors included in the denominator; None without trials."""
    mean_outcome_score: float | None
    """Mean of ``outcome["score"]`` over trials that ended without error."""
    mean_reward: float | None
    reward_count: int
    """Trials with a reward value."""
    reward_missing: int
    """Trials without one (not applicable, failed episode, reward error, or no reward function)."""
    reward_errors: int
    """Trials whose episode was fine but whose reward call failed."""
    components: dict[str, ComponentStat]
    pass_at_k: dict[int, float]
    """pass@j for j = 1..k."""
    pass_hat_k: dict[int, float]
    """pass^j for j = 1..k."""


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize(domain: str, results: Sequence[ScenarioResult]) -> DomainSummary:
    """Aggregate scenario results (see :class:`DomainSummary`)."""
    trials = [t for s in results for t in s.trials]
    names: dict[str, None] = {}
    for t in trials:
        names.update(dict.fromkeys(t.components))
    comps = {}
    for name in names:
        vals = [t.components[name] for t in trials if t.components.get(name) is not None]
        comps[name] = ComponentStat(mean=_mean(vals), count=len(vals), missing=len(trials) - len(vals))
    rewards = [t.reward for t in trials if t.reward is not None]
    succ = [s.successes for s in results]
    max_k = min((len(x) for x in succ), default=0)
    return DomainSummary(
        domain=domain, scenarios=len(results), trials=len(trials), successes=sum(t.success for t in trials),
        errors=sum(t.error is not None for t in trials),
        success_rate=_mean([float(t.success) for t in trials]),
        mean_outcome_score=_mean([t.outcome_score for t in trials if t.outcome_score is not None]),
        mean_reward=_mean(rewards), reward_count=len(rewards), reward_missing=len(trials) - len(rewards),
        reward_errors=sum(t.reward_error is not None and t.error is None for t in trials), components=comps,
        pass_at_k={j: pass_at_k(succ, j) for j in range(1, max_k + 1)},
        pass_hat_k={j: pass_hat_k(succ, j) for j in range(1, max_k + 1)})


_COMPUTED = ("overall", "by_domain")


class EvalReport(_Strict):
    """The result of an evaluation: every trial kept, aggregates derived from them (never stored separately).

    ``overall`` and ``by_domain`` are computed from ``results`` and written into the JSON for readers; on
    load they are recomputed, so a report cannot disagree with its own trials.
    """

    k: int
    """Trials per scenario."""
    seed: int
    rank: int = 0
    world_size: int = 1
    """A shard report has ``world_size > 1``; :meth:`merge` combines the shards."""
    domains: list[str]
    """Domain names in evaluation order."""
    total_scenarios: int
    """(domain, scenario) pairs in the whole evaluation, over all shards."""
    model: str | None = None
    reward: str | None = None
    """The RewardFunction's name, if one scored the trials."""
    label: str | None = None
    """Free text shown in the table title (the CLI puts the experience library here)."""
    results: list[ScenarioResult]
    elapsed_s: float = 0.0
    transcripts: list[Transcript] = Field(default_factory=list, exclude=True, repr=False)
    """Every episode, in the order of ``results`` (not in the JSON; :meth:`save` writes them as JSONL)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_computed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _COMPUTED}
        return data

    @model_validator(mode="after")
    def _check(self) -> EvalReport:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} must be in [0, world_size={self.world_size})")
        seen: set[int] = set()
        for s in self.results:
            if s.domain not in self.domains:
                raise ValueError(f"scenario {s.scenario_id!r} has domain {s.domain!r}, not one of {self.domains}")
            if s.index in seen or not 0 <= s.index < self.total_scenarios:
                raise ValueError(f"scenario {s.scenario_id!r} has index {s.index}: duplicate or outside "
                                 f"[0, {self.total_scenarios})")
            if len(s.trials) != self.k:
                raise ValueError(f"scenario {s.scenario_id!r} has {len(s.trials)} trials, expected k={self.k}")
            seen.add(s.index)
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def overall(self) -> DomainSummary:
        return summarize("overall", self.results)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def by_domain(self) -> dict[str, DomainSummary]:
        return {d: summarize(d, [s for s in self.results if s.domain == d]) for d in self.domains}

    def successes(self, domain: str | None = None) -> list[list[int]]:
        """One 0/1 list per scenario (of ``domain``, or all): the input of :func:`pass_at_k` / :func:`pass_hat_k`."""
        if domain is not None and domain not in self.domains:
            raise ConfigError(f"domain {domain!r} is not in this report; it has {self.domains}")
        return [s.successes for s in self.results if domain is None or s.domain == domain]

    # ------------------------------------------------------------ files
    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (temp file in the same folder, then rename); return the path. With
        transcripts, also write them to ``transcripts_path(path)`` (``eval.json`` -> ``eval.transcripts.jsonl``)."""
        path = Path(path)
        if self.transcripts:
            write_transcripts(transcripts_path(path), self.transcripts)
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalReport:
        """Read a report written by :meth:`save`, with its transcripts when their file is next to it."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read evaluation report {str(path)!r}: {e}") from e
        try:
            report = cls.model_validate_json(text)
        except ValueError as e:
            raise ConfigError(f"{str(path)!r} is not an evaluation report written by EvalReport.save: {e}") from e
        side = transcripts_path(path)
        if side.is_file():
            report.transcripts = read_transcripts(side)
        return report

    # ------------------------------------------------------------ shards
    @classmethod
    def merge(cls, reports: Sequence[EvalReport]) -> EvalReport:
        """Combine the shard reports of ranks 0..world_size-1 into the report one process would produce."""
        if not reports:
            raise ConfigError("merge() needs at least one report (one per rank)")
        first = reports[0]
        for r in reports[1:]:
            for field in ("k", "seed", "world_size", "domains", "total_scenarios", "model", "reward", "label"):
                if getattr(r, field) != getattr(first, field):
                    raise ConfigError(f"cannot merge shards with different {field}: {getattr(first, field)!r} "
                                      f"(rank {first.rank}) vs {getattr(r, field)!r} (rank {r.rank}); merge only "
                                      "the shards of one evaluation")
        ranks = sorted(r.rank for r in reports)
        if ranks != list(range(first.world_size)):
            raise ConfigError(f"merge() needs exactly one report per rank 0..{first.world_size - 1}, got ranks "
                              f"{ranks}")
        results = sorted((s for r in reports for s in r.results), key=lambda s: s.index)
        if [s.index for s in results] != list(range(first.total_scenarios)):
            raise ConfigError(f"the shards hold {len(results)} scenarios but the evaluation has "
                              f"{first.total_scenarios}; merge the shards of one evaluation")
        order = {(s.domain, s.scenario_id): s.index for s in results}
        transcripts = sorted((t for r in reports for t in r.transcripts),
                             key=lambda t: (order.get((t.domain or "", t.scenario_id), -1), t.trial or 0))
        return first.model_copy(update={"rank": 0, "world_size": 1, "results": results, "transcripts": transcripts,
                                        "elapsed_s": max(r.elapsed_s for r in reports)})

    # ------------------------------------------------------------ tables
    def _rows(self) -> list[DomainSummary]:
        rows = list(self.by_domain.values())
        return rows + [self.overall] if len(rows) > 1 else rows

    def table(self) -> Table:
        """One column per domain (and overall, with several domains); rows: scenarios x k, success, errors,
        outcome score, reward, pass@j and pass^j for j = 1..k, then the mean of every reward component."""
        shard = f", shard {self.rank}/{self.world_size}" if self.world_size > 1 else ""
        cols = self._rows()
        t = Table(title=f"evaluation: k={self.k}, seed={self.seed}{shard}"
                  + (f", model {self.model}" if self.model else "") + (f", {self.label}" if self.label else ""),
                  caption=f"reward: {self.reward}" if self.reward else "no reward function")
        t.add_column("metric")
        for c in cols:
            t.add_column(c.domain, justify="right")

        def row(name: str, cell: Callable[[DomainSummary], str], end: bool = False) -> None:
            t.add_row(name, *[cell(c) for c in cols], end_section=end)

        row("scenarios x k", lambda c: f"{c.scenarios} x {self.k}")
        row("success", lambda c: "-" if c.success_rate is None else f"{c.success_rate:.1%} ({c.successes}/{c.trials})")
        row("errors", lambda c: str(c.errors))
        row("outcome score", lambda c: _fmt(c.mean_outcome_score))
        row("reward", lambda c: _fmt(c.mean_reward) + (f" (n={c.reward_count})" if c.reward_missing else ""),
            end=True)
        for j in range(1, self.k + 1):
            row(f"pass@{j}", lambda c, j=j: _fmt(c.pass_at_k.get(j)))
        for j in range(1, self.k + 1):
            row(f"pass^{j}", lambda c, j=j: _fmt(c.pass_hat_k.get(j)), end=j == self.k)
        for name in dict.fromkeys(n for c in cols for n in c.components):
            row(f"  {name}", lambda c, name=name: _component(c.components.get(name)))
        return t


def _component(c: ComponentStat | None) -> str:
    if c is None or c.mean is None:
        return "-"
    return _fmt(c.mean) + (f" (n={c.count})" if c.missing else "")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
