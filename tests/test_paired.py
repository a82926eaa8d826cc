"""Paired comparisons (stateset_agents.paired) and the stages table of evaluation.compare with three reports."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from stateset_agents.errors import ConfigError
from stateset_agents.evaluation import EvalReport, ScenarioResult, TrialResult, compare
from stateset_agents.paired import paired_difference, stage_summary, tool_validity


def _report(rows: list[list[tuple[bool, float, int, int]]], seed: int = 0) -> EvalReport:
    """One scenario per row; each trial (success, progress, tool calls, tool errors)."""
    results = [ScenarioResult(index=i, domain="cs", scenario_id=f"s{i}", trials=[
        TrialResult(seed=j, success=s, progress=p, outcome_score=p, tool_calls=c, tool_errors=e)
        for j, (s, p, c, e) in enumerate(row)]) for i, row in enumerate(rows)]
    return EvalReport(k=len(rows[0]), seed=seed, domains=["cs"], total_scenarios=len(rows), results=results)


BEFORE = _report([[(False, 0.0, 0, 0), (False, 0.0, 0, 0)]] * 4)
SFT = _report([[(True, 1.0, 2, 0), (False, 0.5, 2, 1)], [(False, 0.0, 1, 1), (False, 0.0, 0, 0)],
               [(True, 1.0, 3, 0), (True, 1.0, 2, 0)], [(False, 0.2, 1, 0), (False, 0.0, 0, 0)]])
GRPO = _report([[(True, 1.0, 2, 0), (True, 1.0, 2, 0)], [(True, 1.0, 2, 0), (False, 0.5, 1, 0)],
                [(True, 1.0, 2, 0), (True, 1.0, 2, 0)], [(False, 0.2, 1, 0), (False, 0.0, 0, 0)]])


def test_paired_difference_is_per_scenario_mean_and_standard_error():
    d, se, n = paired_difference(BEFORE, SFT, "success")
    per = [0.5, 0.0, 1.0, 0.0]  # per-scenario success after minus before
    mean = sum(per) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in per) / 3)
    assert (n, d) == (4, pytest.approx(mean)) and se == pytest.approx(sd / 2)
    d, se, _ = paired_difference(SFT, GRPO, "progress")
    assert d == pytest.approx(((1.0 - 0.75) + (0.75 - 0.0) + 0 + 0) / 4)
    assert paired_difference(SFT, SFT) == (0.0, 0.0, 4)


def test_tool_validity_and_stage_summary():
    valid, with_calls = tool_validity(SFT)
    assert valid == pytest.approx((11 - 2) / 11) and with_calls == pytest.approx(6 / 8)
    assert tool_validity(BEFORE) == (None, 0.0)
    s = stage_summary(GRPO)
    assert (s["successes"], s["trials"], s["pass_hat_k"]["2"]) == (5, 8, pytest.approx(0.5))


def test_compare_with_three_reports_prints_the_stages_table():
    console = Console(record=True, width=200)
    console.print(compare(BEFORE, SFT, GRPO, labels=["untrained", "after SFT", "after SFT + GRPO"]))
    text = console.export_text()
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 5}
    assert "37.5% (3/8)" in rows["after SFT"] and "+37.5 ± 23.9" in rows["after SFT"]
    assert "62.5% (5/8)" in rows["after SFT + GRPO"] and "+25.0 ± 14.4" in rows["after SFT + GRPO"]
    assert "same seeds: paired" in text


def test_paired_comparisons_refuse_mismatched_evaluations():
    with pytest.raises(ConfigError, match="same scenarios with the same k"):
        paired_difference(BEFORE, _report([[(False, 0.0, 0, 0)]] * 4))
    with pytest.raises(ConfigError, match="metric 'reward' is not one of"):
        paired_difference(BEFORE, SFT, "reward")
    with pytest.raises(ConfigError, match="2 labels for 3 evaluations"):
        compare(BEFORE, SFT, GRPO, labels=["a", "b"])
