"""Errors as JSON, in the OpenAI shape, on every endpoint.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

``param`` names the bad field (dotted path into the body, e.g. ``messages.2.role``) when there is one; the message
names it too, with the value and the fix.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, ModelError

__all__ = ["APIError", "error_body", "install_error_handlers"]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error"}


class APIError(Exception):
    """An error answered as JSON with ``status``; ``param`` is the bad field, if any."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def _response(status: int, message: str, param: str | None = None, code: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(x) for x in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    # Union members show up as extra path elements ("str", "list[...]"); they name no field.
    return ".".join(p for p in parts if not p.startswith(("list[", "dict[", "function-")) and p not in
                    ("str", "int", "float", "bool", "none")) or "(body)"


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """One message naming each bad field (and the first field, for ``param``)."""
    parts, first = [], None
    for err in errors[:5]:
        # a body that is not JSON has the character position as its location: it names no field
        field = "(body)" if err.get("type") == "json_invalid" else _loc(err.get("loc", ()))
        first = first or field
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown field {field!r}: remove it or check its spelling")
        elif err.get("type") == "missing":
            parts.append(f"field {field!r} is required")
        elif err.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({err.get('msg')}); send a JSON object")
        else:
            value = err.get("input")
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            parts.append(f"field {field!r}: {err.get('msg')} (got {shown})")
    return "; ".join(parts), first or "(body)"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return _response(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(e.errors()))
        return _response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message, param = str(e.detail), None
        if e.status_code == 400 and message == "There was an error parsing the body":  # e.g. not UTF-8
            message, param = "the request body cannot be parsed (not UTF-8 JSON); send a JSON object", "(body)"
        elif e.status_code == 404 and message == "Not Found":
            message = f"no endpoint {request.method} {request.url.path}; see GET /docs for the endpoints"
        elif e.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return _response(e.status_code, message, param, headers=dict(e.headers or {}))

    @app.exception_handler(ConfigError)
    async def _config(request: Request, e: ConfigError) -> JSONResponse:
        return _response(400, str(e))

    @app.exception_handler(ModelError)
    async def _model(request: Request, e: ModelError) -> JSONResponse:
        return _response(500, str(e), code="model_error")
