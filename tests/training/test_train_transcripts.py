"""A training run's own rollouts as transcripts (``RUN_DIR/train_transcripts.jsonl``): written every GRPO step with
the step number of ``metrics.jsonl``, loadable with ``datasets``, cut back on resume, shown by ``show --step``, off
with ``train_transcripts: false``; SFT's rejection-sampling episodes too (tiny model)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from stateset_agents.cli import main
from stateset_agents.errors import ConfigError
from stateset_agents.training.loop import RunLoop
from stateset_agents.training.rollout_log import TRAIN_TRANSCRIPTS
from stateset_agents.transcripts import read_transcripts

from .test_sft import make_sft
from .test_trainer import CharCount, make_trainer

SMALL = dict(scenarios_per_step=2, group_size=2, max_new_tokens=8, rollout_concurrency=4)
PER_STEP = 2 * 2


def test_grpo_writes_every_episode_with_its_step(tiny_model_path, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, **SMALL)
    trainer.train()
    path = tmp_path / "run" / TRAIN_TRANSCRIPTS
    recs = read_transcripts(path)
    assert [r.step for r in recs] == [1] * PER_STEP + [2] * PER_STEP  # as in metrics.jsonl
    metrics = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for step in (1, 2):
        mine = [r for r in recs if r.step == step]
        drawn = trainer.draw_scenarios(step - 1)
        assert Counter(r.scenario_id for r in mine) == Counter(s for s in drawn for _ in range(2))
        assert [r.trial for r in mine] == [0, 1] * 2
        rewards = [r.reward for r in mine]
        assert sum(rewards) / len(rewards) == pytest.approx(metrics[step - 1]["reward"])  # what the step trained on
    r = recs[0]
    assert r.tag == "train" and r.seed is not None and r.domain == "toy_pack"
    assert r.messages[0]["role"] == "system" and r.messages[1]["role"] == "user"
    assert any(m["role"] == "assistant" for m in r.messages) and r.outcome is not None
    assert r.reward_components.keys() >= {"char_count"}

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds.num_rows == 2 * PER_STEP and ds["step"] == [r.step for r in recs]
    assert ds[0]["messages"] == recs[0].messages and ds["scenario_id"] == [r.scenario_id for r in recs]


def test_resume_cuts_the_transcripts_back_to_the_checkpoint(tiny_model_path, tmp_path):
    kw = dict(max_steps=3, **SMALL)
    first = make_trainer(tiny_model_path, tmp_path, CharCount(), **kw)
    loop = RunLoop(first)
    asyncio.run(loop.one_step())
    loop.save_checkpoint()  # step-1
    asyncio.run(loop.one_step())  # step 2 is logged, then the run is killed before its checkpoint
    path = tmp_path / "run" / TRAIN_TRANSCRIPTS
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"version": 1, "tag": "train", "step": 2, "scen')  # torn by the kill
    assert Counter(r.step for r in read_transcripts(path)) == {1: PER_STEP, 2: PER_STEP}
    again = make_trainer(tiny_model_path, tmp_path, CharCount(), **kw)
    again.train(resume=True)
    recs = read_transcripts(path)
    assert [r.step for r in recs] == [1] * PER_STEP + [2] * PER_STEP + [3] * PER_STEP  # step 2 once, no torn line
    assert all(line.endswith("}") for line in path.read_text().splitlines())


def test_off_writes_nothing(tiny_model_path, tmp_path):
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=1, train_transcripts=False, **SMALL).train()
    assert not (tmp_path / "run" / TRAIN_TRANSCRIPTS).exists()
    assert (tmp_path / "run/metrics.jsonl").is_file()


def test_show_step(tiny_model_path, tmp_path, capsys):
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, **SMALL).train()
    path = str(tmp_path / "run" / TRAIN_TRANSCRIPTS)
    assert main(["show", path, "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("step 2 · ") == PER_STEP and "step 1 · " not in out
    assert f"{PER_STEP} of {PER_STEP} episodes shown" in out
    assert main(["show", path]) == 0
    assert f"{2 * PER_STEP} of {2 * PER_STEP} episodes shown" in capsys.readouterr().out
    assert main(["show", path, "--step", "7"]) == 2
    err = capsys.readouterr().out
    assert "--step 7 is not in" in err and "it has steps 1..2" in err and "Traceback" not in err


def test_sft_rejection_sampling_episodes_are_written_kept_or_not(tiny_model_path, tmp_path):
    trainer = make_sft(tiny_model_path, tmp_path, demonstrations={"from": "rollouts", "k": 2, "min_success": 1},
                       max_new_tokens=8)
    with pytest.raises(ConfigError, match="gave 0 successful demonstrations"):
        trainer.train()  # the untrained tiny model never succeeds: what it did is in the transcripts
    recs = read_transcripts(tmp_path / "sft" / TRAIN_TRANSCRIPTS)
    assert len(recs) == 2 * len(trainer.scenarios) and {r.step for r in recs} == {0}
    assert {r.scenario_id for r in recs} == set(trainer.scenarios) and not any(r.success for r in recs)
    assert all(r.tag == "train" and r.reward is None for r in recs)
