"""/api/jobs and /ws/jobs on the real server: validation before any process starts, a real training job (the tiny
model on the toy pack) streamed to a WebSocket until it succeeds, a job cancelled mid-run, and restarts that keep
job records, reattach to a job still running, and mark a job whose process died as failed with its log's tail."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import AUTH, make_config
from .harness import ServerThread

TOY = Path(__file__).parents[1] / "training" / "toy_pack"
REWARD = """name: job_test
combine: sum
components:
  - {type: length_window, weight: 1.0, params: {min_words: 1, max_words: 8}}
  - {type: repetition, weight: 0.5}
"""


@pytest.fixture(scope="module")
def job_env(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("jobs")
    (root / "allowed").mkdir()
    (root / "allowed" / "reward.yaml").write_text(REWARD)
    (root / "outside.yaml").write_text("max_steps: 1\n")
    config = make_config(root, allowed_dirs=[root / "allowed", tiny_model_path, TOY], max_active_jobs=3,
                         job_cancel_grace_s=10)
    base = {"model": str(tiny_model_path), "env": str(TOY), "reward": str(root / "allowed" / "reward.yaml"),
            "max_steps": 2, "max_new_tokens": 4, "group_size": 2, "scenarios_per_step": 1, "eval_before": False,
            "eval_after": False, "use_lora": False, "save_every": 0, "learning_rate": 1e-3}
    return root, config, base


def _wait(predicate, timeout=120.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def _ws(url: str, job_id: str):
    return ws_client.connect(url.replace("http://", "ws://") + f"/ws/jobs/{job_id}", additional_headers=AUTH,
                             proxy=None, open_timeout=30)


def _events(url: str, job_id: str) -> list[dict]:
    with _ws(url, job_id) as ws:
        return [json.loads(m) for m in ws]


def _process_gone(pid: int) -> bool:
    """Not running: no such process, or a zombie (this test process started the job, so it is the parent that
    reaps it; a real server restart is a new process and the job's runner is re-parented)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _train_processes(run_dir: str) -> list[int]:
    """Live processes whose command line names the run folder (the runner and the trainer)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if run_dir.encode() in (p / "cmdline").read_bytes():
                    out.append(int(p.name))
            except OSError:
                continue
    return out


# ---------------------------------------------------------------- validation: 400 naming the field, no process
@pytest.mark.parametrize(("change", "param", "message"), [
    ({"learning_rat": 0.1}, "config", "unknown field 'learning_rat': remove it or check its spelling"),
    ({"group_size": 1}, "config", "field 'group_size': Input should be greater than or equal to 2"),
    ({"algorithm": "ppo"}, "config", "field 'algorithm': 'ppo' is not one of 'grpo', 'sft', 'training_free'"),
    ({"model": "/etc"}, "config.model", "field 'config.model': '/etc' resolves to '/etc', outside the directories"),
    ({"env": "{allowed}/../../../etc"}, "config.env", "outside the directories jobs may use"),
    ({"reward": "{root}/outside.yaml"}, "config.reward", "outside the directories jobs may use"),
    ({"env": "{allowed}"}, "config.env", "not a folder with pack.yaml"),
    ({"env": "no_such_pack"}, "config.env", "'no_such_pack' is not a built-in environment pack"),
])
def test_bad_job_configs_are_refused_before_a_process_starts(job_env, tiny_model, change, param, message):
    root, config, base = job_env
    change = {k: v.format(root=root, allowed=root / "allowed") if isinstance(v, str) else v
              for k, v in change.items()}
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        r = c.post("/api/jobs", json={"config": {**base, **change}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param
        assert message in r.json()["error"]["message"]
        assert c.get("/api/jobs").json()["data"] == []
    assert not config.runs_dir.exists() or not any(config.runs_dir.iterdir())


def test_config_files_must_lie_under_the_allowed_folders(job_env, tiny_model):
    root, config, base = job_env
    link = root / "allowed" / "sneaky.yaml"
    if not link.exists():
        link.symlink_to(root / "outside.yaml")
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        for path in (str(root / "outside.yaml"), str(root / "allowed" / ".." / "outside.yaml"), str(link)):
            r = c.post("/api/jobs", json={"config": path})
            assert r.status_code == 400 and r.json()["error"]["param"] == "config"
            assert "outside the directories jobs may use" in r.json()["error"]["message"]
        r = c.post("/api/jobs", json={"config": str(root / "allowed" / "missing.yaml")})
        assert r.status_code == 400 and "does not exist" in r.json()["error"]["message"]
        r = c.post("/api/jobs", json={"config": {}, "extra": 1})
        assert r.status_code == 400 and r.json()["error"]["param"] == "extra"
        assert c.get("/api/jobs/job_nope").status_code == 404
        with pytest.raises(InvalidStatus) as refused:  # the WebSocket needs the key too
            ws_client.connect(s.url.replace("http://", "ws://") + "/ws/jobs/job_nope", proxy=None)
        assert refused.value.response.status_code == 403
        with _ws(s.url, "job_nope") as ws:  # with the key: an unknown job is an error event and close code 4404
            assert json.loads(ws.recv()) == {"event": "error", "message": "no job 'job_nope'; GET /api/jobs lists "
                                                                          "the jobs"}
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv()
            assert closed.value.rcvd.code == 4404


# ---------------------------------------------------------------- real jobs
def test_jobs_run_stream_cancel_and_survive_restarts(job_env, tiny_model):
    root, config, base = job_env
    (root / "allowed" / "job.yaml").write_text(json.dumps(base))  # JSON is YAML
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        ok = c.post("/api/jobs", json={"config": str(root / "allowed" / "job.yaml")})
        assert ok.status_code == 201 and ok.json()["status"] == "running"
        ok = ok.json()
        long = c.post("/api/jobs", json={"config": base, "overrides": {"max_steps": 500}}).json()
        # valid as a config, but the trainer refuses it: the job fails with its exit code and its log's tail
        bad = c.post("/api/jobs", json={"config": base, "overrides": {"scenarios": ["nope-1"]}}).json()
        busy = c.post("/api/jobs", json={"config": base})
        assert busy.status_code == 409 and "the limit is 3 (max_active_jobs)" in busy.json()["error"]["message"]

        # 1. progress over the WebSocket, from the first metrics line to the end
        events = _events(s.url, ok["id"])
        assert events[0] == {"event": "status", "job_id": ok["id"], "status": "running", "returncode": None,
                             "error": None}
        assert [e["data"]["step"] for e in events if e["event"] == "metrics"] == [1, 2]
        assert all("reward" in e["data"] for e in events if e["event"] == "metrics")
        assert events[-1]["event"] == "status" and events[-1]["status"] == "succeeded"
        done = c.get(f"/api/jobs/{ok['id']}").json()
        assert (done["status"], done["returncode"], done["step"], done["error"]) == ("succeeded", 0, 2, None)
        assert done["latest_metrics"]["step"] == 2 and Path(done["run_dir"], "metrics.jsonl").is_file()
        assert Path(done["run_dir"]).parent == config.runs_dir
        failed = _wait(lambda: (j := c.get(f"/api/jobs/{bad['id']}").json())["status"] != "running" and j)
        assert (failed["status"], failed["returncode"]) == ("failed", 2)
        assert failed["error"].startswith("train exited with code 2; last lines of ")
        assert "nope-1" in failed["error"]  # the trainer's own message, from the log

        # 2. the long job is mid-run: stop the server; the job keeps running
        _wait(lambda: c.get(f"/api/jobs/{long['id']}").json()["step"] >= 1)
    assert not _process_gone(long["pid"])

    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        # 3. records survive the restart; the running job is reattached, then cancelled mid-run
        assert c.get(f"/api/jobs/{ok['id']}").json()["status"] == "succeeded"
        assert c.get(f"/api/jobs/{long['id']}").json()["status"] == "running"
        assert "stateset_jobs_active 1.0" in c.get("/metrics").text
        cancelled = c.post(f"/api/jobs/{long['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by request"
        assert cancelled["returncode"] == -signal.SIGTERM
        assert 1 <= cancelled["step"] < 500
        assert _process_gone(long["pid"]) and _train_processes(long["run_dir"]) == []
        again = c.post(f"/api/jobs/{long['id']}/cancel")
        assert again.status_code == 409 and "is already cancelled" in again.json()["error"]["message"]

        # 4. a job whose process dies while the server is down
        doomed = c.post("/api/jobs", json={"config": base, "overrides": {"max_steps": 500}}).json()
        log = Path(doomed["run_dir"]) / "job.log"
        _wait(lambda: log.is_file() and "training grpo" in log.read_text())
    os.killpg(doomed["pid"], signal.SIGKILL)
    _wait(lambda: _train_processes(doomed["run_dir"]) == [] or None, timeout=20)

    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        failed = c.get(f"/api/jobs/{doomed['id']}").json()
        assert failed["status"] == "failed" and failed["returncode"] is None
        assert "ended without recording an exit status" in failed["error"]
        assert "training grpo on" in failed["error"]  # the tail of its log
        statuses = {j["id"]: j["status"] for j in c.get("/api/jobs").json()["data"]}
        assert statuses == {ok["id"]: "succeeded", long["id"]: "cancelled", doomed["id"]: "failed",
                            bad["id"]: "failed"}
        assert "stateset_jobs_active 0.0" in c.get("/metrics").text
        events = _events(s.url, doomed["id"])  # a finished job's stream: its status, then it closes
        assert events[-1]["status"] == "failed"
