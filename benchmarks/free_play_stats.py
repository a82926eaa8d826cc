"""What an agent did in free play, from an evaluation's transcripts: how many episodes open with a message (not a
tool call), how many tool calls succeeded, and progress and success.

    python benchmarks/free_play_stats.py TRANSCRIPTS.jsonl [...]

Reads the ``*.transcripts.jsonl`` an evaluation writes beside its JSON (``stateset-agents eval --json``, a run's
``eval/`` folder); prints one JSON line per file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stats(path: Path) -> dict:
    episodes = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    opens_with_message = calls = calls_ok = 0
    for e in episodes:
        agent = [m for m in e["messages"] if m["role"] == "assistant"]
        if agent and not agent[0].get("tool_calls") and "<tool_call>" not in (agent[0].get("content") or ""):
            opens_with_message += 1
        for m in e["messages"]:
            if m["role"] == "tool":
                calls += 1
                calls_ok += bool(json.loads(m["content"]).get("ok"))
    n = len(episodes)
    return {"file": str(path), "episodes": n, "first_turn_a_message": opens_with_message,
            "tool_calls_ok": calls_ok, "tool_calls": calls,
            "progress": sum(e["progress"] for e in episodes) / max(1, n),
            "successes": sum(bool(e["success"]) for e in episodes)}


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/free_play_stats.py TRANSCRIPTS.jsonl [...]")
    for arg in sys.argv[1:]:
        print(json.dumps(stats(Path(arg))))
