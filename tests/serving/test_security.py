"""The service's security fences, each tried as an attacker would (docs/serving.md, "Security"):

1. outbound endpoints: a job config may name only URLs on the server's allow-list (``--allow-endpoint``), and a
   job process gets a scrubbed environment (the server's own API key never reaches it);
2. paths: every name that becomes a path goes through one resolver (built-in name, or inside an allowed folder);
3. Host header: on loopback, only ``127.0.0.1``, ``localhost`` and ``[::1]`` with the port are answered; no CORS
   unless configured.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from .conftest import AUTH, make_config
from .harness import ServerThread

TOY = Path(__file__).parents[1] / "training" / "toy_pack"
REWARD = """name: sec_test
combine: sum
components:
  - {type: length_window, weight: 1.0, params: {min_words: 1, max_words: 8}}
"""


@pytest.fixture(scope="module")
def sec_env(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("sec")
    (root / "allowed").mkdir()
    (root / "allowed" / "reward.yaml").write_text(REWARD)
    (root / "outside").mkdir()
    (root / "outside" / "evil.yaml").write_text(REWARD.replace("sec_test", "evil"))
    config = make_config(root, allowed_dirs=[root / "allowed", tiny_model_path, TOY], max_active_jobs=2,
                         job_cancel_grace_s=10)
    base = {"model": str(tiny_model_path), "env": str(TOY), "reward": str(root / "allowed" / "reward.yaml"),
            "max_steps": 2, "max_new_tokens": 4, "group_size": 2, "scenarios_per_step": 1, "eval_before": False,
            "eval_after": False, "save_every": 0}
    return root, config, base


def _post_job(c: httpx.Client, body: dict) -> httpx.Response:
    r = c.post("/api/jobs", json=body)
    if r.status_code == 201:  # today's code starts it: stop it before the assertion fails
        c.post(f"/api/jobs/{r.json()['id']}/cancel")
    return r


# ---------------------------------------------------------------- 1. outbound endpoints and the job environment
LEARNER = {"base_url": "http://attacker.invalid/v1", "model": "x", "api_key_env": "STATESET_API_KEY"}


def test_a_learner_endpoint_off_the_allow_list_is_refused(sec_env, tiny_model):
    root, config, base = sec_env
    tf = {**base, "algorithm": "training_free", "learner": LEARNER}
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        r = _post_job(c, {"config": tf})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "config.learner.base_url"
        assert "'http://attacker.invalid/v1' is not an allowed endpoint" in err["message"]
        assert "--allow-endpoint" in err["message"]
        # the same URL hidden in an override, or named as the model, is refused too
        r = _post_job(c, {"config": base, "overrides": {"model": "https://attacker.invalid/model"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "config.model"
        assert not any(j["status"] == "running" for j in c.get("/api/jobs").json()["data"])


def test_an_allowed_endpoint_may_not_carry_the_servers_own_key(sec_env, tiny_model):
    root, config, base = sec_env
    cfg = config.model_copy(update={"allowed_endpoints": ["http://127.0.0.1:9/v1 LEARNER_KEY"]})
    tf = {**base, "algorithm": "training_free"}
    with ServerThread(cfg, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        for key_env, field in (("STATESET_API_KEY", "config.learner.api_key_env"),
                               ("AWS_SECRET_ACCESS_KEY", "config.learner.api_key_env")):
            learner = {"base_url": "http://127.0.0.1:9/v1", "model": "x", "api_key_env": key_env}
            r = _post_job(c, {"config": {**tf, "learner": learner}})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
            assert "LEARNER_KEY" in r.json()["error"]["message"]


def test_a_reward_preset_naming_an_endpoint_is_refused(sec_env, tiny_model):
    root, config, base = sec_env
    preset = root / "allowed" / "judge.yaml"
    preset.write_text(REWARD + "  - {type: ruler, weight: 0.5, when: judge, params: {rubric: default, "
                               "judge: {base_url: 'http://attacker.invalid/v1', model: j}}}\n")
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        r = _post_job(c, {"config": {**base, "reward": str(preset)}})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "config.reward"
        assert "components.1.params.judge.base_url" in r.json()["error"]["message"]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads /proc/PID/environ (Linux)")
def test_a_job_process_gets_a_scrubbed_environment(sec_env, tiny_model, monkeypatch):
    root, config, base = sec_env
    monkeypatch.setenv("STATESET_API_KEY", "the-servers-own-key-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret")
    monkeypatch.setenv("HF_TOKEN", "hub-secret")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH, timeout=60) as c:
        job = c.post("/api/jobs", json={"config": base, "overrides": {"max_steps": 500}})
        assert job.status_code == 201, job.text
        job = job.json()
        try:
            deadline = time.monotonic() + 60
            while not _children(job["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
            pids = [job["pid"], *_children(job["pid"])]
            assert len(pids) == 2, "the runner and its train command"
            for pid in pids:
                env = _environ(pid)
                until = time.monotonic() + 10
                while "PATH" not in env and time.monotonic() < until:  # caught between fork and exec: wait for it
                    time.sleep(0.05)
                    env = _environ(pid)
                for secret in ("STATESET_API_KEY", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN"):
                    assert secret not in env, f"{secret} reached the job's process {pid}"
                assert "the-servers-own-key-123" not in "".join(env.values())
                assert env["PATH"] == os.environ["PATH"] and env["LC_ALL"] == "C.UTF-8"
                assert env["PYTHONUNBUFFERED"] == "1"
        finally:
            c.post(f"/api/jobs/{job['id']}/cancel")


def test_job_environment_passes_only_the_documented_variables():
    from stateset_agents.serving.egress import JOB_ENV_VARS, job_environment

    server = {"PATH": "/bin", "HOME": "/h", "LANG": "C", "LC_CTYPE": "C", "OMP_NUM_THREADS": "2",
              "HF_HOME": "/c", "STATESET_API_KEY": "k" * 16, "OPENAI_API_KEY": "sk-1", "LEARNER_KEY": "lk",
              "AWS_SECRET_ACCESS_KEY": "a", "GITHUB_TOKEN": "g"}
    env = job_environment(server, key_vars=["LEARNER_KEY"])
    assert env == {"PATH": "/bin", "HOME": "/h", "LANG": "C", "LC_CTYPE": "C", "OMP_NUM_THREADS": "2",
                   "HF_HOME": "/c", "LEARNER_KEY": "lk", "PYTHONUNBUFFERED": "1"}
    assert "STATESET_API_KEY" not in JOB_ENV_VARS
    with pytest.raises(ValueError, match="STATESET_API_KEY"):
        job_environment(server, key_vars=["STATESET_API_KEY"], server_key_env="STATESET_API_KEY")


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://127.0.0.1:9/v1", True),
    ("http://127.0.0.1:9/v1/", True),
    ("HTTP://127.0.0.1:9/v1/chat", True),
    ("http://127.0.0.1:9/v10", False),
    ("http://127.0.0.1:9/", False),
    ("http://127.0.0.1:10/v1", False),
    ("https://127.0.0.1:9/v1", False),
    ("http://127.0.0.1:9@attacker.invalid/v1", False),
    ("http://user:pw@127.0.0.1:9/v1", False),
    ("http://127.0.0.1:9/v1/../../admin", False),
    ("file:///etc/passwd", False),
    ("not a url", False),
])
def test_endpoint_allow_list_matching(url, allowed):
    from stateset_agents.serving.egress import EndpointPolicy

    policy = EndpointPolicy(["http://127.0.0.1:9/v1"])
    assert (policy.match(url) is not None) is allowed


def test_allow_endpoint_is_a_serve_option():
    import argparse

    from stateset_agents.serving.cli import add_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config_from_args(p.parse_args(["--allow-endpoint", "http://127.0.0.1:9/v1",
                                         "--allow-endpoint", "http://10.0.0.2:8000/v1 VLLM_KEY"]))
    assert cfg.allowed_endpoints == ["http://127.0.0.1:9/v1", "http://10.0.0.2:8000/v1 VLLM_KEY"]
    assert config_from_args(p.parse_args([])).allowed_endpoints == []
    from stateset_agents.errors import ConfigError

    for bad in ("ftp://x/v1", "http://x/v1 STATESET_API_KEY", "http://x/v1 a b"):
        with pytest.raises(ConfigError, match="allowed_endpoints"):
            config_from_args(p.parse_args(["--allow-endpoint", bad]))


def test_requests_and_conversations_cannot_name_an_endpoint(client):
    r = client.post("/api/conversations", json={"base_url": "http://attacker.invalid/v1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "base_url"
    r = client.post("/v1/chat/completions", json={"model": "default", "messages": [{"role": "user", "content": "hi"}],
                                                  "base_url": "http://attacker.invalid/v1"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "base_url"


# ---------------------------------------------------------------- 2. one resolver for every name that becomes a path
def _presets_root() -> Path:
    from stateset_agents.envs.pack import pack_root

    return pack_root("rewards") / "presets"


def test_reward_names_cannot_walk_out_of_the_presets(sec_env, tiny_model):
    root, config, base = sec_env
    evil = root / "outside" / "evil"
    up = "../" * len(_presets_root().parts)
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        before = c.get("/api/jobs").json()["data"]
        for reward in (str(evil), up + str(evil).lstrip("/"), "customer_service/../../../" + str(evil)):
            r = _post_job(c, {"config": {**base, "reward": reward}})
            assert r.status_code == 400, (reward, r.text)
            assert r.json()["error"]["param"] == "config.reward"
            assert "outside the directories jobs may use" in r.json()["error"]["message"]
        r = _post_job(c, {"config": {**base, "reward": str(root / "allowed" / "reward")}})  # no suffix: not a preset
        assert r.status_code == 400 and r.json()["error"]["param"] == "config.reward"
        assert c.get("/api/jobs").json()["data"] == before


@pytest.fixture
def tree(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "packs" / "mine").mkdir(parents=True)
    outside.mkdir()
    (allowed / "r.yaml").write_text("x")
    (outside / "secret.yaml").write_text("x")
    (allowed / "link.yaml").symlink_to(outside / "secret.yaml")
    (allowed / "dirlink").symlink_to(outside)
    return allowed, outside


def test_the_resolver_accepts_built_in_names_and_paths_inside_allowed_folders(tree):
    from stateset_agents.serving.paths import resolve_job_path

    allowed, _ = tree
    builtins = {"customer_service", "tech_support"}
    assert resolve_job_path("customer_service", "config.reward", [allowed], builtins=builtins) == "customer_service"
    assert resolve_job_path(str(allowed / "r.yaml"), "config.reward", [allowed]) == str(allowed / "r.yaml")
    inner = str(allowed / "packs" / "mine" / ".." / "mine")
    assert resolve_job_path(inner, "config.env", [allowed]) == str(allowed / "packs" / "mine")


@pytest.mark.parametrize("value", [
    "../outside/secret.yaml",              # ..
    "{allowed}/../outside/secret.yaml",   # .. after an allowed prefix
    "{outside}/secret.yaml",              # absolute, outside
    "/etc/passwd",                        # absolute
    "{allowed}/link.yaml",                # a symlink out of the folder
    "{allowed}/dirlink/secret.yaml",      # through a symlinked folder
    "customer_service/../../secret",      # a built-in name with separators
    "customer_service\\..\\secret",       # backslashes are not separators here, and not a built-in name
    "~/secret.yaml",                      # the server's home
    "no_such_builtin",                    # a name that is not built in
    "",
    "a\0b",
])
def test_the_resolver_refuses_everything_else(tree, value):
    from stateset_agents.serving.errors import APIError
    from stateset_agents.serving.paths import resolve_job_path

    allowed, outside = tree
    value = value.format(allowed=allowed, outside=outside)
    with pytest.raises(APIError) as e:
        resolve_job_path(value, "config.reward", [allowed], builtins={"customer_service"}, cwd=allowed)
    assert e.value.status == 400 and e.value.param == "config.reward"
    assert e.value.message.startswith("field 'config.reward': ")


# ---------------------------------------------------------------- 3. Host header (DNS rebinding) and CORS
def test_loopback_server_answers_only_loopback_host_names(tmp_path, tiny_model):
    config = make_config(tmp_path, api_key=None)
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url) as c:
        for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", f"[::1]:{s.port}", f"LOCALHOST:{s.port}"):
            assert c.get("/api/jobs", headers={"Host": host}).status_code == 200, host
        for host in (f"rebind.attacker.example:{s.port}", "127.0.0.1", f"127.0.0.1:{s.port + 1}",
                     f"localhost.attacker.example:{s.port}", ""):
            r = c.get("/api/jobs", headers={"Host": host})
            assert r.status_code == 400, host
            err = r.json()["error"]
            assert err["param"] == "host" and "--allowed-host" in err["message"], err
        assert c.post("/api/conversations", json={}, headers={"Host": "evil.example"}).status_code == 400


def test_allowed_hosts_are_configurable_for_a_proxy(tmp_path, tiny_model):
    config = make_config(tmp_path, api_key=None, allowed_hosts=["agents.internal"])
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/healthz", headers={"Host": "agents.internal"}).status_code == 200
        assert c.get("/healthz", headers={"Host": f"127.0.0.1:{s.port}"}).status_code == 400


def test_no_cors_unless_configured(tmp_path, tiny_model):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with ServerThread(make_config(tmp_path / "a"), model=tiny_model) as s, httpx.Client(base_url=s.url) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/healthz", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
    config = make_config(tmp_path / "b", cors_origins=["https://app.example"])
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url) as c:
        r = c.options("/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options("/v1/chat/completions", headers={**preflight, "Origin": "https://other.example"})
        assert "access-control-allow-origin" not in r.headers


def test_an_allowed_learner_endpoint_passes_its_key_variable_only(sec_env, tmp_path):
    from stateset_agents.serving.egress import EndpointPolicy
    from stateset_agents.serving.job_config import validate_job

    root, config, base = sec_env
    policy = EndpointPolicy(["http://127.0.0.1:9/v1 LEARNER_KEY"])
    learner = {"base_url": "http://127.0.0.1:9/v1/", "model": "x", "api_key_env": "LEARNER_KEY"}
    job = validate_job({**base, "algorithm": "training_free", "learner": learner}, {}, tmp_path / "run",
                       [config.runs_dir, *config.allowed_dirs], policy)
    assert job.key_vars == ["LEARNER_KEY"] and job.config.learner.base_url == "http://127.0.0.1:9/v1/"
    assert job.reward_preset is not None and job.config.reward == str(root / "allowed" / "reward.yaml")
    plain = validate_job(base, {}, tmp_path / "run", [config.runs_dir, *config.allowed_dirs], policy)
    assert plain.key_vars == []


@pytest.mark.parametrize("body", [b"\x00", b"hD\x97", b"{", b"[1, 2"])
def test_a_body_that_is_not_json_names_the_body(client, body):
    for path in ("/v1/chat/completions", "/api/conversations", "/api/jobs"):
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["error"]["param"] == "(body)" and "body" in r.json()["error"]["message"]


def test_a_websocket_or_a_second_host_header_from_a_rebinding_page_is_refused(tmp_path, tiny_model):
    import socket

    config = make_config(tmp_path, api_key=None)
    with ServerThread(config, model=tiny_model) as s:
        for extra in (b"Host: rebind.attacker.example\r\n", b""):
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
                sock.sendall(b"GET /ws/jobs/job_x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % s.port + extra +
                             b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://rebind.attacker.example\r\n"
                             b"\r\n")
                status = sock.recv(4096).split(b"\r\n", 1)[0]
            if extra:  # two Host headers: refused (HTTP 403 for a refused handshake, or the parser's 400)
                assert status.split()[1] in (b"400", b"403"), status
            else:  # the loopback name alone: the handshake is accepted
                assert status.split()[1] == b"101", status
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(b"GET /ws/jobs/job_x HTTP/1.1\r\nHost: rebind.attacker.example\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            assert sock.recv(4096).split(b"\r\n", 1)[0].split()[1] == b"403"


def test_an_env_pack_naming_a_user_model_endpoint_is_refused(sec_env, tiny_model):
    import shutil

    root, config, base = sec_env
    pack = root / "allowed" / "llm_user_pack"
    if not pack.exists():
        shutil.copytree(TOY, pack)
        text = (pack / "pack.yaml").read_text()
        (pack / "pack.yaml").write_text(text + "\nuser_simulator: {kind: llm, model: {base_url: "
                                               "'http://attacker.invalid/v1', model: u}}\n")
    with ServerThread(config, model=tiny_model) as s, httpx.Client(base_url=s.url, headers=AUTH) as c:
        r = _post_job(c, {"config": {**base, "env": str(pack)}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "config.env", r.text
        assert "user_simulator.model.base_url" in r.json()["error"]["message"]
        assert "--allow-endpoint" in r.json()["error"]["message"]
