"""Layering rules of the package (tools/import_graph.py): foundation imports nothing from
downstream, and there is no import cycle between subpackages or modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_layering_rules_hold():
    path = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", path)
    graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph)
    assert graph.problems() == []
    edges = graph.package_graph(graph.module_imports())
    assert "downstream" not in edges["foundation"] and "foundation" in edges["downstream"]
