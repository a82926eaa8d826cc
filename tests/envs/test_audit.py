"""`envs audit`: policies that do no real work solve nothing on any built-in pack (results pinned)."""

from pathlib import Path

import pytest

from stateset_agents.cli import main
from stateset_agents.envs.audit import DEFAULT_SEEDS, PROGRESS_BOUND, audit_pack
from stateset_agents.envs.audit_policies import CANNED_REFUSAL, POLICIES

PACKS = ["customer_service", "tech_support", "sales"]

# Mean progress over every scenario x seeds 0, 1, 2. Every other policy earns exactly 0 on every pack.
# customer_service re-measured after its tools declared argument patterns (2d72df9): a filler string is now
# refused where it used to succeed, so a lucky right call is no longer hidden by a collateral change; and again
# after its 24 more train scenarios (055-078): a random cancel_order on the named order earns on cs-cancel-gift-069.
RANDOM_TOOLS_PROGRESS = {"customer_service": 0.012393, "tech_support": 0.005168, "sales": 0.0}
RANDOM_TOOLS_EARNS_ON = {
    "customer_service": ["cs-billing-credit-escalate-045", "cs-billing-duplicate-042", "cs-cancel-delivered-028",
                         "cs-cancel-gift-069", "cs-cancel-refund-escalate-027"],
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


def _spam_within_budget(writes_first: bool):
    """An adversary that knows the error budget: every tool on every id seen, never more failures than allowed."""
    from stateset_agents.envs.audit_policies import _ask_all, _calls_for, _seen_ids
    from stateset_agents.envs.conversation import END_MARKER
    from stateset_agents.toolcalls import format_tool_call

    def act(state):
        if state.turn == 0:
            return _ask_all(state)
        errors = sum('"ok": false' in m.content for m in state.messages if m.role == "tool")
        room = state.pack.policy.max_tool_errors - errors
        if state.turn > 4 or room <= 0:
            return END_MARKER
        tools = sorted(state.pack.tools, key=lambda t: writes_first and t.effect.kind in ("get", "find"))
        tried = state.memory.setdefault("tried", set())
        calls = [c for t in tools for a in _calls_for(t, _seen_ids(state.messages), None)
                 if (c := format_tool_call(t.name, a)) not in tried][:room]
        tried.update(calls)
        return "\n".join(calls) or END_MARKER
    return act


# Measured: in pack order the budget reaches cancel_order, the right write where the customer asked to cancel
# (progress for the change, none for the facts); writes first, the wrong writes cost collateral. Held to the
# bar random_tools meets: nothing solved, mean progress within PROGRESS_BOUND.
SPAM_EARNS_ON = {"customer_service": ["cs-cancel-gift-069", "cs-cancel-pending-023", "cs-cancel-refund-026",
                                      "cs-cancel-refund-escalate-027", "cs-cancel-wrong-model-067"]}
SPAM_PROGRESS = {"customer_service": 0.037927}


@pytest.mark.parametrize("writes_first", [False, True])
def test_tool_spam_within_the_error_budget_solves_nothing(report, writes_first, monkeypatch):
    from stateset_agents.envs import audit

    monkeypatch.setitem(audit.POLICIES, "call_every_tool", _spam_within_budget(writes_first))
    r = audit_pack(report.pack, policies=["call_every_tool"]).results[0]
    assert r.successes == 0 and r.mean_progress <= PROGRESS_BOUND
    assert sorted(r.earning) == ([] if writes_first else SPAM_EARNS_ON.get(report.pack, []))
    assert r.mean_progress == pytest.approx(0.0 if writes_first else SPAM_PROGRESS.get(report.pack, 0.0), abs=1e-6)
