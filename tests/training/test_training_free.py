"""Training-Free GRPO: config, the loop driven by a scripted learner, retries and skips, consolidation, resume,
a learner over real HTTP, evaluation before/after, and the CLI's --experiences."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from stateset_agents.agents import MultiTurnAgent
from stateset_agents.agents.experience import ExperienceLibrary, Operation, Provenance
from stateset_agents.errors import ConfigError
from stateset_agents.models.openai import OpenAIChatModel
from stateset_agents.training import load_config
from stateset_agents.training.build import build_training_free, make_env_factory
from stateset_agents.training.semantic_advantage import extract_json, resolve_conflicts
from stateset_agents.training.training_free import (
    LearnerEndpoint,
    TrainingFreeConfig,
    TrainingFreeGRPO,
)

from ..models.loopback_server import LoopbackServer
from .tf_fakes import BagOfWords, ConstantGroupReward, RankReward, ScriptedLearner, answer

TOY = str(Path(__file__).parent / "toy_pack")


class Recording:
    """Wraps the agent's ChatModel and records every prompt it is sent."""

    def __init__(self, inner):
        self.inner, self.prompts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def chat(self, messages, **kw):
        self.prompts.append(messages)
        return await self.inner.chat(messages, **kw)


def make(tiny_model, tmp_path, learner, reward=None, **overrides) -> TrainingFreeGRPO:
    cfg = dict(model="unused", env=TOY, scenarios=["toy-000", "toy-001"], scenarios_per_step=2, group_size=2,
               epochs=3, max_new_tokens=8, eval_before=False, eval_after=False, progress=False,
               advantage_scale=0.1, learner_retries=1, output_dir=str(tmp_path / "run"), seed=0)
    cfg.update(overrides)
    agent = MultiTurnAgent(Recording(tiny_model), domain="customer_service")
    return TrainingFreeGRPO(agent, make_env_factory(TOY), reward or RankReward(), TrainingFreeConfig(**cfg),
                            learner=learner, embedder=BagOfWords())


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------- config
def test_config_from_yaml_dispatch_and_errors(tmp_path):
    f = tmp_path / "tf.yaml"
    f.write_text("algorithm: training_free\nlearner: {base_url: 'http://127.0.0.1:9/v1', model: big}\n"
                 "epochs: 3\nword_limit: 20\n")
    cfg = load_config(f, output_dir="x")
    assert isinstance(cfg, TrainingFreeConfig) and cfg.output_dir == "x" and cfg.epochs == 3
    assert cfg.learner == LearnerEndpoint(base_url="http://127.0.0.1:9/v1", model="big")
    f.write_text("algorithm: training_free\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"tf.yaml: unknown field 'learning_rate'"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"must start with http:// or https://"):
        load_config({"algorithm": "training_free", "learner": {"base_url": "localhost:8000", "model": "m"}})
    with pytest.raises(ConfigError, match="eval_seeds is empty"):
        load_config({"algorithm": "training_free", "eval_seeds": []})
    with pytest.raises(ConfigError, match="field 'group_size'"):
        load_config({"algorithm": "training_free", "group_size": 1})


def test_bad_scenarios_and_reward_are_named(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=r"scenarios \['nope'\] are not in split 'train' of pack 'toy_echo'"):
        make(tiny_model, tmp_path, ScriptedLearner(lambda s, m: "{}"), scenarios=["nope"])
    with pytest.raises(ConfigError, match="is not a RewardFunction"):
        make(tiny_model, tmp_path, ScriptedLearner(lambda s, m: "{}"), reward=object())


# ---------------------------------------------------------------- the loop with a scripted learner
def test_scripted_learner_drives_every_operation(tiny_model, tmp_path):
    trainer = None

    def respond(stage, messages):
        prompt, retry = messages[1].content, len(messages) > 2
        if stage == "summary":
            return answer({"summary": "The agent replied briefly."})
        step = trainer.step + 1
        if stage == "consolidate":
            if step == 1:
                return answer({"operations": [{"op": "ADD", "text": "Answer in full sentences.",
                                               "sources": ["P1", "P2"]}]})
            if step == 2:
                if not retry:
                    return answer({"operations": [{"op": "ADD", "text": "x", "sources": ["P7"]}]})
                return answer({"operations": [{"op": "MODIFY", "id": "E1", "text": "Answer in full, polite sentences.",
                                               "sources": ["P1"]},
                                              {"op": "ADD", "text": "Mention the order status.", "sources": ["P2"]}]})
            return answer({"operations": [{"op": "KEEP", "id": "E1", "sources": ["P1"]},
                                          {"op": "DELETE", "id": "E2", "sources": ["P2"]}]})
        a = "toy 0." in prompt
        if step == 1:
            if a:
                return answer({"advantage": "Longer replies won.",
                               "operations": [{"op": "ADD", "text": "Answer in full sentences."}]})
            if not retry:
                return "Sure! Here is my analysis."
            return answer({"advantage": "Longer replies won.",
                           "operations": [{"op": "ADD", "text": "answer in FULL sentences"}]})
        if step == 2:
            op = ({"op": "MODIFY", "id": "E1", "text": "Answer in full, polite sentences."} if a
                  else {"op": "ADD", "text": "Mention the order status."})
            return answer({"advantage": "Politeness.", "operations": [op]})
        if a:
            return answer({"advantage": "E1 helped, E2 did not.",
                           "operations": [{"op": "KEEP", "id": "E1"}, {"op": "DELETE", "id": "E2"}]})
        return "[]"  # never valid: the group is skipped

    learner = ScriptedLearner(respond)
    trainer = make(tiny_model, tmp_path, learner)
    summary = trainer.train()
    run = tmp_path / "run"
    L = trainer.library
    assert summary["steps"] == 3 and L.ids() == ["E1"]
    assert L.get("E1").text == "Answer in full, polite sentences."
    assert L.get("E1").confidence == pytest.approx(1 - 0.5 ** 4) and L.get("E1").confirmations == 4
    assert {p.scenario_id for p in L.get("E1").provenance} == {"toy-000", "toy-001"}
    assert [[o.op for o in r.ops] for r in L.history] == [["ADD"], ["MODIFY", "ADD"], ["KEEP", "DELETE"]]
    assert L.rollback(1).get("E1").text == "Answer in full sentences."
    assert L.rollback(2).ids() == ["E1", "E2"]

    m = rows(run / "metrics.jsonl")
    assert [r["step"] for r in m] == [1, 2, 3] and all(r["groups_kept"] == 2 for r in m)
    assert [(r["ops/ADD"], r["ops/MODIFY"], r["ops/KEEP"], r["ops/DELETE"]) for r in m] == [
        (1, 0, 0, 0), (1, 1, 0, 0), (0, 0, 1, 1)]
    assert [r["learner_errors"] for r in m] == [0, 0, 1] and [r["learner_retries"] for r in m] == [1, 1, 1]
    assert [r["library_size"] for r in m] == [1, 2, 1]
    assert m[0]["reward"] == pytest.approx(0.05) and m[0]["components/rank"] == pytest.approx(0.05)
    for key in ("reward_std", "success_rate", "time/rollout", "time/learner", "time/total", "learner_calls"):
        assert key in m[0]
    # a retry carries the parse error back to the learner
    retried = [msgs for stage, msgs in learner.calls if len(msgs) > 2]
    assert "That answer is not valid: the answer contains no JSON object" in retried[0][-1].content
    assert any("cites unknown proposals ['P7']" in msgs[-1].content for msgs in retried)
    # the skipped group is logged with its error, and nothing was made up for it
    log = rows(run / "learner.jsonl")
    skipped = [r for r in log if r.get("error")]
    assert len(skipped) == 1 and skipped[0]["step"] == 3 and skipped[0]["scenario_id"] == "toy-001"
    assert "no valid answer after 2 attempt(s)" in skipped[0]["error"] and skipped[0]["operations"] == []
    # the library was in the agent's prompts from step 2 on, and in the learner's view of the library
    prompts = [p[0].content for p in trainer.agent.model.prompts]
    assert sum("- [E1] Answer in full sentences." in p for p in prompts) > 0
    assert any("[E1] Answer in full sentences." in msgs[1].content for s, msgs in learner.calls if s == "group")
    # saved after every step; checkpoints hold the library
    assert ExperienceLibrary.load(run / "experiences.json").model_dump() == L.model_dump()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert ExperienceLibrary.load(run / "checkpoints" / "step-2" / "experiences.json").ids() == ["E1", "E2"]


def test_groups_with_equal_rewards_are_not_sent_to_the_learner(tiny_model, tmp_path):
    learner = ScriptedLearner(lambda s, m: pytest.fail("the learner must not be called"))
    trainer = make(tiny_model, tmp_path, learner, reward=ConstantGroupReward(), epochs=1)
    trainer.train()
    [m] = rows(tmp_path / "run" / "metrics.jsonl")
    assert m["groups"] == 2 and m["groups_kept"] == 0 and m["learner_calls"] == 0 and len(trainer.library) == 0


def test_a_reward_that_raises_is_counted_not_learned_from(tiny_model, tmp_path):
    class Down:
        name = "judge"

        async def score(self, group):
            raise RuntimeError("judge endpoint down")

    learner = ScriptedLearner(lambda s, m: pytest.fail("the learner must not be called"))
    make(tiny_model, tmp_path, learner, reward=Down(), epochs=1).train()
    [m] = rows(tmp_path / "run" / "metrics.jsonl")
    assert m["scored"] == 0 and m["groups_kept"] == 0 and m["failures/reward_error"] == 4


def test_embedding_consolidation_merges_near_duplicates_without_a_learner_call(tiny_model, tmp_path):
    def respond(stage, messages):
        text = "Answer in full sentences." if "toy 0." in messages[1].content else "answer in full SENTENCES"
        return answer({"advantage": "Longer replies won.", "operations": [{"op": "ADD", "text": text}]})

    learner = ScriptedLearner(respond)
    trainer = make(tiny_model, tmp_path, learner, consolidation="embedding", summarize=False, epochs=1)
    trainer.train()
    [m] = rows(tmp_path / "run" / "metrics.jsonl")
    assert [s for s, _ in learner.calls] == ["group", "group"] and m["learner_calls"] == 2
    assert trainer.library.ids() == ["E1"] and trainer.library.get("E1").confirmations == 2
    assert m["ops/ADD"] == 1 and m["conflicts_dropped"] == 1


def test_a_summary_that_never_validates_skips_its_group(tiny_model, tmp_path):
    def respond(stage, messages):
        if stage == "summary":
            return '{"summary": ""}' if "toy 0." in messages[1].content else answer({"summary": "fine"})
        return answer({"advantage": "a", "operations": [{"op": "ADD", "text": "Answer in full sentences."}]})

    learner = ScriptedLearner(respond)
    trainer = make(tiny_model, tmp_path, learner, consolidation="embedding", epochs=1)
    trainer.train()
    [m] = rows(tmp_path / "run" / "metrics.jsonl")
    assert m["groups_skipped"] == 1 and m["learner_errors"] == 1 and trainer.library.ids() == ["E1"]
    [err] = [r["error"] for r in rows(tmp_path / "run" / "learner.jsonl") if r.get("error")]
    assert err.startswith("summary of toy-000 T") and "field 'summary': String should have at least 1 character (got '')" in err


def state_learner():
    """Answers from what the prompt shows, so two runs in different processes answer alike."""

    def respond(stage, messages):
        prompt = messages[1].content
        if stage == "summary":
            return answer({"summary": "ok"})
        if stage == "group":
            op = {"op": "ADD", "text": "Answer in full sentences."} if "(none yet)" in prompt \
                else {"op": "KEEP", "id": "E1"}
            return answer({"advantage": "Longer replies won.", "operations": [op]})
        names = re.findall(r"\[(P\d+)\]", prompt)
        if "] ADD" in prompt:
            return answer({"operations": [{"op": "ADD", "text": "Answer in full sentences.", "sources": names}]})
        return answer({"operations": [{"op": "KEEP", "id": "E1", "sources": names}]})

    return ScriptedLearner(respond)


def test_resume_continues_from_the_last_checkpoint(tiny_model, tmp_path):
    full = make(tiny_model, tmp_path / "a", state_learner(), epochs=2)
    full.train()
    first = make(tiny_model, tmp_path / "b", state_learner(), epochs=2, max_steps=1)
    first.train()
    with open(tmp_path / "b" / "run" / "metrics.jsonl", "a") as f:  # a step that was never checkpointed
        f.write(json.dumps({"step": 2, "reward": 9.0}) + "\n")
    resumed = make(tiny_model, tmp_path / "b", state_learner(), epochs=2)
    assert resumed.train(resume=True)["steps"] == 2
    a, b = rows(tmp_path / "a" / "run" / "metrics.jsonl"), rows(tmp_path / "b" / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2]
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert [r["new_tokens"] for r in a] == [r["new_tokens"] for r in b]
    assert [e.model_dump() for e in full.library.experiences] == [e.model_dump() for e in resumed.library.experiences]
    assert resumed.library.get("E1").confirmations == 4
    with pytest.raises(ConfigError, match="--resume: no checkpoint in"):
        make(tiny_model, tmp_path / "c", state_learner()).train(resume=True)


# ---------------------------------------------------------------- a learner over real HTTP
def test_full_loop_with_the_learner_over_http_loopback(tiny_model, tmp_path):
    with LoopbackServer(state_learner()) as server:
        learner = OpenAIChatModel(server.base_url, "learner", api_key="k")
        trainer = make(tiny_model, tmp_path, learner, epochs=2)
        trainer.train()
    m = rows(tmp_path / "run" / "metrics.jsonl")
    assert len(server.requests) == sum(r["learner_calls"] for r in m) > 0
    assert server.requests[0]["auth"] == "Bearer k" and server.requests[0]["body"]["model"] == "learner"
    assert trainer.library.ids() == ["E1"] and [r["ops/KEEP"] for r in m] == [0, 1]


def test_tiny_model_as_learner_over_http_never_invents_an_experience(tiny_model, tmp_path):
    with LoopbackServer(tiny_model) as server:
        learner = OpenAIChatModel(server.base_url, "tiny")
        trainer = make(tiny_model, tmp_path, learner, epochs=1, summarize=False, learner_max_new_tokens=16)
        trainer.train()
    [m] = rows(tmp_path / "run" / "metrics.jsonl")
    assert m["groups_kept"] == 2 and m["groups_skipped"] == 2 and m["learner_errors"] == 2
    assert m["learner_calls"] == 4 == len(server.requests)  # each group: the first answer and one retry
    assert len(trainer.library) == 0 and m["ops/ADD"] == 0
    errors = [r["error"] for r in rows(tmp_path / "run" / "learner.jsonl") if r.get("error")]
    assert len(errors) == 2 and all("no valid answer after 2 attempt(s)" in e for e in errors)


# ---------------------------------------------------------------- from a config, with evaluation
def test_build_from_config_evaluates_before_and_after_with_seeds(tiny_model_path, tmp_path):
    preset = tmp_path / "toy_reward.yaml"
    preset.write_text("name: toy\ncomponents:\n  - {type: outcome, weight: 1.0}\n  - {type: repetition, weight: 0.1}\n")
    cfg = load_config({"algorithm": "training_free", "model": str(tiny_model_path), "env": TOY,
                       "reward": str(preset), "group_size": 2, "scenarios_per_step": 2, "max_steps": 1,
                       "max_new_tokens": 8, "eval_seeds": [0, 1], "progress": False, "summarize": False,
                       "learner_max_new_tokens": 16, "learner_retries": 0, "output_dir": str(tmp_path / "run")})
    trainer = build_training_free(cfg, embedder=BagOfWords())
    assert trainer.learner.model is trainer.agent.model  # learner: same
    summary = trainer.train()
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "experiences.json", "eval_before.json", "eval_after.json",
                 "eval/before-seed0.json", "eval/after-seed1.json", "checkpoints/step-1/trainer_state.json"):
        assert (run / name).is_file(), name
    before = json.loads((run / "eval_before.json").read_text())
    assert before["seeds"] == [0, 1] and [r["seed"] for r in before["per_seed"]] == [0, 1]
    assert before["scenarios"] == 2 and before["library_size"] == 0
    rates = [r["success_rate"] for r in before["per_seed"]]
    assert before["success_rate"]["mean"] == pytest.approx(sum(rates) / 2)
    assert summary["evals"]["after"]["step"] == 1
    with pytest.raises(ConfigError, match="is not a model folder"):
        build_training_free(cfg.model_copy(update={"learner": str(tmp_path)}))


