"""``RUN_DIR/report.html``: one self-contained page for a run (``stateset-agents report RUN_DIR`` writes it, and
``stateset-agents train`` at the end of a run).

What it holds, read from the run folder:

- the training curves of :func:`~.report.plot_run` (reward with its spread, success rate, every reward component,
  KL / clip fraction / entropy / gradient norm) as inline SVG, and the step summary table;
- the before/after table from ``eval_before.json`` and ``eval_after.json`` (a GRPO run's evaluation reports, or a
  Training-Free run's per-seed reports in ``eval/``: then mean ± standard deviation over seeds), with the
  episodes that changed outcome when both evaluations used the same seeds;
- every evaluation transcript (``eval_*.transcripts.jsonl``, ``eval/*.transcripts.jsonl``), each a collapsible
  block with its messages, tool calls and results and outcome, filterable by evaluation, scenario and outcome.

No network: the CSS, the script and the figures are inline; nothing is fetched when the page opens.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..evaluation import DomainSummary, EvalReport
from ..transcripts import Transcript, read_transcripts, write_text_atomic
from .report import figure, read_metrics, summary_rows

__all__ = ["build_html", "evaluation_reports", "write_html_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2330;
background:#fafbfc}h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde}
.sub{color:#556;margin-bottom:12px}table{border-collapse:collapse;background:#fff}td,th{border:1px solid #dde;
padding:3px 9px;text-align:right}td:first-child,th:first-child{text-align:left}th{background:#eef1f6}
.up{color:#17813a}.down{color:#b3261e}.figure svg{width:100%;height:auto;background:#fff;border:1px solid #dde}
.filters{position:sticky;top:0;background:#fafbfc;padding:8px 0;z-index:1}.filters select{margin-right:12px}
details.ep{background:#fff;border:1px solid #dde;border-left:5px solid #b3261e;margin:6px 0;border-radius:4px}
details.ep.pass{border-left-color:#17813a}details.ep>summary{cursor:pointer;padding:6px 10px;font-weight:600}
.badge{display:inline-block;min-width:38px;text-align:center;border-radius:3px;color:#fff;font-size:12px;
margin-right:6px;background:#b3261e}.pass .badge{background:#17813a}.body{padding:4px 12px 10px}
.msg{margin:6px 0;padding:6px 9px;border-radius:4px;border:1px solid #e3e6ee}.role{font-size:11px;font-weight:700;
text-transform:uppercase;color:#667}.user{background:#eef6fb}.assistant{background:#f0f8f1}.tool{background:#fdf8e8}
.system{background:#f4f4f6}pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:13px/1.4 ui-monospace,
Menlo,Consolas,monospace}.call{font:12px ui-monospace,Menlo,monospace;color:#7a4d00}.outcome{font-size:13px;
color:#334;border-top:1px dashed #ccd;padding-top:6px;margin-top:8px}.note{color:#667;font-size:13px}
"""

