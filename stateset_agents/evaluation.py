"""Evaluation: success rate, mean reward and components, pass@k and pass^k, per domain and overall.

    report = await aevaluate(agent, env_factory, scenario_ids, k=4, reward=reward, seed=0)
    console.print(report.table()); report.save("eval.json")
    console.print(compare(before, after))

Every scenario is played ``k`` times with :func:`stateset_agents.rollout.rollout` (``group_size=k``).

- **Success** of a trial is the environment's ``outcome["success"]``: goal reached, end database as expected,
  every required fact told, no forbidden action, no error (see ``envs/outcome.py``).
- **Errors**: an episode that failed (model error, simulator error, an empty agent message, no outcome) is a
  failed trial *and* is counted in ``errors``; it is never dropped from the denominators.
- **Reward**: with a :class:`~stateset_agents.rewards.RewardFunction`, each group is scored; means are over
  applicable values only (``None`` is excluded and counted as missing), per component too.
- **pass@k** (Chen et al. 2021, the unbiased estimator): mean over scenarios of ``1 - C(n-c, k) / C(n, k)``, the
  chance that at least one of k trials succeeds. **pass^k** (tau-bench): mean over scenarios of
  ``C(c, k) / C(n, k)``, the chance that all k trials succeed. ``n`` trials, ``c`` successes per scenario.
- **Seeds**: episode ``i`` of scenario ``s`` gets ``episode_seed(seed, s, i)``; the user simulator and each agent
  turn's sampling derive from it. The same ``seed`` therefore replays the same episodes for the same model, and
  gives two models the same random draws (a paired before/after comparison).
- **Transcripts**: the report keeps every episode as a :class:`~stateset_agents.transcripts.Transcript`
  (``report.transcripts``: messages, outcome, reward components, seed), not part of its JSON; :meth:`EvalReport.save`
  writes them next to the JSON (``eval.json`` -> ``eval.transcripts.jsonl``) and :meth:`EvalReport.load` reads
  them back when that file is there.
- **Sharding**: with ``rank`` / ``world_size`` a process plays only ``pairs[rank::world_size]`` of the list of
  (domain, scenario) pairs; :meth:`EvalReport.merge` puts the shards back into exactly the report one process
  would have produced (seeds depend on the scenario id, not on the shard).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator
from rich.table import Table

from .errors import ConfigError, SyncInAsyncError
from .rewards.base import score_group
from .rollout import rollout
from .transcripts import (
    Transcript,
    read_transcripts,
    transcript,
    transcripts_path,
    write_text_atomic,
    write_transcripts,
)
from .types import RewardResult, TrajectoryGroup

__all__ = [
    "ComponentStat",
    "DomainSummary",
    "EvalDomain",
    "EvalReport",
    "ScenarioResult",
    "TrialResult",
    "aevaluate",
    "aevaluate_domains",
    "compare",
    "evaluate",
    "evaluate_domains",
    "load_domain",
    "pass_at_k",
    "pass_hat_k",
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


def compare(before: EvalReport, after: EvalReport, *more: EvalReport, labels: Sequence[str] | None = None) -> Table:
    """Two reports: a before/after table per domain (success, errors, outcome score, reward, pass@1, pass@k, pass^k and
    every reward component, with deltas). Three or more (the stages of a recipe, ``labels`` naming them): one row
    per report, each with its paired difference against the row above and its standard error
    (:func:`~stateset_agents.paired.stages_table`). All must cover the same scenarios with the same k."""
    if more or labels is not None:
        from .paired import stages_table

        return stages_table([before, after, *more], labels)
    key = [(s.domain, s.scenario_id) for s in before.results]
    if before.k != after.k or sorted(key) != sorted((s.domain, s.scenario_id) for s in after.results):
        raise ConfigError(f"compare() needs two evaluations of the same scenarios with the same k; got k={before.k} "
                          f"with {len(before.results)} scenarios before and k={after.k} with {len(after.results)} "
                          "after. Evaluate both with the same scenario list and k")
    paired = "same seeds: paired episodes" if before.seed == after.seed else \
        f"different seeds ({before.seed} vs {after.seed}): episodes are not paired"
    t = Table(title="before / after", caption=f"{len(before.results)} scenarios x k={after.k}; {paired}")
    t.add_column("domain")
    t.add_column("metric")
    for col in ("before", "after", "delta"):
        t.add_column(col, justify="right")
    rows = [*after.domains, "overall"] if len(after.domains) > 1 else after.domains
    for d in rows:
        b, a = (r.overall if d == "overall" else r.by_domain[d] for r in (before, after))
        metrics: list[tuple[str, float | None, float | None, bool]] = [
            ("success rate", b.success_rate, a.success_rate, True),
            ("errors", b.errors, a.errors, False),
            ("outcome score", b.mean_outcome_score, a.mean_outcome_score, True),
            ("reward", b.mean_reward, a.mean_reward, True),
            *[(f"pass@{j}", b.pass_at_k.get(j), a.pass_at_k.get(j), True) for j in sorted({1, after.k})],
            (f"pass^{after.k}", b.pass_hat_k.get(after.k), a.pass_hat_k.get(after.k), True),
        ]
        for name in dict.fromkeys([*b.components, *a.components]):
            cb, ca = b.components.get(name), a.components.get(name)
            metrics.append((f"  {name}", cb.mean if cb else None, ca.mean if ca else None, True))
        for i, (name, x, y, up) in enumerate(metrics):
            t.add_row(b.domain if i == 0 else "", name, _num(x), _num(y), _delta(x, y, up),
                      end_section=i == len(metrics) - 1)
    return t


def _num(x: float | None) -> str:
    return "-" if x is None else str(x) if isinstance(x, int) else f"{x:.3f}"


def _delta(x: float | None, y: float | None, higher_is_better: bool) -> str:
    if x is None or y is None:
        return "-"
    d = y - x
    if d == 0:
        return "0" if isinstance(d, int) else "0.000"
    color = "green" if (d > 0) == higher_is_better else "red"
    return f"[{color}]{d:+d}[/]" if isinstance(d, int) else f"[{color}]{d:+.3f}[/]"


# ---------------------------------------------------------------- running
class EvalDomain(NamedTuple):
    """One domain to evaluate: how to make its env, which scenario ids, its name, and optionally its own agent."""

    env_factory: Callable[[], Any]
    scenarios: Sequence[str]
    domain: str | None = None
    """Default: the name of the env's pack."""
    agent: Any = None
    """Default: the agent passed to :func:`aevaluate_domains` (give each domain its own strategy prompt here)."""


