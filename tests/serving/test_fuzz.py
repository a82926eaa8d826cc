"""schemathesis (an OpenAPI fuzzer) against the real server on loopback: the tiny model, an API key, every
endpoint of the server's own OpenAPI document, valid and invalid requests, a bounded number of examples.

Checked for every response: no 5xx (``not_a_server_error``), a request without the key is refused
(``ignored_auth``), invalid data is refused with 4xx (``negative_data_rejection``), an answer within 30 s (no
hang), and every error is JSON in the service's shape whose ``param`` names the field and whose message names it
too. Findings and fixes are listed in docs/serving.md ("Security").
"""

from __future__ import annotations

import time

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import ignored_auth, negative_data_rejection  # noqa: E402

from .conftest import API_KEY, AUTH, make_config  # noqa: E402
from .harness import ServerThread  # noqa: E402

EXAMPLES = 15
"""Examples per operation and generation mode (13 operations x 2 modes)."""
BUDGET_S = 150


def check_error_shape(response, case) -> None:
    """An error is ``{"error": {"message", "type", "param", "code"}}``; a 400, 404, 409 or 413 has ``param``, and a
    400 or 413 message names that field too."""
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"], body
    if response.status_code in (400, 404, 409, 413):
        assert isinstance(err["param"], str) and err["param"], (case.operation.label, body)
    if response.status_code in (400, 413):  # a 404/409 names the missing or busy thing ("no conversation 'x'")
        field = err["param"].split(".")[-1].strip("()")
        names = (field, repr(field), err["param"], repr(err["param"]))  # messages quote fields with repr
        assert any(n in err["message"] for n in names), (case.operation.label, body)


@pytest.fixture(scope="module")
def fuzz_server(tiny_model, tmp_path_factory):
    config = make_config(tmp_path_factory.mktemp("fuzz"), max_active_jobs=1, job_cancel_grace_s=2, max_tokens_limit=8)
    with ServerThread(config, model=tiny_model) as s:
        yield s


def _operations(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()]


def _steer(case, conversation_id):
    """Valid requests that get past the first check: the served model's id, an existing conversation."""
    if case.operation.label == "POST /v1/chat/completions" and isinstance(case.body, dict):
        case.body["model"] = "default"
    if "conversation_id" in (case.path_parameters or {}) and case.method.upper() != "DELETE":
        case.path_parameters["conversation_id"] = conversation_id
    return case


def _fuzz(operation, mode, base_url, seen, conversation_id):
    strategy = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE:
        strategy = strategy.map(lambda case: _steer(case, conversation_id))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call_and_validate(base_url=base_url, headers=AUTH, timeout=30,
                                          checks=[not_a_server_error, ignored_auth, negative_data_rejection])
        check_error_shape(response, case)
        seen.append((operation.label, response.status_code))
        if operation.label == "POST /api/jobs" and response.status_code == 201:  # a valid config starts a job
            with httpx.Client(base_url=base_url, headers=AUTH, timeout=30) as c:
                c.post(f"/api/jobs/{response.json()['id']}/cancel")

    run()


def test_schemathesis_finds_nothing_on_any_endpoint(fuzz_server):
    operations = _operations(fuzz_server)
    labels = sorted(op.label for op in operations)
    assert labels == sorted([
        "GET /healthz", "GET /metrics", "GET /v1/models", "POST /v1/chat/completions",
        "GET /api/conversations", "POST /api/conversations", "GET /api/conversations/{conversation_id}",
        "DELETE /api/conversations/{conversation_id}", "POST /api/conversations/{conversation_id}/messages",
        "GET /api/jobs", "POST /api/jobs", "GET /api/jobs/{job_id}", "POST /api/jobs/{job_id}/cancel"])
    seen: list[tuple[str, int]] = []
    with httpx.Client(base_url=fuzz_server.url, headers=AUTH) as c:
        conversation_id = c.post("/api/conversations", json={"max_tokens": 4}).json()["id"]
    start = time.monotonic()
    for op in operations:
        _fuzz(op, GenerationMode.POSITIVE, fuzz_server.url, seen, conversation_id)
        try:
            _fuzz(op, GenerationMode.NEGATIVE, fuzz_server.url, seen, conversation_id)
        except Unsatisfiable:  # nothing to make invalid: no body, and any string is a valid path parameter
            assert not list(op.body), op.label
    elapsed = time.monotonic() - start
    assert elapsed < BUDGET_S, f"the fuzz run took {elapsed:.0f} s"
    assert {label for label, _ in seen} == set(labels)
    assert all(code < 500 for _, code in seen)
    # the key is really checked: the document itself needs it too
    assert httpx.get(f"{fuzz_server.url}/openapi.json").status_code == 401
    assert API_KEY not in httpx.get(f"{fuzz_server.url}/openapi.json", headers=AUTH).text
    counts: dict[str, dict[int, int]] = {}
    for label, code in seen:
        counts.setdefault(label, {}).setdefault(code, 0)
        counts[label][code] += 1
    print(f"\nschemathesis: {len(seen)} requests in {elapsed:.0f} s; " +
          "; ".join(f"{k} {dict(sorted(v.items()))}" for k, v in sorted(counts.items())))
