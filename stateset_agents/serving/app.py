"""The FastAPI app of ``stateset-agents serve``, and running it under uvicorn.

``create_app(config, model=None)`` wires the routers (OpenAI API, conversations, jobs), ``/healthz``, ``/metrics``,
the middleware (metrics outermost, then the Host-header check, CORS when configured, auth, the body bound) and JSON errors. The model is loaded at startup
from ``config.model`` unless one is handed in (tests hand in the tiny model). ``serve(config)`` runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from .config import ServeConfig, is_loopback
from .conversations import ConversationStore
from .conversations import router as conversations_router
from .db import Database
from .errors import APIError, install_error_handlers
from .jobs import JobManager
from .jobs import router as jobs_router
from .metrics import MetricsMiddleware, ServiceMetrics, TokenRate
from .middleware import AuthMiddleware, BodyLimitMiddleware, HostCheckMiddleware
from .openai_api import router as openai_router

__all__ = ["Service", "create_app", "serve"]


class Service:
    """Everything the endpoints share: config, model, database, stores, job manager, metrics, bounds."""

    def __init__(self, config: ServeConfig, model: Any = None) -> None:
        self.config = config
        self.model = model
        self._owns_model = model is None
        self.started = int(time.time())
        self.db: Database | None = None
        self.conversations: ConversationStore | None = None
        self.jobs: JobManager | None = None
        self.metrics = ServiceMetrics(self)
        self.token_rate = TokenRate(lambda: self.model.engine.stats.new_tokens if self.model is not None else 0)
        self.inflight = 0
        self._conv_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @property
    def model_name(self) -> str:
        return self.config.model_name or getattr(self.model, "name", "model")

    def active_jobs(self) -> int:
        return self.jobs.active_count() if self.jobs is not None else 0

    # ------------------------------------------------------------ bounds
    def check_room(self, n: int) -> None:
        if self.inflight + n > self.config.max_pending:
            raise APIError(429, f"{self.inflight} generations are in flight, the limit is {self.config.max_pending} "
                                "(max_pending); retry shortly", code="server_busy", headers={"Retry-After": "1"})

    @contextlib.asynccontextmanager
    async def generation_slot(self, n: int) -> AsyncIterator[None]:
        self.check_room(n)
        self.inflight += n
        try:
            yield
        finally:
            self.inflight -= n

    @contextlib.asynccontextmanager
    async def conversation_lock(self, cid: str) -> AsyncIterator[None]:
        """One turn at a time per conversation (the lock is dropped when nobody holds or waits for it)."""
        lock, users = self._conv_locks.get(cid, (asyncio.Lock(), 0))
        self._conv_locks[cid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._conv_locks[cid]
            if users == 1:
                del self._conv_locks[cid]
            else:
                self._conv_locks[cid] = (lock, users - 1)

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.db = Database(self.config.db_path)
        self.conversations = ConversationStore(self.db)
        self.jobs = JobManager(self.db, self.config, self.metrics)
        await self.jobs.recover()
        if self.config.threads is not None:
            import torch

            torch.set_num_threads(self.config.threads)
        if self.model is None:
            from .loading import load_served_model

            c = self.config
            self.model = await asyncio.to_thread(load_served_model, c.model, name=c.model_name, dtype=c.dtype,
                                                 device=c.device, max_batch_size=c.max_batch_size)

    async def stop(self) -> None:
        if self.jobs is not None:
            await self.jobs.close()
        if self.db is not None:
            self.db.close()
        if self._owns_model and self.model is not None:
            self.model.close()


async def _sample_token_rate(service: Service) -> None:
    while True:
        service.token_rate.sample()
        await asyncio.sleep(1.0)


def create_app(config: ServeConfig | None = None, *, model: Any = None) -> FastAPI:
    """The service as an ASGI app (see the module docs)."""
    from .. import __version__

    config = config or ServeConfig()
    service = Service(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        sampler = asyncio.create_task(_sample_token_rate(service))
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await service.stop()

    app = FastAPI(title="stateset-agents", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible chat, persistent conversations, training jobs (docs/serving.md)")
    app.state.service = service
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(conversations_router)
    app.include_router(jobs_router)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name, "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_middleware(AuthMiddleware, api_key=config.api_key)
    if config.cors_origins:  # no CORS headers at all unless origins are configured
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(HostCheckMiddleware, allowed_hosts=config.allowed_hosts, loopback=is_loopback(config.host),
                       port=config.port)
    # Route templates for metric labels: the routers' own routes (included routers do not expose theirs).
    routes = [*openai_router.routes, *conversations_router.routes, *jobs_router.routes,
              *(r for r in app.routes if getattr(r, "path", None))]
    app.add_middleware(MetricsMiddleware, metrics=lambda: service.metrics, routes=lambda: routes)
    return app


def uvicorn_config(app: Any, config: ServeConfig, **kwargs: Any) -> Any:
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, ws="websockets-sansio", lifespan="on",
                          timeout_graceful_shutdown=5, **kwargs)


def serve(config: ServeConfig, *, model: Any = None, log_level: str = "info") -> None:
    """Run the service under uvicorn until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(create_app(config, model=model), config, log_level=log_level)).run()
