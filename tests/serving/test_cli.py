"""`stateset-agents serve`: options, refusals before anything starts, and the real command in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from stateset_agents.cli import build_parser, main
from stateset_agents.errors import ConfigError
from stateset_agents.serving.cli import config_from_args

from .conftest import API_KEY, AUTH


def test_options_become_a_serve_config(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", API_KEY)
    args = build_parser().parse_args(["serve", "--model", "runs/x", "--port", "9001", "--api-key-env", "MY_KEY",
                                      "--state-dir", str(tmp_path), "--allowed-dir", "configs",
                                      "--allowed-dir", "models", "--max-tokens-limit", "256", "--threads", "1"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.port, cfg.api_key, cfg.host, cfg.max_tokens_limit, cfg.threads) == (
        "runs/x", 9001, API_KEY, "127.0.0.1", 256, 1)
    assert [p.name for p in cfg.allowed_dirs] == ["configs", "models"] and cfg.state_dir == tmp_path
    monkeypatch.delenv("MY_KEY")
    open_bind = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--api-key-env", "MY_KEY"])
    with pytest.raises(ConfigError, match="host '0.0.0.0' is not a loopback address and no API key is set"):
        config_from_args(open_bind)


def test_a_bad_model_fails_before_the_server_starts(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope"), "--state-dir", str(tmp_path)]) == 2
    assert "is not a folder; pass 'default', a model folder" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serve_command_runs_and_stops_cleanly(tmp_path, tiny_model_path):
    port = _free_port()
    env = {**os.environ, "STATESET_API_KEY": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "stateset_agents", "serve", "--model", str(tiny_model_path),
                             "--port", str(port), "--state-dir", str(tmp_path / "state"), "--runs-dir",
                             str(tmp_path / "runs"), "--log-level", "info"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        models = httpx.get(url + "/v1/models", headers=AUTH).json()
        assert models["data"][0]["id"] == tiny_model_path.name
        r = httpx.post(url + "/v1/chat/completions", headers=AUTH, timeout=60,
                       json={"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully (lifespan: jobs unwatched, database closed), then re-raises SIGTERM so the
    # process reports how it was stopped
    assert proc.returncode == -signal.SIGTERM, out
    assert "Application shutdown complete." in out and "Traceback" not in out
    assert f"serving {tiny_model_path.name!r}" in out and "API key required" in out
    assert (tmp_path / "state" / "serve.sqlite3").is_file()
