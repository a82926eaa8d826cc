"""``/api/jobs``: training jobs (GRPO or Training-Free GRPO) as their own processes, with live progress.

    POST   /api/jobs               {"config": PATH | {...fields}, "overrides": {...}} -> 201 the job
    GET    /api/jobs               newest first
    GET    /api/jobs/{id}          status, latest metrics, exit code, the log's tail when it failed
    POST   /api/jobs/{id}/cancel   SIGTERM to the job's process group, SIGKILL after ``job_cancel_grace_s``
    WS     /ws/jobs/{id}           {"event": "status" | "metrics", ...}: every line of metrics.jsonl, then live

Before a process starts, the request is checked by :mod:`.job_config`: ``load_config`` (unknown fields, bad
values and cross-field rules are 400 naming the field), every endpoint against the allow-list (:mod:`.egress`),
every name that becomes a path through the one resolver (:mod:`.paths`), and the env pack and reward preset must
load. ``output_dir`` is always ``runs_dir/<job id>`` (a config's own ``output_dir`` is replaced) and ``progress``
is off. A reward preset given as a file is copied, checked and with its paths resolved, to ``RUN_DIR/reward.yaml``.
The job's process gets a scrubbed environment (:func:`.egress.job_environment`).

A job runs ``python -m stateset_agents train RUN_DIR/job.yaml --output-dir RUN_DIR`` under a small runner
(:mod:`stateset_agents.serving.runner`) that records the exit code in ``RUN_DIR/exit.json``, in a new session (so
cancel signals the whole process group); stdout and stderr go to ``RUN_DIR/job.log``. Records live in SQLite.
Stopping the server leaves running jobs running; on start it reattaches to the ones still alive, finishes the
ones that exited meanwhile from ``exit.json``, and marks the ones whose process died without a record as failed
with the tail of their log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Query, Request, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field

from .db import Database, dumps
from .egress import EndpointPolicy, job_environment
from .errors import APIError
from .job_config import ValidatedJob, validate_job

__all__ = ["JobManager", "router"]

router = APIRouter()

ACTIVE = ("running", "cancelling")
_RUNNER = Path(__file__).with_name("runner.py")
_POLL_S = 0.25


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | dict[str, Any]
    """A YAML config file (under runs_dir or allowed_dirs), or the config's fields."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Fields that replace the config's (e.g. ``{"max_steps": 5}``)."""


def log_tail(path: Path, lines: int = 20, max_chars: int = 4000) -> str:
    """The last non-empty lines of a log (progress bars' carriage returns split lines)."""
    if not path.is_file():
        return "(no log)"
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])[-max_chars:]


def latest_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
        lines = f.read().decode("utf-8", errors="replace").split("\n")
    for line in reversed(lines[:-1] if lines and lines[-1] else lines):  # the last line may be half-written
        with contextlib.suppress(json.JSONDecodeError):
            if line.strip():
                return json.loads(line)
    return None


