"""``stateset-agents serve``: options and entry point (the command itself is registered in ``stateset_agents.cli``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigError

__all__ = ["add_arguments", "config_from_args", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (SmolLM2), a model folder, a LoRA adapter folder, or a run folder (its latest "
                        "checkpoint)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: from --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", default="STATESET_API_KEY", metavar="VAR",
                   help="environment variable holding the API key; when it is set, every endpoint but /healthz "
                        "needs 'Authorization: Bearer <key>' (default: STATESET_API_KEY)")
    p.add_argument("--allow-no-auth", action="store_true",
                   help="allow a non-loopback --host without an API key (trusted networks only)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--max-batch-size", type=int, default=32, help="sequences the engine decodes together")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: one per core; 1 on a machine shared with other busy processes)")
    p.add_argument("--state-dir", default=".stateset/serve", help="where the SQLite database lives")
    p.add_argument("--runs-dir", default="runs/jobs", help="where training jobs write their run folders")
    p.add_argument("--allowed-dir", action="append", default=[], metavar="DIR",
                   help="a folder job configs may name files in (repeatable); runs-dir is always allowed")
    p.add_argument("--allow-endpoint", action="append", default=[], metavar="'URL [KEY_VAR]'",
                   help="an OpenAI-compatible endpoint jobs may call (repeatable; none by default), optionally "
                        "with the environment variable holding its key, passed to jobs that use it")
    p.add_argument("--allowed-host", action="append", default=None, metavar="HOST[:PORT]",
                   help="a Host header value to answer (repeatable; '*' for any); default on loopback: "
                        "127.0.0.1, localhost and [::1] with the port")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser origin allowed by CORS (repeatable; default none)")
    p.add_argument("--max-active-jobs", type=int, default=1)
    p.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--max-body-bytes", type=int, default=1_048_576)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def config_from_args(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from ..training.config import format_validation_error
    from .config import ServeConfig

    try:
        return ServeConfig(
            host=args.host, port=args.port, api_key=os.environ.get(args.api_key_env) or None,
            api_key_env=args.api_key_env, allow_no_auth=args.allow_no_auth, allowed_endpoints=args.allow_endpoint,
            allowed_hosts=args.allowed_host, cors_origins=args.cors_origin, model=args.model, model_name=args.model_name, device=args.device,
            dtype=args.dtype, max_batch_size=args.max_batch_size, threads=args.threads, state_dir=args.state_dir,
            runs_dir=args.runs_dir, allowed_dirs=args.allowed_dir, max_active_jobs=args.max_active_jobs,
            max_tokens_limit=args.max_tokens_limit, max_body_bytes=args.max_body_bytes)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "serve options")) from e


def run(args: argparse.Namespace, console: Any) -> int:
    from . import serve
    from .loading import resolve_model

    config = config_from_args(args)
    source = resolve_model(config.model, config.model_name)  # a bad --model fails before uvicorn starts
    auth = "API key required" if config.api_key else "no API key (loopback only)" if not config.allow_no_auth \
        else "NO AUTH"
    console.print(f"serving {source.name!r} ({source.kind}: {source.path}) on http://{config.host}:{config.port} "
                  f"- {auth}; state in {config.state_dir}", highlight=False, soft_wrap=True)
    serve(config, log_level=args.log_level)
    return 0
