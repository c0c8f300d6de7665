"""The import graph of peftlab's own modules: modules, arrows, cycles, upward imports.

    python tools/import_graph.py            # summary
    python tools/import_graph.py --edges    # ... and every arrow (module-level and function-level)

Reads the source with the standard library's `ast` (nothing is imported). An arrow A -> B means
module A imports module B (a `from peftlab.x import name` whose `name` is a submodule points at
that submodule). Function-level imports count as arrows too: they hide the graph, not remove it.
A cycle is a strongly connected set of two or more modules. An upward import is one from a lower
floor to a higher one, by the floors of DESIGN.md (imports go downward only).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"

# Floors, top first: a module may import only from its own floor or below. The longest prefix that
# matches a module names its floor. A task's declaration (tasks.registry: the YAML spec, tasks.api:
# the hooks' contract) sits beside the config: the data layer reads what a task declares.
FLOORS: list[tuple[str, ...]] = [
    ("peftlab.cli",),
    ("peftlab.executors",),
    ("peftlab.runner", "peftlab.lifecycle", "peftlab.adapters", "peftlab.report"),
    ("peftlab.methods", "peftlab.tasks", "peftlab.train", "peftlab.evaluation", "peftlab.plan", "peftlab.tuning"),
    ("peftlab.data", "peftlab.models", "peftlab.measure", "peftlab.store"),
    ("peftlab.config", "peftlab.tasks.registry", "peftlab.tasks.api", "peftlab.paths", "peftlab.formatting",
     "peftlab.status", "peftlab.files", "peftlab.logs", "peftlab.numbers", "peftlab.evaluation.progress", "peftlab"),
]


def floor(module: str) -> int:
    best, best_len = len(FLOORS), -1
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = level, len(prefix)
    return best


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "peftlab").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def arrows(known: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported, at function level) for every import of a peftlab module."""
    found = set()
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
                targets = [t for t in targets if t.startswith("peftlab")]
                # `from peftlab.x import name`: name is a submodule, else the arrow is to peftlab.x
                targets = [t for t in targets[:-1] if t in known] or targets[-1:]
            for target in targets:
                if not target.startswith("peftlab"):
                    continue
                resolved = _resolve(target, known)
                if resolved and resolved != module:
                    found.add((module, resolved, id(node) in nested))
    # an arrow imported both ways counts once, as module-level if it is anywhere
    best: dict[tuple[str, str], bool] = {}
    for a, b, fn in found:
        best[(a, b)] = best.get((a, b), True) and fn
    return sorted((a, b, fn) for (a, b), fn in best.items())


def cycles(nodes: list[str], edges: list[tuple[str, str, bool]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b, _ in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every arrow")
    args = parser.parse_args(argv)
    known = modules()
    edges = arrows(known)
    cyc = cycles(list(known), edges)
    upward = [(a, b) for a, b, _ in edges if floor(b) < floor(a)]
    function_level = [(a, b) for a, b, fn in edges if fn]
    sizes = sorted(((len(p.read_text().splitlines()), m) for m, p in known.items()), reverse=True)[:5]
    print(f"modules: {len(known)}  arrows: {len(edges)}  function-level arrows: {len(function_level)}  "
          f"cycles: {len(cyc)}  upward imports: {len(upward)}")
    for comp in cyc:
        print("  cycle:", " <-> ".join(comp))
    for a, b in upward:
        print(f"  upward: {a} -> {b}")
    print("largest modules:", ", ".join(f"{m} {n}" for n, m in sizes))
    if args.edges:
        for a, b, fn in edges:
            print(f"{a} -> {b}{'  (in a function)' if fn else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