# ---------------------------------------------------------------- pieces
def test_conflict_rules():
    def op(kind, target=None, a=1.0, sid="s"):
        return Operation(op=kind, id=target, text="t" if kind in ("ADD", "MODIFY") else None,
                         provenance=[Provenance(scenario_id=sid, step=1, advantage=a)])

    out, dropped = resolve_conflicts([op("MODIFY", "E1", 0.5), op("DELETE", "E1", 0.4, "x"),
                                      op("DELETE", "E1", 0.3, "y"), op("ADD")])
    assert [(o.op, o.id) for o in out] == [("DELETE", "E1"), ("ADD", None)] and dropped == 1
    out, dropped = resolve_conflicts([op("MODIFY", "E2", 0.5), op("DELETE", "E2", 0.5, "x"),
                                      op("KEEP", "E2", 0.2, "z"), op("MODIFY", "E2", 0.1, "w")])
    assert [(o.op, o.id) for o in out] == [("MODIFY", "E2")] and dropped == 2
    assert [p.scenario_id for p in out[0].provenance] == ["s", "z"]  # the KEEP's evidence folds in
    out, _ = resolve_conflicts([op("KEEP", "E3", 0.2), op("KEEP", "E3", 0.3, "q")])
    assert [(o.op, len(o.provenance)) for o in out] == [("KEEP", 2)]


