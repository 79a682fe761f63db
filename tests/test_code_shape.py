"""The package's shape (#10, #20): no import cycles, nothing imports the CLI, layers point one
way, the root holds only entry points, leaf helpers and deprecated shims that nothing imports, no
function over 100 lines. Imports inside functions count: a lazy import is still a dependency."""

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


# The root: entry points, leaf helpers (importing nothing of ddetr but errors) and the shims of
# paths that moved in 0.2 (tests/test_moved_paths.py), which no module of the package imports.
ENTRY_POINTS = {"ddetr_cli", "ddetr_cli.__main__"}
LEAF_HELPERS = {f"ddetr_cli.{name}" for name in ("errors", "files", "runtime", "extras", "lazy")}
SHIMS = {"ddetr_cli.config", "ddetr_cli.predict", "ddetr_cli.images"}
# The model and its op sit below everything else: each may import only what is listed.
LOWER_LAYERS = {
    "ddetr_cli.ops": ("ddetr_cli.ops",),
    "ddetr_cli.model": ("ddetr_cli.model", "ddetr_cli.ops"),
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_root_holds_entry_points_leaf_helpers_and_shims():
    root = {m for m in MODULES if m.count(".") == 1 and not MODULES[m].name == "__init__.py"}
    root |= {"ddetr_cli"}
    assert root == ENTRY_POINTS | LEAF_HELPERS | SHIMS


def test_leaf_helpers_import_nothing_of_ddetr_but_errors():
    wrong = {
        m: GRAPH[m] - {"ddetr_cli.errors"} for m in LEAF_HELPERS if GRAPH[m] - {"ddetr_cli.errors"}
    }
    assert not wrong


def test_nothing_imports_a_deprecated_shim():
    wrong = {m: GRAPH[m] & SHIMS for m in GRAPH if GRAPH[m] & SHIMS}
    assert not wrong


def test_model_and_ops_import_nothing_above_them():
    wrong = []
    for layer, allowed in LOWER_LAYERS.items():
        for module in (m for m in GRAPH if _within(m, layer)):
            for dep in GRAPH[module]:
                if dep not in LEAF_HELPERS and not any(_within(dep, a) for a in allowed):
                    wrong.append(f"{module} -> {dep}")
    assert not wrong, "\n".join(sorted(wrong))


def test_callers_of_a_detector_never_ask_which_kind_it_is():
    """Evaluation, prediction and the benchmark run any ``model.protocol.Detector``."""
    jobs = ("ddetr_cli.bench", "ddetr_cli.evaluation", "ddetr_cli.inference")
    callers = [path for m, path in MODULES.items() if any(_within(m, job) for job in jobs)]
    wrong = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in callers
        for needle in ("isinstance(model", ".session", "OnnxDetector")
        if needle in path.read_text()
    ]
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
