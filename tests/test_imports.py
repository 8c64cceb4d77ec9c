"""The runtime import graph between synap_bulk's modules: no cycles, and the core below the tasks.

The graph is read from the source with ``ast``: module-level and function-level ``import`` and
``from ... import`` statements, relative ones resolved, those under ``if TYPE_CHECKING:`` left
out (they never run). An edge goes to the module a statement names explicitly: ``from . import
x`` in ``synap_bulk.sandbox`` is an edge to ``synap_bulk.sandbox.x`` when ``x`` is a submodule,
and to the package ``synap_bulk.sandbox`` only when ``x`` is a name defined there. The parent
packages Python also runs on the way to a submodule (``synap_bulk/__init__``, which imports most
of the library) are not edges: counting them would make nearly every module "cycle" through the
top-level package and hide the real cycles among the rest.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

import synap_bulk

PACKAGE = "synap_bulk"
ROOT = Path(synap_bulk.__file__).resolve().parent

#: An edge: importer -> imported, with where the import statement is ("path:line").
Graph = dict[str, dict[str, str]]


def _modules(root: Path, package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``, except in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:  # the else branch does run
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _runtime_imports(child)


def _targets(
    stmt: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> Iterator[str]:
    """The modules ``stmt`` in ``module`` imports explicitly (package-internal or not)."""
    if isinstance(stmt, ast.Import):
        for alias in stmt.names:
            yield alias.name
        return
    if stmt.level:
        package = module if is_package else module.rpartition(".")[0]
        for _ in range(stmt.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{stmt.module}" if stmt.module else package
    else:
        base = stmt.module or ""
    for alias in stmt.names:
        sub = f"{base}.{alias.name}"
        # ``from pkg import name``: the submodule when there is one, else pkg itself.
        yield sub if alias.name != "*" and sub in known else base


@functools.cache  # read once per session (the tests only read the graph)
def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    """The explicit runtime imports between the modules of the package at ``root``."""
    modules = _modules(root, package)
    known = set(modules)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        where = path.relative_to(root.parent)
        for stmt in _runtime_imports(tree):
            for target in _targets(stmt, name, is_package, known):
                if target in known and target != name:
                    graph[name].setdefault(target, f"{where}:{stmt.lineno}")
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle (as a closed path) through each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm (the graph is small: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    found = []
    for group in groups:
        start = min(group)
        # Shortest way back to the start within the group (breadth first).
        came: dict[str, str] = {}
        frontier = [start]
        while start not in came:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in group and w not in came:
                        came[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while len(path) == 1 or path[-1] != start:
            path.append(came[path[-1]])
        found.append(path[::-1])
    return sorted(found)


def describe(graph: Graph, path: list[str]) -> str:
    steps = [f"  {a} -> {b}  ({graph[a][b]})" for a, b in itertools.pairwise(path)]
    return " -> ".join(path) + "\n" + "\n".join(steps)


def reachable(graph: Graph, start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not, with one import chain leading to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop()
        for w in sorted(graph[v]):
            if w not in chains:
                chains[w] = [*chains[v], w]
                todo.append(w)
    del chains[start]
    return chains


def test_the_graph_has_exactly_the_explicit_runtime_imports(tmp_path: Path) -> None:
    """Relative, absolute and in-function imports are edges; TYPE_CHECKING and parents are not."""
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "A = 1\n\ndef f():\n    from . import b\n",
        "b.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from .a import A\nelse:\n    from .sub import c\n"
            "from pkg.sub import VALUE\n"
        ),
        "sub/__init__.py": "from . import c\nimport pkg.a\nVALUE = 1\n",
        "sub/c.py": "from ..a import A\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert {k: set(v) for k, v in graph.items()} == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},  # inside a function
        "pkg.b": {"pkg.sub.c", "pkg.sub"},  # not pkg.a: that one is for the type checker
        "pkg.sub": {"pkg.sub.c", "pkg.a"},  # `from . import c` is the submodule
        "pkg.sub.c": {"pkg.a"},  # not pkg or pkg.sub, which Python runs on the way
    }
    assert graph["pkg.a"]["pkg.b"] == "pkg/a.py:4"
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]]


def test_no_import_cycles() -> None:
    """No synap_bulk module imports itself again through other modules at run time."""
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


@pytest.mark.parametrize(
    "name",
    [
        "items",
        "ledger",
        "report",
        "engine",
    ],
)
def test_core_modules_import_nothing_from_tasks(name: str) -> None:
    """The core (items, ledger, report, engine) runs without loading any synap_bulk.tasks module."""
    graph = import_graph()
    tasks = f"{PACKAGE}.tasks"
    chains = reachable(graph, f"{PACKAGE}.{name}")
    into = [c for m, c in chains.items() if m == tasks or m.startswith(tasks + ".")]
    assert not into, f"{PACKAGE}.{name} imports from {tasks}:\n" + "\n".join(
        describe(graph, c) for c in into
    )