def test_extract_json():
    assert extract_json('Here:\n```json\n{"a": [1, {"b": 2}]}\n```') == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json("[1, 2]")
    with pytest.raises(ValueError, match="not valid JSON"):
        extract_json("{'a': 1}")


# ---------------------------------------------------------------- deploy without training
async def test_play_chat_with_experiences(tmp_path):
    from stateset_agents import ConversationEnv
    from stateset_agents.chat import play_chat
    from stateset_agents.types import Completion

    class Echo:
        def __init__(self):
            self.prompts = []

        async def chat(self, messages, *, sampling, tools=None):
            self.prompts.append(messages)
            return Completion(text="Let me check that for you. [END]")

    lib = ExperienceLibrary().use_embedder(BagOfWords())
    lib.add("Ask for the order number first.", domain="customer_service", step=1)
    lib.commit(1)
    lib.save(tmp_path / "experiences.json")
    model = Echo()
    env = ConversationEnv("customer_service", scenario="cs-delayed-order-001", max_turns=2)
    await play_chat(env, model=model, console=Console(record=True), max_new_tokens=8,
                    experiences=ExperienceLibrary.load(tmp_path / "experiences.json"))
    assert "- [E1] Ask for the order number first." in model.prompts[0][0].content


def test_cli_chat_rejects_a_missing_library_before_loading_a_model(tmp_path, capsys):
    from stateset_agents.cli import main

    code = main(["chat", "--experiences", str(tmp_path / "missing.json"), "--model", "/nonexistent"])
    assert code == 2 and "no experience library at" in capsys.readouterr().out


