"""``stateset-agents envs audit PACK``: try to game a pack's judge with policies that do no real work.

Every policy of :data:`~stateset_agents.envs.audit_policies.POLICIES` plays every scenario of the split
against the scripted user, once per seed. A pack passes when no policy solves any scenario and no policy's
mean progress exceeds :data:`PROGRESS_BOUND`. ``envs validate`` runs the same audit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .audit_policies import POLICIES, PolicyState, train_fact_phrases
from .conversation import END_MARKER, ConversationEnv
from .pack import EnvPack, load_pack

__all__ = ["DEFAULT_SEEDS", "PROGRESS_BOUND", "AuditReport", "PolicyResult", "audit_pack"]

PROGRESS_BOUND = 0.05
"""The most mean progress a degenerate policy may earn before the audit fails."""
DEFAULT_SEEDS = (0, 1, 2)


@dataclass
class PolicyResult:
    policy: str
    episodes: int = 0
    successes: int = 0
    progress: list[float] = field(default_factory=list)
    solved: list[str] = field(default_factory=list)
    """Scenario ids solved in at least one seed."""
    earning: dict[str, float] = field(default_factory=dict)
    """Scenario id -> mean progress, for scenarios where the policy earned any."""

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0

    @property
    def mean_progress(self) -> float:
        return float(np.mean(self.progress)) if self.progress else 0.0

    @property
    def max_progress(self) -> float:
        return max(self.progress, default=0.0)

    def ok(self, bound: float = PROGRESS_BOUND) -> bool:
        return not self.solved and self.mean_progress <= bound


@dataclass
class AuditReport:
    pack: str
    split: str
    seeds: tuple[int, ...]
    scenarios: int
    results: list[PolicyResult]
    bound: float = PROGRESS_BOUND

    @property
    def ok(self) -> bool:
        return all(r.ok(self.bound) for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"pack": self.pack, "split": self.split, "seeds": list(self.seeds), "scenarios": self.scenarios,
                "bound": self.bound, "ok": self.ok,
                "policies": {r.policy: {"episodes": r.episodes, "successes": r.successes,
                                        "mean_progress": r.mean_progress, "max_progress": r.max_progress,
                                        "solved": r.solved, "earning": r.earning} for r in self.results}}


async def play_policy(pack: EnvPack, scenario_id: str, policy: str, seed: int,
                      fact_phrases: list[str]) -> dict[str, Any]:
    """One episode of ``policy`` on ``scenario_id``; returns ``info["outcome"]``."""
    act = POLICIES[policy]
    env = ConversationEnv(pack, scenario=scenario_id, split="all")
    try:
        obs, info = await env.areset(seed=seed)
        rng = np.random.default_rng([seed, sum(map(ord, scenario_id)), sum(map(ord, policy))])
        state = PolicyState(pack, env.scenario, obs, info["messages"], fact_phrases, rng)
        while True:
            action = act(state) or END_MARKER
            obs, _, term, trunc, info = await env.astep(action)
            if term or trunc:
                return info["outcome"]
            state.turn += 1
            state.observation, state.messages = obs, info["messages"]
    finally:
        env.close()


async def _audit(pack: EnvPack, split: str, seeds: tuple[int, ...], policies: list[str]) -> list[PolicyResult]:
    phrases = train_fact_phrases(pack)
    scenarios = pack.split(split)
    results = []
    for name in policies:
        r = PolicyResult(name)
        for s in scenarios:
            per_seed = []
            for seed in seeds:
                o = await play_policy(pack, s.id, name, seed, phrases)
                r.episodes += 1
                r.successes += bool(o["success"])
                per_seed.append(float(o["progress"]))
                if o["success"] and s.id not in r.solved:
                    r.solved.append(s.id)
            r.progress += per_seed
            if any(per_seed):
                r.earning[s.id] = float(np.mean(per_seed))
        results.append(r)
    return results


def audit_pack(name_or_path: str | EnvPack, *, split: str = "all", seeds: tuple[int, ...] = DEFAULT_SEEDS,
               policies: list[str] | None = None, bound: float = PROGRESS_BOUND) -> AuditReport:
    """Play every degenerate policy on every scenario of ``split`` for each seed; see the module docstring."""
    pack = name_or_path if isinstance(name_or_path, EnvPack) else load_pack(name_or_path)
    names = list(POLICIES) if policies is None else policies
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown audit policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. (0, 1, 2)")
    results = asyncio.run(_audit(pack, split, tuple(seeds), names))
    return AuditReport(pack.name, split, tuple(seeds), len(pack.split(split)), results, bound)
