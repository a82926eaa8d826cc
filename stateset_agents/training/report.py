"""Run reports: read ``metrics.jsonl``, plot the reward and every component over steps, summarise as a table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rich.table import Table

from ..errors import ConfigError

__all__ = ["figure", "plot_run", "read_metrics", "summary_rows", "summary_table"]


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The step records of a run folder (a torn last line, from a killed run, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} does not exist; pass a run folder written by `stateset-agents train`")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    if not rows:
        raise ConfigError(f"{str(path)!r} has no step records yet; wait for the run's first step to finish, or "
                          "pass another run folder")
    return rows


_MARK = {"marker": "o", "markersize": 3}  # a run of one step still shows its points


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def plot_run(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write a PNG: total reward (with its spread), success rate, every reward component, and KL / clip
    fraction / entropy when logged. Returns its path (default ``RUN_DIR/plot.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(read_metrics(run_dir))
    path = Path(out) if out is not None else Path(run_dir) / "plot.png"
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def figure(rows: list[dict[str, Any]]) -> Any:
    """The matplotlib figure of :func:`plot_run` for these step records (the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = sorted({k for r in rows for k in r if k.startswith("components/")})
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    xs, ys = _series(rows, "reward")
    _, sd = _series(rows, "reward_std")
    ax.plot(xs, ys, label="reward (mean)", color="black", **_MARK)
    if len(sd) == len(ys):
        ax.fill_between(xs, [y - s for y, s in zip(ys, sd, strict=True)],
                        [y + s for y, s in zip(ys, sd, strict=True)], alpha=0.15, color="black")
    xs, ys = _series(rows, "success_rate")
    if ys:
        ax.plot(xs, ys, label="success rate", color="tab:green", **_MARK)
    ax.set_title("reward")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax = axes[1]
    for c in comps:
        xs, ys = _series(rows, c)
        if ys:
            ax.plot(xs, ys, label=c.split("/", 1)[1], **_MARK)
    ax.set_title("reward components (means)")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[2]
    for key in ("kl", "clip_fraction", "entropy", "grad_norm"):
        xs, ys = _series(rows, key)
        if ys:
            ax.plot(xs, ys, label=key, **_MARK)
    ax.set_title("optimisation")
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:  # a Training-Free run logs none of these
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no weight updates in this run", ha="center", va="center", transform=ax.transAxes)
    from matplotlib.ticker import MaxNLocator

    steps = [r["step"] for r in rows]
    for ax in axes:
        ax.set_xlim(min(steps) - 0.5, max(steps) + 0.5)
        if max(steps) - min(steps) < 10:  # steps are whole numbers; MaxNLocator falls back to fractions here
            ax.set_xticks(range(min(steps), max(steps) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def summary_table(run_dir: str | os.PathLike[str]) -> Table:
    """First and last step's values, and the mean of the first and last quarter, per logged number."""
    rows = read_metrics(run_dir)
    header, body = summary_rows(rows)
    table = Table(title=f"{Path(run_dir).name}: {len(rows)} steps")
    for col in header:
        table.add_column(col, justify="right" if col != "metric" else "left")
    for r in body:
        table.add_row(*r)
    return table


def summary_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of :func:`summary_table` as strings."""
    q = max(1, len(rows) // 4)
    header = ["metric", "step 1", f"mean first {q}", f"mean last {q}", f"step {rows[-1]['step']}"]
    body = []
    keys = ["reward", "success_rate"] + sorted({k for r in rows for k in r if k.startswith("components/")}) + [
        "kl", "clip_fraction", "entropy", "grad_norm", "new_tokens_per_s", "time/total"]
    for k in keys:
        _, ys = _series(rows, k)
        if not ys:
            continue
        _, head = _series(rows[:q], k)
        _, tail = _series(rows[-q:], k)

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.3f}"
        body.append([k, fmt(rows[0].get(k)), fmt(sum(head) / len(head) if head else None),
                     fmt(sum(tail) / len(tail) if tail else None), fmt(rows[-1].get(k))])
    return header, body
