"""Print the package-level import graph of aqqua_geo and check the layering rules.

    python tools/import_graph.py            # edges "a -> b" between aqqua_geo subpackages

Rules checked (exit 1 if broken): ``foundation`` imports nothing from ``downstream``; no
import cycle between subpackages; no module imports itself through a cycle of modules.
Imports inside functions count too (they are still dependencies); ``if TYPE_CHECKING:``
imports do not.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "aqqua_geo"


def module_imports() -> dict[str, set[str]]:
    """Module name → aqqua_geo modules it imports (anywhere in the file)."""
    names = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
             for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        deps = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                       for stmt in block.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: not a runtime dependency
                continue
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aqqua_geo"):
                subs = {f"{node.module}.{a.name}" for a in node.names} & names
                # "from pkg import submodule" depends on the submodule, not on pkg/__init__
                deps.update(subs if len(subs) == len(node.names) else subs | {node.module})
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("aqqua_geo"))
        graph[name] = deps
    known = set(graph)
    return {m: {d for d in deps if d in known and d != m} for m, deps in graph.items()}


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aqqua_geo"


def package_graph(mods: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for m, deps in mods.items():
        for d in deps:
            a, b = subpackage(m), subpackage(d)
            if a != b:
                edges[a].add(b)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def problems() -> list[str]:
    mods = module_imports()
    edges = package_graph(mods)
    out = []
    bad = sorted(f"{m} -> {d}" for m, deps in mods.items() for d in deps
                 if subpackage(m) == "foundation" and subpackage(d) == "downstream")
    out += [f"foundation imports downstream: {b}" for b in bad]
    if cycle := find_cycle(edges):
        out.append("subpackage import cycle: " + " -> ".join(cycle))
    if cycle := find_cycle(mods):
        out.append("module import cycle: " + " -> ".join(cycle))
    return out


def main() -> int:
    edges = package_graph(module_imports())
    for a in sorted(edges):
        print(f"{a:12s} -> {', '.join(sorted(edges[a]))}")
    found = problems()
    for p in found:
        print("PROBLEM:", p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
