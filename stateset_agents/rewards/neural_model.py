"""NeuralReward's model: the features, the MLP head, offline training and predictions (see ``neural.py``).

Also the two statistics it is trained and judged with: :func:`spearman` and :func:`bradley_terry_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..types import Trajectory
from .base import agent_text

__all__ = ["NeuralModel", "NeuralRewardConfig", "bradley_terry_loss", "spearman"]


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
    audit_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    """Mode ``auto``, standing in: the fraction of groups the teacher also scores, to re-check the head (0: none)."""
    audit_window: int = Field(default=64, ge=3)
    """Mode ``auto``: the most recent audited (head, teacher) pairs whose Spearman decides a fall-back."""
    audit_max_error: float = Field(default=1.0, gt=0)
    """Mode ``auto``: fall back also when those pairs' mean ``|head - teacher|`` exceeds this many target stds."""
    seed: int = 0
    """Seeds the head's initialisation and minibatch order."""


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





class NeuralModel:
    """Features, head, offline training and predictions of a :class:`~.neural.NeuralReward` (whose ``__init__``
    sets the state: ``config``, ``name``, the embedder, the head, its optimiser and generator, ``_stats``)."""

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
