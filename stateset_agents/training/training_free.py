"""Training-Free GRPO (arXiv 2510.08191): the policy stays frozen; an experience library in its prompt learns.

One step, for a batch of ``scenarios_per_step`` train scenarios (each epoch visits every train scenario once, in a
seeded order):

1. roll out ``group_size`` episodes per scenario with the current library injected into the agent's prompt
   (:meth:`ExperienceLibrary.to_prompt`, top-k by similarity once the library exceeds ``prompt_top_k``);
2. score every group with the reward (any RewardFunction); keep the groups whose rewards differ. A group's
   strength ``a = min(1, (max reward - min reward) / advantage_scale)``;
3. for each kept group the learner ChatModel summarises the trajectories, states the semantic advantage (why the
   better ones did better) and proposes ADD / MODIFY(id) / DELETE(id) / KEEP(id) operations
   (:mod:`.semantic_advantage`); an invalid answer is retried with the error fed back ``learner_retries`` times,
   then the group is skipped and the error logged in ``metrics.jsonl`` and ``learner.jsonl``;
4. one batch-level pass consolidates the proposals (``consolidation: learner``: one more learner call;
   ``embedding``: near-duplicate ADDs merged by embedding similarity), then fixed conflict rules;
5. the operations are applied (near-duplicate ADDs merge into existing experiences; confidence and eviction as in
   :mod:`.experience`), the step is committed to the library's history and the library is saved atomically to
   ``output_dir/experiences.json``; metrics go to ``metrics.jsonl``; a checkpoint every ``save_every`` steps.

Run folder: ``config.yaml``, ``metrics.jsonl``, ``learner.jsonl`` (every group's advantage, proposals and errors),
``experiences.json``, ``checkpoints/step-N/`` (library + step + RNG state; ``train(resume=True)`` continues),
``eval_before.json`` / ``eval_after.json`` (mean and spread over ``eval_seeds``) with each seed's full report in
``eval/``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..agents.experience import OP_NAMES, ExperienceLibrary
from ..errors import ConfigError
from ..models.base import SamplingParams
from ..rewards.base import RewardFunction
from ..rollout import rollout
from ..types import TrajectoryGroup
from .dist import DistContext
from .evaluate import evaluate_run
from .loop import RunLoop, Writer, step_seed
from .scenarios import run_scenarios
from .scoring import score_groups
from .semantic_advantage import LearnerFailed, SemanticLearner, consolidate_by_embedding
from .tf_config import LearnerEndpoint, TrainingFreeConfig

__all__ = ["LearnerEndpoint", "TrainingFreeConfig", "TrainingFreeGRPO"]

log = logging.getLogger(__name__)


class TrainingFreeGRPO:
    """Learn an experience library for ``agent`` on ``env_factory``'s scenarios, scored by ``reward``.

    Args:
        agent: a :class:`~stateset_agents.agents.MultiTurnAgent` (any ChatModel; its weights are not touched).
            Its ``experiences`` is set to the library being learned.
        env_factory: returns a fresh ConversationEnv per episode.
        reward: any RewardFunction.
        config: a :class:`TrainingFreeConfig`.
        learner: the ChatModel that writes experiences (default: the agent's model).
        library: start from this library (default: an empty one built from the config).
        embedder: sentence embedder for deduplication and retrieval (default: all-MiniLM-L6-v2).
    """

    def __init__(self, agent: Any, env_factory: Callable[[], Any], reward: RewardFunction,
                 config: TrainingFreeConfig, *, learner: Any = None, library: ExperienceLibrary | None = None,
                 embedder: Any = None) -> None:
        if not isinstance(config, TrainingFreeConfig):
            raise ConfigError(f"config must be a TrainingFreeConfig, got {type(config).__name__}; use "
                              "stateset_agents.training.load_config(path) with `algorithm: training_free`")
        if not isinstance(reward, RewardFunction):
            raise ConfigError(f"reward {reward!r} is not a RewardFunction (needs `name` and async `score(group)`)")
        if not hasattr(agent, "experiences") or not hasattr(agent, "model"):
            raise ConfigError(f"agent {type(agent).__name__} does not take an experience library; use a "
                              "MultiTurnAgent")
        self.agent, self.env_factory, self.reward, self.config = agent, env_factory, reward, config
        learner = learner if learner is not None else agent.model
        if not callable(getattr(learner, "chat", None)):
            raise ConfigError(f"learner {learner!r} is not a ChatModel (needs async chat(messages, sampling=...))")
        self.embedder = embedder
        self.library = library if library is not None else ExperienceLibrary(
            max_size=config.library_max_size, word_limit=config.word_limit, prompt_top_k=config.prompt_top_k,
            dedup_threshold=config.dedup_threshold)
        if embedder is not None:
            self.library.use_embedder(embedder)
        self.agent.experiences = self.library
        self.learner = SemanticLearner(
            learner, sampling=SamplingParams(temperature=config.learner_temperature,
                                             max_new_tokens=config.learner_max_new_tokens),
            retries=config.learner_retries, word_limit=self.library.word_limit, max_ops=config.max_ops_per_group,
            summarize=config.summarize, max_chars=config.transcript_chars, library_view=config.library_view,
            concurrency=config.learner_concurrency)
        self.run_dir = Path(config.output_dir)
        self.step = 0
        self.dist = DistContext()
        self.pack, self.scenarios, self.eval_scenarios = run_scenarios(env_factory, config)
        self.domain = config.domain or self.pack.domain
        per_epoch = math.ceil(len(self.scenarios) / config.scenarios_per_step)
        self.batches_per_epoch = per_epoch
        self.total_steps = min(config.epochs * per_epoch, config.max_steps or config.epochs * per_epoch)

    # ------------------------------------------------------------------ the run (training/loop.py)
    name = "training_free"
    logs = ("learner.jsonl",)

    def train(self, *, resume: bool | str = False) -> dict[str, Any]:
        """Run to the last step (from the last checkpoint when ``resume``); return a summary."""
        summary = RunLoop(self).run(resume=resume)
        return {**summary, "library": self.library.report().model_dump()}

    async def atrain(self, *, resume: bool | str = False) -> dict[str, Any]:
        summary = await RunLoop(self).arun(resume=resume)
        return {**summary, "library": self.library.report().model_dump()}

    # ------------------------------------------------------------------ one step
    def batch(self, step: int) -> list[str]:
        """The scenarios of ``step`` (0-based): epoch ``step // batches_per_epoch`` in a seeded order."""
        epoch, b = divmod(step, self.batches_per_epoch)
        order = np.random.default_rng(step_seed(self.config.seed, epoch, "epoch-order")).permutation(
            len(self.scenarios))
        n = self.config.scenarios_per_step
        return [self.scenarios[i] for i in order[b * n:(b + 1) * n]]

    def _task_text(self, scenario_id: str) -> str:
        try:
            s = self.pack.scenario(scenario_id)
        except Exception:  # noqa: BLE001 - a scenario from outside the pack: describe it by id
            return f"Task ({self.domain}): scenario {scenario_id}"
        return f"Task ({self.domain}): {s.title}. The customer's goal: {s.goal.description}"

    async def astep(self) -> dict[str, Any]:
        """Roll out, score, learn from the groups whose rewards differ, update and save the library."""
        cfg = self.config
        step = self.step
        t0 = time.perf_counter()
        self.agent.sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        groups = await rollout(self.agent, self.env_factory, self.batch(step), cfg.group_size,
                               concurrency=cfg.rollout_concurrency, seed=step_seed(cfg.seed, step, "rollout"),
                               progress=False)
        t_rollout = time.perf_counter() - t0
        # an episode that failed, or a reward that failed or does not apply: no reward, counted in failures/*
        _, failures = await score_groups(self.reward, groups, None)
        t_score = time.perf_counter() - t0 - t_rollout

        kept = self._kept_groups(groups)
        stats0 = dict(self.learner.stats)
        proposals = await asyncio.gather(*(
            self.learner.propose(g, self.library, task=self._task_text(g.scenario_id), domain=self.domain,
                                 strength=a, step=step + 1, seed=step_seed(cfg.seed, step, f"learn:{i}"))
            for i, (g, a) in enumerate(kept)))
        ops, dropped, consolidation_error = await self._consolidate([p for p in proposals if p.error is None], step)
        t_learner = time.perf_counter() - t0 - t_rollout - t_score

        applied = self.library.apply(ops, step=step + 1)
        self.library.commit(step + 1)
        t_apply = time.perf_counter() - t0 - t_rollout - t_score - t_learner
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.library.save(self.run_dir / "experiences.json")
        t_save = time.perf_counter() - t0 - t_rollout - t_score - t_learner - t_apply

        self._log_learner(step, proposals, ops, dropped, consolidation_error, applied)
        self.step += 1
        metrics = self._metrics(step, groups, kept, proposals, applied, dropped, consolidation_error, stats0, {
            "rollout": t_rollout, "score": t_score, "learner": t_learner, "apply": t_apply, "save": t_save,
            "total": time.perf_counter() - t0})
        return {**metrics, **{f"failures/{k}": v for k, v in failures.items()}}

    def _kept_groups(self, groups: Sequence[TrajectoryGroup]) -> list[tuple[TrajectoryGroup, float]]:
        """The groups whose scored rewards differ, each with its strength: the reward range over
        ``advantage_scale``, at most 1."""
        kept = []
        for g in groups:
            vals = [t.reward for t in g.trajectories if t.reward is not None]
            if len(vals) >= 2 and max(vals) - min(vals) > 1e-9:
                kept.append((g, min(1.0, (max(vals) - min(vals)) / self.config.advantage_scale)))
        return kept

    async def _consolidate(self, good: Sequence[Any], step: int) -> tuple[list[Any], int, str | None]:
        """(operations, how many were dropped as conflicts, the error when the learner's consolidation failed)."""
        if self.config.consolidation == "embedding":
            ops, dropped = consolidate_by_embedding([o for p in good for o in p.ops], self.library)
            return ops, dropped, None
        try:
            ops, dropped = await self.learner.consolidate(good, self.library,
                                                          seed=step_seed(self.config.seed, step, "consolidate"))
        except LearnerFailed as e:
            log.warning("step %d: consolidation skipped: %s", step + 1, e)
            return [], 0, str(e)
        return ops, dropped, None

    def _log_learner(self, step: int, proposals: Sequence[Any], ops: Sequence[Any], dropped: int,
                     consolidation_error: str | None, applied: Sequence[Any]) -> None:
        """Warn about skipped groups; append the step's proposals and consolidation to ``learner.jsonl``."""
        for p in proposals:
            if p.error:
                log.warning("step %d: group %s skipped: %s", step + 1, p.scenario_id, p.error)
        lines = [p.to_json(step + 1) for p in proposals]
        lines.append({"step": step + 1, "consolidation": {
            "operations": [o.model_dump(exclude={"provenance"}, exclude_none=True) for o in ops],
            "dropped": dropped, "error": consolidation_error,
            "applied": [{"op": a.op, "id": a.id, "text": a.after.text if a.after else None} for a in applied]}})
        with open(self.run_dir / "learner.jsonl", "a", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)

    def _metrics(self, step: int, groups: Sequence[TrajectoryGroup], kept: Sequence[Any], proposals: Sequence[Any],
                 applied: Sequence[Any], dropped: int, consolidation_error: str | None, stats0: dict[str, int],
                 times: dict[str, float]) -> dict[str, Any]:
        trajs = [t for g in groups for t in g.trajectories]
        rewards = [t.reward for t in trajs if t.reward is not None]
        m: dict[str, Any] = {
            "epoch": step // self.batches_per_epoch + 1,
            "reward": statistics.fmean(rewards) if rewards else None,
            "reward_std": statistics.pstdev(rewards) if rewards else None,
            "success_rate": sum(bool(t.outcome and t.outcome.get("success")) for t in trajs) / len(trajs)
            if trajs else None,
            "trajectories": len(trajs), "scored": len(rewards), "episode_errors": sum(t.error is not None for t in trajs),
        }
        for c in sorted({k for t in trajs for k in t.components}):
            vals = [t.components.get(c) for t in trajs]
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            m[f"components/{c}"] = statistics.fmean(vals) if vals else None
        counts = dict.fromkeys(OP_NAMES, 0)
        for a in applied:
            counts[a.op] += 1
        skipped = sum(p.error is not None for p in proposals)
        rep = self.library.report()
        m.update({
            "groups": len(groups), "groups_kept": len(kept), "groups_skipped": skipped,
            "proposals": sum(len(p.ops) for p in proposals), **{f"ops/{k}": v for k, v in counts.items()},
            "conflicts_dropped": dropped, "learner_errors": skipped + (consolidation_error is not None),
            "consolidation_error": consolidation_error,
            "learner_calls": self.learner.stats["calls"] - stats0["calls"],
            "learner_retries": self.learner.stats["retries"] - stats0["retries"],
            "learner_invalid_answers": self.learner.stats["invalid_answers"] - stats0["invalid_answers"],
            "library_size": rep.size, "library_mean_confidence": rep.mean_confidence,
            "new_tokens": sum(len(c.completion_ids or []) for t in trajs for c in t.completions),
        })
        m.update({f"time/{k}": v for k, v in times.items()})
        return m

    # ------------------------------------------------------------------ evaluation and checkpoints
    async def evaluate(self, tag: str) -> dict[str, Any]:
        """Evaluate the agent with the current library once per ``eval_seeds`` seed (see :mod:`.evaluate`)."""
        return await evaluate_run(self.agent, self.env_factory, self.eval_scenarios, self.reward, self.config,
                                  self.run_dir, tag, step=self.step, extra={"library_size": len(self.library)})

    def checkpoint(self) -> Writer:
        """``checkpoints/step-N`` holds the library and the learner's counters (the loop adds step and RNG)."""
        def write(tmp: Path) -> dict[str, Any]:
            self.library.save(tmp / "experiences.json")
            return {"learner_stats": dict(self.learner.stats)}
        return write

    def load_checkpoint_state(self, path: Path, state: dict[str, Any]) -> None:
        library = ExperienceLibrary.load(path / "experiences.json")
        library.use_embedder(self.library._embedder)
        self.library = library
        self.agent.experiences = library
        self.learner.stats.update(state.get("learner_stats", {}))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.library.save(self.run_dir / "experiences.json")

    @staticmethod
    def short(m: dict[str, Any]) -> str:
        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        return (f"reward {f(m.get('reward'))}  success {f(m.get('success_rate'))}  kept {m.get('groups_kept')}/"
                f"{m.get('groups')}  ops +{m.get('ops/ADD', 0)} ~{m.get('ops/MODIFY', 0)} -{m.get('ops/DELETE', 0)}"
                f"  library {m.get('library_size')}  learner errors {m.get('learner_errors')}")
