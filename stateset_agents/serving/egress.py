"""What a training job may reach: outbound endpoints on an allow-list, and a scrubbed process environment.

Endpoints. ``serve --allow-endpoint URL`` (repeatable; none by default) lists the OpenAI-compatible endpoints a
job may call, e.g. a vLLM learner or a RULER judge; ``--allow-endpoint 'URL VAR'`` also names the environment
variable holding that endpoint's key. Every value in a job config (and in the reward preset and pack manifest it
names) that is a URL, or that sits under an endpoint key (``base_url``, ``url``, ``endpoint``, ``api_base``), must
lie under an allowed URL: same scheme, host and port, and a path equal to the allowed one or below it. URLs with
user info, ``.``/``..`` segments, a query or a fragment are refused outright. Anything else is 400 naming the
field and the flag.

Keys. An endpoint's ``api_key_env`` may not be the server's own key variable (``--api-key-env``, default
``STATESET_API_KEY``), and when the endpoint was allowed with a key variable it must be that one.

Environment. A job process gets :data:`JOB_ENV_VARS` (paths, locale, threads, caches, devices), every ``LC_*``
variable, ``PYTHONUNBUFFERED=1``, and only the key variables bound to the allowed endpoints its config uses.
Nothing else of the server's environment (API keys, cloud credentials, hub tokens) reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import APIError

__all__ = ["ENDPOINT_KEYS", "JOB_ENV_VARS", "AllowedEndpoint", "EndpointPolicy", "job_environment",
           "normalize_url", "parse_endpoint_spec"]

JOB_ENV_VARS = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "LD_LIBRARY_PATH", "PYTHONPATH",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "TOKENIZERS_PARALLELISM",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE", "TORCH_HOME", "STATESET_AGENTS_CACHE", "STATESET_ENVIRONMENTS_DIR",
    "STATESET_REWARDS_DIR", "STATESET_AGENTS_NO_PLUGINS",
)
"""The server's variables a job process inherits (when set); plus every ``LC_*`` variable."""

ENDPOINT_KEYS = frozenset({"base_url", "url", "endpoint", "api_base"})
"""Keys whose string value is an endpoint, whatever it looks like."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def job_environment(server_env: Mapping[str, str], key_vars: Iterable[str] = (), *,
                    server_key_env: str = "STATESET_API_KEY") -> dict[str, str]:
    """The environment of a job process (see the module docs). A key variable that is the server's own key
    variable raises ValueError: it never reaches a job."""
    keys = list(key_vars)
    if server_key_env in keys:
        raise ValueError(f"{server_key_env} is the server's own API key variable; it never reaches a job")
    env = {k: v for k, v in server_env.items() if k in JOB_ENV_VARS or k.startswith("LC_")}
    env.update({k: server_env[k] for k in keys if k in server_env})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def normalize_url(url: str) -> str | None:
    """``scheme://host:port/path`` (lowercase scheme and host, explicit port, no trailing ``/``), or None for
    anything that is not a plain http(s) URL: user info, ``.``/``..`` segments, a query or a fragment."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.query \
            or parts.fragment or "?" in url or "#" in url:
        return None
    segments = parts.path.split("/")
    if any(s in (".", "..") or "%2e" in s.lower() for s in segments):
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    port = port or (443 if scheme == "https" else 80)
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


@dataclass(frozen=True)
class AllowedEndpoint:
    spec: str
    """As given to ``--allow-endpoint``."""
    url: str
    """Normalised (:func:`normalize_url`)."""
    key_env: str | None = None
    """The variable holding this endpoint's key, passed to jobs that use the endpoint."""


def parse_endpoint_spec(spec: str, *, server_key_env: str = "STATESET_API_KEY") -> AllowedEndpoint:
    """``URL`` or ``URL VAR``; ValueError saying what is wrong."""
    words = spec.split()
    if not 1 <= len(words) <= 2:
        raise ValueError(f"{spec!r} is not 'URL' or 'URL KEY_VARIABLE'")
    url = normalize_url(words[0])
    if url is None:
        raise ValueError(f"{words[0]!r} is not a plain http:// or https:// URL (no user info, query or '..')")
    key = words[1] if len(words) == 2 else None
    if key is not None and not _VAR.fullmatch(key):
        raise ValueError(f"{key!r} is not an environment variable name")
    if key == server_key_env:
        raise ValueError(f"{key} is the server's own API key variable; it never reaches a job: give the endpoint "
                         "its own key variable")
    return AllowedEndpoint(spec=spec, url=url, key_env=key)


class EndpointPolicy:
    """The allow-list, and the check of a config tree against it (see the module docs)."""

    def __init__(self, specs: Iterable[str] = (), *, server_key_env: str = "STATESET_API_KEY") -> None:
        self.server_key_env = server_key_env
        self.entries = [parse_endpoint_spec(s, server_key_env=server_key_env) for s in specs]

    def match(self, url: str) -> AllowedEndpoint | None:
        n = normalize_url(url) if isinstance(url, str) else None
        if n is None:
            return None
        return next((e for e in self.entries if n == e.url or n.startswith(e.url + "/")), None)

    def _refuse(self, param: str, label: str, message: str) -> APIError:
        return APIError(400, f"field {param!r}: {label + ': ' if label != param else ''}{message}", param=param)

    def check_tree(self, data: Any, prefix: str = "", *, param: str | None = None,
                   where: str | None = None) -> list[AllowedEndpoint]:
        """Every endpoint in ``data`` (dicts and lists, walked), checked; returns the allowed endpoints used.
        The error's ``param`` is the dotted path from ``prefix``, or ``param`` when given (a field naming a file,
        then ``where`` names the file in the message)."""
        used: list[AllowedEndpoint] = []
        items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
        for k, v in items:
            path = f"{prefix}.{k}" if prefix else str(k)
            label = f"{where}: {path}" if where else path
            if isinstance(v, str) and ((isinstance(k, str) and k in ENDPOINT_KEYS) or _URL.fullmatch(v.strip())):
                entry = self._check_url(v, param or path, label)
                if isinstance(data, dict):
                    key_path = f"{prefix}.api_key_env" if prefix else "api_key_env"
                    self._check_key(data, entry, param or key_path, f"{where}: {key_path}" if where else key_path)
                used.append(entry)
            else:
                used += self.check_tree(v, path, param=param, where=where)
        return used

    def _check_url(self, url: str, param: str, label: str) -> AllowedEndpoint:
        entry = self.match(url)
        if entry is None:
            allowed = ", ".join(e.url for e in self.entries) or "none"
            raise self._refuse(param, label, f"{url!r} is not an allowed endpoint of this server (allowed: "
                                             f"{allowed}); start the server with --allow-endpoint URL to let jobs "
                                             "call it")
        return entry

    def _check_key(self, data: dict[str, Any], entry: AllowedEndpoint, param: str, label: str) -> None:
        key = data.get("api_key_env")
        if not isinstance(key, str):
            return
        if key == self.server_key_env:
            raise self._refuse(param, label, f"{key!r} is the server's own API key variable and never reaches a "
                                             f"job; allow the endpoint with its own key variable: --allow-endpoint "
                                             f"'{entry.url} VAR'" + (f" (it has {entry.key_env})" if entry.key_env
                                                                      else ""))
        if entry.key_env is not None and key != entry.key_env:
            raise self._refuse(param, label, f"{key!r} is not the key variable allowed for {entry.url}: use "
                                             f"api_key_env: {entry.key_env} (--allow-endpoint '{entry.spec}')")
