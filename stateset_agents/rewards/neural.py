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
  (components ``{"neural": x}``), except on a fraction ``audit_fraction`` of groups (default 0.1: every 10th),
  which the teacher scores as before (its values returned, the head's prediction beside them, new examples).
  When the Spearman of those predictions against the teacher over the last ``audit_window`` audited pairs (at
  least ``min(min_holdout, audit_window)`` of them) falls below ``stand_in_spearman``, the head has drifted
  (the policy's replies moved where it was not trained): it falls back to the teacher, the held-out slice starts
  afresh, and it stands in again only once the Spearman on new held-out examples qualifies
  (:attr:`NeuralRewardStats.fallbacks`, ``audit_spearman``). It falls back too when those pairs' mean
  ``|head - teacher|`` exceeds ``audit_max_error`` standard deviations of the targets (``audit_error``): a policy
  that found replies the head over-scores can drive the teacher's values to all-equal, where the Spearman is
  undefined. ``audit_fraction=0`` never re-checks. Set
  ``reward.mode = "teacher"`` to go back by hand.
- ``"neural"`` (the default without a teacher): always the head; scoring with an untrained head is an error.

The code is split by job: ``neural_model.py`` (features, head, offline training, predictions),
``neural_online.py`` (online imitation and who scores), ``neural_store.py`` (save and load); this module puts
them together. Every public name stays importable from here.

Save and load: :meth:`NeuralReward.save` writes ``neural_reward.safetensors`` (the head's weights and target
statistics, ``safetensors.torch.save_file``) and ``neural_reward.json`` (format version, encoder, dimensions,
the config with every training hyperparameter, the weights' sha256), each to a temporary file in the same folder
renamed into place with ``os.replace``. The replay buffer, held-out slice and optimizer state are not saved.
:meth:`NeuralReward.load` raises :class:`~stateset_agents.errors.ConfigError` naming the file that is missing,
corrupt or does not match the other.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError, validation_error_text
from .base import RewardFunction
from .neural_model import NeuralModel, NeuralRewardConfig, bradley_terry_loss, spearman
from .neural_online import Mode, NeuralRewardStats, OnlineImitation, ReplayBuffer
from .neural_store import CONFIG_FILE, WEIGHTS_FILE, Persistence

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "Mode",
    "NeuralReward",
    "NeuralRewardConfig",
    "NeuralRewardStats",
    "ReplayBuffer",
    "bradley_terry_loss",
    "spearman",
]


class NeuralReward(Persistence, OnlineImitation, NeuralModel):
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
            raise ConfigError(f"bad NeuralReward config: {validation_error_text(e)}") from e
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
        self._audit_pairs: deque[tuple[float, float]] = deque(maxlen=self.config.audit_window)
        self._standing_calls = 0
