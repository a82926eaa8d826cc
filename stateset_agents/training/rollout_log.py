"""A training run's own rollouts as transcripts: ``RUN_DIR/train_transcripts.jsonl``, one line per episode.

Every episode a trainer samples is appended once its rewards are set (GRPO: every step, after scoring, before the
update; SFT with ``demonstrations.from: rollouts``: the rejection-sampling episodes, kept or not, at step 0). A
line is a :class:`~stateset_agents.transcripts.Transcript` with ``tag: "train"`` and ``step`` as in
``metrics.jsonl`` (the step that trains on it, counting from 1), so a resume cuts the file back to the checkpoint's
step together with the metrics (the trainers list it in their ``logs``). ``reward`` is the reward the step trained
on (``failure_reward`` for an episode the agent's own output ended; None for one left out of the loss), the
components and the reward's explanation or error are the reward function's.

``train_transcripts: false`` turns it off (a two-turn episode is about 3 KB, so a run writes about 3 KB x
episodes per step x steps). Under torchrun every process calls :func:`log_train_episodes` (with ``gather``, it
gathers each process's share of the episodes) and the main process writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..transcripts import Transcript, append_transcripts, transcripts_from_groups
from ..types import TrajectoryGroup

__all__ = ["TRAIN_TRANSCRIPTS", "log_train_episodes"]

TRAIN_TRANSCRIPTS = "train_transcripts.jsonl"


def log_train_episodes(algo: Any, groups: Sequence[TrajectoryGroup], results: Sequence[Sequence[Any]] | None = None,
                       *, step: int, gather: bool = True) -> Path | None:
    """Append ``groups``' episodes (``results[i][j]``: the reward result of trial j of group i) to the run's
    ``train_transcripts.jsonl`` as training step ``step``; return the file (main process), else None.
    ``gather=False``: every process holds all the episodes (no collective)."""
    cfg = algo.config
    if not getattr(cfg, "train_transcripts", True):
        return None
    records = transcripts_from_groups(groups, rewards=results, domain=Path(cfg.env).name, tag="train", step=step)
    for r, t in zip(records, (t for g in groups for t in g.trajectories), strict=True):
        r.reward = t.reward  # what the step trained on
    if gather and algo.dist.distributed:
        parts = algo.dist.all_gather_object([r.model_dump(mode="json") for r in records])
        records = [Transcript.model_validate(r) for part in parts for r in part]
    if not algo.dist.is_main or not records:
        return None
    return append_transcripts(Path(algo.run_dir) / TRAIN_TRANSCRIPTS, records)