def _alive(pid: int | None, run_dir: str) -> bool:
    """Is ``pid`` running and still this job's runner (not a reused pid)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.is_file():
        try:
            return run_dir.encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


def _write(path: Path, text: str) -> None:
    """Atomically: a temp file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_exit(run_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return int(json.loads((run_dir / "exit.json").read_text(encoding="utf-8"))["returncode"])
    return None


class JobManager:
    """Starts, watches, cancels and recovers training jobs (see the module docs)."""

    def __init__(self, db: Database, config: Any, metrics: Any = None) -> None:
        self.db, self.config, self.metrics = db, config, metrics
        self.policy = EndpointPolicy(config.allowed_endpoints, server_key_env=config.api_key_env)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._finished: dict[str, asyncio.Event] = {}

    # ------------------------------------------------------------ records
    def record(self, job_id: str) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise APIError(404, f"no job {job_id!r}; GET /api/jobs lists the jobs", param="job_id",
                           code="job_not_found")
        return self._view(rows[0])

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        out["config"] = json.loads(row["config"])
        run_dir = Path(row["run_dir"])
        m = latest_metrics(run_dir)
        out["latest_metrics"] = m
        out["step"] = m.get("step") if m else 0
        out["max_steps"] = out["config"].get("max_steps")
        out["log"] = str(run_dir / "job.log")
        return out

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return [self._view(r) for r in self.db.query("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def active_count(self) -> int:
        return self.db.query("SELECT COUNT(*) AS n FROM jobs WHERE status IN (?, ?)", ACTIVE)[0]["n"]

    # ------------------------------------------------------------ validation
    def validate(self, req: JobRequest, run_dir: Path) -> ValidatedJob:
        """The checked config (see :mod:`.job_config`); 400 naming the field otherwise."""
        roots = [self.config.runs_dir, *self.config.allowed_dirs]
        return validate_job(req.config, req.overrides, run_dir, roots, self.policy)

    # ------------------------------------------------------------ lifecycle
    async def start(self, req: JobRequest) -> dict[str, Any]:
        job_id = f"job_{time.strftime('%Y%m%d-%H%M%S')}_{secrets.token_hex(4)}"
        run_dir = self.config.runs_dir / job_id
        job = self.validate(req, run_dir)
        cfg = job.config
        if self.active_count() >= self.config.max_active_jobs:
            raise APIError(409, f"{self.active_count()} job(s) running, the limit is {self.config.max_active_jobs} "
                                "(max_active_jobs); cancel one or wait", code="too_many_jobs")
        run_dir.mkdir(parents=True, exist_ok=False)
        if job.reward_preset is not None:  # the checked content, with its paths resolved, is what the job reads
            _write(run_dir / "reward.yaml", yaml.safe_dump(job.reward_preset, sort_keys=False))
            cfg = cfg.model_copy(update={"reward": str(run_dir / "reward.yaml")})
        config_path = run_dir / "job.yaml"
        _write(config_path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        env = job_environment(os.environ, job.key_vars, server_key_env=self.config.api_key_env)
        now = time.time()
        self.db.execute("INSERT INTO jobs (id, status, algorithm, config, run_dir, created, started) "
                        "VALUES (?, 'running', ?, ?, ?, ?, ?)",
                        (job_id, cfg.algorithm, dumps(cfg.model_dump(mode="json")), str(run_dir), now, now))
        cmd = [sys.executable, str(_RUNNER), str(run_dir), "--",
               sys.executable, "-m", "stateset_agents", "train", str(config_path), "--output-dir", str(run_dir)]
        try:
            with open(run_dir / "job.log", "ab") as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
        except OSError as e:
            self._finish(job_id, "failed", None, f"could not start the job's process: {e}")
            raise APIError(500, f"could not start job {job_id}: {e}") from e
        self.db.execute("UPDATE jobs SET pid = ? WHERE id = ?", (proc.pid, job_id))
        self._procs[job_id] = proc
        self._watch(job_id)
        return self.record(job_id)

    def _watch(self, job_id: str) -> None:
        self._finished[job_id] = asyncio.Event()
        self._watchers[job_id] = asyncio.create_task(self._watcher(job_id))

    async def _watcher(self, job_id: str) -> None:
        rec = self.db.query("SELECT pid, run_dir FROM jobs WHERE id = ?", (job_id,))[0]
        proc = self._procs.get(job_id)
        while (proc.poll() is None) if proc is not None else _alive(rec["pid"], rec["run_dir"]):
            await asyncio.sleep(_POLL_S)
        code = _read_exit(Path(rec["run_dir"]))
        if code is None and proc is not None:
            code = proc.returncode
        self._conclude(job_id, code)
        self._procs.pop(job_id, None)
        self._watchers.pop(job_id, None)
        self._finished.pop(job_id).set()

    def _conclude(self, job_id: str, code: int | None) -> None:
        row = self.db.query("SELECT status, pid, run_dir FROM jobs WHERE id = ?", (job_id,))[0]
        run_dir = Path(row["run_dir"])
        if row["status"] == "cancelling":
            self._finish(job_id, "cancelled", code, "cancelled by request")
        elif code == 0:
            self._finish(job_id, "succeeded", 0, None)
        elif code is None:
            self._finish(job_id, "failed", None, f"the job's process (pid {row['pid']}) ended without recording an "
                                                 f"exit status (killed, or the machine restarted); last lines of "
                                                 f"{run_dir / 'job.log'}:\n{log_tail(run_dir / 'job.log')}")
        else:
            self._finish(job_id, "failed", code, f"train exited with code {code}; last lines of "
                                                 f"{run_dir / 'job.log'}:\n{log_tail(run_dir / 'job.log')}")

    def _finish(self, job_id: str, status: str, code: int | None, error: str | None) -> None:
        self.db.execute("UPDATE jobs SET status = ?, returncode = ?, error = ?, finished = ? WHERE id = ?",
                        (status, code, error, time.time(), job_id))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        rec = self.record(job_id)
        if rec["status"] not in ACTIVE:
            raise APIError(409, f"job {job_id!r} is already {rec['status']}; only running jobs can be cancelled",
                           param="job_id", code="job_not_running")
        self.db.execute("UPDATE jobs SET status = 'cancelling' WHERE id = ?", (job_id,))
        self._signal(rec["pid"], signal.SIGTERM)
        done = self._finished.get(job_id)
        if done is not None:
            try:
                await asyncio.wait_for(done.wait(), self.config.job_cancel_grace_s)
            except asyncio.TimeoutError:
                self._signal(rec["pid"], signal.SIGKILL)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), 10.0)
        return self.record(job_id)

    @staticmethod
    def _signal(pid: int | None, sig: int) -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)

    async def recover(self) -> None:
        """After a restart: conclude, reattach to, or fail the jobs recorded as running (see the module docs)."""
        for row in self.db.query("SELECT id, pid, run_dir FROM jobs WHERE status IN (?, ?)", ACTIVE):
            if _alive(row["pid"], row["run_dir"]):
                self._watch(row["id"])
            else:
                self._conclude(row["id"], _read_exit(Path(row["run_dir"])))

    async def close(self) -> None:
        """Stop watching (the jobs themselves keep running; the next start reattaches)."""
        for task in list(self._watchers.values()):
            task.cancel()
        for task in list(self._watchers.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()


def _jobs(request: Request) -> JobManager:
    return request.app.state.service.jobs


@router.post("/api/jobs", status_code=201)
async def start_job(request: Request, body: JobRequest) -> dict[str, Any]:
    return await _jobs(request).start(body)


@router.get("/api/jobs")
async def list_jobs(request: Request, limit: int = Query(default=50, ge=1, le=1000)) -> dict[str, Any]:
    return {"data": _jobs(request).recent(limit)}


@router.get("/api/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    return _jobs(request).record(job_id)


@router.post("/api/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return await _jobs(request).cancel(job_id)


@router.websocket("/ws/jobs/{job_id}")
async def job_events(websocket: WebSocket, job_id: str) -> None:
    """Status, then every metrics line (from the first), live, until the job ends; then the final status."""
    jobs: JobManager = websocket.app.state.service.jobs
    await websocket.accept()
    try:
        rec = jobs.record(job_id)
    except APIError as e:
        await websocket.send_json({"event": "error", "message": e.message})
        await websocket.close(code=4404, reason="job not found")
        return
    path, offset, status = Path(rec["run_dir"]) / "metrics.jsonl", 0, None
    try:
        while True:
            rec = jobs.record(job_id)  # before draining: lines written before the job ended go out before its end
            if path.is_file():
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
                complete = data[:data.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.decode("utf-8", errors="replace").splitlines():
                    if line.strip():
                        await websocket.send_json({"event": "metrics", "job_id": job_id, "data": json.loads(line)})
            if rec["status"] != status:
                status = rec["status"]
                await websocket.send_json({"event": "status", "job_id": job_id, "status": status,
                                           "returncode": rec["returncode"], "error": rec["error"]})
            if status not in ACTIVE:
                break
            await asyncio.sleep(_POLL_S)
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        return
