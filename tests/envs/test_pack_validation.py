"""Malformed packs raise PackError naming the file, the scenario id and the field; the CLI checks packs."""

import shutil
from pathlib import Path

import pytest
import yaml

from stateset_agents import PackError
from stateset_agents.cli import main
from stateset_agents.envs import builtin_pack_dirs, load_pack

CS = builtin_pack_dirs()["customer_service"]


@pytest.fixture
def pack_dir(tmp_path):
    d = tmp_path / "mypack"
    (d / "scenarios").mkdir(parents=True)
    shutil.copy(CS / "pack.yaml", d / "pack.yaml")
    scenarios = yaml.safe_load((CS / "scenarios" / "orders.yaml").read_text())
    one = next(s for s in scenarios if s["id"] == "cs-refund-damaged-002")
    (d / "scenarios" / "s.yaml").write_text(yaml.safe_dump([one]))
    return d


def _edit(d: Path, fn):
    f = d / "scenarios" / "s.yaml"
    data = yaml.safe_load(f.read_text())
    fn(data[0])
    f.write_text(yaml.safe_dump(data))
    return f


def test_valid_copy_loads(pack_dir):
    assert [s.id for s in load_pack(pack_dir).scenarios] == ["cs-refund-damaged-002"]


def test_missing_field_names_file_scenario_and_field(pack_dir):
    f = _edit(pack_dir, lambda s: s["user"].pop("opening"))
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert str(e.value) == f"{f}: scenario 'cs-refund-damaged-002', field 'user.opening': Field required"
    assert (e.value.file, e.value.scenario, e.value.field) == (str(f), "cs-refund-damaged-002", "user.opening")


def test_bad_value(pack_dir):
    f = _edit(pack_dir, lambda s: s.update(split="validation"))
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert str(e.value) == (f"{f}: scenario 'cs-refund-damaged-002', field 'split': "
                            "Input should be 'train' or 'test'")


def test_unknown_field_is_an_error(pack_dir):
    f = _edit(pack_dir, lambda s: s.update(colour="blue"))
    with pytest.raises(PackError, match="field 'colour': Extra inputs are not permitted"):
        load_pack(pack_dir)
    assert f.exists()


def test_reference_to_unknown_tool(pack_dir):
    f = _edit(pack_dir, lambda s: s["reference"].insert(0, {"tool": "refund_all", "args": {}}))
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert str(e.value).startswith(f"{f}: scenario 'cs-refund-damaged-002', field 'reference.0.tool': "
                                   "unknown tool 'refund_all'")


def test_goal_fact_must_be_a_required_fact(pack_dir):
    _edit(pack_dir, lambda s: s["goal"].update(facts=["eta"]))
    with pytest.raises(PackError, match=r"field 'goal.facts.0': 'eta' is not a required_facts id"):
        load_pack(pack_dir)


def test_bad_reference_syntax(pack_dir):
    _edit(pack_dir, lambda s: s["goal"]["conditions"][0].update(left="$database.orders.ORD-1043.refunded"))
    with pytest.raises(PackError, match=r"field 'goal.conditions.0.left': reference '\$database"):
        load_pack(pack_dir)


def test_customer_id_must_exist(pack_dir):
    _edit(pack_dir, lambda s: s["user"].update(customer_id="C-999"))
    with pytest.raises(PackError, match=r"field 'user.customer_id': 'C-999' is not a key of table 'customers'"):
        load_pack(pack_dir)


def test_duplicate_ids(pack_dir):
    f = pack_dir / "scenarios" / "s.yaml"
    shutil.copy(f, pack_dir / "scenarios" / "t.yaml")
    with pytest.raises(PackError, match="field 'id': duplicate id, also in"):
        load_pack(pack_dir)


def test_broken_yaml(pack_dir):
    f = pack_dir / "scenarios" / "s.yaml"
    f.write_text("- id: x\n  asked_by: [order #1\n")
    with pytest.raises(PackError, match=f"{f}: not valid YAML"):
        load_pack(pack_dir)


def test_bad_tool_schema_in_pack_yaml(pack_dir):
    head = yaml.safe_load((pack_dir / "pack.yaml").read_text())
    head["tools"][0]["parameters"]["required"] = ["order_number"]
    (pack_dir / "pack.yaml").write_text(yaml.safe_dump(head))
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert "pack.yaml: field 'tools.0.parameters'" in str(e.value)
    assert "required argument 'order_number' is not in properties ['order_id']" in str(e.value)


def test_negative_tool_error_budget(pack_dir):
    head = yaml.safe_load((pack_dir / "pack.yaml").read_text())
    head["policy"]["max_tool_errors"] = -1
    (pack_dir / "pack.yaml").write_text(yaml.safe_dump(head))
    with pytest.raises(PackError, match=r"pack.yaml: field 'policy.max_tool_errors': Input should be greater than or"):
        load_pack(pack_dir)


def test_unknown_pack_name():
    with pytest.raises(PackError, match="no environment pack 'customer_servce'.*Did you mean 'customer_service'"):
        load_pack("customer_servce")


