"""Per-key statistics of a run's ``metrics.jsonl``: count, sum, mean, min, max, first and last value (the figures the
docs quote for a run's update times and losses).

    python benchmarks/metrics_stats.py METRICS.jsonl KEY [KEY ...]

Prints one JSON object: ``{KEY: {...}}`` for each key, plus the step count and the UTC time of the last step.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path


def stats(path: Path, keys: list[str]) -> dict:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    out: dict = {"file": str(path), "steps": len(rows),
                 "last_step_utc": dt.datetime.fromtimestamp(rows[-1]["time"], dt.timezone.utc).isoformat()}
    for k in keys:
        ys = [r[k] for r in rows if isinstance(r.get(k), (int, float))]
        out[k] = {"n": len(ys), "sum": sum(ys), "mean": sum(ys) / len(ys), "min": min(ys), "max": max(ys),
                  "first": ys[0], "last": ys[-1]} if ys else None
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python benchmarks/metrics_stats.py METRICS.jsonl KEY [KEY ...]")
    print(json.dumps(stats(Path(sys.argv[1]), sys.argv[2:]), indent=1))
