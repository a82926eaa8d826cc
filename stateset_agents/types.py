"""The data shapes every part of stateset_agents shares.

Messages use the OpenAI chat format. A conversation is ``list[Message]``. All models are pydantic v2
with ``extra="forbid"``, so a misspelt field is an error, not silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Completion",
    "Message",
    "RewardResult",
    "Role",
    "SamplingParams",
    "ToolCall",
    "Trajectory",
    "TrajectoryGroup",
]

Role = Literal["system", "user", "assistant", "tool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolCall(_Strict):
    """One call of a tool by the agent."""

    id: str
    """Unique within the episode; the tool's answer carries it as ``tool_call_id``."""
    name: str
    """The tool's name as the environment pack defines it."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """Parsed JSON arguments."""


class Message(_Strict):
    """One chat message in OpenAI format."""

    role: Role
    content: str = ""
    tool_calls: list[ToolCall] | None = None
    """Tool calls made in an assistant message."""
    tool_call_id: str | None = None
    """For ``role="tool"``: the id of the call this message answers."""
    name: str | None = None
    """For ``role="tool"``: the tool's name."""

    @model_validator(mode="after")
    def _check_roles(self) -> Message:
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, got role={self.role!r}; "
                             "move the calls to an assistant message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id (the id of the call it answers)")
        return self

    def to_openai(self) -> dict[str, Any]:
        """The dict an OpenAI-compatible endpoint or a chat template expects."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out


class SamplingParams(_Strict):
    """How to sample one completion (also recorded on the :class:`Completion` it produced)."""

    temperature: float = Field(default=1.0, ge=0.0)
    """0 means greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens."""
    stop: list[str] = Field(default_factory=list)
    """Generation ends when any of these strings appears; the stop string is not returned."""
    seed: int | None = None
    """Per-request seed for reproducible sampling."""
    json_schema: dict[str, Any] | None = None
    """Constrain the completion to a JSON document valid under this schema (as vLLM's guided decoding): local
    models mask disallowed tokens at every step (llguidance, see models/grammar.py), OpenAI-compatible endpoints
    get it as ``response_format``. For judges and learners that must answer in JSON; never for a trained policy
    (the trainer does not re-apply the grammar, so its log-probs would not match)."""
    grammar: str | None = None
    """Constrain the completion to a Lark grammar in llguidance's dialect (which may embed ``%json {schema}``),
    local models only: e.g. :func:`~stateset_agents.agents.tool_turn_grammar`, a turn that is a message or a
    call of one of the offered tools with arguments valid under its schema. Same rule as ``json_schema``: for
    evaluation and serving, never for a trained policy's rollouts."""


class Completion(_Strict):
    """What a ChatModel returns for one ``chat()`` call.

    For local models the token data is filled in: ``prompt_ids`` (the chat-templated prompt),
    ``completion_ids`` (the sampled tokens) and ``logprobs`` (per sampled token, the log-probability
    under the distribution it was sampled from, after temperature and top-p) and ``sampling`` (the
    parameters it was drawn with). The trainer uses the log-probs as the old policy's and scores its own
    log-probs under the same ``sampling``, read from here.
    """

    text: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: Literal["stop", "length", "tool_calls", "error"] = "stop"
    prompt_ids: list[int] | None = None
    completion_ids: list[int] | None = None
    logprobs: list[float] | None = None
    model: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    sampling: SamplingParams | None = None
    """The sampling parameters this completion was drawn with (None: unknown, e.g. a demonstration)."""

    @model_validator(mode="after")
    def _check_lengths(self) -> Completion:
        if self.logprobs is not None and self.completion_ids is not None \
                and len(self.logprobs) != len(self.completion_ids):
            raise ValueError(f"logprobs has {len(self.logprobs)} entries but completion_ids has "
                             f"{len(self.completion_ids)}; there must be one log-prob per sampled token")
        return self


class RewardResult(_Strict):
    """The score of one trajectory. ``value=None`` means "not applicable" (never a fake 0)."""

    value: float | None
    components: dict[str, float | None] = Field(default_factory=dict)
    explanation: str = ""
    error: str | None = None


class Trajectory(_Strict):
    """One episode: the conversation, the agent's completions with token data, the outcome."""

    scenario_id: str
    env_id: str | None = None
    seed: int | None = None
    messages: list[Message] = Field(default_factory=list)
    completions: list[Completion] = Field(default_factory=list)
    """One per agent turn, in order, with token data when the model is local."""
    outcome: dict[str, Any] | None = None
    """The env's ``info["outcome"]`` at the end of the episode."""
    env_reward: float | None = None
    terminated: bool = False
    truncated: bool = False
    reward: float | None = None
    """Filled in by a RewardFunction."""
    components: dict[str, float | None] = Field(default_factory=dict)
    error: str | None = None
    """Why the episode failed, if it did. A failed episode is kept as data and never scored as if it worked."""
    failure: str | None = None
    """The failure as a reason code (``rollout.FAILURE_REASONS``); the agent's own are ``rollout.AGENT_FAILURES``."""

    @property
    def ok(self) -> bool:
        return self.error is None


class TrajectoryGroup(_Strict):
    """K trajectories of one scenario: the unit GRPO compares within."""

    scenario_id: str
    trajectories: list[Trajectory]

    @model_validator(mode="after")
    def _same_scenario(self) -> TrajectoryGroup:
        for t in self.trajectories:
            if t.scenario_id != self.scenario_id:
                raise ValueError(f"trajectory of scenario {t.scenario_id!r} in the group of "
                                 f"{self.scenario_id!r}; a group holds one scenario only")
        return self

    def __len__(self) -> int:
        return len(self.trajectories)