def load_domain(env: str, *, split: str = "test", limit: int | None = None, max_turns: int | None = None,
                model: Any = None, sampling: Any = None, tool_prompt: str = "full", **agent_kwargs: Any
                ) -> EvalDomain:
    """An EvalDomain from a pack name or folder (``customer_service``) or a registered Gymnasium id
    (``stateset/CustomerService-v0``; see :func:`~stateset_agents.resolve.resolve_env`): the first ``limit``
    scenarios of ``split``, in pack order.

    With ``model``, the domain gets its own MultiTurnAgent with the pack's strategy prompt (``sampling`` and
    ``agent_kwargs`` go to the agent); otherwise the agent passed to :func:`aevaluate_domains` plays it.
    ``tool_prompt="compact"`` opens the envs with the pack's compact instructions (and gives the domain's own agent
    the compact tool listing).
    """
    import functools

    from .agents import MultiTurnAgent, strategies
    from .envs import ConversationEnv
    from .resolve import resolve_env

    pack, kwargs = resolve_env(env)
    for name in ("split", "scenario"):
        kwargs.pop(name, None)
    if max_turns is not None:
        kwargs["max_turns"] = max_turns
    kwargs["prompt"] = tool_prompt
    ids = [s.id for s in pack.split(split)]
    if not ids:
        raise ConfigError(f"pack {pack.name!r} has no scenarios in split {split!r}; use split 'train' or 'all'")
    if limit is not None:
        if limit < 1 or limit > len(ids):
            raise ConfigError(f"scenarios={limit} but split {split!r} of pack {pack.name!r} has {len(ids)}; "
                              f"use a number from 1 to {len(ids)}")
        ids = ids[:limit]
    agent = None
    if model is not None:
        agent = MultiTurnAgent(model, domain=pack.domain if pack.domain in strategies() else None,
                               sampling=sampling, tool_prompt=tool_prompt, **agent_kwargs)
    return EvalDomain(functools.partial(ConversationEnv, pack, split="all", **kwargs), ids, pack.name, agent)


