"""What an agent did in free play, from an evaluation's transcripts: how many episodes open with a message (not a
tool call) and how many with a question, how many tool calls succeeded, the calls that were not valid JSON (by the
tool they name and the parser's error), the other failed calls (by tool, and by the kind of the env's error with
its values cut off: "missing required argument", "no orders record with order_id", ...), what the judge found
(episodes whose end state matches, that made every required call, that told every required fact, and the forbidden
actions by id, a false claim as ``false_claim:<claim>``), and progress and success.

    python benchmarks/free_play_stats.py [--total] TRANSCRIPTS.jsonl [...]

``--total`` prints one line over all the files' episodes (an arm's seeds together) instead of one per file.

Reads the ``*.transcripts.jsonl`` an evaluation writes beside its JSON (``stateset-agents eval --json``, a run's
``eval/`` folder); prints one JSON line per file.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

_INVALID = re.compile(r"tool call is not valid JSON \((.+?) at (?:at )?char \d+\): '(.*)'", re.S)
_NAMED = re.compile(r'"name"\s*:\s*"(\w+)"')
_KIND = re.compile(r"[^';=(]+")  # an env error up to its first value: "no orders record with order_id"


def stats(*paths: Path) -> dict:
    """The counts over the episodes of ``paths`` together (one file, or an arm's files with ``--total``)."""
    episodes = [json.loads(x) for p in paths for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
    opens_with_message = opens_with_question = calls = calls_ok = 0
    invalid_tool: Counter[str] = Counter()
    invalid_error: Counter[str] = Counter()
    failed_tool: Counter[str] = Counter()
    failed_kind: Counter[str] = Counter()
    for e in episodes:
        agent = [m for m in e["messages"] if m["role"] == "assistant"]
        if agent and not agent[0].get("tool_calls") and "<tool_call>" not in (agent[0].get("content") or ""):
            opens_with_message += 1
            opens_with_question += "?" in (agent[0].get("content") or "")
        for m in e["messages"]:
            if m["role"] == "tool":
                result = json.loads(m["content"])
                calls += 1
                calls_ok += bool(result.get("ok"))
                bad = _INVALID.match(result.get("error") or "")
                if bad:
                    named = _NAMED.search(bad.group(2))
                    invalid_tool[named.group(1) if named else "?"] += 1
                    invalid_error[bad.group(1)] += 1
                elif not result.get("ok"):
                    failed_tool[result.get("name") or "?"] += 1
                    kind = _KIND.match(result.get("error") or "")
                    failed_kind[kind.group(0).strip() if kind else "?"] += 1
    outcomes = [e["outcome"] for e in episodes if e.get("outcome")]
    forbidden = Counter(f for o in outcomes for f in o.get("forbidden_actions") or [])
    n = len(episodes)
    return {"file": " + ".join(map(str, paths)), "episodes": n, "first_turn_a_message": opens_with_message,
            "first_turn_a_question": opens_with_question, "tool_calls_ok": calls_ok, "tool_calls": calls,
            "invalid_json_calls": {"by_tool": dict(invalid_tool.most_common()),
                                   "by_error": dict(invalid_error.most_common())},
            "failed_calls": {"by_tool": dict(failed_tool.most_common()), "by_error": dict(failed_kind.most_common())},
            "state_match": sum(bool(o.get("state_match")) for o in outcomes),
            "all_required_actions": sum(all((o.get("actions_made") or {}).values()) for o in outcomes),
            "all_required_facts": sum(o.get("facts_score") == 1.0 for o in outcomes),
            "forbidden_actions": dict(forbidden.most_common()),
            "progress": sum(e["progress"] for e in episodes) / max(1, n),
            "successes": sum(bool(e["success"]) for e in episodes)}


if __name__ == "__main__":
    args = sys.argv[1:]
    total = "--total" in args
    files = [Path(a) for a in args if a != "--total"]
    if not files:
        sys.exit("usage: python benchmarks/free_play_stats.py [--total] TRANSCRIPTS.jsonl [...]")
    for line in ([stats(*files)] if total else [stats(f) for f in files]):
        print(json.dumps(line))
