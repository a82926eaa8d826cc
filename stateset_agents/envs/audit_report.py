"""Printing an :class:`~stateset_agents.envs.audit.AuditReport` (``envs audit`` and ``envs validate``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .audit import AuditReport
from .audit_policies import describe

__all__ = ["audit_table", "print_audit", "save_audit"]


def audit_table(report: AuditReport) -> Table:
    seeds = ",".join(map(str, report.seeds))
    table = Table(title=f"Audit of {report.pack!r} ({report.split} split, {report.scenarios} scenarios, "
                        f"seeds {seeds}; bound: solves nothing, mean progress <= {report.bound})")
    for col in ("policy", "success", "mean progress", "max progress", "solved", "verdict"):
        table.add_column(col)
    for r in report.results:
        verdict = "[green]ok[/]" if r.ok(report.bound) else "[red]FAIL[/]"
        table.add_row(r.policy, f"{r.successes}/{r.episodes}", f"{r.mean_progress:.3f}",
                      f"{r.max_progress:.3f}", ", ".join(r.solved) or "-", verdict)
    return table


def print_audit(report: AuditReport, console: Console) -> None:
    console.print(audit_table(report))
    for r in report.results:
        console.print(f"  {r.policy}: {describe(r.policy)}", highlight=False)
    for r in report.results:
        if r.earning:
            top = sorted(r.earning.items(), key=lambda kv: -kv[1])[:5]
            console.print(f"  {r.policy} earns progress on {len(r.earning)} scenario(s): "
                          + ", ".join(f"{k} {v:.2f}" for k, v in top), soft_wrap=True, highlight=False)
    verdict = "passes" if report.ok else "FAILS"
    console.print(f"pack {report.pack!r} {verdict} its audit", highlight=False)


def save_audit(report: AuditReport, path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON atomically (temp file + rename); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=2)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