async def test_a_small_local_learner_answers_in_valid_json_only_when_constrained(tiny_model):
    """The tiny model's free text is gibberish, so as a learner it never gives a usable answer; under the answer
    models' JSON schemas (the default) its summary parses on the first attempt and every comparison is valid JSON
    of the right shape."""
    from stateset_agents import SamplingParams
    from stateset_agents.training.semantic_advantage import (
        GroupAnswer,
        LearnerFailed,
        SemanticLearner,
        SummaryAnswer,
    )

    sampling = SamplingParams(temperature=1.0, max_new_tokens=160)
    learner = SemanticLearner(tiny_model, sampling=sampling, retries=0)
    summary = await learner.ask("summary", "Summarise the conversation.", learner._parse_summary, seed=3,
                                answer=SummaryAnswer)
    assert isinstance(summary, str) and summary
    # A comparison's shape is guaranteed too; what is left to fail is its meaning (checked by _parse_group, e.g.
    # MODIFY of an id that does not exist), which is fed back to the learner like any other problem.
    learner.sampling = sampling.model_copy(update={"max_new_tokens": 1500})
    for seed in range(3):
        try:
            group = await learner.ask("comparison", "Compare the attempts.", lambda t: learner._parse_group(t, []),
                                      seed=seed, answer=GroupAnswer)
            assert isinstance(group, GroupAnswer)
        except LearnerFailed as e:
            assert not [p for p in e.errors if "JSON" in p], e.errors
    free = SemanticLearner(tiny_model, sampling=sampling, retries=0, constrained=False)
    with pytest.raises(LearnerFailed):
        await free.ask("summary", "Summarise the conversation.", free._parse_summary, seed=3, answer=SummaryAnswer)


