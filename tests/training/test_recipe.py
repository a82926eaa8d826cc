"""The recipe runner (training/recipe.py): stages in order, each from the last one's weights, one paired held-out
table at the end; finished stages are skipped on a rerun; unpaired stages are refused before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from stateset_agents.errors import ConfigError
from stateset_agents.training.recipe import load_recipe, run_recipe

TOY = str(Path(__file__).parent / "toy_pack")


def _recipe(tmp_path: Path, model: str, **common_overrides) -> Path:
    common = dict(model=model, env=TOY, reward="customer_service", use_lora=True, lora_r=4, lora_alpha=8,
                  lora_layers=1, max_new_tokens=12, max_turns=2, context_tokens=512, eval_k=2, eval_seeds=[0],
                  progress=False, save_every=0, seed=0, tool_prompt="compact")
    common.update(common_overrides)
    recipe = {"output_dir": str(tmp_path / "recipe"), "common": common, "stages": [
        {"name": "sft", "algorithm": "sft", "demonstrations": {"from": "reference", "seeds": 1}, "epochs": 1,
         "batch_size": 4, "micro_batch_size": 4, "learning_rate": 1e-3},
        {"name": "grpo", "algorithm": "grpo", "max_steps": 1, "group_size": 2, "scenarios_per_step": 1,
         "micro_batch_size": 4, "learning_rate": 1e-4}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def test_recipe_runs_stages_in_order_and_prints_the_paired_table(tiny_model_path, tmp_path):
    path = _recipe(tmp_path, str(tiny_model_path))
    _, stages = load_recipe(path)
    (_, sft), (_, grpo) = stages
    assert grpo.init_from == sft.output_dir and sft.eval_before and not grpo.eval_before and grpo.eval_after
    console = Console(record=True, width=200)
    numbers = run_recipe(path, console)
    text = console.export_text()
    assert [r["stage"] for r in numbers["rows"]] == ["untrained", "after sft", "after sft + grpo"]
    for row in numbers["rows"][1:]:
        assert set(row["per_seed"][0]) >= {"success_rate", "progress", "pass_hat_k", "delta_success",
                                           "delta_progress", "tool_call_validity"}
    saved = json.loads((tmp_path / "recipe" / "recipe.json").read_text())
    assert saved["rows"] == numbers["rows"] and (tmp_path / "recipe" / "recipe.png").stat().st_size > 1000
    assert "held-out evaluation" in text and "after sft + grpo" in text and "Δ success" in text
    # the untrained row is SFT's before-evaluation, the same seeds and scenarios as every later row
    before = json.loads((Path(sft.output_dir) / "eval" / "before-seed0.json").read_text())
    assert numbers["rows"][0]["per_seed"][0]["trials"] == len(before["results"]) * 2
    again = Console(record=True, width=200)
    run_recipe(path, again)  # finished stages are not run again; the table is rebuilt from their reports
    assert again.export_text().count("done already") == 2
    # a changed paired setting would pair the saved evaluations with new ones: refused, naming the fix
    data = yaml.safe_load(path.read_text())
    data["common"]["max_new_tokens"] = 16
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stage 'sft': .* was run with max_new_tokens=12, the recipe now says 16.*"
                                          r"delete"):
        run_recipe(path, Console(record=True, width=200))


def test_unpaired_or_malformed_recipes_are_refused(tiny_model_path, tmp_path):
    path = _recipe(tmp_path, str(tiny_model_path))
    data = yaml.safe_load(path.read_text())
    data["stages"][1]["eval_k"] = 4
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="stages differ in eval_k"):
        load_recipe(path)
    data["stages"][1].pop("eval_k")
    data["stages"][1]["name"] = "sft"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"stages\[1\] needs a unique `name`"):
        load_recipe(path)
    data["stages"][1].update(name="grpo", beta="high")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="stage 'grpo': .*beta"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")
