"""`envs audit`: policies that do no real work solve nothing on any built-in pack (results pinned)."""

from pathlib import Path

import pytest

from stateset_agents.cli import main
from stateset_agents.envs.audit import DEFAULT_SEEDS, PROGRESS_BOUND, audit_pack
from stateset_agents.envs.audit_policies import CANNED_REFUSAL, POLICIES

PACKS = ["customer_service", "tech_support", "sales"]

# Mean progress over every scenario x seeds 0, 1, 2. Every other policy earns exactly 0 on every pack.
RANDOM_TOOLS_PROGRESS = {"customer_service": 0.014668, "tech_support": 0.005168, "sales": 0.0}
RANDOM_TOOLS_EARNS_ON = {
    "customer_service": ["cs-account-security-hold-035", "cs-billing-credit-escalate-045", "cs-cancel-delivered-028",
                         "cs-cancel-refund-escalate-027", "cs-cancel-refund-supervisor-051",
                         "cs-damaged-compensation-041", "cs-refund-over-limit-019", "cs-refund-returned-escalate-048",
                         "cs-ship-lost-escalate-013"],
    "tech_support": ["ts-outage-credit-ticket-008"],
    "sales": [],
}


@pytest.fixture(scope="module", params=PACKS)
def report(request):
    return audit_pack(request.param)


def test_the_suite_is_the_one_the_issue_lists():
    assert list(POLICIES) == ["do_nothing", "end_at_once", "echo_user", "ask_everything", "recite_facts",
                              "canned_refusal", "call_every_tool", "random_tools"]
    assert "only the account holder can" in CANNED_REFUSAL.lower() and "photo id" in CANNED_REFUSAL.lower()
    assert DEFAULT_SEEDS == (0, 1, 2) and PROGRESS_BOUND == 0.05


def test_every_builtin_pack_passes_its_audit(report):
    assert report.ok and report.split == "all"
    n = report.scenarios * len(DEFAULT_SEEDS)
    assert [r.episodes for r in report.results] == [n] * len(POLICIES)


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "random_tools"])
def test_degenerate_policy_solves_nothing_and_earns_nothing(report, policy):
    r = next(x for x in report.results if x.policy == policy)
    assert (r.successes, r.solved, r.mean_progress, r.max_progress, r.earning) == (0, [], 0.0, 0.0, {})


def test_random_tool_calls_solve_nothing(report):
    r = next(x for x in report.results if x.policy == "random_tools")
    assert r.successes == 0 and r.solved == []
    assert r.mean_progress == pytest.approx(RANDOM_TOOLS_PROGRESS[report.pack], abs=1e-6)
    assert sorted(r.earning) == RANDOM_TOOLS_EARNS_ON[report.pack]
    assert r.mean_progress <= PROGRESS_BOUND


def test_the_example_plugin_pack_passes_its_audit():
    pack = Path(__file__).resolve().parents[2] / "examples/plugin_env/returns_desk_env/pack"
    report = audit_pack(str(pack))
    assert report.ok and all(r.successes == 0 and r.mean_progress == 0.0 for r in report.results)


def test_audit_json_and_exit_status(tmp_path, capsys):
    out = tmp_path / "audit.json"
    assert main(["envs", "audit", "customer_service", "--split", "test", "--seeds", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "passes its audit" in text and "random_tools" in text
    import json

    data = json.loads(out.read_text())
    assert data["ok"] and data["split"] == "test" and data["seeds"] == [0]
    assert set(data["policies"]) == set(POLICIES)


def test_unknown_policy_and_empty_seeds():
    with pytest.raises(ValueError, match="unknown audit policy 'lazy'; choose from do_nothing, end_at_once"):
        audit_pack("customer_service", policies=["lazy"])
    with pytest.raises(ValueError, match=r"seeds is empty; give at least one seed, e.g. \(0, 1, 2\)"):
        audit_pack("customer_service", seeds=())
