"""How well a finished SFT run's weights reproduce demonstrations, turn by turn, under teacher forcing.

    python benchmarks/sft_fit.py CONFIG RUN_DIR [OUT_JSON [EVERY [VARIANTS]]]

For every agent turn of a demonstration, one forward pass over the exact tokens the agent saw (its prompt) and the
demonstrated completion: the turn is *reproduced* when the argmax at every completion position is the demonstrated
token, which is exactly when greedy decoding from that prompt writes the demonstrated turn. Two coarser levels say
which decision went wrong: the turn's kind (a tool call or a message: its first token) and, for a tool call, the tool
(every token of its name). Reported for the run's own demonstrations (``RUN_DIR/demonstrations.jsonl``, every
EVERY-th: does it fit?) and for reference demonstrations of the config's ``eval_scenarios`` and VARIANTS variants of
each (default 0), replayed now with user seeds 0 and 1 (both opening lines: does it generalise?), with the first
diverging token of each failed turn, so a free-running failure can be traced to the turn and token where the model
leaves the demonstration. On the held-out ones it also lets the model write each turn itself (greedy, from the
demonstrated history) and reports whether it calls a tool when the demonstration does and which tool it calls
first: the fair comparison between demonstrations with and without reference ``note``s. Run it with
OMP_NUM_THREADS=1 beside another torch job on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from stateset_agents.envs.variants import SEP
from stateset_agents.training import build
from stateset_agents.training.batch import samples_from_trajectories
from stateset_agents.training.config import load_config
from stateset_agents.training.decisions import TOOL_NAME_RE
from stateset_agents.training.demonstrations import reference_demonstrations
from stateset_agents.training.dist import DistContext
from stateset_agents.training.scenarios import run_scenarios
from stateset_agents.types import Trajectory


@torch.no_grad()
def turn_fit(model: Any, tokenizer: Any, trajs: list[Trajectory]) -> dict[str, Any]:
    """Teacher-forced greedy agreement with each demonstrated agent turn, at three levels: the turn's kind (a tool
    call or a message: its first token), the tool it calls (every token of the name), and the whole turn."""
    samples = samples_from_trajectories(trajs, need_logprobs=False)
    by_turn: dict[int, list[bool]] = defaultdict(list)
    kind, tool = [], []
    token_acc: list[float] = []
    misses: list[dict[str, Any]] = []
    failed_traj: set[int] = set()
    for s in samples:
        ids = torch.tensor([s.input_ids])
        logits = model(ids).logits[0]
        cs = s.completion_start
        pred = logits[cs - 1:-1].argmax(-1)
        target = ids[0, cs:]
        ok = pred == target
        token_acc.append(float(ok.float().mean()))
        by_turn[s.turn_index].append(bool(ok.all()))
        is_call = "<tool_call>" in tokenizer.decode(target)  # a noted call opens with its note's first token
        # a call must open with the call's own first token; a message with anything that does not open a tag
        kind.append(bool(ok[0]) if is_call else not tokenizer.decode([int(pred[0])]).startswith("<"))
        if is_call:
            a, b = _name_span(tokenizer, target.tolist())
            tool.append(bool(ok[a:b].all()))
        if not ok.all():
            failed_traj.add(s.traj_index)
            j = int((~ok).nonzero()[0])
            misses.append({"scenario": trajs[s.traj_index].scenario_id, "turn": s.turn_index,
                           "written": tokenizer.decode(target[:j]),
                           "demonstrated_next": tokenizer.decode(target[j:j + 8]),
                           "model_next": tokenizer.decode([int(pred[j])])})
    return {"turns_reproduced": sum(sum(v) for v in by_turn.values()), "turns": len(samples),
            "by_turn_index": {t: f"{sum(v)}/{len(v)}" for t, v in sorted(by_turn.items())},
            "turn_kind_right": f"{sum(kind)}/{len(kind)}", "tool_right": f"{sum(tool)}/{len(tool)}",
            "token_accuracy": sum(token_acc) / max(1, len(token_acc)),
            "episodes_all_turns_reproduced": f"{len(trajs) - len(failed_traj)}/{len(trajs)}",
            "first_divergences": misses}


@torch.no_grad()
def free_decisions(model: Any, tokenizer: Any, trajs: list[Trajectory], max_new: int = 72) -> dict[str, Any]:
    """What the model does at each demonstrated agent turn when it writes the turn itself (greedy, from the
    demonstrated history): whether it calls a tool exactly when the demonstration does, and which tool it calls
    first. Unlike the teacher-forced tool check, a turn that reasons in words before its call (a reference
    ``note``) is measured on the tool it goes on to call, not on the demonstrated words."""
    samples = samples_from_trajectories(trajs, need_logprobs=False)
    eos = tokenizer.eos_token_id
    kind, tool = [], []
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in samples:
        cs = s.completion_start
        want = TOOL_NAME_RE.search(tokenizer.decode(s.input_ids[cs:]))
        out = model(torch.tensor([s.input_ids[:cs]]), use_cache=True)
        past, nxt, written = out.past_key_values, int(out.logits[0, -1].argmax()), []
        got = None
        while len(written) < max_new and nxt != eos:
            written.append(nxt)
            text = tokenizer.decode(written)
            got = TOOL_NAME_RE.search(text)
            if got and text.endswith('"') and text.count('"') >= 4:
                break
            out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
            past, nxt = out.past_key_values, int(out.logits[0, -1].argmax())
        called = got.group(1) if got else None
        kind.append((called is None) == (want is None))
        if want is not None:
            tool.append(called == want.group(1))
            confusion[want.group(1)][called or "<message>"] += 1
    return {"free_kind_right": f"{sum(kind)}/{len(kind)}", "free_tool_right": f"{sum(tool)}/{len(tool)}",
            "free_tool_confusion": {k: dict(v) for k, v in sorted(confusion.items())}}


def _name_span(tokenizer: Any, ids: list[int]) -> tuple[int, int]:
    """Token range of the tool's name in a demonstrated ``<tool_call>{"name": "NAME", ...`` completion."""
    a = next(j for j in range(len(ids) + 1) if tokenizer.decode(ids[:j]).endswith('"name": "'))
    b = next(j for j in range(a + 1, len(ids) + 1) if '"' in tokenizer.decode(ids[a:j]))
    return a, b


