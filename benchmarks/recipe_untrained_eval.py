"""Evaluate a recipe's first stage's untrained model again (the table's untrained row), into its run folder.

    python benchmarks/recipe_untrained_eval.py examples/recipe_customer_service.yaml

Writes ``OUTPUT_DIR/<first stage>/eval/before-seed<S>.json`` (and ``eval_before.json``) with the recipe's current
evaluation settings and no training. Used on 2026-12-03 when the demo's ``max_new_tokens`` was raised from 80 to 96
after its SFT stage had trained (SFT does not sample, so its weights do not depend on it): this script re-made the
untrained row, the stage's ``eval_after.json`` and ``eval/after-*`` were deleted, and ``make demo`` resumed the
finished SFT stage (evaluating it again), ran GRPO and printed the table with every row at 96 tokens. (The recipe
now refuses a stage folder whose saved config differs in a paired setting, so that rerun also needs the stage's
``config.yaml`` to say the new value: a one-off for a setting the stage's weights do not depend on.)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str]) -> None:
    from stateset_agents.training.build import build_trainer
    from stateset_agents.training.recipe import load_recipe

    _, stages = load_recipe(argv[0])
    name, cfg = stages[0]
    trainer = build_trainer(cfg)  # fresh weights: no checkpoint is loaded

    async def run() -> None:
        prepare = getattr(trainer, "prepare", None)
        if prepare is not None:
            await prepare()
        if trainer.step != 0:
            raise SystemExit(f"stage {name!r} is not untrained (step {trainer.step})")
        await trainer.evaluate("before")

    asyncio.run(run())
    print(f"stage {name!r}: untrained evaluation written to {Path(cfg.output_dir) / 'eval'}")


if __name__ == "__main__":
    main(sys.argv[1:])
