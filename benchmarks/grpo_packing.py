"""How much GRPO's ``pack_turns`` saves on real rollouts: SmolLM2 (with a run's weights) plays episodes of the run's
train scenarios, and the agent turns are counted and packed as the trainer packs them (training/batch.pack_turns).

    python benchmarks/grpo_packing.py CONFIG RUN_DIR [N_SCENARIOS] [GROUP_SIZE]

Writes benchmarks/results_grpo_packing.json: turns, packed sequences, and tokens forwarded before and after.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
from pathlib import Path

import torch

from stateset_agents.rollout import rollout
from stateset_agents.training import build
from stateset_agents.training.batch import pack_turns, samples_from_trajectories
from stateset_agents.training.config import load_config
from stateset_agents.training.dist import DistContext


def main(argv: list[str]) -> None:
    cfg_path, run_dir = argv[0], argv[1]
    n, group = (int(argv[2]) if len(argv) > 2 else 3), (int(argv[3]) if len(argv) > 3 else 2)
    cfg = load_config(cfg_path).model_copy(update={"init_from": run_dir})
    model = build.load_model(cfg, DistContext.from_env("cpu"))
    agent = build._agent(cfg, model, cfg.resolved_domain())
    scenarios = (cfg.scenarios or [])[:n]
    groups = asyncio.run(rollout(agent, build.config_env_factory(cfg), scenarios, group, seed=0, progress=False))
    turns = samples_from_trajectories([t for g in groups for t in g.trajectories])
    for s in turns:  # GRPO gives every turn of a trajectory its trajectory's advantage
        s.advantage = 1.0
    packed = pack_turns(turns, per_token=True)
    out = {"config": cfg_path, "run": run_dir, "scenarios": scenarios, "group_size": group,
           "episodes": sum(len(g.trajectories) for g in groups), "turns": len(turns), "sequences": len(packed),
           "tokens_turn_by_turn": sum(len(s.input_ids) for s in turns),
           "tokens_packed": sum(len(s.input_ids) for s in packed),
           "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}}
    Path(__file__).with_name("results_grpo_packing.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
