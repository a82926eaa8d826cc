"""NeuralReward: a small learned reward on sentence embeddings, trained offline or by imitating a teacher online.

What is embedded (``features``), for one trajectory:

- ``reply``: :func:`~stateset_agents.rewards.base.agent_text` — everything the agent said to the user, one message
  per line, tool calls removed;
- ``context``: the content of the first ``user`` message (the customer's request), when ``use_context`` is on
  (the default).

Both are embedded by the encoder (all-MiniLM-L6-v2 by default: mean-pooled, L2-normalised, ``d = 384``), and the
feature vector is ``[reply, context, reply * context * sqrt(d), cos(reply, context)]`` (3 x 384 + 1 = 1153 numbers).
The elementwise product lets the head weigh, dimension by dimension, how well the reply matches the request; it is
scaled by ``sqrt(d)`` so its entries have the spread of the embeddings' own; the cosine is its unscaled sum, given
as one number because it is the strongest single cue for "answers what was asked". With ``use_context=False`` the
features are ``reply`` alone. A trajectory with no agent text (or a failed one) has no features: the reward is not
applicable to it (``value=None``).

The head is an MLP, ``Linear(in, hidden_dim) -> GELU -> Linear(hidden_dim, 1)``, trained with Adam plus an L2
penalty ``l2 * sum(w ** 2)`` on its weights (default 0.1: with a few hundred examples and 1153 inputs, an
unregularised head fits the training scores almost perfectly and ranks held-out ones worse). It predicts a
standardised score; predictions are mapped back to the targets' scale with the mean and standard deviation of the
regression targets it was last trained on (mean 0, std 1 when it has only seen preferences).

Two losses:

- regression on ``(trajectory, score)`` pairs: ``MSE(head(x), (score - mean) / std)`` + the L2 penalty (:meth:`NeuralReward.fit`);
- Bradley-Terry on ``(better, worse)`` pairs: ``-log sigmoid(r_better - r_worse)`` + the L2 penalty
  (:meth:`NeuralReward.fit_preferences`, :func:`bradley_terry_loss`).

Online imitation: ``NeuralReward(teacher=some_reward, update_every=32)`` used as a reward scores each group with
the teacher and returns the teacher's values, with components ``{"teacher": y, "neural": x}`` (``x`` is the head's
prediction before it saw this group, None while the head is untrained). Every ``(trajectory, teacher value)`` with
a non-None, finite value and agent text becomes an example; ``None`` teacher results are never targets. Examples go
to a held-out slice (a fraction ``holdout_fraction``, chosen deterministically: example ``i`` is held out when
``floor(i * f)`` increases) or to the training replay buffer. Both are bounded (``buffer_size``, ``holdout_size``)
and evict the oldest example first. Once ``update_every`` new examples have arrived since the last update, the
``score`` call that crossed the mark ends with one update: ``steps_per_update`` Adam steps of MSE on minibatches
of the buffer; then the held-out Spearman is recomputed (:attr:`NeuralReward.stats`, :meth:`NeuralReward.report`).

When the head stands in for the teacher (``mode``):

- ``"teacher"``: never; always calls the teacher (learning only).
- ``"auto"`` (the default with a teacher): calls the teacher until the held-out Spearman, over at least
  ``min_holdout`` held-out examples, reaches ``stand_in_spearman``; from then on it scores with the head alone
  (components ``{"neural": x}``) and stops calling the teacher, so the held-out figure is frozen. Set
  ``reward.mode = "teacher"`` to go back.
- ``"neural"`` (the default without a teacher): always the head; scoring with an untrained head is an error.

Save and load: :meth:`NeuralReward.save` writes ``neural_reward.safetensors`` (the head's weights and target
statistics, ``safetensors.torch.save_file``) and ``neural_reward.json`` (format version, encoder, dimensions,
the config with every training hyperparameter, the weights' sha256), each to a temporary file in the same folder
renamed into place with ``os.replace``. The replay buffer, held-out slice and optimizer state are not saved.
:meth:`NeuralReward.load` raises :class:`~stateset_agents.errors.ConfigError` naming the file that is missing,
corrupt or does not match the other.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ConfigError
from ..types import RewardResult, Trajectory, TrajectoryGroup
from .base import RewardFunction, agent_text, failed_result

__all__ = [
    "NeuralReward",
    "NeuralRewardConfig",
    "NeuralRewardStats",
    "ReplayBuffer",
    "bradley_terry_loss",
    "spearman",
]

CONFIG_FILE = "neural_reward.json"
WEIGHTS_FILE = "neural_reward.safetensors"
_FORMAT = "stateset_agents.NeuralReward"
_VERSION = 1
Mode = Literal["auto", "teacher", "neural"]


class NeuralRewardConfig(BaseModel):
    """Architecture and training hyperparameters of a :class:`NeuralReward` (saved with it)."""

    model_config = ConfigDict(extra="forbid")

    hidden_dim: int = Field(default=128, ge=1)
    """Width of the MLP's hidden layer."""
    use_context: bool = True
    """Features ``[reply, context, reply * context * sqrt(d), cos]`` with the first user message as context;
    False: ``reply`` only."""
    l2: float = Field(default=0.1, ge=0)
    """L2 penalty on the head's weights, added to the loss: ``l2 * sum(w ** 2)``."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """Adam learning rate."""
    batch_size: int = Field(default=64, ge=1)
    """Minibatch size (examples, or preference pairs)."""
    epochs: int = Field(default=100, ge=1)
    """Passes over the data in ``fit`` and ``fit_preferences``."""
    update_every: int = Field(default=32, ge=1)
    """Online: run an update once this many new teacher-scored examples have arrived since the last one."""
    steps_per_update: int = Field(default=50, ge=1)
    """Online: minibatch steps per update, sampled from the replay buffer."""
    buffer_size: int = Field(default=4096, ge=1)
    """Most examples the training replay buffer keeps; the oldest is evicted first."""
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Online: fraction of new examples kept out of training to measure the held-out Spearman."""
    holdout_size: int = Field(default=512, ge=1)
    """Most examples the held-out slice keeps; the oldest is evicted first."""
    stand_in_spearman: float = Field(default=0.9, gt=-1.0, le=1.0)
    """Mode ``auto``: the held-out Spearman at which the head stands in for the teacher."""
    min_holdout: int = Field(default=32, ge=3)
    """Mode ``auto``: the fewest held-out examples the Spearman must be measured on before standing in."""
    seed: int = 0
    """Seeds the head's initialisation and minibatch order."""


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


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    _, inverse, counts = np.unique(x[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = (ends - counts + 1 + ends) / 2.0
    ranks = np.empty(len(x))
    ranks[order] = average[inverse]
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks (ties get their average rank)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ConfigError(f"spearman needs two flat sequences of one length, got {len(a)} and {len(b)} values")
    if len(x) < 2:
        raise ConfigError(f"spearman needs at least 2 pairs, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("spearman got a NaN or infinite value; drop those pairs first")
    rx, ry = _ranks(x) - (len(x) + 1) / 2, _ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    if denominator == 0.0:
        which = "first" if not rx.any() else "second"
        raise ConfigError(f"spearman is undefined: all {len(x)} values of the {which} sequence are equal")
    return float((rx * ry).sum() / denominator)


def bradley_terry_loss(r_better: Any, r_worse: Any) -> Any:
    """Mean of ``-log sigmoid(r_better - r_worse)``: the Bradley-Terry negative log-likelihood of the preferences."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_better - r_worse).mean()


def _build_head(input_dim: int, hidden_dim: int, seed: int) -> Any:
    import torch
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1))
    head.register_buffer("target_mean", torch.zeros(()))
    head.register_buffer("target_std", torch.ones(()))
    return head


def _minibatches(n: int, batch_size: int, steps: int, generator: Any) -> Iterator[Any]:
    """``steps`` index batches, walking through successive random permutations of ``range(n)``."""
    import torch

    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            if done == steps:
                return
            yield perm[i:i + batch_size]
            done += 1


def _check_finite(scores: Sequence[float], what: str) -> list[float]:
    out = []
    for i, s in enumerate(scores):
        if s is None or isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ConfigError(f"{what}[{i}] = {s!r} is not a finite number; drop that example or fix its score")
        out.append(float(s))
    return out


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temp_path)`` on a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _explain(e: ValidationError) -> str:
    """Pydantic's errors as ``field: message (got value)``, one per problem."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']} (got {err.get('input')!r})"
                     for err in e.errors())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class NeuralReward:
    """A learned reward: sentence-embedding features and a small MLP head (see the module docs).

    Args:
        teacher: a RewardFunction to imitate online (RULER, similarity, a composition, ...), or None.
        mode: ``"auto"``, ``"teacher"`` or ``"neural"`` (see the module docs); default ``"auto"`` with a teacher,
            ``"neural"`` without.
        config: a :class:`NeuralRewardConfig`; or give its fields as keyword arguments (``update_every=16``).
        embedder: any object with ``dim`` and ``encode(texts) -> [N, dim] tensor``; default: the shared
            all-MiniLM-L6-v2 :func:`~stateset_agents.rewards.embeddings.default_embedder`.
        encoder: instead of ``embedder``, a local transformers encoder folder to embed with.
        name: the reward's name.
    """

    def __init__(self, teacher: RewardFunction | None = None, *, mode: Mode | None = None,
                 config: NeuralRewardConfig | None = None, embedder: Any = None,
                 encoder: str | os.PathLike[str] | None = None, name: str = "neural", **overrides: Any) -> None:
        if config is not None and overrides:
            raise ConfigError(f"pass either config= or config fields {sorted(overrides)}, not both")
        if embedder is not None and encoder is not None:
            raise ConfigError(f"pass either embedder= or encoder={str(encoder)!r}, not both")
        if teacher is not None and not isinstance(teacher, RewardFunction):
            raise ConfigError(f"teacher {teacher!r} is not a RewardFunction (needs `name` and async `score(group)`)")
        try:
            self.config = config if config is not None else NeuralRewardConfig(**overrides)
        except ValidationError as e:
            raise ConfigError(f"bad NeuralReward config: {_explain(e)}") from e
        self.teacher = teacher
        self.name = name
        self.mode = mode if mode is not None else ("auto" if teacher is not None else "neural")
        self._embedder = embedder
        self._encoder = Path(encoder) if encoder is not None else None
        self._head: Any = None
        self._optimizer: Any = None
        self._generator: Any = None
        self._trained = False
        self.buffer = ReplayBuffer(self.config.buffer_size)
        self.holdout = ReplayBuffer(self.config.holdout_size)
        self._seen = 0
        self._pending = 0
        self._stats = NeuralRewardStats()

    # ------------------------------------------------------------ properties
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
    def embedder(self) -> Any:
        if self._embedder is None:
            from .embeddings import Embedder, default_embedder

            self._embedder = Embedder(self._encoder) if self._encoder is not None else default_embedder()
        return self._embedder

    @property
    def trained(self) -> bool:
        """Whether the head has been trained (by fit, fit_preferences, an online update, or load)."""
        return self._trained

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
                f"scoring with the {who}")

    # ------------------------------------------------------------ features
    def features(self, trajectories: Sequence[Trajectory]) -> list[Any]:
        """One feature vector per trajectory (see the module docs), or None where there is no agent text."""
        import torch

        replies = [agent_text(t) if t.error is None else "" for t in trajectories]
        contexts = [next((m.content for m in t.messages if m.role == "user"), "") for t in trajectories]
        wanted = {r for r in replies if r} | ({c for c, r in zip(contexts, replies, strict=True) if r and c}
                                              if self.config.use_context else set())
        texts = sorted(wanted)
        emb = self.embedder.encode(texts) if texts else None
        row = {text: emb[i].float() for i, text in enumerate(texts)}
        out: list[Any] = []
        for reply, context in zip(replies, contexts, strict=True):
            if not reply:
                out.append(None)
                continue
            r = row[reply]
            if self.config.use_context:
                c = row[context] if context else torch.zeros_like(r)
                out.append(torch.cat([r, c, r * c * math.sqrt(r.shape[0]), (r @ c).reshape(1)]))
            else:
                out.append(r)
        return out

    def _features_or_raise(self, trajectories: Sequence[Trajectory], what: str) -> Any:
        import torch

        if not trajectories:
            raise ConfigError(f"{what} got no trajectories; pass at least one")
        feats = self.features(trajectories)
        for i, (t, f) in enumerate(zip(trajectories, feats, strict=True)):
            if f is None:
                why = f"it failed ({t.error})" if t.error is not None else "the agent said nothing to the user"
                raise ConfigError(f"{what}: trajectories[{i}] (scenario {t.scenario_id!r}) has no agent text to "
                                  f"embed because {why}; drop it")
        return torch.stack(feats)

    # ------------------------------------------------------------ head
    def _ensure_head(self, input_dim: int) -> Any:
        import torch

        if self._head is None:
            self._head = _build_head(input_dim, self.config.hidden_dim, self.config.seed)
            self._generator = torch.Generator().manual_seed(self.config.seed)
        elif self._head[0].in_features != input_dim:
            raise ConfigError(f"features have {input_dim} dimensions but the head expects "
                              f"{self._head[0].in_features}; use the encoder the head was trained with")
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self._head.parameters(), lr=self.config.learning_rate)
        return self._head

    def _predict_rows(self, x: Any) -> list[float]:
        import torch

        head = self._head
        if head is None or not self._trained:
            raise ConfigError(f"NeuralReward {self.name!r} has an untrained head; call fit() or fit_preferences(), "
                              "score groups with a teacher first, or load() a saved one")
        if x.shape[-1] != head[0].in_features:
            raise ConfigError(f"features have {x.shape[-1]} dimensions but the head expects {head[0].in_features}; "
                              "use the encoder the head was trained with")
        head.eval()
        with torch.inference_mode():
            out = head(x).squeeze(-1) * head.target_std + head.target_mean
        return [float(v) for v in out]

    def _set_target_stats(self, y: Any) -> None:
        std = float(y.std(unbiased=False)) if len(y) > 1 else 0.0
        self._head.target_mean.fill_(float(y.mean()))
        self._head.target_std.fill_(std if std > 1e-8 else 1.0)

    def _l2_penalty(self) -> Any:
        """``l2 * sum of squared weights`` (biases excluded)."""
        return self.config.l2 * sum((p * p).sum() for n, p in self._head.named_parameters() if n.endswith("weight"))

    def _regression_steps(self, x: Any, y: Any, steps: int) -> float:
        """``steps`` Adam steps of MSE on standardised targets; returns the last pass's mean MSE (penalty excluded)."""
        import torch.nn.functional as F

        head, opt = self._head, self._optimizer
        z = (y - head.target_mean) / head.target_std
        head.train()
        losses: list[float] = []
        for idx in _minibatches(len(x), self.config.batch_size, steps, self._generator):
            mse = F.mse_loss(head(x[idx]).squeeze(-1), z[idx])
            opt.zero_grad()
            (mse + self._l2_penalty()).backward()
            opt.step()
            losses.append(mse.item())
        self._trained = True
        self._stats.gradient_steps += steps
        tail = losses[-max(1, math.ceil(len(x) / self.config.batch_size)):]
        return sum(tail) / len(tail)

    # ------------------------------------------------------------ offline training
    def fit(self, trajectories: Sequence[Trajectory], scores: Sequence[float], *, epochs: int | None = None) -> float:
        """Regress the head on ``scores`` (one per trajectory) for ``epochs`` passes.

        Trains on exactly this data (the replay buffer is for online learning and is left alone) and sets the
        target statistics from ``scores``. Returns the last pass's mean MSE (penalty excluded).
        """
        import torch

        if len(trajectories) != len(scores):
            raise ConfigError(f"fit got {len(trajectories)} trajectories but {len(scores)} scores; "
                              "pass one score per trajectory")
        y = torch.tensor(_check_finite(scores, "scores"), dtype=torch.float32)
        x = self._features_or_raise(trajectories, "fit")
        epochs = self._check_epochs(epochs)
        self._ensure_head(x.shape[1])
        self._set_target_stats(y)
        steps = epochs * math.ceil(len(x) / self.config.batch_size)
        return self._regression_steps(x, y, steps)

    def fit_preferences(self, pairs: Sequence[tuple[Trajectory, Trajectory]], *, epochs: int | None = None) -> float:
        """Train on ``(better, worse)`` pairs with the Bradley-Terry loss.

        Returns the last pass's mean Bradley-Terry loss (penalty excluded).
        """

        if not pairs:
            raise ConfigError("fit_preferences got no pairs; pass at least one (better, worse) pair")
        for i, p in enumerate(pairs):
            if not isinstance(p, (tuple, list)) or len(p) != 2:
                raise ConfigError(f"pairs[{i}] is {type(p).__name__} of length {len(p) if hasattr(p, '__len__') else '?'}"
                                  "; each pair must be (better, worse)")
        epochs = self._check_epochs(epochs)
        x = self._features_or_raise([t for p in pairs for t in p], "fit_preferences")
        head = self._ensure_head(x.shape[1])
        better, worse = x[0::2], x[1::2]
        head.train()
        losses: list[float] = []
        steps = epochs * math.ceil(len(pairs) / self.config.batch_size)
        for idx in _minibatches(len(pairs), self.config.batch_size, steps, self._generator):
            loss = bradley_terry_loss(head(better[idx]).squeeze(-1), head(worse[idx]).squeeze(-1))
            self._optimizer.zero_grad()
            (loss + self._l2_penalty()).backward()
            self._optimizer.step()
            losses.append(loss.item())
        self._trained = True
        self._stats.gradient_steps += steps
        tail = losses[-math.ceil(len(pairs) / self.config.batch_size):]
        return sum(tail) / len(tail)

    def _check_epochs(self, epochs: int | None) -> int:
        epochs = self.config.epochs if epochs is None else epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"epochs={epochs!r} must be an integer >= 1")
        return epochs

    def predict(self, trajectories: Sequence[Trajectory]) -> list[float]:
        """The head's score for each trajectory, in the scale of the regression targets it was trained on."""
        return self._predict_rows(self._features_or_raise(trajectories, "predict"))

    def evaluate(self, trajectories: Sequence[Trajectory], scores: Sequence[float]) -> float:
        """Spearman correlation between the head's predictions and ``scores`` (use data it was not trained on)."""
        if len(trajectories) != len(scores):
            raise ConfigError(f"evaluate got {len(trajectories)} trajectories but {len(scores)} scores; "
                              "pass one score per trajectory")
        if len(trajectories) < 2:
            raise ConfigError(f"evaluate needs at least 2 trajectories, got {len(trajectories)}")
        y = _check_finite(scores, "scores")
        return spearman(self.predict(trajectories), y)

    # ------------------------------------------------------------ online learning
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
        if self.standing_in:
            return self._score_with_head(group)
        return await self._score_with_teacher(group)

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
        results = await self.teacher.score(group)
        if len(results) != len(group):
            raise ConfigError(f"teacher {self.teacher.name!r} returned {len(results)} results for a group of "
                              f"{len(group)}; a RewardFunction returns one result per trajectory")
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

    # ------------------------------------------------------------ save / load
    def _encoder_record(self) -> str:
        from ..models.default import embedding_model_path

        path = getattr(self.embedder, "path", None)
        if path is None:
            return f"custom:{type(self.embedder).__name__}"
        try:
            if Path(path).resolve() == embedding_model_path().resolve():
                return "default"
        except ImportError:
            pass
        return str(Path(path).resolve())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the head and its config into the folder ``path`` (created if needed), each file atomically."""
        from safetensors.torch import save_file

        if self._head is None or not self._trained:
            raise ConfigError(f"NeuralReward {self.name!r} has nothing to save: the head is untrained")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().clone() for k, v in self._head.state_dict().items()}
        _atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": _FORMAT}))
        record = {
            "format": _FORMAT, "version": _VERSION, "name": self.name, "encoder": self._encoder_record(),
            "embed_dim": int(self.embedder.dim), "input_dim": int(self._head[0].in_features),
            "features": "reply,context,reply*context" if self.config.use_context else "reply",
            "config": self.config.model_dump(mode="json"), "holdout_spearman": self._stats.holdout_spearman,
            "weights_file": WEIGHTS_FILE, "weights_sha256": _sha256(folder / WEIGHTS_FILE),
        }
        text = json.dumps(record, indent=2) + "\n"
        _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, teacher: RewardFunction | None = None, mode: Mode | None = None,
             embedder: Any = None) -> NeuralReward:
        """A NeuralReward from a folder written by :meth:`save` (trained head; empty buffer and held-out slice)."""
        folder = Path(path)
        record = _read_record(folder)
        if embedder is None:
            embedder = _embedder_for(record["encoder"], folder / CONFIG_FILE)
        if int(embedder.dim) != record["embed_dim"]:
            raise ConfigError(f"{folder / CONFIG_FILE} was trained on {record['embed_dim']}-dimensional embeddings "
                              f"but the embedder gives {embedder.dim}; pass the encoder it was trained with")
        try:
            config = NeuralRewardConfig.model_validate(record["config"])
        except ValidationError as e:
            raise ConfigError(f"{folder / CONFIG_FILE} has a bad 'config': {_explain(e)}") from e
        reward = cls(teacher, mode=mode, config=config, embedder=embedder, name=record.get("name", "neural"))
        head = reward._ensure_head(record["input_dim"])
        try:
            head.load_state_dict(_read_weights(folder / WEIGHTS_FILE, record))
        except RuntimeError as e:
            raise ConfigError(f"{folder / WEIGHTS_FILE} does not fit the head described in {CONFIG_FILE}: {e}") from e
        reward._trained = True
        return reward


def _read_record(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ConfigError(f"{str(folder)!r} is not a folder; pass the folder NeuralReward.save() wrote")
    file = folder / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file} is missing; the folder was not written by NeuralReward.save() or the save was "
                          "interrupted; save again")
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file} is corrupt ({type(e).__name__}: {e}); save the reward again") from e
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise ConfigError(f"{file} is not a NeuralReward config (format {record.get('format') if isinstance(record, dict) else None!r}, "
                          f"expected {_FORMAT!r})")
    if record.get("version") != _VERSION:
        raise ConfigError(f"{file} has format version {record.get('version')!r}; this library reads version {_VERSION}")
    missing = [k for k in ("encoder", "embed_dim", "input_dim", "config", "weights_sha256") if k not in record]
    if missing:
        raise ConfigError(f"{file} lacks the fields {missing}; save the reward again")
    return record


def _read_weights(file: Path, record: dict[str, Any]) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise ConfigError(f"{file} is missing; the folder holds only half a NeuralReward; save it again")
    if _sha256(file) != record["weights_sha256"]:
        raise ConfigError(f"{file} does not match {file.with_name(CONFIG_FILE).name} (sha256 differs): it is "
                          "corrupt or from another save; save the reward again")
    try:
        return load_file(file)
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{file} is corrupt ({e}); save the reward again") from e


def _embedder_for(encoder: str, file: Path) -> Any:
    from .embeddings import Embedder, default_embedder

    if encoder == "default":
        return default_embedder()
    if encoder.startswith("custom:"):
        raise ConfigError(f"{file} was saved with a custom embedder ({encoder[7:]}); pass it as embedder=")
    if not (Path(encoder) / "config.json").is_file():
        raise ConfigError(f"the encoder folder {encoder!r} named in {file} does not exist here; pass "
                          "embedder=Embedder(FOLDER) with the same encoder")
    return Embedder(encoder)
