"""Plain ASGI middleware: the Host-header check, bearer-token auth and the request-body bound.

Host header: a server bound to a loopback address answers only requests whose ``Host`` is ``127.0.0.1``,
``localhost`` or ``[::1]`` with its port, so a web page that rebinds its own domain name to 127.0.0.1 (DNS
rebinding) cannot talk to it from the user's browser. ``allowed_hosts`` replaces that list (a proxy's name; an
entry without a port matches any port; ``*`` turns the check off). Others get 400 with ``param: "host"``; a
WebSocket handshake is closed before it is accepted.

Auth: when an API key is configured, every HTTP request and WebSocket handshake but ``/healthz`` must carry
``Authorization: Bearer <key>`` (compared in constant time). A refused HTTP request gets 401 with a JSON error; a
refused WebSocket handshake is closed before it is accepted (the client sees HTTP 403).

Body bound: a body over ``max_body_bytes`` gets 413 before the app reads it, whether the client declared its
length or streamed it chunked (the middleware reads at most the bound plus one chunk, then stops).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from .errors import error_body

__all__ = ["AuthMiddleware", "BodyLimitMiddleware", "HostCheckMiddleware"]

_OPEN_PATHS = frozenset({"/healthz"})


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": raw})


class HostCheckMiddleware:
    def __init__(self, app: Any, allowed_hosts: list[str] | None, loopback: bool, port: int) -> None:
        self.app, self.port, self.loopback = app, port, loopback
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    def _names(self, scope: dict[str, Any]) -> set[str] | None:
        if self.allowed is not None:
            return None if "*" in self.allowed else self.allowed
        if not self.loopback:
            return None
        port = (scope.get("server") or (None, self.port))[1] or self.port
        names = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
        return names | {"127.0.0.1", "localhost", "[::1]"} if port == 80 else names

    def _ok(self, host: str, names: set[str]) -> bool:
        if host in names:
            return True
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        return bool(self.allowed) and port.isdigit() and name in names

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        names = self._names(scope) if scope["type"] in ("http", "websocket") else None
        hosts = [v.decode("latin-1").lower() for k, v in scope.get("headers", []) if k == b"host"]
        host = hosts[0] if len(hosts) == 1 else ", ".join(hosts)  # none, or several: refused
        if names is None or (len(hosts) == 1 and self._ok(host, names)):
            await self.app(scope, receive, send)
            return
        message = (f"Host header {host!r} is not a name this server answers to ({', '.join(sorted(names))}); "
                   "connect by one of them, or start the server with --allowed-host NAME (e.g. behind a proxy)")
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1008, "reason": "Host header not allowed"})
            return
        await _send_json(send, 400, error_body(400, message, param="host", code="invalid_host"))


class AuthMiddleware:
    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    def _authorized(self, scope: dict[str, Any]) -> bool:
        got = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
        return hmac.compare_digest(got, self.expected)  # type: ignore[arg-type]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.expected is None or scope["type"] not in ("http", "websocket") or scope["path"] in _OPEN_PATHS \
                or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        has_header = any(k == b"authorization" for k, _ in scope.get("headers", []))
        message = ("invalid API key in the Authorization header" if has_header else
                   "missing API key: send the header 'Authorization: Bearer <key>'")
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": message})
            return
        await _send_json(send, 401, error_body(401, message, code="invalid_api_key"),
                         [(b"www-authenticate", b"Bearer")])


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.limit = app, max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = error_body(413, f"the request body is larger than the limit of {self.limit} bytes "
                                  "(max_body_bytes); send less", code="body_too_large")
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_json(send, 413, too_big)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