_JS = """
const eps=[...document.querySelectorAll('details.ep')];
const sel=id=>document.getElementById(id);
if(sel('f-tag')){
function apply(){const t=sel('f-tag').value,s=sel('f-scenario').value,o=sel('f-outcome').value;let n=0;
for(const e of eps){const ok=(!t||e.dataset.tag===t)&&(!s||e.dataset.scenario===s)&&(!o||e.dataset.outcome===o);
e.style.display=ok?'':'none';if(ok)n++;}sel('f-count').textContent=n+' of '+eps.length+' episodes';}
for(const id of ['f-tag','f-scenario','f-outcome'])sel(id).addEventListener('change',apply);
sel('f-open').addEventListener('click',()=>{const open=!eps.some(e=>e.open&&e.style.display!=='none');
for(const e of eps)if(e.style.display!=='none')e.open=open;});apply();}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _svg(rows: list[dict[str, Any]]) -> str:
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "report"}):
        fig = figure(rows)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><tr>{head}</tr>{rows}</table>"


def evaluation_reports(run_dir: str | os.PathLike[str], tag: str) -> list[EvalReport]:
    """The evaluation reports of ``tag`` (``before``/``after``): ``eval_<tag>.json`` when it is a report (GRPO),
    else the per-seed reports ``eval/<tag>-seed*.json`` (Training-Free); empty when there are none."""
    run = Path(run_dir)
    main = run / f"eval_{tag}.json"
    if main.is_file():
        try:
            is_report = "results" in json.loads(main.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            is_report = False
        if is_report:
            return [EvalReport.load(main)]
    return [EvalReport.load(p) for p in sorted((run / "eval").glob(f"{tag}-seed*.json"))]


def _metrics(s: DomainSummary, k: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {"success rate": s.success_rate, "outcome score": s.mean_outcome_score,
                                    "reward": s.mean_reward, "errors": float(s.errors),
                                    "pass@1": s.pass_at_k.get(1)}
    if k > 1:
        out[f"pass@{k}"] = s.pass_at_k.get(k)
        out[f"pass^{k}"] = s.pass_hat_k.get(k)
    for name, c in s.components.items():
        out[f"  {name}"] = c.mean
    return out


def _agg(reports: list[EvalReport]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in reports:
        for name, v in _metrics(r.overall, r.k).items():
            if v is not None:
                out.setdefault(name, []).append(v)
    return out


def _cell(vals: list[float] | None) -> str:
    if not vals:
        return "-"
    m = statistics.fmean(vals)
    return f"{m:.3f}" if len(vals) == 1 else f"{m:.3f} ± {statistics.stdev(vals):.3f} (n={len(vals)})"


def _before_after(run_dir: Path) -> str:
    before, after = evaluation_reports(run_dir, "before"), evaluation_reports(run_dir, "after")
    if not before and not after:
        return '<p class="note">No evaluation reports (eval_before.json / eval_after.json) in this run folder.</p>'
    b, a = _agg(before), _agg(after)
    body = []
    for name in dict.fromkeys([*b, *a]):
        d = "-"
        if b.get(name) and a.get(name):
            delta = statistics.fmean(a[name]) - statistics.fmean(b[name])
            better = delta < 0 if name == "errors" else delta > 0
            cls = "" if delta == 0 else ("up" if better else "down")
            d = f'<span class="{cls}">{delta:+.3f}</span>'
        body.append([_e(name), _cell(b.get(name)), _cell(a.get(name)), d])
    first = (after or before)[0]
    seeds = sorted({r.seed for r in before} | {r.seed for r in after})
    note = (f"{len(first.results)} scenarios x k={first.k} per evaluation; seeds {seeds}; "
            f"{len(before)} before and {len(after)} after report(s)"
            + ("; ± is the standard deviation over seeds" if max(len(before), len(after)) > 1 else ""))
    return _table(["metric", "before", "after", "delta"], body) + f'<p class="note">{_e(note)}</p>' + \
        _changed(before, after)


def _changed(before: list[EvalReport], after: list[EvalReport]) -> str:
    pairs: dict[str, int] = {"FAIL → PASS": 0, "PASS → FAIL": 0, "unchanged": 0}
    moved: list[str] = []
    left = {(r.seed, t.domain, t.scenario_id, t.trial, t.seed): t.success for r in before for t in r.transcripts}
    for r in after:
        for t in r.transcripts:
            was = left.get((r.seed, t.domain, t.scenario_id, t.trial, t.seed))
            if was is None:
                continue
            key = "unchanged" if was == t.success else ("FAIL → PASS" if t.success else "PASS → FAIL")
            pairs[key] += 1
            if was != t.success:
                moved.append(f"{_e(t.scenario_id)} (trial {t.trial}, seed {t.seed}): {key}")
    if not sum(pairs.values()):
        return ""
    items = "".join(f"<li>{m}</li>" for m in moved)
    return (f'<p>Paired episodes (same scenario, trial and seed): {", ".join(f"{k} {v}" for k, v in pairs.items())}'
            f"</p>{'<ul>' + items + '</ul>' if items else ''}")


def _transcript_files(run_dir: Path) -> list[tuple[str, Path]]:
    """Each evaluation's transcripts once: a GRPO run's ``eval_<tag>`` file is its first seed's report, also written
    as ``eval/<tag>-seed<S>``, so per-seed files of a tag with a top-level file are skipped."""
    top = sorted(run_dir.glob("eval_*.transcripts.jsonl"))
    tags = {f.name.removesuffix(".transcripts.jsonl").removeprefix("eval_") for f in top}
    out = [(f.name.removesuffix(".transcripts.jsonl").removeprefix("eval_"), f) for f in top]
    for f in sorted(run_dir.glob("eval/*.transcripts.jsonl")):
        tag = f.name.removesuffix(".transcripts.jsonl")
        if tag.rsplit("-seed", 1)[0] not in tags:
            out.append((tag, f))
    return out


def _message(m: dict[str, Any]) -> str:
    role = m.get("role", "?")
    content = m.get("content") or ""
    if role == "system":
        return (f'<div class="msg system"><details><summary class="role">system ({len(content)} chars)</summary>'
                f"<pre>{_e(content)}</pre></details></div>")
    title = f"tool · {m.get('name')}" if role == "tool" else role
    calls = "".join(f'<div class="call">→ {_e(c.get("function", {}).get("name"))}'
                    f'({_e(c.get("function", {}).get("arguments"))})</div>' for c in m.get("tool_calls") or [])
    text = f"<pre>{_e(content)}</pre>" if content or not calls else ""
    return f'<div class="msg {_e(role)}"><div class="role">{_e(title)}</div>{text}{calls}</div>'


def _num(label: str, v: float | None, fmt: str = ".2f") -> str:
    return "" if v is None else f" · {label} {v:{fmt}}"


def _episode(tag: str, t: Transcript, is_open: bool = False) -> str:
    outcome = "pass" if t.success else "fail"
    head = (f'<span class="badge">{outcome.upper()}</span>{_e(tag)} · {_e(t.scenario_id)} · trial {t.trial} · '
            f"seed {t.seed}{_num('score', t.score)}{_num('progress', t.progress)}{_num('reward', t.reward, '.3f')}")
    o = t.outcome or {}
    bits = [f"ended by {_e(t.ended_by or '-')}", f"goal {t.goal_reached}", f"{t.turns} agent turns"]
    if o.get("state_diff"):
        bits.append(f"database differs at {_e(', '.join(map(str, o['state_diff'])))}")
    missed = [f["fact"] for f in o.get("facts_told") or [] if isinstance(f, dict) and not f.get("told")]
    if missed:
        bits.append(f"facts not told: {_e(', '.join(missed))}")
    if o.get("forbidden_actions"):
        bits.append(f"forbidden: {_e(', '.join(map(str, o['forbidden_actions'])))}")
    if t.reward_components:
        bits.append("components: " + _e(", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}"
                                                  for k, v in t.reward_components.items())))
    for label, err in (("error", t.error), ("reward error", t.reward_error)):
        if err:
            bits.append(f"<b>{label}</b>: {_e(err)}")
    return (f'<details class="ep {outcome}" data-tag="{_e(tag)}" data-scenario="{_e(t.scenario_id)}" '
            f'data-outcome="{outcome}"{" open" if is_open else ""}><summary>{head}</summary><div class="body">'
            + "".join(_message(m) for m in t.messages) + f'<div class="outcome">{" · ".join(bits)}</div></div></details>')


def _options(id_: str, label: str, values: Sequence[str]) -> str:
    opts = "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)
    return f'<label>{_e(label)} <select id="{id_}"><option value="">all</option>{opts}</select></label>'


def _transcripts(run_dir: Path) -> str:
    files = _transcript_files(run_dir)
    if not files:
        return '<p class="note">No evaluation transcripts (*.transcripts.jsonl) in this run folder.</p>'
    eps = [(tag, t) for tag, f in files for t in read_transcripts(f)]
    scenarios = sorted({t.scenario_id for _, t in eps})
    filters = (_options("f-tag", "evaluation", [tag for tag, _ in files]) + _options("f-scenario", "scenario", scenarios)
               + _options("f-outcome", "outcome", ["pass", "fail"])
               + '<button id="f-open" type="button">open / close shown</button> <span id="f-count"></span>')
    return f'<div class="filters">{filters}</div>' + "".join(_episode(tag, t, i == 0) for i, (tag, t) in enumerate(eps))


def _subtitle(run_dir: Path) -> str:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    keys = ("algorithm", "env", "model", "reward", "use_lora", "group_size", "max_steps", "learning_rate", "beta")
    return " · ".join(f"{k} {_e(cfg[k])}" for k in keys if k in cfg) or "no config.yaml"


def build_html(run_dir: str | os.PathLike[str]) -> str:
    """The page for ``run_dir`` (see the module docs); raises ConfigError without ``metrics.jsonl``."""
    run = Path(run_dir)
    rows = read_metrics(run)
    header, body = summary_rows(rows)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(run.name)} · stateset-agents'
            f"</title><style>{_CSS}</style></head><body><h1>Run {_e(run.name)}</h1>"
            f'<div class="sub">{_subtitle(run)} · {len(rows)} step{"s" if len(rows) != 1 else ""} logged</div>'
            f'<h2>Training curves</h2><div class="figure">{_svg(rows)}</div>'
            f"<h2>Steps</h2>{_table(header, [[_e(c) for c in r] for r in body])}"
            f'<h2>Before / after</h2>{_before_after(run)}<h2 id="transcripts">Evaluation transcripts</h2>'
            f"{_transcripts(run)}<script>{_JS}</script></body></html>")


def write_html_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write :func:`build_html` atomically to ``out`` (default ``RUN_DIR/report.html``); return its path."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    return write_text_atomic(path, build_html(run_dir))