def main(argv: list[str]) -> None:
    cfg_path, run_dir = argv[0], Path(argv[1])
    out = Path(argv[2]) if len(argv) > 2 else run_dir / "sft_fit.json"
    every = int(argv[3]) if len(argv) > 3 else 1
    variants = int(argv[4]) if len(argv) > 4 else 0
    cfg = load_config(cfg_path).model_copy(update={"init_from": str(run_dir)})
    model = build.load_model(cfg, DistContext.from_env("cpu"))
    agent = build._agent(cfg, model, cfg.resolved_domain())
    env_factory = build.config_env_factory(cfg)
    pack, _, eval_scenarios = run_scenarios(env_factory, cfg)
    own = [Trajectory.model_validate_json(x)
           for x in (run_dir / "demonstrations.jsonl").read_text(encoding="utf-8").splitlines() if x]
    own = own[::every]  # a sample of them (every scenario's variants are consecutive)
    held_ids = [v for sid in eval_scenarios for v in [sid] + [f"{sid}{SEP}{i}" for i in range(1, variants + 1)]]
    notes = getattr(getattr(cfg, "demonstrations", None), "notes", True)
    held, _ = asyncio.run(reference_demonstrations(agent, pack, held_ids, 2, prompt=cfg.tool_prompt, notes=notes))
    result = {"run": str(run_dir), "config": cfg_path,
              "own_demonstrations": turn_fit(model.model, model.tokenizer, own),
              "held_out_demonstrations": {**turn_fit(model.model, model.tokenizer, held),
                                          **free_decisions(model.model, model.tokenizer, held)}}
    out.write_text(json.dumps(result, indent=1))
    for k in ("own_demonstrations", "held_out_demonstrations"):
        r = result[k]
        print(f"{k}: turns reproduced {r['turns_reproduced']}/{r['turns']} by turn {r['by_turn_index']}, "
              f"kind right {r['turn_kind_right']}, tool right {r['tool_right']}, "
              f"token accuracy {r['token_accuracy']:.3f}, episodes {r['episodes_all_turns_reproduced']}"
              + (f"; written freely: kind right {r['free_kind_right']}, tool right {r['free_tool_right']}"
                 if "free_tool_right" in r else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
