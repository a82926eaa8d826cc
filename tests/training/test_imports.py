"""The package's import graph, walked from the source (every import, at module level or inside a function): no
cycles, no upward imports between layers, and no module over 400 lines.

Known debts in other areas are listed by name with the reason, and the tests check the lists exactly: a new
violation fails, and so does a fixed one until it is removed from its list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stateset_agents

ROOT = Path(stateset_agents.__file__).parent

LAYERS = {
    "types": 0, "errors": 0, "toolcalls": 0, "atomic": 0,
    "models": 1,
    "envs": 2,
    "agents": 3, "resolve": 3,
    "rollout": 4, "rewards": 4,
    "evaluation": 5, "evaluation_report": 5, "evaluation_compare": 5, "paired": 5, "transcripts": 5,
    "transcripts_show": 5,
    "training": 6,
    "chat": 7, "demo": 7,
    "serving": 8, "": 8,  # "" is the package's public __init__
    "cli": 9, "cli_commands": 9, "__main__": 9,
}
"""Each top-level module or subpackage and its layer: a module may import its own layer and those below only."""

MODULE_LAYERS = {"stateset_agents.rewards.embeddings": 1}
"""Modules whose layer differs from their package's: the sentence embedder is a model wrapper (no rewards inside)."""

KNOWN_UPWARD: dict[tuple[str, str], str] = {}
KNOWN_CYCLES: dict[frozenset[str], str] = {}
SIZE_LIMIT = 400
"""Lines a module may have."""
KNOWN_LONG: set[str] = set()
"""Modules over the limit today (other areas)."""


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for t in targets:
            while t not in known and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in known and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(name: str) -> int:
    if name in MODULE_LAYERS:
        return MODULE_LAYERS[name]
    parts = name.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def test_every_module_has_a_layer():
    unknown = sorted({n.split(".")[1] for n in modules() if "." in n and n.split(".")[1] not in LAYERS})
    assert unknown == [], f"add these to LAYERS: {unknown}"


def test_no_import_cycles():
    found = {c: sorted(c) for c in cycles(graph())}
    assert set(found) == set(KNOWN_CYCLES), f"cycles: {list(found.values())}"


def test_training_modules_form_no_cycle_and_import_no_builder():
    g = graph()
    training = {n for n in g if n.startswith("stateset_agents.training")}
    assert not [c for c in cycles(g) if c & training]
    builders = {"stateset_agents.training.build", "stateset_agents.training"}
    # the recipe runs whole trainers one after another, as the CLI does
    assert {n for n in training if g[n] & builders} <= {"stateset_agents.training", "stateset_agents.training.recipe"}, \
        "only the CLI and callers above training/ use build"


def test_no_upward_imports():
    g = graph()
    upward = {(a, b) for a, deps in g.items() for b in deps if layer(b) > layer(a)}
    assert upward == set(KNOWN_UPWARD), sorted(upward - set(KNOWN_UPWARD))


def test_agents_never_import_training():
    g = graph()
    assert not {(a, b) for a, deps in g.items() if a.startswith("stateset_agents.agents")
                for b in deps if b.startswith("stateset_agents.training")}


def test_modules_stay_under_about_400_lines():
    long = {n for n, p in modules().items() if len(p.read_text(encoding="utf-8").splitlines()) > SIZE_LIMIT}
    assert long == KNOWN_LONG, (sorted(long - KNOWN_LONG), sorted(KNOWN_LONG - long))
