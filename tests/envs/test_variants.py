"""Scenario variants (envs/variants.py): distinct, consistent, deterministic; every sampled variant's reference still
succeeds; test scenarios are never varied; degenerate policies still fail on variants; bad declarations fail clearly."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from stateset_agents.envs import load_pack
from stateset_agents.envs.audit import play_policy
from stateset_agents.envs.reference import replay_reference
from stateset_agents.envs.variants import expand_scenario, variant_counts, with_variants
from stateset_agents.errors import PackError

PACKS = ["customer_service", "tech_support", "sales"]
ID_RX = {"customer_service": r"\b(?:ORD-\d{4}|C-\d{3}|INV-\d{4})\b", "tech_support": r"\bKA-\d{5}\b",
         "sales": r"\b(?:L-\d{4}|Q-\d{3}|ACC-\d{4})\b"}


@pytest.mark.parametrize("name", PACKS)
def test_every_sampled_variant_reference_still_succeeds(name):
    pack = load_pack(name)
    varied = with_variants(pack, 3)
    variants = [s for s in varied.scenarios if s.variant_of is not None]
    assert len(variants) == 3 * len(pack.split("train"))
    assert all(s.split == "train" for s in variants)  # test scenarios are never varied

    async def replay_all():
        return [await replay_reference(varied, s, seed=i % 3) for i, s in enumerate(variants)]
    failed = [o["scenario_id"] for o in asyncio.run(replay_all()) if not o["success"]]
    assert failed == []


@pytest.mark.parametrize("name", PACKS)
def test_variants_are_distinct_and_consistent(name):
    pack = load_pack(name)
    for base in pack.split("train"):
        [a, b] = expand_scenario(pack, base, 2)
        assert (a.id, b.id, a.variant_of) == (f"{base.id}~v1", f"{base.id}~v2", base.id)
        blobs = [json.dumps(s.model_dump(mode="json", exclude={"id", "variant_of"})) for s in (base, a, b)]
        assert len(set(blobs)) == 3, base.id
        old_ids = set(re.findall(ID_RX[name], blobs[0]))
        for blob in blobs[1:]:  # no original id survives anywhere (user lines, database, goal, reference)
            assert not old_ids & set(re.findall(ID_RX[name], blob)), base.id
        names = {r.get("name") for t in base.database.values() for r in t.values() if isinstance(r, dict)}
        if base.user.name in names:  # the user is a record of the pack's people: renamed everywhere
            assert base.user.name not in blobs[1] and base.user.name not in blobs[2], base.id


def test_variants_are_deterministic_and_seeded():
    pack = load_pack("customer_service")
    base = pack.scenario("cs-return-start-016")
    assert expand_scenario(pack, base, 3) == expand_scenario(pack, base, 3)
    assert expand_scenario(pack, base, 1, seed=1) != expand_scenario(pack, base, 1, seed=0)


def test_a_variant_changes_everything_that_belongs_together():
    pack = load_pack("customer_service")
    base = pack.scenario("cs-refund-returned-018")
    [v] = expand_scenario(pack, base, 1)
    [order] = [k for k in v.database["orders"] if "air purifier" in v.database["orders"][k]["items"]]
    amount = v.database["orders"][order]["total"]
    assert amount != 74.99 and 20 <= amount <= 99 and round(amount % 1, 2) == 0.99  # same cents, in the range
    refund = next(s for s in v.reference if s.tool == "issue_refund")
    assert refund.args == {"order_id": order, "amount": amount, "reason": refund.args["reason"]}
    assert v.expected_changes[f"orders.{order}.refund_amount"] == amount
    assert f"${amount:.2f}" in v.required_facts[0].any_of
    assert v.user.name != base.user.name and v.database["customers"][v.user.customer_id]["name"] == v.user.name
    assert any(order in f.reply for f in v.user.facts)


def test_test_scenarios_and_packs_without_variants_are_refused(tmp_path):
    pack = load_pack("customer_service")
    with pytest.raises(PackError, match="is a test scenario; only train scenarios are varied"):
        expand_scenario(pack, pack.split("test")[0], 1)
    toy = load_pack(Path(__file__).parents[1] / "training" / "toy_pack")
    assert variant_counts(toy) == (0, 0)
    with pytest.raises(PackError, match="declares no variants; add a `variants:` section"):
        with_variants(toy, 2)


def _pack_copy(tmp_path: Path, edit) -> Path:
    dst = tmp_path / "cs"
    shutil.copytree(Path(load_pack("customer_service").path), dst)
    head = yaml.safe_load((dst / "pack.yaml").read_text())
    edit(head, dst)
    (dst / "pack.yaml").write_text(yaml.safe_dump(head, sort_keys=False))
    return dst


def test_a_users_pack_declares_its_own_variants(tmp_path):
    def edit(head, dst):
        head["variants"] = {"count": 5, "ids": [{"prefix": "ORD-", "digits": 4}]}
    pack = load_pack(_pack_copy(tmp_path, edit))
    assert variant_counts(pack) == (5, 5 * len(pack.split("train")))
    # a scenario whose `vary` names no pool (this declaration has none) but holds an ORD- id
    [v] = expand_scenario(pack, pack.scenario("cs-return-partial-021"), 1)
    assert v.user.name == pack.scenario("cs-return-partial-021").user.name  # no people declared: names stay


def test_bad_variant_declarations_fail_in_one_line(tmp_path):
    def edit(head, dst):
        head["variants"]["pools"] = {"apparel": [["only one"]]}
    with pytest.raises(PackError, match="pool 'apparel' has 1 value"):
        load_pack(_pack_copy(tmp_path / "a", edit))

    def edit_amount(head, dst):
        f = dst / "scenarios" / "orders.yaml"
        f.write_text(f.read_text().replace("- {value: 312.75, range: [120, 900]}", "- {value: 312.75, pool: gear}"))
    with pytest.raises(PackError, match=r"'cs-order-total-008', field 'vary.0'.*a `pool` entry varies text"):
        load_pack(_pack_copy(tmp_path / "b", edit_amount))

    def edit_pool(head, dst):
        f = dst / "scenarios" / "cancellations.yaml"
        f.write_text(f.read_text().replace("pool: gear}", "pool: nope}"))
    pack = load_pack(_pack_copy(tmp_path / "c", edit_pool))
    with pytest.raises(PackError, match=r"pool 'nope' is not declared in the pack's variants.pools"):
        expand_scenario(pack, pack.scenario("cs-cancel-pending-023"), 1)


def test_degenerate_policies_still_fail_on_variants():
    """The audit's eight policies (do nothing, recite every fact phrase, spam every tool, ...) on a sample of
    variants: none succeeds, and progress stays under the audit's bound."""
    from stateset_agents.envs.audit import PROGRESS_BOUND
    from stateset_agents.envs.audit_policies import POLICIES, train_fact_phrases

    pack = with_variants(load_pack("customer_service"), 1)
    variants = [s.id for s in pack.scenarios if s.variant_of is not None][::3]
    phrases = train_fact_phrases(pack)

    async def play():
        return {p: [await play_policy(pack, sid, p, 0, phrases) for sid in variants] for p in POLICIES}
    for policy, outcomes in asyncio.run(play()).items():
        assert not any(o["success"] for o in outcomes), policy
        assert sum(o["progress"] for o in outcomes) / len(outcomes) < PROGRESS_BOUND, policy


def test_a_run_trains_on_variants_and_evaluates_on_hand_written_scenarios():
    from stateset_agents.training import load_config
    from stateset_agents.training.build import config_env_factory
    from stateset_agents.training.scenarios import run_scenarios

    cfg = load_config({"algorithm": "sft", "train_variants": 2, "scenarios": ["cs-order-status-003"],
                       "eval_split": "train", "eval_scenarios": ["cs-order-total-008"]})
    _, train, evals = run_scenarios(config_env_factory(cfg), cfg)
    assert train == ["cs-order-status-003", "cs-order-status-003~v1", "cs-order-status-003~v2"]
    assert evals == ["cs-order-total-008"]
    whole = cfg.model_copy(update={"scenarios": None, "eval_scenarios": None})
    _, train, evals = run_scenarios(config_env_factory(whole), whole)
    assert len(train) == 3 * 63 and len(evals) == 63 and not any("~v" in e for e in evals)
