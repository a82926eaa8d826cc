"""Transcripts: every evaluation episode as a JSONL record (messages, tool calls and results, outcome, reward
components, seed), written next to the report, loadable with `datasets`, printed by `stateset-agents show`."""

import json
import os

import pytest
from rich.console import Console

from stateset_agents import Completion, ConversationEnv, MultiTurnAgent, Trajectory, TrajectoryGroup
from stateset_agents.cli import main
from stateset_agents.envs import load_pack
from stateset_agents.envs.reference import reference_actions
from stateset_agents.errors import ConfigError
from stateset_agents.evaluation import EvalReport, aevaluate
from stateset_agents.rewards import EfficiencyReward, OutcomeReward, WeightedSum
from stateset_agents.rollout import episode_seed
from stateset_agents.transcripts import (
    append_transcripts,
    read_transcripts,
    transcripts_path,
    write_transcripts,
)
from stateset_agents.transcripts_show import render, render_diff

CS = load_pack("customer_service")
SOLVED, QUIT = "cs-refund-damaged-002", "cs-ship-eta-009"


class Solver:
    """Plays the reference solution of the scenarios in ``solve`` and says goodbye in the others."""

    name = "solver"

    def __init__(self, solve):
        self.solve = set(solve)

    async def chat(self, messages, *, sampling, tools=None):
        first = next(m.content for m in messages if m.role == "user")
        [s] = [s for s in CS.scenarios if first in s.user.opening]
        turn = sum(m.role == "assistant" for m in messages)
        acts = reference_actions(s)
        if s.id in self.solve and turn < len(acts):
            return Completion(text=acts[turn])
        return Completion(text="Is there anything else I can help with? [END]")


def _factory():
    return ConversationEnv(CS, split="all")


async def _report(solve=(SOLVED,), k=2, seed=3):
    reward = WeightedSum([(OutcomeReward(), 1.0), (EfficiencyReward(), 0.1)])
    return await aevaluate(MultiTurnAgent(Solver(solve)), _factory, [SOLVED, QUIT], k=k, reward=reward, seed=seed,
                           progress=False)


async def test_report_keeps_every_episode_and_save_writes_them_next_to_the_json(tmp_path):
    report = await _report()
    assert len(report.transcripts) == 4
    path = report.save(tmp_path / "eval_after.json")
    side = transcripts_path(path)
    assert side == tmp_path / "eval_after.transcripts.jsonl"
    assert "transcripts" not in json.loads(path.read_text())  # the report JSON stays scores only
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in (path, side)} == {0o666 & ~umask}  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_after.json", "eval_after.transcripts.jsonl"]
    recs = read_transcripts(side)
    assert [(r.scenario_id, r.trial) for r in recs] == [(SOLVED, 0), (SOLVED, 1), (QUIT, 0), (QUIT, 1)]
    assert [r.seed for r in recs] == [episode_seed(3, s, i) for s in (SOLVED, QUIT) for i in range(2)]
    trials = [t for s in report.results for t in s.trials]
    assert [r.success for r in recs] == [t.success for t in trials] == [True, True, False, False]
    assert [r.reward for r in recs] == [t.reward for t in trials]
    assert [r.reward_components for r in recs] == [t.components for t in trials]
    assert recs[0].domain == "customer_service" and recs[0].score == 1.0 and recs[0].outcome["success"]
    # the conversation itself, in OpenAI format: system prompt, user, assistant tool call, tool result
    roles = [m["role"] for m in recs[0].messages]
    assert roles[0] == "system" and "tool" in roles and roles.count("assistant") == recs[0].turns
    call = next(m for m in recs[0].messages if m["tool_calls"])["tool_calls"][0]
    assert call["type"] == "function" and isinstance(json.loads(call["function"]["arguments"]), dict)
    result = next(m for m in recs[0].messages if m["role"] == "tool")
    assert result["tool_call_id"] == call["id"] and result["name"] == call["function"]["name"]
    # facts_told (keys differ per scenario) is a list, so every record has the same schema
    assert all(isinstance(r.outcome["facts_told"], list) for r in recs)


async def test_transcripts_load_with_datasets_as_one_table(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a local JSON file needs no hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    report = await _report(k=3)
    report.save(tmp_path / "eval.json")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "eval.transcripts.jsonl"), split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 6
    assert ds["scenario_id"] == [SOLVED] * 3 + [QUIT] * 3 and ds["success"] == [True] * 3 + [False] * 3
    row = ds[0]
    assert row["messages"][0]["role"] == "system" and row["reward_components"].keys() >= {"outcome", "efficiency"}
    recs = read_transcripts(tmp_path / "eval.transcripts.jsonl")
    assert row["outcome"]["facts_told"] == recs[0].outcome["facts_told"] and row["outcome"]["facts_told"]
    assert row["messages"] == recs[0].messages


