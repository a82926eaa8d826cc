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
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from .errors import ConfigError, SyncInAsyncError
from .evaluation_compare import compare
from .evaluation_report import (
    ComponentStat,
    DomainSummary,
    EvalReport,
    ScenarioResult,
    TrialResult,
    pass_at_k,
    pass_hat_k,
)
from .evaluation_report import summarize as summarize
from .rewards.base import score_group
from .rollout import rollout
from .transcripts import Transcript, transcript
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
