"""ExperienceLibrary: operations, confidence, eviction, history and rollback, prompt retrieval, atomic storage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.agents.experience import ExperienceLibrary, Operation, Provenance, confirm
from stateset_agents.errors import ConfigError
from stateset_agents.types import Completion, Message

from .tf_fakes import BagOfWords


def lib(**kw) -> ExperienceLibrary:
    return ExperienceLibrary(**kw).use_embedder(BagOfWords())


def prov(sid: str, step: int, a: float) -> Provenance:
    return Provenance(scenario_id=sid, step=step, advantage=a)


# ---------------------------------------------------------------- operations and confidence
def test_add_merge_modify_keep_delete_with_confidence_and_provenance():
    L = lib()
    [op] = L.add("Ask for the order number first.", domain="customer_service", provenance=[prov("a", 1, 1.0)],
                 step=1)
    assert op.op == "ADD" and op.id == "E1"
    e1 = L.get("E1")
    assert e1.confidence == pytest.approx(0.5) and e1.confirmations == 1 and e1.created_step == 1
    # the same words: a near-duplicate (similarity 1.0 >= 0.9) merges into E1
    [m] = L.add("ask for the ORDER number first", domain="customer_service", provenance=[prov("b", 1, 0.4)], step=1)
    assert m.op == "MERGE" and m.id == "E1" and len(L) == 1
    assert L.get("E1").confidence == pytest.approx(1 - 0.5 * (1 - 0.2)) and L.get("E1").confirmations == 2
    assert [p.scenario_id for p in L.get("E1").provenance] == ["a", "b"]
    # another domain never merges into it
    L.add("Ask for the order number first.", domain="sales", step=1)
    assert L.ids() == ["E1", "E2"] and L.get("E2").domain == "sales"
    L.commit(1)
    mod = L.modify("E1", "Ask for the order number and email first.", provenance=[prov("c", 2, 1.0)], step=2)
    assert mod.before.text == "Ask for the order number first." and L.get("E1").text.endswith("email first.")
    assert L.get("E1").confidence == pytest.approx(confirm(0.6, 1.0)) and L.get("E1").updated_step == 2
    keep = L.keep("E2", provenance=[prov("d", 2, 0.5)], step=2)
    assert keep.after.confidence == pytest.approx(confirm(0.5, 0.5)) == pytest.approx(0.625)
    L.delete("E2", step=2, reason="misleading")
    L.commit(2)
    assert L.ids() == ["E1"] and L.next_id == 3
    assert [[o.op for o in r.ops] for r in L.history] == [["ADD", "MERGE", "ADD"], ["MODIFY", "KEEP", "DELETE"]]
    assert [r.size for r in L.history] == [2, 1]


def test_confidence_formula():
    c = 0.0
    for _ in range(3):
        c = confirm(c, 1.0)
    assert c == pytest.approx(0.875)
    assert confirm(0.0, 0.2) == pytest.approx(0.1) and confirm(0.3, 0.0) == pytest.approx(0.3)


def test_apply_operations_and_errors_name_the_problem():
    L = lib(word_limit=6)
    L.apply([Operation(op="ADD", text="Check the order status.", domain="cs", provenance=[prov("s", 1, 1.0)])],
            step=1)
    with pytest.raises(ConfigError, match=r"has 7 words, more than word_limit=6; shorten it or raise word_limit"):
        L.add("one two three four five six seven", step=1)
    with pytest.raises(ConfigError, match="cannot be empty"):
        L.add("   ", step=1)
    with pytest.raises(ConfigError, match=r"no experience with id 'E9' in the library; known ids: E1"):
        L.apply([Operation(op="MODIFY", id="E9", text="x")], step=1)
    with pytest.raises(ConfigError, match="a KEEP operation needs the id"):
        L.apply([Operation(op="KEEP")], step=1)
    L.commit(2)
    with pytest.raises(ConfigError, match="step 1 is before the library's last recorded step 2"):
        L.add("late", step=1)


def test_eviction_lowest_confidence_then_least_recent_exempting_this_step():
    L = lib(max_size=3)
    L.add("alpha lesson", provenance=[prov("s", 1, 0.2)], step=1)   # c=0.1
    L.add("beta lesson", provenance=[prov("s", 1, 1.0)], step=1)    # c=0.5
    L.add("gamma lesson", provenance=[prov("s", 1, 0.2)], step=1)   # c=0.1
    L.commit(1)
    L.keep("E3", provenance=[prov("s", 2, 0.0)], step=2)            # E3: same confidence, updated at step 2
    L.commit(2)
    ops = L.add("delta lesson", provenance=[prov("s", 3, 0.1)], step=3)  # c=0.05, lowest, but fresh: exempt
    assert [o.op for o in ops] == ["ADD", "EVICT"] and ops[1].id == "E1"  # tie with E3 -> least recently updated
    assert L.ids() == ["E2", "E3", "E4"] and "lowest confidence 0.100" in ops[1].reason
    # everything fresh in this step: the lowest-confidence one goes, even the new one
    L2 = lib(max_size=1)
    L2.add("strong lesson", provenance=[prov("s", 1, 1.0)], step=1)
    ops = L2.add("weak lesson", provenance=[prov("s", 1, 0.1)], step=1)
    assert ops[-1].op == "EVICT" and ops[-1].id == "E2" and L2.ids() == ["E1"]


# ---------------------------------------------------------------- history
def test_rollback_to_every_step_replays_the_history():
    L = lib(max_size=3)
    snapshots = {0: []}
    script = [
        lambda s: L.add("greet the customer warmly", step=s),
        lambda s: (L.add("check the order status", step=s), L.add("offer a refund when late", step=s)),
        lambda s: (L.modify("E1", "greet the customer by name", step=s), L.delete("E2", step=s)),
        lambda s: (L.add("escalate angry customers", step=s), L.add("confirm the email address", step=s)),
        lambda s: None,
    ]
    for step, do in enumerate(script, start=1):
        do(step)
        L.commit(step)
        snapshots[step] = [e.model_dump() for e in L.experiences]
    assert [o.op for o in L.history[3].ops] == ["ADD", "ADD", "EVICT"]
    for step, snap in snapshots.items():
        back = L.rollback(step)
        assert [e.model_dump() for e in back.experiences] == snap
        assert back.step == step and all(r.step <= step for r in back.history)
    back = L.rollback(2)
    ops = back.add("a brand new lesson", step=3)
    assert ops[0].id == "E4"  # the next id after those seen up to step 2
    with pytest.raises(ConfigError, match="cannot roll back to step 9"):
        L.rollback(9)


def test_report():
    L = lib()
    L.add("check the order status", domain="cs", provenance=[prov("s", 1, 1.0)], step=1)
    L.add("check the order status", domain="cs", provenance=[prov("t", 1, 1.0)], step=1)
    L.add("offer a demo", domain="sales", provenance=[prov("s", 1, 1.0)], step=1)
    L.commit(1)
    L.commit(2)
    r = L.report()
    assert r.size == 2 and r.domains == {"cs": 1, "sales": 1}
    assert r.mean_confidence == pytest.approx((0.75 + 0.5) / 2)
    assert r.dedup_ratio == pytest.approx(1 / 3)
    assert r.ops_per_step[0]["ADD"] == 2 and r.ops_per_step[0]["MERGE"] == 1 and r.ops_per_step[1]["step"] == 2
    assert r.ops_total["ADD"] == 2 and r.steps == 2


# ---------------------------------------------------------------- prompt
def test_to_prompt_all_when_small_topk_by_similarity_when_large_and_domain_filter():
    L = lib(prompt_top_k=2)
    assert L.to_prompt([Message(role="user", content="hi")]) == ""
    L.add("refund the customer when the parcel is lost", domain="cs", provenance=[prov("s", 1, 0.4)], step=1)
    L.add("offer a demo to interested buyers", domain="sales", provenance=[prov("s", 1, 1.0)], step=1)
    assert L.to_prompt() == ("Lessons learned from earlier conversations (follow them when they apply):\n"
                             "- [E2] offer a demo to interested buyers\n"
                             "- [E1] refund the customer when the parcel is lost")
    L.add("restart the router before escalating", domain="general", provenance=[prov("s", 1, 0.2)], step=1)
    L.add("apologise for the delay of the parcel", domain="cs", provenance=[prov("s", 1, 0.2)], step=1)
    conv = [Message(role="system", content="rules"), Message(role="user", content="my parcel is lost, refund me")]
    shown = L.select(conv)
    assert {e.id for e in shown} == {"E1", "E4"}  # the two about the parcel
    assert [e.id for e in L.select(conv, domain="sales")] == ["E2", "E3"]  # sales + general only
    assert [e.id for e in L.select(None)] == ["E2", "E1"]  # no conversation yet: the most confident
    assert "[E4]" in L.to_prompt(conv) and "[E2]" not in L.to_prompt(conv)


def test_multiturn_agent_injects_the_library():
    class Echo:
        def __init__(self):
            self.prompts = []

        async def chat(self, messages, *, sampling, tools=None):
            self.prompts.append(messages)
            return Completion(text="ok")

    L = lib()
    L.add("Ask for the order number first.", domain="customer_service", step=1)
    L.add("Offer a demo.", domain="sales", step=1)
    model = Echo()
    agent = MultiTurnAgent(model, domain="customer_service", experiences=L)
    conv = [Message(role="system", content="ENV RULES"), Message(role="user", content="where is my order?")]
    system = agent.build_prompt(conv, None)[0].content
    assert system.index("ENV RULES") < system.index("- [E1] Ask for the order number first.")
    assert "Offer a demo." not in system
    assert "Lessons learned" not in MultiTurnAgent(model, domain="customer_service").build_prompt(conv)[0].content
    with pytest.raises(ConfigError, match="experiences must be an ExperienceLibrary"):
        MultiTurnAgent(model, experiences="lib.json")


# ---------------------------------------------------------------- storage
def test_save_load_local_and_memory_url(tmp_path):
    L = lib()
    L.add("check the order status", domain="cs", provenance=[prov("s", 1, 1.0)], step=1)
    L.commit(1)
    path = tmp_path / "sub" / "experiences.json"
    L.save(path)
    back = ExperienceLibrary.load(path)
    assert back.model_dump() == L.model_dump() and not list(path.parent.glob(".*tmp"))
    L.save("memory://tf/experiences.json")
    assert ExperienceLibrary.load("memory://tf/experiences.json").model_dump() == L.model_dump()
    import fsspec

    assert fsspec.filesystem("memory").ls("/tf", detail=False) == ["/tf/experiences.json"]


def test_load_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"no experience library at .*nope.json'; pass the experiences.json"):
        ExperienceLibrary.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        ExperienceLibrary.load(bad)
    bad.write_text(json.dumps({"step": 1}))
    with pytest.raises(ConfigError, match="is not an experience library"):
        ExperienceLibrary.load(bad)
    bad.write_text(json.dumps({"format": "stateset_agents.experience_library", "max_size": 0}))
    with pytest.raises(ConfigError, match="invalid experience library: field 'max_size': Input should be greater than or equal to 1 \\(got 0\\)"):
        ExperienceLibrary.load(bad)


def test_crash_during_save_leaves_the_previous_library(tmp_path, monkeypatch):
    path = tmp_path / "experiences.json"
    L = lib()
    L.add("first lesson", step=1)
    L.commit(1)
    L.save(path)
    before = path.read_text()
    L.add("second lesson", step=2)
    L.commit(2)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        L.save(path)
    assert path.read_text() == before and ExperienceLibrary.load(path).ids() == ["E1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiences.json"]


_WRITER = """
import sys
from stateset_agents.agents.experience import ExperienceLibrary
lib = ExperienceLibrary(max_size=5000, word_limit=40)
lib.experiences = []
big = ExperienceLibrary.model_validate({"max_size": 5000, "experiences": [
    {"id": f"E{i}", "text": "lesson " + "word " * 30, "domain": "cs", "confidence": 0.5, "confirmations": 1}
    for i in range(1, 4001)]})
