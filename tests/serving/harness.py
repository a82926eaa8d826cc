"""Run the real service (uvicorn) on a free loopback port in a background thread, for tests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from stateset_agents.serving import ServeConfig, create_app
from stateset_agents.serving.app import uvicorn_config


class ServerThread:
    """``with ServerThread(config, model=m) as s:`` serves on ``s.url`` until the block ends (a clean shutdown,
    like Ctrl-C: lifespan shutdown runs, the database is closed)."""

    def __init__(self, config: ServeConfig, *, model=None) -> None:
        import uvicorn

        self.app = create_app(config, model=model)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(self.app, config, log_level="warning"))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    @property
    def service(self):
        return self.app.state.service

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