async def test_the_comparison_schema_admits_only_operations_the_library_accepts(tiny_model):
    """The comparison's constraint is narrowed to this library (empty: ADD only; else ids from the library) and to
    strings that fit a small budget, so the tiny model's answers are valid in meaning too, not only in shape."""
    from stateset_agents import SamplingParams
    from stateset_agents.training.semantic_advantage import GroupAnswer, SemanticLearner, group_schema

    learner = SemanticLearner(tiny_model, sampling=SamplingParams(temperature=1.0, max_new_tokens=400),
                              retries=0, max_ops=2, word_limit=24)
    for known in ([], ["E1", "E4"]):
        schema = group_schema(known, max_ops=2, word_limit=24)
        ops_allowed = {v["properties"]["op"]["const"] for v in schema["properties"]["operations"]["items"]["anyOf"]}
        assert ops_allowed == ({"ADD"} if not known else {"ADD", "MODIFY", "DELETE", "KEEP"})
        for seed in range(3):
            group = await learner.ask("comparison", "Compare the attempts.",
                                      lambda t, known=known: learner._parse_group(t, known), seed=seed,
                                      answer=GroupAnswer, schema=schema)
            assert isinstance(group, GroupAnswer) and len(group.operations) <= 2
            assert all(o.op == "ADD" for o in group.operations) or known
            assert all(o.id in known for o in group.operations if o.op != "ADD")
            assert all(3 <= len(o.text.split()) <= 24 and o.text[0].isalpha() for o in group.operations if o.text)