small = ExperienceLibrary()
print("ready", flush=True)
i = 0
while True:
    (big if i % 2 else small).save(sys.argv[1])
    i += 1
"""


def test_killed_while_saving_leaves_a_whole_library(tmp_path):
    path = tmp_path / "experiences.json"
    ExperienceLibrary().save(path)
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        for delay in (0.05, 0.13, 0.21):
            time.sleep(delay)
            lib_now = ExperienceLibrary.load(path)  # never a torn file while it is being rewritten
            assert len(lib_now) in (0, 4000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert len(ExperienceLibrary.load(path)) in (0, 4000)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "experiences.json"]
    assert all(p.name.startswith(".experiences.json.") for p in leftovers)  # at most the killed write's temp file


# ---------------------------------------------------------------- the real embedding model
def test_real_minilm_merges_paraphrases_and_retrieves_by_meaning():
    from stateset_agents.rewards.embeddings import default_embedder

    L = ExperienceLibrary(prompt_top_k=2, dedup_threshold=0.8).use_embedder(default_embedder())
    L.add("Ask the customer for the order number before looking up the order.", domain="cs", step=1)
    [op] = L.add("Before looking up the order, ask the customer for their order number.", domain="cs", step=1)
    assert op.op == "MERGE" and op.id == "E1"
    for text in ("Offer a refund to the original payment method when a parcel is lost.",
                 "Restart the router and check the outage map before escalating.",
                 "Recommend the smallest plan that fits the team's size and budget.",
                 "Keep replies under three sentences."):
        assert L.add(text, domain="cs", step=1)[0].op == "ADD"
    conv = [Message(role="user", content="My package never arrived and I want my money back.")]
    assert "E2" in [e.id for e in L.select(conv)]