async def test_merged_shards_keep_transcripts_in_evaluation_order():
    shards = [await aevaluate(MultiTurnAgent(Solver([SOLVED])), _factory, [SOLVED, QUIT], k=2, seed=3, rank=r,
                              world_size=2, progress=False) for r in (0, 1)]
    merged = EvalReport.merge(shards[::-1])
    single = await _report()
    assert [(t.scenario_id, t.trial, t.seed, t.success) for t in merged.transcripts] == \
        [(t.scenario_id, t.trial, t.seed, t.success) for t in single.transcripts]


async def test_component_names_unified_within_a_file_and_append_adds_lines(tmp_path):
    report = await _report()
    a, b = report.transcripts[0], report.transcripts[2]
    b = b.model_copy(update={"reward_components": {"judge": 0.5}})
    path = write_transcripts(tmp_path / "t.jsonl", [a, b])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["reward_components"].keys() == rows[1]["reward_components"].keys()
    assert rows[1]["reward_components"]["outcome"] is None and rows[0]["reward_components"]["judge"] is None
    groups = [TrajectoryGroup(scenario_id="s", trajectories=[Trajectory(scenario_id="s", seed=1, reward=0.5,
                                                                         components={"outcome": 0.0})])]
    append_transcripts(path, groups, tag="train", step=3)  # what a trainer does after scoring a step
    last = read_transcripts(path)[-1]
    assert (last.step, last.tag, last.trial, last.reward, last.success) == (3, "train", 0, 0.5, False)
    assert last.error == "the episode ended without an outcome"
    with open(path, "a") as f:
        f.write('{"version": 1, "scenario_id": "x", "mess')  # a kill mid-write
    assert len(read_transcripts(path)) == 3


@pytest.mark.parametrize(("text", "message"), [
    ("", "t.jsonl: no transcript records; it is empty"),
    ('{"scenario_id": "x"}\n{"a": 1}\n', "t.jsonl:1: not a transcript record (messages: Field required)"),
])
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    (tmp_path / "t.jsonl").write_text(text)
    with pytest.raises(ConfigError) as e:
        read_transcripts(tmp_path / "t.jsonl")
    assert str(e.value).startswith(str(tmp_path / message))
    with pytest.raises(ConfigError, match="cannot read transcripts"):
        read_transcripts(tmp_path / "missing.jsonl")


async def test_render_filters_and_diff_pairs_by_seed(tmp_path):
    before = (await _report(solve=())).transcripts
    after = (await _report()).transcripts
    console = Console(record=True, width=160)
    render(console, before, failed=True)
    text = console.export_text()
    assert "4 of 4 episodes shown; 0/4 succeeded" in text and "PASS" not in text
    assert "Is there anything else I can help with?" in text
    console = Console(record=True, width=160)
    render(console, after, scenario=SOLVED)
    text = console.export_text()
    assert "2 of 4 episodes shown; 2/4 succeeded" in text and QUIT not in text and "FAIL" not in text
    assert "→ " in text and "tool · " in text  # the tool call and its result
    console = Console(record=True, width=200)
    render_diff(console, before, after)
    text = console.export_text()
    assert "FAIL → PASS" in text and "before" in text and "after" in text
    assert "4 pairs shown; FAIL → PASS 2, PASS → FAIL 0, unchanged 2" in text
    with pytest.raises(ConfigError, match="cs-refund-damaged-00"):
        render(console, after, scenario="cs-refund-damaged-00")


async def test_cli_eval_and_show(tmp_path, capsys):
    report = await _report()
    report.save(tmp_path / "eval_after.json")
    (await _report(solve=())).save(tmp_path / "eval_before.json")
    assert main(["show", str(tmp_path / "eval_after.transcripts.jsonl"), "--failed"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" in out and "PASS" not in out
    assert main(["show", str(tmp_path / "eval_before.transcripts.jsonl"), "--diff",
                 str(tmp_path / "eval_after.transcripts.jsonl"), "--scenario", SOLVED]) == 0
    out = capsys.readouterr().out
    assert "FAIL → PASS" in out
    assert main(["show", str(tmp_path / "nope.jsonl")]) == 2
    assert "cannot read transcripts" in capsys.readouterr().out
