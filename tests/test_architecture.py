"""The layer rule of docs/architecture.md, read from the code's own imports (ast), lazy ones included.

ground (fsmtl/core) -> models, preprocess (siblings) -> pipelines -> train -> eval -> benchmarks
-> the top (fsmtl/: command line, demo, report, doctor). A module imports only from lower layers
or from its own stage, and no set of modules imports itself round in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"models": 1, "preprocess": 1, "pipelines": 2, "train": 3, "eval": 4, "benchmarks": 5}


def modules() -> dict[str, Path]:
    """Every module of the package, by its dotted name under fsmtl."""
    out = {}
    for folder in ("fsmtl", *STAGES):
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts if parts[0] == "fsmtl" else ["fsmtl", *parts])] = path
    return out


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the fsmtl modules it imports anywhere in its body (functions and TYPE_CHECKING too)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "fsmtl":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "fsmtl")
        edges[name] = {m for m in found if m != name}
    return edges


def layer(module: str) -> tuple[int, str]:
    """(layer, the stage or part it belongs to)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] == "core":
        return 0, "core"
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES[parts[1]], parts[1]
    return 6, "top"


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_runs_against_the_layers() -> None:
    bad = []
    for src, targets in sorted(imports(modules()).items()):
        if src == "fsmtl":
            bad += [f"{src} -> {t} (the package root imports nothing of fsmtl)" for t in targets]
            continue
        ls, ss = layer(src)
        for t in sorted(targets):
            if t == "fsmtl":
                continue
            lt, st = layer(t)
            if ss == st:
                continue
            if lt >= ls:
                bad.append(f"{src} ({ss}, layer {ls}) -> {t} ({st}, layer {lt})")
    print("\n".join(bad) or "no import against the layers")
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    found = circles(imports(modules()))
    print("\n".join(" <-> ".join(c) for c in found) or "no import circles")
    assert not found, found


def test_the_rule_catches_what_it_forbids() -> None:
    # the checker itself: an upward import and a circle are seen
    assert layer("fsmtl.train.run") == (3, "train") and layer("fsmtl.core.errors") == (0, "core")
    assert layer("fsmtl.cli") == (6, "top") and layer("fsmtl.models.heads.logreg") == (1, "models")
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
