"""psi_ray's import graph, read from the source (AST): no import cycle, and the layers that use the data
(``train``, ``serve``, ``evaluate``, ``report``) never import the pipeline or the CLI, which sit above them;
no module is over 400 lines.

Every import counts, top-level or inside a function. ``from pkg import name`` is an edge to ``pkg.name`` when
that is a module, else to ``pkg``; a module's own parent packages are not edges (Python imports them first
anyway, and a package's ``__init__`` that lists its submodules would otherwise read as a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "psi_ray"
LOWER_LAYERS = ("psi_ray.train", "psi_ray.serve", "psi_ray.evaluate", "psi_ray.report")
UPPER = ("psi_ray.pipeline", "psi_ray.cli")


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                for a in node.names:
                    targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base))
        parents = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in targets if t and t.startswith("psi_ray") and t != name and t not in parents}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, edges = work[-1]
            w = next(edges, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "psi_ray.runtime" in graph["psi_ray.pipeline.psi"] and "psi_ray.runtime" in graph["psi_ray.serve"]
    assert "psi_ray.pipeline.closing" in graph["psi_ray.pipeline.psi"]
    assert "psi_ray.train" in graph["psi_ray.pipeline.closing"]  # imported inside a function: counted too


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_lower_layers_never_import_the_pipeline_or_the_cli():
    bad = {m: sorted(t for t in targets if t.startswith(UPPER))
           for m, targets in import_graph().items() if m.startswith(LOWER_LAYERS)}
    assert {m: t for m, t in bad.items() if t} == {}


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
