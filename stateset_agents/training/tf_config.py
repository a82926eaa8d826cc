"""TrainingFreeConfig: Training-Free GRPO's own fields, on top of :class:`~.run_config.RunConfig`
(see docs/training_free.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .run_config import RunConfig

__all__ = ["LearnerEndpoint", "TrainingFreeConfig"]


class LearnerEndpoint(BaseModel):
    """An OpenAI-compatible endpoint as the learner (vLLM, Ollama, llama.cpp server, OpenAI)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    """The API root, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """The model name the server expects."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (no key is sent when it is unset)."""
    timeout: float = Field(default=120.0, gt=0)
    """Seconds per request."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of failed requests (429, 5xx, timeouts), with backoff."""

    @model_validator(mode="after")
    def _url(self) -> LearnerEndpoint:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"learner.base_url {self.base_url!r} must start with http:// or https:// "
                             "(e.g. http://127.0.0.1:8000/v1)")
        return self


class TrainingFreeConfig(RunConfig):
    """Training-Free GRPO's configuration (see docs/training_free.md for every field with its default)."""

    algorithm: Literal["training_free"] = "training_free"
    """Which trainer: ``training_free`` here (``grpo`` and ``sft`` select the others)."""
    learner: str | LearnerEndpoint = "same"
    """Who writes the experiences: ``same``/``default`` (the agent's model), a local model folder, or
    ``{base_url, model, api_key_env}`` for an OpenAI-compatible endpoint."""
    temperature: float = Field(default=0.7, gt=0)
    """Sampling temperature of the agent's rollouts (diversity within a group is what gets compared)."""
    context_tokens: int = Field(default=2048, ge=64)
    """The agent's prompt budget (older turns are condensed beyond it)."""
    eval_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    """One evaluation per seed; the reports give mean and spread over seeds."""
    save_every: int = Field(default=1, ge=0)
    """Checkpoint every N steps (0: only at the end). The library itself is saved after every step."""
    output_dir: str = "runs/training_free"
    """The run folder (see the module docs of training_free.py)."""

    # ------------------------------------------------------------ rollouts
    group_size: int = Field(default=4, ge=2)
    """Episodes per scenario per step: the group whose members are compared."""
    scenarios_per_step: int = Field(default=4, ge=1)
    """Scenarios per step (the batch whose proposals are consolidated together)."""
    epochs: int = Field(default=2, ge=1)
    """Passes over the train scenarios."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many steps (default: ``epochs`` x batches per epoch)."""

    # ------------------------------------------------------------ the learner
    learner_temperature: float = Field(default=0.3, ge=0)
    """The learner's sampling temperature."""
    learner_max_new_tokens: int = Field(default=384, ge=16)
    """Most tokens per learner answer."""
    learner_retries: int = Field(default=2, ge=0)
    """Extra attempts after an invalid learner answer (the error is fed back); then the group is skipped."""
    learner_concurrency: int = Field(default=8, ge=1)
    """Learner calls in flight at once."""
    summarize: bool = True
    """Summarise each trajectory first (one learner call each), as in the paper; false shows transcripts."""
    transcript_chars: int = Field(default=3000, ge=200)
    """Characters of each transcript shown to the learner."""
    library_view: int = Field(default=20, ge=1)
    """Most experiences shown to the learner per group (the most similar to the scenario)."""
    max_ops_per_group: int = Field(default=3, ge=1)
    """Most operations one group may propose."""
    consolidation: Literal["learner", "embedding"] = "learner"
    """Batch-level merge of proposals: one learner call, or embedding similarity (no call)."""
    advantage_scale: float = Field(default=1.0, gt=0)
    """The reward spread within a group that counts as full-strength evidence (confidence, see docs)."""

    # ------------------------------------------------------------ the library
    library_max_size: int = Field(default=50, ge=1)
    """Most experiences; beyond it the lowest-confidence one is evicted."""
    word_limit: int = Field(default=32, ge=4)
    """Most words per experience."""
    prompt_top_k: int = Field(default=8, ge=1)
    """Most experiences in the agent's prompt; beyond it, the top-k most similar to the conversation."""
    dedup_threshold: float = Field(default=0.9, gt=0, le=1)
    """Cosine similarity (all-MiniLM-L6-v2) at or above which an added experience merges into an existing one."""

    @model_validator(mode="after")
    def _cross_checks(self) -> TrainingFreeConfig:
        if isinstance(self.learner, str) and not self.learner.strip():
            raise ValueError("learner is empty; use 'same', a model folder, or {base_url, model}")
        return self
