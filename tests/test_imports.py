"""Every import in ddetr_cli is the standard library, ddetr_cli itself, a declared dependency,
or an optional extra's package imported through ddetr_cli.extras.require (one clear line when
it is missing). A fresh `pip install ddetr-cli` must never fail on an undeclared import."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from ddetr_cli.errors import DdetrError
from ddetr_cli.extras import EXTRAS, require

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ddetr_cli"
# Distribution names whose import name differs.
IMPORT_NAMES = {"pyyaml": "yaml", "pillow": "PIL"}


def _names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()
        names.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    return names


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import statement, at any depth, absolute ones only."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_every_import_is_stdlib_ddetr_or_declared():
    declared = _names(_project()["dependencies"])
    optional = {name for names in EXTRAS.values() for name in names}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, module in _imports(path):
            if module in sys.stdlib_module_names or module in ("ddetr_cli", "__future__"):
                continue
            if module in declared:
                continue
            where = f"{path.relative_to(ROOT)}:{line}: {module}"
            if module in optional:
                wrong.append(f"{where} is an optional extra: import it with extras.require")
            else:
                wrong.append(f"{where} is not a declared dependency")
    assert not wrong, "\n".join(wrong)


def test_extras_match_pyproject():
    extras = _project()["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert set(modules) <= _names(extras[extra]), extra


def test_require_names_the_extra_in_one_line():
    with pytest.raises(DdetrError, match=r"pip install 'ddetr-cli\[export\]'") as info:
        require("ddetr_no_such_module_xyz", "export")
    assert "\n" not in str(info.value)
    assert require("json", "export").dumps([]) == "[]"


def test_the_cli_imports_no_click():
    """typer >= 0.22 carries its own click; `import click` worked only where click happened
    to be installed."""
    for path in PACKAGE.rglob("*.py"):
        assert "click" not in {m for _, m in _imports(path)}, path
