"""The matmul kernels a decode step could use, on SmolLM2-135M's weight shapes, by number of rows.

One "step" = every projection of the fast decode path once (30 layers x fused q/k/v 960x576, o 576x576, fused
gate/up 3072x576, down 576x1536) plus the 49,152 x 576 LM head, each on its own random fp32 weight (so nothing
stays in cache between calls, as in a real step), for an input of R rows. Milliseconds per step, best of 4:

  f_linear        F.linear (MKL sgemm on this build)
  x_at_wt         x @ W^T with W^T stored contiguous (pre-transposed layout)
  mkl_packed      MKL packed sgemm (mkl._mkl_linear, weights packed for exactly R rows)
  onednn_blocked  oneDNN with weights converted to mkldnn layout (a second copy of the weights)
  onednn_dense    oneDNN inner product on the plain weights (mkldnn._linear_pointwise): what the engine uses
  pad_to_8        F.linear on the rows zero-padded to 8 (R < 8 only)

Also: the time to read every weight once (Tensor.sum over each), the weight-streaming floor of a step.

  .venv/bin/python benchmarks/gemm_kernels.py [--rows 1,2,4,8,16,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "lm_head": (49152, 576)}
COUNTS = {"qkv": 30, "o": 30, "gate_up": 30, "down": 30, "lm_head": 1}


def read_once_ms(weights: list[torch.Tensor], reps: int = 5) -> float:
    """Milliseconds to read every tensor once (``Tensor.sum`` over each), best of ``reps``: the time a decode step
    would take if streaming its weights from memory were the only limit."""
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for w in weights:
            w.sum()
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def _bench(fn, weights, rows: int, reps: int = 4) -> float:
    xs = {k: torch.randn(rows, s[1]) for k, s in SHAPES.items()}
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        for k, ws in weights.items():
            for w in ws:
                fn(xs[k], w)
        best = min(best, time.perf_counter() - t)
    return 1000 * best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    try:
        rows = [int(x) for x in a.rows.split(",")]
    except ValueError:
        sys.exit(f"--rows {a.rows!r} is not a comma-separated list of integers; e.g. 1,4,8")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    g = torch.Generator().manual_seed(0)
    ws = {k: [torch.randn(*s, generator=g) for _ in range(COUNTS[k])] for k, s in SHAPES.items()}
    flat = [w for v in ws.values() for w in v]
    floor = read_once_ms(flat)
    nbytes = sum(w.numel() * 4 for w in flat)
    print(f"read every weight once: {floor:.1f} ms for {nbytes / 2**20:.0f} MiB ({nbytes / floor / 1e6:.1f} GB/s)")
    wts = {k: [w.t().contiguous() for w in v] for k, v in ws.items()}
    blocked = {k: [w.to_mkldnn() for w in v] for k, v in ws.items()}
    pointwise = torch.ops.mkldnn._linear_pointwise
    out: dict = {"read_floor_ms": floor, "weights_mib": nbytes / 2**20, "rows": {}}
    for r in rows:
        tw = {k: list(zip(ws[k], wts[k], blocked[k], strict=True)) for k in ws}
        res = {
            "f_linear": _bench(lambda x, w: F.linear(x, w[0]), tw, r),
            "x_at_wt": _bench(lambda x, w: x @ w[1], tw, r),
            "onednn_blocked": _bench(lambda x, w: torch._C._nn.mkldnn_linear(x.to_mkldnn(), w[2], None).to_dense(),
                                     tw, r),
            "onednn_dense": _bench(lambda x, w: pointwise(x, w[0], None, "none", [], ""), tw, r),
        }
        packed = {k: [(torch.ops.mkl._mkl_reorder_linear_weight(w, r), w) for w in v] for k, v in ws.items()}
        res["mkl_packed"] = _bench(lambda x, w, r=r: torch.ops.mkl._mkl_linear(x, w[0], w[1], None, r), packed, r)
        del packed
        if r < 8:
            res["pad_to_8"] = _bench(lambda x, w, r=r: F.linear(torch.cat([x, x.new_zeros(8 - r, x.shape[1])]), w[0])[:r],
                                     tw, r)
        flops = 2 * r * sum(s[0] * s[1] * COUNTS[k] for k, s in SHAPES.items())
        res["onednn_dense_gflops"] = flops / res["onednn_dense"] / 1e6
        out["rows"][r] = res
        print(f"rows {r}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()), flush=True)
    out["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if a.json:
        tmp = Path(a.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(a.json)


if __name__ == "__main__":
    main()