def test_cli_validate_ok(pack_dir, capsys):
    assert main(["envs", "validate", str(pack_dir)]) == 0
    out = capsys.readouterr().out
    assert "reference solutions that succeed: 1/1" in out and "passes its audit" in out


def test_cli_validate_reports_unsolvable_reference(pack_dir, capsys):
    _edit(pack_dir, lambda s: s["reference"].pop(2))  # drop the refund call
    assert main(["envs", "validate", str(pack_dir)]) == 1
    out = capsys.readouterr().out
    assert "FAIL cs-refund-damaged-002" in out and "0/1" in out


def test_cli_validate_malformed(pack_dir, capsys):
    _edit(pack_dir, lambda s: s.pop("goal"))
    assert main(["envs", "validate", str(pack_dir)]) == 2
    assert "field 'goal': Field required" in capsys.readouterr().out


def test_cli_list(capsys):
    assert main(["envs", "list"]) == 0
    out = capsys.readouterr().out
    assert "stateset/CustomerService-v0" in out


def test_pack_written_before_claims_and_required_actions_still_loads(pack_dir):
    """A pack in the format documented before issue 13 (no claims, required_actions or grounded) loads."""
    head = yaml.safe_load((pack_dir / "pack.yaml").read_text())
    head["policy"].pop("claims")
    (pack_dir / "pack.yaml").write_text(yaml.safe_dump(head))
    _edit(pack_dir, lambda s: s.pop("required_actions"))
    s = load_pack(pack_dir).scenarios[0]
    assert s.required_actions == [] and load_pack(pack_dir).policy.claims == []


def test_scenario_with_nothing_to_earn_says_what_to_add(pack_dir):
    def strip(s):
        s.pop("required_actions")
        s["required_facts"] = []
        s["expected_changes"] = {}
        s["goal"] = {"description": "nothing", "conditions": [
            {"left": "$db.orders.ORD-1043.status", "op": "==", "right": "delivered"}]}  # already true
    f = _edit(pack_dir, strip)
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert str(e.value) == (
        f"{f}: scenario 'cs-refund-damaged-002', field 'required_actions': the scenario gives the agent nothing "
        "to earn: every goal condition already holds in its database and it has no expected_changes, "
        "required_facts or required_actions; add the tool call that solves it under required_actions, or a goal "
        "condition that is false in the seed database")


def test_required_action_naming_an_unknown_argument(pack_dir):
    f = _edit(pack_dir, lambda s: s.update(required_actions=[{"tool": "lookup_order", "args": {"order": "X"}}]))
    with pytest.raises(PackError) as e:
        load_pack(pack_dir)
    assert str(e.value) == (f"{f}: scenario 'cs-refund-damaged-002', field 'required_actions.0.args.order': "
                            "tool 'lookup_order' has no argument 'order'; it takes ['order_id']")


def test_bad_claim_pattern_names_pack_yaml(pack_dir):
    head = yaml.safe_load((pack_dir / "pack.yaml").read_text())
    head["policy"]["claims"][0]["pattern"] = "refund(ed"
    (pack_dir / "pack.yaml").write_text(yaml.safe_dump(head))
    with pytest.raises(PackError, match=r"pack.yaml: field 'claims.0.pattern': not a valid regular expression"):
        load_pack(pack_dir)


def test_cli_audit_fails_a_gameable_pack(pack_dir, capsys):
    """Without its required lookup and with an ungrounded fact, a refusal-style scenario is gameable."""
    def gameable(s):
        s.pop("required_actions")
        s["goal"] = {"description": "be told the timing", "facts": ["refund_timing"]}
        s["expected_changes"] = {}
        s["split"] = "train"  # recite_facts recites the train split's phrases
    _edit(pack_dir, gameable)
    assert main(["envs", "audit", str(pack_dir), "--seeds", "0"]) == 1
    out = capsys.readouterr().out
    assert "recite_facts" in out and "FAIL" in out and "FAILS its audit" in out


def test_a_note_goes_only_with_a_tool_step(pack_dir):
    def note_on_say(s):
        s["reference"][0]["note"] = "Why I say this."
    _edit(pack_dir, note_on_say)
    with pytest.raises(PackError, match=r"`note` goes with a `tool` step"):
        load_pack(pack_dir)


def test_a_note_is_judged_like_any_agent_text(pack_dir, capsys):
    # cs-refund-damaged-002: lookup_order, then issue_refund; the order is never cancelled. A note claiming it
    # was is a false claim (claims are checked against the database at the end): the reference no longer
    # succeeds, and `envs validate` says so. The user never sees a note; the judge reads it.
    def false_note(s):
        s["reference"][1]["note"] = "Your order is cancelled."
    _edit(pack_dir, false_note)
    pack = load_pack(pack_dir)
    from stateset_agents.envs.reference import reference_actions
    acts = reference_actions(pack.scenario("cs-refund-damaged-002"))
    assert acts[1].startswith("Your order is cancelled.\n<tool_call>")
    assert not reference_actions(pack.scenario("cs-refund-damaged-002"), notes=False)[1].startswith("Your")
    assert main(["envs", "validate", str(pack_dir)]) == 1
    assert "FAIL cs-refund-damaged-002" in capsys.readouterr().out
