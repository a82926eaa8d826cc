"""SFTConfig: supervised fine-tuning's own fields, on top of :class:`~.run_config.PolicyConfig` (docs/training.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .run_config import PolicyConfig

__all__ = ["Demonstrations", "SFTConfig"]


class Demonstrations(BaseModel):
    """Where the demonstrations come from (``demonstrations: {from: reference, seeds: 4}`` in YAML)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    source: Literal["reference", "rollouts", "jsonl"] = Field(default="reference", alias="from")
    """``reference``: the pack's reference solutions replayed against the scripted user; ``rollouts``: the
    policy's own successful episodes (rejection sampling); ``jsonl``: a file of OpenAI-format conversations."""
    seeds: int = Field(default=4, ge=1)
    """``reference``: replays per train scenario (user seeds 0..seeds-1, so the user's lines vary)."""
    k: int = Field(default=8, ge=1)
    """``rollouts``: episodes sampled per train scenario with the current policy (at ``temperature``)."""
    min_success: int = Field(default=1, ge=1)
    """``reference`` and ``rollouts``: the fewest successful episodes the collection must yield; fewer stops the run
    with an error (there is nothing to imitate)."""
    notes: bool = False
    """``reference``: keep each tool step's ``note`` (the reason the agent writes before the call, in the same
    turn); off by default, the bare calls, because on the validation slice notes halved the tool a 135M model chose
    (docs/training.md, "The recipe")."""
    path: str | None = None
    """``jsonl``: the file, one conversation per line: ``{"messages": [...], "tools": [...]?}``."""

    @model_validator(mode="after")
    def _fields_of_source(self) -> Demonstrations:
        if self.source == "jsonl" and not self.path:
            raise ValueError("demonstrations from jsonl need `path` (a JSONL file of OpenAI-format conversations)")
        if self.source != "jsonl" and self.path is not None:
            raise ValueError(f"demonstrations.path is only read with `from: jsonl` (got from: {self.source}); "
                             "remove path or set from: jsonl")
        return self


class SFTConfig(PolicyConfig):
    """Supervised fine-tuning on demonstrations: the loss is the negative log-likelihood of the agent's tokens only."""

    algorithm: Literal["sft"] = "sft"
    """Which trainer: ``sft`` here (``grpo`` and ``training_free`` select the others)."""
    output_dir: str = "runs/sft"
    """The run folder: config, demonstrations.jsonl, metrics.jsonl, checkpoints, eval results, plot."""
    learning_rate: float = Field(default=1e-4, gt=0)
    """Peak learning rate (AdamW)."""
    demonstrations: Demonstrations = Field(default_factory=Demonstrations)
    """What to imitate (see :class:`Demonstrations`)."""
    epochs: int = Field(default=3, ge=1)
    """Passes over the demonstrations' agent turns, each in a seeded order."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimiser updates (default: ``epochs`` x updates per epoch)."""
    batch_size: int = Field(default=8, ge=1)
    """Agent turns per optimiser update (split into micro-batches of ``micro_batch_size``)."""
    max_sample_tokens: int = Field(default=2048, ge=16)
    """Sequences longer than this are left out (and counted)."""
    pack_turns: bool = True
    """One sequence per demonstration, every agent turn under the loss, wherever each turn's prompt extends the
    previous turn (training/batch.pack_turns): the same loss as separate turns for about a third of the tokens.
    A ``batch_size`` then counts sequences (conversations), not turns."""
    decision_weight: float = Field(default=1.0, ge=1.0)
    """Loss weight of each agent turn's decision tokens (its first token, which makes it a message or a tool call,
    and the called tool's name: training/decisions.py) relative to its other tokens; 1 is the plain mean NLL. The
    loss is then the weighted mean; the logged ``loss`` stays the plain per-token NLL, ``decision_nll`` the NLL of
    the decision tokens alone."""
    tool_balance: float = Field(default=0.0, ge=0.0, le=1.0)
    """Weight each called tool's name tokens by ``(mean calls per tool / calls of this tool) ** tool_balance`` on top
    of ``decision_weight`` (counted over the demonstrations): 0 leaves the frequent tools frequent, 1 gives every tool
    the same total weight (training/decisions.py)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> SFTConfig:
        if self.max_steps is not None and self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be smaller than max_steps={self.max_steps}; "
                             "lower warmup_steps or raise max_steps")
        return self
