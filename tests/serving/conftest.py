from __future__ import annotations

import httpx
import pytest

from stateset_agents.serving import ServeConfig

from .harness import ServerThread

API_KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_config(tmp, **overrides) -> ServeConfig:
    kw = dict(state_dir=tmp / "state", runs_dir=tmp / "runs", api_key=API_KEY, max_tokens_limit=64,
              max_messages=16, max_body_bytes=64 * 1024, conversation_max_tokens=8, max_n=3)
    kw.update(overrides)
    return ServeConfig(**kw)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with ServerThread(make_config(tmp_path_factory.mktemp("serve")), model=tiny_model) as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c
