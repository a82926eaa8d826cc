"""``stateset-agents show FILE [--scenario ID] [--failed] [--step N] [--diff OTHER]``: print transcripts with rich.

Each episode: a header (scenario, trial, seed, PASS/FAIL, outcome score, reward), one panel per message (the
system prompt folded to its first line), and the outcome (how it ended, goal, database differences, forbidden
actions, error, reward components). ``--diff OTHER`` pairs the episodes of two files by (domain, scenario,
trial), e.g. the ``before`` and ``after`` evaluations of a training run, which use the same seeds, and prints
each pair side by side. ``--failed`` keeps failed episodes (with ``--diff``: pairs where either side failed).
``--step N`` keeps the episodes of training step N of a training run's ``train_transcripts.jsonl``
(:func:`at_step`).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .errors import ConfigError, did_you_mean
from .transcripts import Transcript

__all__ = ["at_step", "render", "render_diff", "select"]

_STYLE = {"system": "dim", "user": "cyan", "assistant": "green", "tool": "yellow"}


def select(records: Sequence[Transcript], *, scenario: str | None = None, failed: bool = False) -> list[Transcript]:
    """The records of ``scenario`` (all when None), only failed ones with ``failed``. An unknown scenario id
    raises :class:`ConfigError` with the close matches."""
    if scenario is not None:
        ids = list(dict.fromkeys(r.scenario_id for r in records))
        if scenario not in ids:
            hint = did_you_mean(scenario, ids) or f"It has: {', '.join(ids[:8])}" + (" ..." if len(ids) > 8 else "")
            raise ConfigError(f"--scenario {scenario!r} is not in these transcripts. {hint}")
    return [r for r in records if (scenario is None or r.scenario_id == scenario) and not (failed and r.success)]


def at_step(records: Sequence[Transcript], step: int | None, where: str = "the transcripts") -> list[Transcript]:
    """The records of training step ``step`` (all when None). A file without step numbers (an evaluation's) or
    without that step raises :class:`ConfigError` saying which steps it has."""
    if step is None:
        return list(records)
    steps = sorted({r.step for r in records if r.step is not None})
    if not steps:
        raise ConfigError(f"--step {step}: {where} has no training steps (it is not a training run's "
                          "RUN_DIR/train_transcripts.jsonl); leave --step out")
    if step not in steps:
        have = f"{steps[0]}..{steps[-1]}" if steps == list(range(steps[0], steps[-1] + 1)) else \
            ", ".join(map(str, steps[:12])) + (" ..." if len(steps) > 12 else "")
        raise ConfigError(f"--step {step} is not in {where}; it has steps {have}")
    return [r for r in records if r.step == step]


def _verdict(r: Transcript) -> str:
    return "PASS" if r.success else "FAIL"


def _title(r: Transcript) -> str:
    parts = [f"step {r.step}" if r.step is not None else None, r.scenario_id,
             f"trial {r.trial}" if r.trial is not None else None,
             f"seed {r.seed}" if r.seed is not None else None, r.tag]
    return " · ".join(p for p in parts if p)


def _numbers(r: Transcript) -> str:
    out = [_verdict(r)]
    if r.score is not None:
        out.append(f"score {r.score:.2f}")
    if r.progress is not None:
        out.append(f"progress {r.progress:.2f}")
    if r.reward is not None:
        out.append(f"reward {r.reward:.3f}")
    return " · ".join(out)


def _message(m: dict) -> Panel:
    role = m.get("role", "?")
    body = m.get("content") or ""
    if role == "system":
        first = body.splitlines()[0] if body else ""
        more = "…" if len(first) > 100 or len(body) > len(first) else ""
        body = f"{first[:100]}{more} ({len(body)} chars)"
    for c in m.get("tool_calls") or []:
        f = c.get("function", {})
        body += ("\n" if body else "") + f"→ {f.get('name')}({f.get('arguments')})"
    title = f"tool · {m.get('name')}" if role == "tool" else role
    return Panel(Text(body or "(empty)"), title=title, title_align="left", border_style=_STYLE.get(role, "white"))


def _outcome(r: Transcript) -> Panel:
    o = r.outcome or {}
    lines = [f"ended by {r.ended_by or '-'} · goal {r.goal_reached} · {r.turns} agent turns"]
    if o.get("state_diff"):
        lines.append(f"database differs at {', '.join(map(str, o['state_diff']))}")
    missed = [f["fact"] for f in o.get("facts_told") or [] if isinstance(f, dict) and not f.get("told")]
    if missed:
        lines.append(f"facts not told: {', '.join(missed)}")
    if o.get("forbidden_actions"):
        lines.append(f"forbidden: {', '.join(map(str, o['forbidden_actions']))}")
    if r.reward_components:
        lines.append("components: " + ", ".join(f"{k} {'-' if v is None else f'{v:.3f}'}"
                                                for k, v in r.reward_components.items()))
    for label, err in (("error", r.error), ("reward error", r.reward_error)):
        if err:
            lines.append(f"{label}: {err}")
    return Panel(Text("\n".join(lines)), title=_numbers(r), title_align="left",
                 border_style="green" if r.success else "red")


def episode(r: Transcript) -> RenderableType:
    """One episode as a rich renderable: its messages, then its outcome."""
    return Group(*[_message(m) for m in r.messages], _outcome(r))


def render(console: Console, records: Sequence[Transcript], *, scenario: str | None = None,
           failed: bool = False) -> int:
    """Print the selected episodes; return how many."""
    chosen = select(records, scenario=scenario, failed=failed)
    for r in chosen:
        console.rule(f"{_title(r)} · {_numbers(r)}")
        console.print(episode(r))
    _summary(console, records, chosen)
    return len(chosen)


def _summary(console: Console, records: Sequence[Transcript], chosen: Sequence[Transcript]) -> None:
    ok = sum(r.success for r in records)
    console.print(f"{len(chosen)} of {len(records)} episodes shown; {ok}/{len(records)} succeeded", highlight=False)


def _key(r: Transcript) -> tuple[str, str, int]:
    return (r.domain or "", r.scenario_id, r.trial if r.trial is not None else -1)


def render_diff(console: Console, before: Sequence[Transcript], after: Sequence[Transcript], *,
                scenario: str | None = None, failed: bool = False) -> int:
    """Print the episodes of two files side by side, paired by (domain, scenario, trial); return the pairs."""
    if scenario is not None:
        select(list(before) + list(after), scenario=scenario)  # the error for an unknown id
    right = {_key(r): r for r in after}
    pairs = [(b, right[_key(b)]) for b in before if _key(b) in right
             and (scenario is None or b.scenario_id == scenario)
             and (not failed or not (b.success and right[_key(b)].success))]
    for b, a in pairs:
        seeds = "" if b.seed == a.seed else f" · seeds differ ({b.seed} vs {a.seed}): not the same draws"
        console.rule(f"{_title(b)} · {_verdict(b)} → {_verdict(a)}{seeds}")
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(ratio=1)
        grid.add_column(ratio=1)
        grid.add_row(Text("before", style="bold"), Text("after", style="bold"))
        grid.add_row(episode(b), episode(a))
        console.print(grid)
    left = {_key(b) for b in before}
    unpaired = sum(_key(b) not in right for b in before) + sum(_key(a) not in left for a in after)
    changed = {(x, y): sum(_verdict(b) == x and _verdict(a) == y for b, a in pairs)
               for x in ("FAIL", "PASS") for y in ("FAIL", "PASS")}
    console.print(f"{len(pairs)} pairs shown; FAIL → PASS {changed['FAIL', 'PASS']}, PASS → FAIL "
                  f"{changed['PASS', 'FAIL']}, unchanged {changed['PASS', 'PASS'] + changed['FAIL', 'FAIL']}"
                  + (f"; {unpaired} episodes without a partner (different scenarios or k)" if unpaired else ""),
                  highlight=False)
    return len(pairs)
