"""The correctness findings of issue 14, one section each; every test here failed on the code before its fix."""

from __future__ import annotations

import json

import pytest

from stateset_agents.errors import TrainingError
from tests.training.test_trainer import CharCount, make_trainer


# ---------------------------------------------------------------- 9: a torn last line in metrics.jsonl
def test_metrics_reader_skips_only_a_torn_last_line(tmp_path):
    from stateset_agents.training.metrics_io import keep_rows_through_step, read_rows

    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "rew')
    assert read_rows(f) == [{"step": 1}, {"step": 2}]
    keep_rows_through_step(f, 1)
    assert f.read_text() == '{"step": 1}\n'
    f.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(TrainingError, match=r"metrics.jsonl: line 2 is not JSON .* not the last line"):
        read_rows(f)
    assert read_rows(tmp_path / "missing.jsonl") == []


def test_grpo_resumes_after_a_torn_metrics_line(tiny_model_path, tmp_path):
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=2, save_every=1).train()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 3, "reward": 0.')  # killed mid-write
    make_trainer(tiny_model_path, tmp_path, CharCount(), max_steps=3, save_every=1).train(resume=True)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
