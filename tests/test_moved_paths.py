"""Import paths that moved in 0.2 (#20): the documented old ones keep working for this release,
each access with one DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import warnings

import pytest

SHIMS = ("ddetr_cli.config", "ddetr_cli.predict", "ddetr_cli.images")
# What the README's Python API, docs/ and the 0.1.0 changelog name under the old paths.
DOCUMENTED = {
    "ddetr_cli.config": ("load_recipe", "validate_recipe", "apply_overrides", "dump_recipe"),
    "ddetr_cli.predict": ("run_predict",),
    "ddetr_cli.images": ("load_image", "list_images", "eval_size", "eval_transform"),
}


def _moved() -> list[tuple[str, str, str]]:
    found = []
    for old in SHIMS:
        module = importlib.import_module(old)
        found += [(old, name, home) for name, home in module.MOVED.items()]
    return found


def test_documented_names_are_forwarded():
    forwarded = {(old, name) for old, name, _ in _moved()}
    assert {(old, n) for old, names in DOCUMENTED.items() for n in names} <= forwarded


@pytest.mark.parametrize(("old", "name", "home"), _moved())
def test_each_moved_name_resolves_and_warns_once_per_access(old, name, home):
    module = importlib.import_module(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = getattr(module, name)
        second = getattr(module, name)
    assert first is second is getattr(importlib.import_module(home), name)
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert str(caught[0].message) == (
        f"{old}.{name} moved to {home}.{name}; the old path goes away in ddetr-cli 0.3"
    )
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_from_import_warns_and_unknown_names_fail():
    with pytest.warns(DeprecationWarning, match=r"ddetr_cli\.inference\.predict\.run_predict"):
        from ddetr_cli.predict import run_predict
    from ddetr_cli.inference.predict import run_predict as new

    assert run_predict is new
    with pytest.raises(ImportError, match="no_such_name"):
        from ddetr_cli.config import no_such_name  # noqa: F401


def test_export_package_keeps_its_documented_functions():
    """docs/export.md: ``ddetr_cli.export.export_onnx`` and ``check_onnx`` (a package now)."""
    import ddetr_cli.export as export
    from ddetr_cli.export.check import check_onnx
    from ddetr_cli.export.writer import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not moved: no warning
        assert export.export_onnx is export_onnx and export.check_onnx is check_onnx
