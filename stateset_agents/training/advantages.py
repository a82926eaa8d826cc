"""Advantage estimators by name (``advantage_estimator`` in the config): ``grpo`` and ``gae``.

- ``grpo`` (:class:`GroupRelative`): ``A_i = (r_i - mean(r_group)) / max(std, floor)`` per group (or the batch's std,
  or none; :func:`~.losses.group_advantages`); every agent turn of an episode carries its episode's advantage. A
  group without reward variance (:func:`~.losses.has_variance`) has zero advantages.
- ``gae`` (:class:`GAE`): a linear value head on the policy's (detached) hidden state at the last prompt token of each
  agent turn, trained with MSE on the returns; the reward arrives after the last turn and GAE(gamma, lambda) runs
  over the agent turns (:func:`~.losses.gae`); advantages are whitened over the batch unless ``scale_rewards: none``.
  The value head, its optimiser and its checkpoint files belong to this estimator.

An estimator is built with ``(config, policy, dist)``; the trainer calls :meth:`group_advantages` on the scored
groups, then :meth:`assign` on the step's samples, and, inside every micro-batch, :meth:`value_loss`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..types import Trajectory, TrajectoryGroup
from .batch import Sample, collate
from .dist import DistContext
from .losses import gae, group_advantages, has_variance, reward_scale

__all__ = ["ESTIMATORS", "GAE", "GroupRelative"]


class GroupRelative:
    """GRPO's group-relative advantages (see the module docs)."""

    per_turn = False
    """Advantages are per episode, so a group with equal rewards has nothing to learn from (skippable)."""

    def __init__(self, config: Any, policy: Any, dist: DistContext) -> None:
        self.config, self.policy, self.dist = config, policy, dist

    def group_advantages(self, groups: Sequence[TrajectoryGroup]) -> tuple[dict[int, float], set[int]]:
        """Per trajectory ``id()``, its advantage; and the indices of groups without reward variance."""
        cfg = self.config
        rewards, gids, ids = [], [], []
        zero_var: set[int] = set()
        for gi, g in enumerate(groups):
            vals = [t.reward for t in g.trajectories if t.reward is not None]
            if not has_variance(vals, cfg.zero_variance_rtol):
                zero_var.add(gi)
            for t in g.trajectories:
                if t.reward is not None:
                    rewards.append(t.reward)
                    gids.append(gi)
                    ids.append(id(t))
        if not rewards:
            return {}, zero_var
        r = torch.tensor(rewards, dtype=torch.float64)
        g = torch.tensor(gids)
        if cfg.scale_rewards == "batch" and self.dist.distributed:
            adv = group_advantages(r, g, "none").double()
            s, s2, n = self.dist.all_reduce_sum([float(r.sum()), float((r * r).sum()), float(r.numel())])
            var = max(0.0, (s2 - s * s / n) / max(n - 1, 1))
            scale = max(self.dist.all_gather_object(reward_scale(r)))
            adv = adv / (max(math.sqrt(var), cfg.advantage_std_floor * scale) + 1e-4)
        else:
            adv = group_advantages(r, g, cfg.scale_rewards, std_floor=cfg.advantage_std_floor)
        return dict(zip(ids, adv.tolist(), strict=True)), zero_var

    def assign(self, samples: list[Sample], trajs: list[Trajectory], advantages: dict[int, float]) -> None:
        for s in samples:
            s.advantage = advantages[id(trajs[s.traj_index])]

    def value_loss(self, hidden: torch.Tensor, b: Any, n_samples: int) -> torch.Tensor | None:
        return None

    # no state of its own
    def zero_grad(self) -> None:
        pass

    def step(self) -> None:
        pass

    def writer(self) -> Any:
        return lambda tmp: {}

    def load(self, path: Path) -> None:
        pass


class GAE(GroupRelative):
    """PPO-style GAE over agent turns with a value head (see the module docs)."""

    per_turn = True

    def __init__(self, config: Any, policy: Any, dist: DistContext) -> None:
        super().__init__(config, policy, dist)
        hidden = policy.causal_lm.config.hidden_size
        self.head = torch.nn.Linear(hidden, 1).to(policy.device)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        dist.broadcast_parameters(self.head.parameters())
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=config.value_learning_rate)

    @torch.no_grad()
    def assign(self, samples: list[Sample], trajs: list[Trajectory], advantages: dict[int, float]) -> None:
        cfg, policy = self.config, self.policy
        m = cfg.micro_batch_size
        ordered = sorted(samples, key=lambda s: (len(s.input_ids), s.traj_index, s.turn_index))
        for i in range(0, len(ordered), m):
            mb = ordered[i:i + m]
            b = collate(mb, policy.pad_id, policy.device)
            hidden = policy.hidden(b)
            v = self.head(hidden[torch.arange(len(mb), device=policy.device), b.value_positions].float())
            for s, val in zip(mb, v.squeeze(-1).tolist(), strict=True):
                s.value = val
        by_traj: dict[int, list[Sample]] = {}
        for s in samples:
            by_traj.setdefault(s.traj_index, []).append(s)
        for i, turns in by_traj.items():
            turns.sort(key=lambda s: s.turn_index)
            rewards = [0.0] * len(turns)
            rewards[-1] = float(trajs[i].reward)
            adv, ret = gae(rewards, [s.value for s in turns], gamma=cfg.gamma, lam=cfg.gae_lambda)
            for s, a, r in zip(turns, adv, ret, strict=True):
                s.advantage, s.ret = a, r
        if cfg.scale_rewards != "none" and samples:
            a = [s.advantage for s in samples]
            s1, s2, n = self.dist.all_reduce_sum([sum(a), sum(x * x for x in a), len(a)])
            mean = s1 / n
            std = math.sqrt(max(0.0, s2 / n - mean * mean))
            for s in samples:
                s.advantage = (s.advantage - mean) / (std + 1e-4)

    def value_loss(self, hidden: torch.Tensor, b: Any, n_samples: int) -> torch.Tensor | None:
        """MSE of the value head on the returns, on the policy's detached hidden states; ``/ n_samples`` (this
        update's samples over all processes), so the update's sum is the mean."""
        if b.returns is None:
            return None
        rows = torch.arange(b.input_ids.shape[0], device=hidden.device)
        v = self.head(hidden[rows, b.value_positions].detach().float()).squeeze(-1)
        return ((v - b.returns) ** 2).sum() / max(n_samples, 1)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dist.all_reduce_gradients(self.head.parameters())
        self.optimizer.step()

    def writer(self) -> Any:
        from .checkpoint import optimizer_tensors, state_dir

        weights = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        ot, om = optimizer_tensors(self.optimizer)

        def write(tmp: Path) -> dict[str, Any]:
            from safetensors.torch import save_file

            own = state_dir(tmp)
            save_file(weights, str(own / "value_head.safetensors"))
            save_file(ot, str(own / "value_optimizer.safetensors"))
            (own / "value_optimizer.json").write_text(json.dumps(om), encoding="utf-8")
            return {}
        return write

    def load(self, path: Path) -> None:
        from safetensors.torch import load_file

        from .checkpoint import load_optimizer, state_file

        self.head.load_state_dict(load_file(str(state_file(path, "value_head.safetensors"))))
        load_optimizer(self.optimizer, load_file(str(state_file(path, "value_optimizer.safetensors"))),
                       json.loads(state_file(path, "value_optimizer.json").read_text(encoding="utf-8")))


ESTIMATORS: dict[str, type[GroupRelative]] = {"grpo": GroupRelative, "gae": GAE}
"""``advantage_estimator`` -> its estimator class."""
