"""The decision tokens of an SFT run's demonstrations (training/decisions.py): how many of the agent's tokens make a
decision, how often each tool is called (what ``tool_balance`` weights by), and how long the demonstrated turns are
(how many an agent playing with a given ``max_new_tokens`` could not write: ``sft.unwritable_turns``).

    python benchmarks/decision_tokens.py RUN_DIR [MODEL]

Reads ``RUN_DIR/demonstrations.jsonl``, packs the turns as SFT does and prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer

from stateset_agents.training.batch import pack_turns, samples_from_trajectories
from stateset_agents.training.build import resolve_model_path
from stateset_agents.training.decisions import decision_tools
from stateset_agents.training.sft import unwritable_turns
from stateset_agents.types import Trajectory


def main(run_dir: Path, model: str) -> dict:
    tok = AutoTokenizer.from_pretrained(resolve_model_path(model))
    lines = (run_dir / "demonstrations.jsonl").read_text(encoding="utf-8").splitlines()
    turns = samples_from_trajectories([Trajectory.model_validate_json(x) for x in lines if x], need_logprobs=False)
    samples = pack_turns(turns)
    tokens = decisions = 0
    calls: Counter[str] = Counter()
    for s in samples:
        for a, b in s.loss_spans():
            marks = decision_tools(tok, s.input_ids[a:b])
            tokens += len(marks)
            decisions += sum(m is not False for m in marks)
            calls.update(m for m, prev in zip(marks, [False, *marks[:-1]], strict=True)
                         if isinstance(m, str) and m != prev)
    return {"run": str(run_dir), "samples": len(samples), "agent_tokens": tokens, "decision_tokens": decisions,
            "share": decisions / max(1, tokens), "calls_per_tool": dict(calls.most_common()),
            "turns": len(turns), "longest_turn_tokens": max(t.num_completion for t in turns),
            "turns_over_max_new_tokens": {n: len(unwritable_turns(turns, n)) for n in (64, 80, 96)}}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/decision_tokens.py RUN_DIR [MODEL]")
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "default"), indent=1))
