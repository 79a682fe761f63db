"""The package's shape (#10): no import cycles, nothing imports the CLI, no function over 100
lines. Imports inside functions count: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddetr_cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _target(name: str) -> str | None:
    """The ddetr_cli module an import names (the longest prefix that is a module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _dependencies(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("ddetr_cli"):
                target = _target(name)
                if target and target != module and not module.startswith(target + "."):
                    found.add(target)  # a module importing its own package is not a cycle
    return found


GRAPH = {module: _dependencies(module) for module in MODULES}


def _cycle_from(start: str) -> list[str] | None:
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for dep in GRAPH[module]:
            if dep == start:
                return [*path, start]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def test_no_import_cycles():
    cycles = {" -> ".join(c) for m in GRAPH if (c := _cycle_from(m))}
    assert not cycles, "\n".join(sorted(cycles))


def test_nothing_imports_the_cli():
    wrong = [
        m for m, deps in GRAPH.items()
        if not m.startswith("ddetr_cli.cli") and m != "ddetr_cli.__main__"
        and any(d.startswith("ddetr_cli.cli") for d in deps)
    ]  # fmt: skip
    assert not wrong


def test_no_function_over_100_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 100:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)
