#!/usr/bin/env bash
# The heap trim's cost and saving: grpo_memory_trace.py with and without it, alternating, REPEATS pairs per setting,
# in one invocation.  Usage: benchmarks/trim_ab.sh [REPEATS] [OUTDIR]
set -euo pipefail
repeats=${1:-2}
out=${2:-benchmarks/results_trim_ab}
mkdir -p "$out"
for setting in full lora; do
  for r in $(seq 1 "$repeats"); do
    .venv/bin/python benchmarks/grpo_memory_trace.py "$setting" --json "$out/$setting-on-$r.json"
    .venv/bin/python benchmarks/grpo_memory_trace.py "$setting" --no-trim --json "$out/$setting-off-$r.json"
  done
done
.venv/bin/python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("*-*-*.json")):
    d = json.loads(f.read_text())
    rows.setdefault((d["setting"], d["trim"]), []).append(d)
for (setting, trim), ds in sorted(rows.items()):
    steps = [s for d in ds for s in d["step_s"][1:]]  # step 1 warms up
    upd = [max(v for k, v in d["peak_mb"].items() if k.startswith(("update", "fwdbwd", "optim"))) for d in ds]
    print(f"{setting} trim {'on ' if trim else 'off'}: step s median {statistics.median(steps):.2f} "
          f"({min(steps):.2f}-{max(steps):.2f}, n={len(steps)}), update peak MB {min(upd):.0f}-{max(upd):.0f}, "
          f"inside trim_heap {max(d['trim_call_s'] for d in ds):.3f} s per 3 steps")
PY
