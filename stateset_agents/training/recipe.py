"""A recipe: training stages run one after another (SFT, then optionally RFT, then GRPO), each starting from the
previous one's weights, and one held-out table at the end (``stateset-agents recipe CONFIG``; ``make demo``).

The YAML::

    output_dir: runs/recipe
    common: {env: customer_service, tool_prompt: compact, eval_seeds: [0], eval_k: 4, ...}   # every stage's fields
    stages:
      - {name: sft, algorithm: sft, demonstrations: {from: reference}, epochs: 1, ...}
      - {name: grpo, algorithm: grpo, max_steps: 4, ...}

Each stage is an ordinary run config (``common`` under the stage's own fields), written to
``output_dir/<name>``; a later stage's ``init_from`` defaults to the stage before it. The first stage evaluates
before training (the untrained row) and every stage after, on the same scenarios with the same seeds, k,
temperature and turn budget (checked before anything runs), so the episodes are paired and
``evaluation.compare`` gives each row's difference against the row above with its standard error. The end writes
``recipe.json`` (every row's numbers and paired differences) and ``recipe.png`` (held-out success and progress
per stage, and the reward components over the GRPO steps).

Resumable: a stage that finished (its ``eval_after.json`` exists) is not run again; one that stopped part-way
resumes from its last checkpoint.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .config import load_config

__all__ = ["RecipeConfig", "load_recipe", "recipe_table", "run_recipe"]

#: fields every stage must share, or the held-out rows would not be paired
PAIRED = ("env", "eval_split", "eval_scenarios", "eval_seeds", "eval_k", "eval_temperature", "max_turns",
          "max_new_tokens", "tool_prompt", "context_tokens", "reward", "model", "rollout_precision",
          "eval_tool_grammar", "eval_grounded_args")


class RecipeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output_dir: str = "runs/recipe"
    common: dict[str, Any] = Field(default_factory=dict)
    """Fields of every stage (a stage's own fields win)."""
    stages: list[dict[str, Any]] = Field(min_length=1)
    """Run configs, each with a ``name`` (its folder under ``output_dir``)."""


def _check_saved_settings(name: str, config: Any, run_dir: Path) -> None:
    """Refuse a stage folder from an earlier run whose paired settings differ from the recipe's: its saved
    evaluations (reused in the table, or the untrained row of a resumed first stage) were made with those."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_config(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    for field in PAIRED:
        was, now = getattr(saved, field), getattr(config, field)
        if was != now:
            raise ConfigError(f"stage {name!r}: {run_dir} was run with {field}={was!r}, the recipe now says {now!r}, "
                              f"so its evaluations would not pair with the others; delete {run_dir} (or the "
                              "recipe's output_dir) to run it again")


def load_recipe(path: str | Path) -> tuple[RecipeConfig, list[Any]]:
    """The recipe and its stages' run configs (validated, checked to be paired)."""
    from .run_config import format_validation_error

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read recipe {str(path)!r}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        recipe = RecipeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from e
    configs, names = [], []
    for i, raw in enumerate(recipe.stages):
        stage = {**recipe.common, **raw}
        name = stage.pop("name", None)
        if not isinstance(name, str) or not name.isidentifier() or name in names:
            raise ConfigError(f"{path}: stages[{i}] needs a unique `name` that is an identifier (got {name!r})")
        stage.setdefault("output_dir", str(Path(recipe.output_dir) / name))
        if i:
            stage.setdefault("init_from", configs[-1].output_dir)
            stage["eval_before"] = False
        stage["eval_after"] = True
        configs.append(_load_stage(stage, f"{path}: stage {name!r}"))
        names.append(name)
    if not configs[0].eval_before:
        raise ConfigError(f"{path}: the first stage must evaluate before training (eval_before: true): that is the "
                          "untrained row of the table")
    for field in PAIRED:
        values = {repr(getattr(c, field)) for c in configs}
        if len(values) > 1:
            raise ConfigError(f"{path}: stages differ in {field} ({', '.join(sorted(values))}); set it once under "
                              "`common` so every row of the table plays the same episodes")
    return recipe, list(zip(names, configs, strict=True))


def _load_stage(stage: dict[str, Any], source: str) -> Any:
    try:
        return load_config(stage)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from e


def _reports(stages: list[tuple[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Row labels and, per row, one EvalReport per eval seed."""
    from ..evaluation import EvalReport

    first = Path(stages[0][1].output_dir)
    seeds = stages[0][1].eval_seeds
    labels = ["untrained", *[f"after {' + '.join(n for n, _ in stages[:i + 1])}" for i in range(len(stages))]]
    rows = [[EvalReport.load(first / "eval" / f"before-seed{s}.json") for s in seeds]]
    rows += [[EvalReport.load(Path(c.output_dir) / "eval" / f"after-seed{s}.json") for s in seeds] for _, c in stages]
    return labels, rows


def recipe_table(stages: list[tuple[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """The held-out table (evaluation.compare over the rows, first eval seed) and the numbers of every row and
    seed (``recipe.json``)."""
    from ..evaluation import compare
    from ..paired import paired_difference, stage_summary

    labels, rows = _reports(stages)
    table = compare(*[r[0] for r in rows], labels=labels)
    out: dict[str, Any] = {"rows": []}
    for i, (label, reports) in enumerate(zip(labels, rows, strict=True)):
        row: dict[str, Any] = {"stage": label, "per_seed": []}
        for j, r in enumerate(reports):
            entry = {"seed": r.seed, **stage_summary(r)}
            if i:
                for metric in ("success", "progress"):
                    d, se, n = paired_difference(rows[i - 1][j], r, metric)
                    entry[f"delta_{metric}"] = {"mean": d, "se": se, "scenarios": n}
            row["per_seed"].append(entry)
        out["rows"].append(row)
    return table, out


def _plot(stages: list[tuple[str, Any]], numbers: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import read_metrics

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [r["stage"] for r in numbers["rows"]]
    for key, color in (("success_rate", "tab:green"), ("progress", "tab:blue")):
        ys = [sum(s[key] for s in r["per_seed"]) / len(r["per_seed"]) for r in numbers["rows"]]
        a.plot(labels, ys, marker="o", color=color, label=key.replace("_", " "))
    a.set_ylim(0, 1)
    a.set_title("held-out evaluation per stage")
    a.legend()
    for name, config in stages:
        rows = read_metrics(config.output_dir) if (Path(config.output_dir) / "metrics.jsonl").is_file() else []
        keys = sorted({k for r in rows for k in r if k == "reward" or k.startswith("components/")})
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                b.plot(*zip(*pts, strict=True), marker=".", label=f"{name}: {k.removeprefix('components/')}")
    b.set_title("reward and components over training steps")
    b.set_xlabel("step")
    if b.lines:
        b.legend(fontsize=7)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def run_recipe(path: str | Path, console: Any = None) -> dict[str, Any]:
    """Run every stage that has not finished, then print and write the held-out table (module docs)."""
    from rich.console import Console

    from .build import build_trainer
    from .checkpoint import latest_checkpoint

    console = console or Console()
    recipe, stages = load_recipe(path)
    for name, config in stages:
        run_dir = Path(config.output_dir)
        _check_saved_settings(name, config, run_dir)
        if (run_dir / "eval_after.json").is_file():
            console.print(f"stage {name!r}: done already ({run_dir}); skipping", highlight=False)
            continue
        resume = latest_checkpoint(run_dir) is not None
        console.print(f"stage {name!r}: {config.algorithm} -> {run_dir}" + (" (resuming)" if resume else ""),
                      highlight=False)
        trainer = build_trainer(config)
        try:
            trainer.train(resume=resume)
        finally:
            dist = getattr(trainer, "dist", None)
            if dist is not None:
                dist.close()
            del trainer
            gc.collect()
    table, numbers = recipe_table(stages)
    console.print(table, width=max(console.width, 120))
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers["stages"] = {name: str(c.output_dir) for name, c in stages}
    write_text_atomic(out / "recipe.json", json.dumps(numbers, indent=2))
    plot = _plot(stages, numbers, out / "recipe.png")
    console.print(f"table data {out / 'recipe.json'}; plot {plot}", highlight=False)
    return numbers
