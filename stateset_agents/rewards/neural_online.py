"""NeuralReward's online imitation: scoring with a teacher, the replay buffer and held-out slice, updates, and
when the head stands in for the teacher (``mode``; see ``neural.py``)."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..types import RewardResult, TrajectoryGroup
from .base import check_results, failed_result
from .neural_model import spearman

__all__ = ["Mode", "NeuralRewardStats", "OnlineImitation", "ReplayBuffer"]

Mode = Literal["auto", "teacher", "neural"]


class NeuralRewardStats(BaseModel):
    """Counters of a :class:`NeuralReward` (see :meth:`NeuralReward.report`)."""

    model_config = ConfigDict(extra="forbid")

    teacher_examples: int = 0
    """Trajectories whose teacher value became an example (training or held out)."""
    teacher_none: int = 0
    """Trajectories the teacher called not applicable (``value=None``): never used as targets."""
    skipped: int = 0
    """Trajectories with a teacher value but no usable features or a non-finite value: not used."""
    neural_scored: int = 0
    """Trajectories scored by the head alone."""
    updates: int = 0
    gradient_steps: int = 0
    last_loss: float | None = None
    buffer_size: int = 0
    holdout_size: int = 0
    evicted: int = 0
    """Examples evicted from the replay buffer and the held-out slice (oldest first)."""
    holdout_spearman: float | None = None
    """Spearman between head and teacher on the held-out slice after the last update (None: not measurable yet)."""
    standing_in: bool = False
    audits: int = 0
    """Groups scored by the teacher while the head stood in, to check it (mode ``auto``)."""
    audit_spearman: float | None = None
    """Spearman of the head's predictions (made before it saw each audited group) against the teacher's values,
    over the most recent ``audit_window`` audited pairs (None: fewer than ``min(min_holdout, audit_window)``)."""
    audit_error: float | None = None
    """Mean ``|head - teacher|`` over the same pairs, in standard deviations of the head's regression targets."""
    fallbacks: int = 0
    """Times the audits found the head had drifted and the teacher took over again."""


