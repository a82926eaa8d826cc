"""The HTTP service behind ``stateset-agents serve`` (extra ``serve``: fastapi, uvicorn, websockets,
prometheus-client). See docs/serving.md.

- ``POST /v1/chat/completions`` (streaming too) and ``GET /v1/models``: OpenAI-compatible, served by an
  :class:`~stateset_agents.models.HFChatModel` and its batching engine;
- ``/api/conversations``: persistent multi-turn conversations with a domain agent (SQLite);
- ``/api/jobs`` and ``WebSocket /ws/jobs/{id}``: training jobs as their own processes, with live metrics;
- ``GET /metrics`` (Prometheus) and ``GET /healthz``.

``create_app(ServeConfig(...), model=None)`` builds the ASGI app; ``serve(config)`` runs it under uvicorn.
Importing this package needs the ``serve`` extra; the error says how to install it.
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "load_served_model", "resolve_model", "serve"]

_LAZY = {"create_app": ".app", "serve": ".app", "load_served_model": ".loading", "resolve_model": ".loading"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        if name in ("create_app", "serve"):
            _require_extra()
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'stateset_agents.serving' has no attribute {name!r}")


def _require_extra() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        from ..errors import ModelNotInstalledError

        raise ModelNotInstalledError(f"the service needs {', '.join(missing)}: pip install 'stateset-agents[serve]'")
