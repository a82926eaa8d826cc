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
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, TrainingError
from ..models.base import SamplingParams
from ..rewards.base import RewardFunction
from ..rollout import rollout
from ..types import TrajectoryGroup
from .experience import OP_NAMES, ExperienceLibrary
from .semantic_advantage import LearnerFailed, SemanticLearner, consolidate_by_embedding
from .tf_config import LearnerEndpoint, TrainingFreeConfig

__all__ = ["LearnerEndpoint", "TrainingFreeConfig", "TrainingFreeGRPO", "build_training_free"]

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
        self.history: list[dict[str, Any]] = []
        probe = env_factory()
        try:
            self.pack = probe.pack
            train = [s.id for s in probe.pack.split(config.train_split)]
            evals = [s.id for s in probe.pack.split(config.eval_split)]
        finally:
            probe.close()
        self.scenarios = _pick(train, config.scenarios, "scenarios", config.train_split, self.pack.name)
        self.eval_scenarios = _pick(evals, config.eval_scenarios, "eval_scenarios", config.eval_split,
                                    self.pack.name)
        if not self.eval_scenarios and (config.eval_before or config.eval_after):
            raise ConfigError(f"split {config.eval_split!r} of pack {self.pack.name!r} has no scenarios to evaluate "
                              "on; set eval_split, or eval_before: false and eval_after: false")
        self.domain = config.domain or self.pack.domain
        per_epoch = math.ceil(len(self.scenarios) / config.scenarios_per_step)
        self.batches_per_epoch = per_epoch
        self.total_steps = min(config.epochs * per_epoch, config.max_steps or config.epochs * per_epoch)

    # ------------------------------------------------------------------ the run
    def train(self, *, resume: bool = False) -> dict[str, Any]:
        """Run to the last step (from the last checkpoint when ``resume``); return a summary."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.atrain(resume=resume))
        raise ConfigError("TrainingFreeGRPO.train() was called inside a running event loop; await trainer.atrain()")

    async def atrain(self, *, resume: bool = False) -> dict[str, Any]:
        from .checkpoint import latest_checkpoint

        cfg = self.config
        if resume:
            ckpt = latest_checkpoint(self.run_dir)
            if ckpt is None:
                raise ConfigError(f"--resume: no checkpoint in {str(self.run_dir / 'checkpoints')!r}; "
                                  "start without --resume")
            self.load_checkpoint(ckpt)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
        evals: dict[str, Any] = {}
        if cfg.eval_before and self.step == 0:
            evals["before"] = await self.evaluate("before")
        with self._display() as live:
            while self.step < self.total_steps:
                metrics = await self.astep()
                if live is not None:
                    live.update(self._task, advance=1, info=_short(metrics))
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        self.save_checkpoint()
        if cfg.eval_after:
            evals["after"] = await self.evaluate("after")
            before = self.run_dir / "eval_before.json"
            if before.is_file():
                from rich.console import Console

                Console().print(eval_table(json.loads(before.read_text(encoding="utf-8")), evals["after"]))
        return {"steps": self.step, "run_dir": str(self.run_dir), "last": self.history[-1] if self.history else {},
                "evals": evals, "library": self.library.report().model_dump()}

    def _display(self) -> Any:
        if not self.config.progress:
            self._task = None
            return nullcontext(None)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("Training-Free GRPO"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"))
        self._task = progress.add_task("steps", total=self.total_steps, completed=self.step, info="")
        return progress

    # ------------------------------------------------------------------ one step
    def batch(self, step: int) -> list[str]:
        """The scenarios of ``step`` (0-based): epoch ``step // batches_per_epoch`` in a seeded order."""
        from .trainer import step_seed

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

    async def _score(self, groups: list[TrajectoryGroup]) -> None:
        results = await asyncio.gather(*(self.reward.score(g) for g in groups))
        for g, res in zip(groups, results, strict=True):
            if len(res) != len(g):
                raise TrainingError(f"reward {self.reward.name!r} returned {len(res)} results for a group of "
                                    f"{len(g)}; a RewardFunction returns one result per trajectory")
            for t, r in zip(g.trajectories, res, strict=True):
                ok = t.error is None and r.value is not None and math.isfinite(r.value)
                t.reward = r.value if ok else None
                t.components = dict(r.components)

    async def astep(self) -> dict[str, Any]:
        """Roll out, score, learn from the groups whose rewards differ, update and save the library."""
        from .trainer import step_seed

        cfg = self.config
        step = self.step
        t0 = time.perf_counter()
        self.agent.sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        groups = await rollout(self.agent, self.env_factory, self.batch(step), cfg.group_size,
                               concurrency=cfg.rollout_concurrency, seed=step_seed(cfg.seed, step, "rollout"),
                               progress=False)
        t_rollout = time.perf_counter() - t0
        await self._score(groups)
        t_score = time.perf_counter() - t0 - t_rollout

        kept: list[tuple[TrajectoryGroup, float]] = []
        for g in groups:
            vals = [t.reward for t in g.trajectories if t.reward is not None]
            if len(vals) >= 2 and max(vals) - min(vals) > 1e-9:
                kept.append((g, min(1.0, (max(vals) - min(vals)) / cfg.advantage_scale)))
        stats0 = dict(self.learner.stats)
        proposals = await asyncio.gather(*(
            self.learner.propose(g, self.library, task=self._task_text(g.scenario_id), domain=self.domain,
                                 strength=a, step=step + 1, seed=step_seed(cfg.seed, step, f"learn:{i}"))
            for i, (g, a) in enumerate(kept)))
        good = [p for p in proposals if p.error is None]
        consolidation_error, dropped = None, 0
        if cfg.consolidation == "embedding":
            ops, dropped = consolidate_by_embedding([o for p in good for o in p.ops], self.library)
        else:
            try:
                ops, dropped = await self.learner.consolidate(good, self.library,
                                                              seed=step_seed(cfg.seed, step, "consolidate"))
            except LearnerFailed as e:
                consolidation_error, ops = str(e), []
                log.warning("step %d: consolidation skipped: %s", step + 1, e)
        t_learner = time.perf_counter() - t0 - t_rollout - t_score

        applied = self.library.apply(ops, step=step + 1)
        self.library.commit(step + 1)
        t_apply = time.perf_counter() - t0 - t_rollout - t_score - t_learner
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.library.save(self.run_dir / "experiences.json")
        t_save = time.perf_counter() - t0 - t_rollout - t_score - t_learner - t_apply
        self.step += 1

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

        metrics = self._metrics(step, groups, kept, proposals, applied, dropped, consolidation_error, stats0, {
            "rollout": t_rollout, "score": t_score, "learner": t_learner, "apply": t_apply, "save": t_save,
            "total": time.perf_counter() - t0})
        self.history.append(metrics)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")
        return metrics

    def _metrics(self, step: int, groups: Sequence[TrajectoryGroup], kept: Sequence[Any], proposals: Sequence[Any],
                 applied: Sequence[Any], dropped: int, consolidation_error: str | None, stats0: dict[str, int],
                 times: dict[str, float]) -> dict[str, Any]:
        trajs = [t for g in groups for t in g.trajectories]
        rewards = [t.reward for t in trajs if t.reward is not None]
        m: dict[str, Any] = {
            "step": step + 1, "epoch": step // self.batches_per_epoch + 1, "time": time.time(),
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

    # ------------------------------------------------------------------ evaluation
    async def evaluate(self, tag: str) -> dict[str, Any]:
        """Evaluate the agent with the current library on the eval scenarios, once per ``eval_seeds`` seed; write
        ``eval/<tag>-seed<S>.json`` per seed and the summary ``eval_<tag>.json``; return the summary."""
        from ..evaluation import aevaluate
        from .checkpoint import write_json_atomic

        cfg = self.config
        saved = self.agent.sampling
        self.agent.sampling = SamplingParams(temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens)
        per_seed = []
        try:
            for seed in cfg.eval_seeds:
                report = await aevaluate(self.agent, self.env_factory, self.eval_scenarios, k=cfg.eval_k,
                                         reward=self.reward, seed=seed, concurrency=cfg.rollout_concurrency,
                                         progress=False, domain=self.pack.name)
                report.save(self.run_dir / "eval" / f"{tag}-seed{seed}.json")
                o = report.overall
                per_seed.append({"seed": seed, "success_rate": o.success_rate, "mean_reward": o.mean_reward,
                                 "mean_outcome_score": o.mean_outcome_score, "errors": o.errors,
                                 "trials": o.trials})
        finally:
            self.agent.sampling = saved
        summary: dict[str, Any] = {"tag": tag, "step": self.step, "library_size": len(self.library),
                                   "scenarios": len(self.eval_scenarios), "k": cfg.eval_k, "seeds": cfg.eval_seeds,
                                   "per_seed": per_seed}
        for key in ("success_rate", "mean_reward", "mean_outcome_score"):
            summary[key] = spread([r[key] for r in per_seed])
        write_json_atomic(self.run_dir / f"eval_{tag}.json", summary)
        return summary

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """``checkpoints/step-N``: the library, the step and the RNG states, written atomically."""
        from safetensors.torch import save_file

        from .checkpoint import rng_tensors, save_atomically

        dest = self.run_dir / "checkpoints" / f"step-{self.step}"

        def write(tmp: Path) -> None:
            self.library.save(tmp / "experiences.json")
            rt, rm = rng_tensors()
            save_file(rt, str(tmp / "rng.safetensors"))
            (tmp / "config.yaml").write_text(self.config.to_yaml(), encoding="utf-8")
            state = {"step": self.step, "rng": rm, "learner_stats": self.learner.stats,
                     "format": "stateset_agents.training_free", "version": 1}
            (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")

        save_atomically(dest, write)
        olds = sorted((p for p in dest.parent.iterdir() if p.is_dir() and p.name.startswith("step-")
                       and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        for p in olds[:-self.config.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
        return dest

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the library, step and RNG states; drop log lines of steps after the checkpoint."""
        from safetensors.torch import load_file

        from .checkpoint import restore_rng

        path = Path(path)
        state_file = path / "trainer_state.json"
        if not state_file.is_file():
            raise ConfigError(f"{str(path)!r} is not a checkpoint (no trainer_state.json)")
        state = json.loads(state_file.read_text(encoding="utf-8"))
        if state.get("format") != "stateset_agents.training_free":
            raise ConfigError(f"{str(path)!r} is a {state.get('format', 'GRPO')!r} checkpoint, not Training-Free "
                              "GRPO's; resume with the config that wrote it")
        library = ExperienceLibrary.load(path / "experiences.json")
        library.use_embedder(self.library._embedder)
        self.library = library
        self.agent.experiences = library
        restore_rng(load_file(str(path / "rng.safetensors")), state["rng"])
        self.learner.stats.update(state.get("learner_stats", {}))
        self.step = int(state["step"])
        self.library.save(self.run_dir / "experiences.json")
        from .metrics_io import keep_rows_through_step

        for name in ("metrics.jsonl", "learner.jsonl"):
            keep_rows_through_step(self.run_dir / name, self.step)


# ------------------------------------------------------------------ helpers
def _pick(pool: list[str], wanted: list[str] | None, field: str, split: str, pack: str) -> list[str]:
    if wanted is None:
        return pool
    unknown = [s for s in wanted if s not in pool]
    if unknown:
        raise ConfigError(f"{field} {unknown} are not in split {split!r} of pack {pack!r}; choose from {pool}")
    return list(wanted)


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        if isinstance(row, dict) and row.get("step", 0) <= step:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(x + "\n" for x in keep), encoding="utf-8")
    tmp.replace(path)


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max of the non-None values (std None with fewer than 2)."""
    xs = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "min": min(xs) if xs else None, "max": max(xs) if xs else None, "n": len(xs)}


def eval_table(before: dict[str, Any], after: dict[str, Any]) -> Any:
    """Before/after table: mean ± std over seeds, and the mean paired difference."""
    from rich.table import Table

    t = Table(title=f"Training-Free GRPO: eval before vs after ({len(after['seeds'])} seeds, "
                    f"{after['scenarios']} scenarios, library of {after['library_size']})")
    for col in ("metric", "before", "after", "after - before (paired by seed)"):
        t.add_column(col, justify="left" if col == "metric" else "right")

    def fmt(s: dict[str, Any]) -> str:
        if s["mean"] is None:
            return "-"
        return f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s["std"] is not None else "")

    for key in ("success_rate", "mean_reward", "mean_outcome_score"):
        b = {r["seed"]: r[key] for r in before["per_seed"]}
        diffs = [r[key] - b[r["seed"]] for r in after["per_seed"]
                 if r[key] is not None and b.get(r["seed"]) is not None]
        t.add_row(key, fmt(before[key]), fmt(after[key]), fmt(spread(diffs)))
    return t


def _short(m: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    return (f"reward {f(m.get('reward'))}  success {f(m.get('success_rate'))}  kept {m.get('groups_kept')}/"
            f"{m.get('groups')}  ops +{m.get('ops/ADD', 0)} ~{m.get('ops/MODIFY', 0)} -{m.get('ops/DELETE', 0)}  "
            f"library {m.get('library_size')}  learner errors {m.get('learner_errors')}")


def build_training_free(config: TrainingFreeConfig, *, embedder: Any = None) -> TrainingFreeGRPO:
    """See :func:`.build.build_training_free` (kept here for existing imports)."""
    from .build import build_training_free as build

    return build(config, embedder=embedder)