def _domains(domains: Mapping[str, Sequence[Any]] | Sequence[Any]) -> list[EvalDomain]:
    if isinstance(domains, Mapping):
        specs = [EvalDomain(v[0], v[1], name, *v[2:]) for name, v in domains.items()]
    else:
        specs = [EvalDomain(*d) for d in domains]
    if not specs:
        raise ConfigError("no domains to evaluate; pass at least one (env_factory, scenarios, domain)")
    out = []
    for spec in specs:
        if isinstance(spec.scenarios, str) or not spec.scenarios:
            raise ConfigError(f"scenarios={spec.scenarios!r} of domain {spec.domain!r} must be a non-empty list of "
                              "scenario ids")
        probe = spec.env_factory()
        try:
            pack = getattr(getattr(probe, "unwrapped", probe), "pack", None)
            if pack is not None:
                for sid in spec.scenarios:
                    pack.scenario(sid)  # raises UnknownScenarioError with close matches
        finally:
            probe.close()
        domain = spec.domain or getattr(pack, "name", None)
        if domain is None:
            raise ConfigError(f"cannot tell the domain of {probe!r} (it has no pack); pass domain=")
        dup = sorted({s for s in spec.scenarios if list(spec.scenarios).count(s) > 1})
        if dup:
            raise ConfigError(f"scenario ids {dup} appear more than once in domain {domain!r}; list each once "
                              "and use k for repeated trials")
        out.append(spec._replace(domain=domain, scenarios=list(spec.scenarios)))
    names = [s.domain for s in out]
    if "overall" in names:
        raise ConfigError("'overall' is reserved for the totals over all domains; give that domain another name")
    if len(set(names)) != len(names):
        raise ConfigError(f"domain names {names} repeat; give each domain a distinct name")
    return out


async def _score(reward: Any, groups: list[TrajectoryGroup], concurrency: int) -> list[list[RewardResult]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(g: TrajectoryGroup) -> list[RewardResult]:
        async with sem:  # a failing reward is recorded per trial and counted in reward_errors, never hidden
            return await score_group(reward, g)

    return list(await asyncio.gather(*[one(g) for g in groups]))


def _trial(t: Any, r: RewardResult | None) -> TrialResult:
    error = t.error if t.error is not None or t.outcome is not None else "the episode ended without an outcome"
    o = t.outcome or {}
    return TrialResult(seed=t.seed, success=error is None and bool(o.get("success")), error=error,
                       outcome_score=o.get("score") if error is None else None,
                       goal_reached=o.get("goal_reached") if error is None else None,
                       progress=o.get("progress") if error is None else None,
                       tool_calls=o.get("tool_calls") if error is None else None,
                       tool_errors=o.get("tool_errors") if error is None else None,
                       turns=sum(m.role == "assistant" for m in t.messages),
                       reward=r.value if r else None, components=dict(r.components) if r else {},
                       reward_error=r.error if r else None)


def _check_args(k: int, concurrency: int, rank: int, world_size: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} must be an integer >= 1 (trials per scenario)")
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency} must be >= 1")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")