class ReplayBuffer:
    """A bounded first-in-first-out store of ``(features, target)`` examples: when full, the oldest is evicted."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ConfigError(f"ReplayBuffer max_size={max_size} must be >= 1")
        self.max_size = max_size
        self._items: deque[tuple[Any, float]] = deque(maxlen=max_size)
        self.evicted = 0

    def add(self, features: Any, target: float) -> None:
        if len(self._items) == self.max_size:
            self.evicted += 1
        self._items.append((features, float(target)))

    def __len__(self) -> int:
        return len(self._items)

    def targets(self) -> list[float]:
        return [y for _, y in self._items]

    def tensors(self) -> tuple[Any, Any]:
        """``(X [N, D], y [N])``, oldest first."""
        import torch

        return torch.stack([x for x, _ in self._items]), torch.tensor(self.targets(), dtype=torch.float32)


class OnlineImitation:
    """Online learning from a teacher and the choice of who scores (a mixin of :class:`~.neural.NeuralReward`)."""

    @property
    def mode(self) -> Mode:
        return self._mode

    @mode.setter
    def mode(self, value: Mode) -> None:
        if value not in ("auto", "teacher", "neural"):
            raise ConfigError(f"mode {value!r} is not one of 'auto', 'teacher', 'neural'")
        if value != "neural" and self.teacher is None:
            raise ConfigError(f"mode {value!r} calls a teacher, but none was given; pass teacher= or use mode='neural'")
        if value == "auto" and self.config.holdout_fraction == 0:
            raise ConfigError("mode 'auto' needs held-out examples to decide when to stand in, but "
                              "holdout_fraction=0; set holdout_fraction > 0 or use mode='teacher'")
        self._mode = value

    @property
    def standing_in(self) -> bool:
        """Whether ``score`` uses the head alone now (mode ``neural``, or ``auto`` past the threshold)."""
        if self.mode == "neural":
            return True
        s = self._stats
        return (self.mode == "auto" and s.holdout_spearman is not None and len(self.holdout) >= self.config.min_holdout
                and s.holdout_spearman >= self.config.stand_in_spearman)

    @property
    def stats(self) -> NeuralRewardStats:
        return self._stats.model_copy(update={"buffer_size": len(self.buffer), "holdout_size": len(self.holdout),
                                              "evicted": self.buffer.evicted + self.holdout.evicted,
                                              "standing_in": self.standing_in})

    def report(self) -> str:
        """One line: examples, updates, the held-out Spearman and who scores."""
        s = self.stats
        rho = "n/a" if s.holdout_spearman is None else f"{s.holdout_spearman:.3f}"
        who = "head (standing in)" if s.standing_in else f"teacher {getattr(self.teacher, 'name', None)!r}"
        return (f"NeuralReward {self.name!r}: {s.teacher_examples} teacher examples ({s.teacher_none} not applicable, "
                f"{s.skipped} skipped), buffer {s.buffer_size}/{self.config.buffer_size}, held out "
                f"{s.holdout_size}, {s.updates} updates ({s.gradient_steps} steps, last loss "
                f"{'n/a' if s.last_loss is None else f'{s.last_loss:.4f}'}), held-out Spearman {rho}; "
                f"{self._audit_report()}scoring with the {who}")

    def _audit_report(self) -> str:
        s = self._stats
        if not s.audits and not s.fallbacks:
            return ""
        rho = "n/a" if s.audit_spearman is None else f"{s.audit_spearman:.3f}"
        err = "n/a" if s.audit_error is None else f"{s.audit_error:.2f} std"
        fell = f", fell back to the teacher {s.fallbacks} time(s)" if s.fallbacks else ""
        return f"{s.audits} audits (Spearman {rho}, error {err}){fell}; "

    def add_example(self, features: Any, target: float) -> None:
        """Put one example in the held-out slice or the replay buffer (deterministic ``holdout_fraction`` split)."""
        f = self.config.holdout_fraction
        self._seen += 1
        if math.floor(self._seen * f) > math.floor((self._seen - 1) * f):
            self.holdout.add(features, target)
        else:
            self.buffer.add(features, target)

    def update(self, steps: int | None = None) -> float:
        """One online update: ``steps_per_update`` MSE steps on the replay buffer, then the held-out Spearman."""
        if len(self.buffer) == 0:
            raise ConfigError("the replay buffer is empty; score groups with a teacher (or call fit()) first")
        x, y = self.buffer.tensors()
        self._ensure_head(x.shape[1])
        self._set_target_stats(y)
        loss = self._regression_steps(x, y, steps or self.config.steps_per_update)
        self._stats.updates += 1
        self._stats.last_loss = loss
        self._stats.holdout_spearman = self._holdout_spearman()
        return loss

    def _holdout_spearman(self) -> float | None:
        if len(self.holdout) < 3:
            return None
        x, y = self.holdout.tensors()
        try:
            return spearman(self._predict_rows(x), y.tolist())
        except ConfigError:  # constant predictions or targets: not measurable, not zero
            return None

    async def score(self, group: TrajectoryGroup) -> list[RewardResult]:
        if not self.standing_in:
            return await self._score_with_teacher(group)
        if self.mode == "auto" and self._audit_due():
            return await self._audit(group)
        return self._score_with_head(group)

    def _audit_due(self) -> bool:
        """Whether this standing-in group is audited: group ``k`` (counted from 1 since standing in) is when
        ``floor(k * audit_fraction)`` increases, so 0.1 audits groups 10, 20, ..."""
        f = self.config.audit_fraction
        self._standing_calls += 1
        k = self._standing_calls
        return math.floor(k * f) > math.floor((k - 1) * f)

    async def _audit(self, group: TrajectoryGroup) -> list[RewardResult]:
        """Score ``group`` with the teacher (its values are returned and become examples, as before standing in);
        compare them with the head's predictions, and fall back to the teacher when their Spearman over the
        recent audits is below ``stand_in_spearman``."""
        results = await self._score_with_teacher(group)
        self._stats.audits += 1
        for r in results:
            head, teacher = r.components.get("neural"), r.components.get("teacher")
            if head is not None and teacher is not None and math.isfinite(head) and math.isfinite(teacher):
                self._audit_pairs.append((head, teacher))
        if len(self._audit_pairs) >= min(self.config.min_holdout, self.config.audit_window):
            heads, teachers = [h for h, _ in self._audit_pairs], [t for _, t in self._audit_pairs]
            try:
                rho = spearman(heads, teachers)
            except ConfigError:  # constant predictions or values: no ranking to compare (the error still counts)
                rho = None
            # a policy that found replies the head over-scores can make the teacher's values all equal (all 0),
            # which leaves the Spearman undefined: the error in target standard deviations catches that
            err = sum(abs(h - t) for h, t in self._audit_pairs) / len(heads) / float(self._head.target_std)
            self._stats.audit_spearman, self._stats.audit_error = rho, err
            if (rho is not None and rho < self.config.stand_in_spearman) or err > self.config.audit_max_error:
                self._fall_back()
        return results

    def _fall_back(self) -> None:
        """The head drifted from the teacher: the teacher scores again, and the head qualifies again only on a
        fresh held-out slice (examples of the trajectories it drifted on), not on the old one it still fits."""
        self._stats.fallbacks += 1
        evicted = self.holdout.evicted
        self.holdout = ReplayBuffer(self.config.holdout_size)
        self.holdout.evicted = evicted
        self._stats.holdout_spearman = None
        self._audit_pairs.clear()
        self._standing_calls = 0

    def _score_with_head(self, group: TrajectoryGroup) -> list[RewardResult]:
        import torch

        if not self._trained:
            raise ConfigError(f"NeuralReward {self.name!r} has an untrained head; call fit() or fit_preferences(), "
                              "or load() a saved one, before scoring with mode 'neural'")
        feats = self.features(group.trajectories)
        rows = [f for f in feats if f is not None]
        preds = iter(self._predict_rows(torch.stack(rows))) if rows else iter(())
        rho = self._stats.holdout_spearman
        why = "" if self.mode == "neural" else f" standing in for teacher {self.teacher.name!r} " \
              f"(held-out Spearman {rho:.3f} on {len(self.holdout)})"
        out = []
        for t, f in zip(group.trajectories, feats, strict=True):
            if t.error is not None:
                out.append(failed_result(t))
            elif f is None:
                out.append(RewardResult(value=None, components={"neural": None},
                                        explanation="the agent said nothing to the user"))
            else:
                v = next(preds)
                self._stats.neural_scored += 1
                out.append(RewardResult(value=v, components={"neural": v}, explanation=f"neural head{why}"))
        return out

    async def _score_with_teacher(self, group: TrajectoryGroup) -> list[RewardResult]:
        results = check_results(self.teacher, group, list(await self.teacher.score(group)), what="teacher")
        feats = self.features(group.trajectories)
        preds = self._maybe_predict(feats)
        out = []
        for t, r, f, p in zip(group.trajectories, results, feats, preds, strict=True):
            out.append(RewardResult(value=r.value, components={"teacher": r.value, "neural": p},
                                    explanation=r.explanation, error=r.error))
            if r.value is None:
                self._stats.teacher_none += 1
            elif t.error is not None or f is None or not math.isfinite(r.value):
                self._stats.skipped += 1
            else:
                self.add_example(f, r.value)
                self._stats.teacher_examples += 1
                self._pending += 1
        if self._pending >= self.config.update_every:
            self._pending = 0
            self.update()
        return out

    def _maybe_predict(self, feats: list[Any]) -> list[float | None]:
        import torch

        rows = [f for f in feats if f is not None]
        if not self._trained or not rows:
            return [None] * len(feats)
        preds = iter(self._predict_rows(torch.stack(rows)))
        return [None if f is None else next(preds) for f in feats]
