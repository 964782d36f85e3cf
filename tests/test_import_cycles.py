"""The packages of src/mega_crm import each other without a cycle: each is understood (and can
be changed) knowing only those below it. Every import counts, at module level or inside a
function (a lazy import is still a dependency), under TYPE_CHECKING too."""

from __future__ import annotations

import ast
from pathlib import Path

import mega_crm

ROOT = Path(mega_crm.__file__).parent


def unit_of(module: str) -> str | None:
    """mega_crm.leads.service -> "leads"; mega_crm.db -> "db"; the root package or a module
    outside mega_crm -> None. A top-level module is a unit of its own, as a package is."""
    parts = module.split(".")
    if parts[0] != "mega_crm" or len(parts) < 2:
        return None
    return parts[1]


def imported(tree: ast.AST) -> set[str]:
    """The absolute module names a file imports (`from mega_crm import x` names mega_crm.x)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "mega_crm":
                names.update(f"mega_crm.{alias.name}" for alias in node.names)
    return names


def package_graph() -> dict[str, set[str]]:
    """unit -> the other units its files import (names imported from the root package that are
    not units, such as `__version__`, are left out)."""
    units = {path.stem for path in ROOT.iterdir() if path.suffix == ".py" or path.is_dir()}
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT).with_suffix("")
        if relative.parts[0] == "__init__":
            continue
        unit = relative.parts[0]
        targets = {unit_of(name) for name in imported(ast.parse(path.read_text(), str(path)))}
        graph.setdefault(unit, set()).update(t for t in targets if t in units and t != unit)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as the list of units along it (first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once explored
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = "open"
        path.append(unit)
        for target in sorted(graph.get(unit, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[unit] = "done"
        return None

    for unit in sorted(graph):
        if unit not in state and (cycle := visit(unit)) is not None:
            return cycle
    return None


def test_the_graph_sees_imports_of_every_kind() -> None:
    tree = ast.parse(
        "import mega_crm.a.b\nfrom mega_crm.c import d\nfrom mega_crm import e\n"
        "def f():\n    from mega_crm.g.h import i\n"
    )
    assert {unit_of(name) for name in imported(tree)} - {None} == {"a", "c", "e", "g"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    assert {"leads", "webhooks", "events"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