async def aevaluate_domains(agent: Any, domains: Mapping[str, Sequence[Any]] | Sequence[Any], *, k: int = 4,
                            reward: Any = None, seed: int = 0, concurrency: int = 32, rank: int = 0,
                            world_size: int = 1, progress: bool = True) -> EvalReport:
    """Evaluate several domains: ``domains`` is a list of :class:`EvalDomain` (or tuples ``(env_factory,
    scenarios[, domain[, agent]])``) or a mapping ``{domain: (env_factory, scenarios)}``. See the module docs."""
    _check_args(k, concurrency, rank, world_size)
    specs = _domains(domains)
    pairs = [(spec, sid) for spec in specs for sid in spec.scenarios]
    mine = range(rank, len(pairs), world_size)
    start = time.perf_counter()
    results: list[ScenarioResult] = []
    records: list[Transcript] = []
    for spec in specs:
        idx = [i for i in mine if pairs[i][0] is spec]
        if not idx:
            continue
        who = spec.agent if spec.agent is not None else agent
        if who is None:
            raise ConfigError(f"no agent for domain {spec.domain!r}; pass agent= or give the EvalDomain an agent")
        groups = await rollout(who, spec.env_factory, [pairs[i][1] for i in idx], group_size=k,
                               concurrency=concurrency, seed=seed, progress=progress)
        scores = await _score(reward, groups, concurrency) if reward is not None else [[None] * k] * len(groups)
        for i, g, rs in zip(idx, groups, scores, strict=True):
            results.append(ScenarioResult(index=i, domain=spec.domain, scenario_id=g.scenario_id,
                                          trials=[_trial(t, r) for t, r in zip(g.trajectories, rs, strict=True)]))
            records += [transcript(t, result=r, domain=spec.domain, trial=j)
                        for j, (t, r) in enumerate(zip(g.trajectories, rs, strict=True))]
    model = getattr(getattr(agent if agent is not None else specs[0].agent, "model", None), "name", None)
    return EvalReport(k=k, seed=seed, rank=rank, world_size=world_size, domains=[s.domain for s in specs],
                      total_scenarios=len(pairs), model=model if isinstance(model, str) else None,
                      reward=getattr(reward, "name", type(reward).__name__) if reward is not None else None,
                      results=results, elapsed_s=round(time.perf_counter() - start, 3), transcripts=records)


async def aevaluate(agent: Any, env_factory: Callable[[], Any], scenarios: Sequence[str], *, k: int = 4,
                    reward: Any = None, seed: int = 0, concurrency: int = 32, rank: int = 0, world_size: int = 1,
                    progress: bool = True, domain: str | None = None) -> EvalReport:
    """Play each scenario ``k`` times with ``agent`` and return the :class:`EvalReport` (see the module docs).

    ``domain`` names the domain in the report (default: the env's pack name). With ``rank``/``world_size`` only
    ``scenarios[rank::world_size]`` are played; combine the shards with :meth:`EvalReport.merge`.
    """
    return await aevaluate_domains(agent, [EvalDomain(env_factory, scenarios, domain)], k=k, reward=reward,
                                   seed=seed, concurrency=concurrency, rank=rank, world_size=world_size,
                                   progress=progress)


def _no_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncInAsyncError(f"{name}() called inside a running event loop; use `await a{name}(...)` instead")


def evaluate(agent: Any, env_factory: Callable[[], Any], scenarios: Sequence[str], *, k: int = 4,
             reward: Any = None, seed: int = 0, concurrency: int = 32, rank: int = 0, world_size: int = 1,
             progress: bool = True, domain: str | None = None) -> EvalReport:
    """Synchronous :func:`aevaluate`; raises SyncInAsyncError inside a running event loop."""
    _no_loop("evaluate")
    return asyncio.run(aevaluate(agent, env_factory, scenarios, k=k, reward=reward, seed=seed,
                                 concurrency=concurrency, rank=rank, world_size=world_size, progress=progress,
                                 domain=domain))


def evaluate_domains(agent: Any, domains: Mapping[str, Sequence[Any]] | Sequence[Any], *, k: int = 4,
                     reward: Any = None, seed: int = 0, concurrency: int = 32, rank: int = 0, world_size: int = 1,
                     progress: bool = True) -> EvalReport:
    """Synchronous :func:`aevaluate_domains`; raises SyncInAsyncError inside a running event loop."""
    _no_loop("evaluate_domains")
    return asyncio.run(aevaluate_domains(agent, domains, k=k, reward=reward, seed=seed, concurrency=concurrency,
                                         rank=rank, world_size=world_size, progress=progress))
