"""ServeConfig: where the service listens, what it serves, where it keeps state, and its limits.

Every limit has a default sized for one CPU machine; raise them for a GPU server. Paths are resolved once, so a
job config that names a file can be checked against ``allowed_dirs`` without following the client's ``..``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["ServeConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServeConfig(BaseModel):
    """Configuration of ``stateset-agents serve`` (every field is also a CLI option; see docs/serving.md)."""

    model_config = ConfigDict(extra="forbid")

    # ------------------------------------------------------------ network
    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; anything else requires ``api_key`` (or ``allow_no_auth``)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port (0: any free port)."""
    api_key: str | None = Field(default=None, repr=False)
    """When set, every endpoint but ``/healthz`` requires ``Authorization: Bearer <api_key>``."""
    api_key_env: str = "STATESET_API_KEY"
    """The environment variable the key was read from; it never reaches a job process."""
    allow_no_auth: bool = False
    """Allow binding a non-loopback address without an API key (not recommended)."""
    allowed_hosts: list[str] | None = None
    """Host header values answered (``name`` or ``name:port``; ``*``: any). Default: on a loopback address only
    ``127.0.0.1``, ``localhost`` and ``[::1]`` with the server's port (against DNS rebinding); elsewhere any."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed by CORS (e.g. ``https://app.example``); none by default: no CORS headers."""
    allowed_endpoints: list[str] = Field(default_factory=list)
    """Outbound endpoints jobs may call, each ``URL`` or ``URL KEY_VARIABLE`` (see serving/egress.py); none by
    default."""

    # ------------------------------------------------------------ the model
    model: str = "default"
    """``default`` (SmolLM2-135M-Instruct), a model folder, a LoRA adapter folder, or a run folder (its latest
    checkpoint)."""
    model_name: str | None = None
    """The id clients send as ``model``; default: derived from ``model`` (see docs/serving.md)."""
    device: str = "cpu"
    """Where the model runs: ``cpu``, ``cuda``, ``cuda:1`` ..."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16``."""
    max_batch_size: int = Field(default=32, ge=1)
    """Most sequences the engine decodes together."""
    threads: int | None = Field(default=None, ge=1)
    """torch's intra-op CPU threads (default: torch's choice, one per core). On a machine shared with other busy
    processes, 1 avoids threads waiting for each other at every operation."""

    # ------------------------------------------------------------ state
    state_dir: Path = Path(".stateset/serve")
    """SQLite database of conversations and jobs (``state_dir/serve.sqlite3``)."""
    runs_dir: Path = Path("runs/jobs")
    """Where training jobs write their run folders (``runs_dir/<job id>``)."""
    allowed_dirs: list[Path] = Field(default_factory=list)
    """Folders a job config may name files in (config files, model folders, packs, reward presets), in addition
    to ``runs_dir``. Anything else is refused."""
    max_active_jobs: int = Field(default=1, ge=1)
    """Training jobs running at once; more are refused with 409."""
    job_cancel_grace_s: float = Field(default=5.0, ge=0)
    """After SIGTERM, seconds before a cancelled job's process group gets SIGKILL."""

    # ------------------------------------------------------------ request limits
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body; larger ones get 413."""
    max_tokens_limit: int = Field(default=1024, ge=1)
    """Largest ``max_tokens`` a chat request may ask for."""
    max_messages: int = Field(default=256, ge=1)
    """Most messages in one chat-completion request."""
    max_n: int = Field(default=8, ge=1)
    """Most choices (``n``) per chat-completion request."""
    max_pending: int = Field(default=256, ge=1)
    """Generations in flight or queued at once; beyond it requests get 429 with ``Retry-After``."""
    max_conversation_messages: int = Field(default=200, ge=2)
    """Most messages one persistent conversation may hold."""
    max_message_chars: int = Field(default=32_000, ge=1)
    """Longest user message posted to a conversation."""
    conversation_max_tokens: int = Field(default=128, ge=1)
    """Default ``max_tokens`` of a conversation's replies."""

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype {v!r} is not one of float32, bfloat16, float16")
        return v

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 8:
            raise ValueError("api_key is shorter than 8 characters; use a long random token "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not h.strip() or any(c.isspace() for c in h) for h in v)):
            raise ValueError(f"allowed_hosts {v!r} must be non-empty host names (name or name:port, or '*')")
        return None if v is None else [h.lower() for h in v]

    @model_validator(mode="after")
    def _safety(self) -> ServeConfig:
        from .egress import parse_endpoint_spec

        for spec in self.allowed_endpoints:
            try:
                parse_endpoint_spec(spec, server_key_env=self.api_key_env)
            except ValueError as e:
                raise ValueError(f"allowed_endpoints: {e}") from e
        if not is_loopback(self.host) and self.api_key is None and not self.allow_no_auth:
            raise ValueError(f"host {self.host!r} is not a loopback address and no API key is set; set an API key "
                             "(--api-key-env) or, if the network is trusted, pass --allow-no-auth")
        self.state_dir = self.state_dir.expanduser().resolve()
        self.runs_dir = self.runs_dir.expanduser().resolve()
        self.allowed_dirs = [p.expanduser().resolve() for p in self.allowed_dirs]
        return self

    @property
    def db_path(self) -> Path:
        return self.state_dir / "serve.sqlite3"
