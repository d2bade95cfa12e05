"""The package's shape: no module imports one that imports it, even inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cloaca_celery"


def _imports(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cloaca_celery."):
            found.add((node.module or "").split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cloaca_celery."))
    return found & modules


def test_no_module_imports_one_that_imports_it() -> None:
    paths = {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    paths["migrations"] = PACKAGE / "migrations" / "__init__.py"
    graph = {name: _imports(path, set(paths)) for name, path in paths.items()}
    graph["migrations"] |= _imports(PACKAGE / "migrations" / "env.py", set(paths)) - {"migrations"}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in path:
                cycles.append(" -> ".join([*path[path.index(dep):], dep]))
            elif len(path) < len(graph):
                visit(dep, [*path, dep])

    for name in sorted(graph):
        visit(name, [name])
    assert not cycles, sorted(set(cycles))


def test_the_package_init_only_re_exports() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds
