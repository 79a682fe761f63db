"""Reading recipes: YAML files with ``base:`` inheritance, dotted ``key=value`` overrides, data
paths made absolute, and writing a resolved recipe back as YAML.

A resolved recipe is a nested plain dict holding every key of ``DEFAULTS``, checked by
``recipe.validate``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe.library import resolve_base, resolve_recipe
from ddetr_cli.recipe.schema import DATA_PATH_KEYS, NULLABLE, SCHEMA
from ddetr_cli.recipe.validate import (
    describe_value,
    merge,
    normalise,
    unknown_keys_message,
    validate_recipe,
)


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2-style scalars: only true/false are booleans, so ``amp: off`` stays the string
    "off" (YAML 1.1 would read False), and ``2e-4`` is a float (PyYAML would read a string)."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_RecipeLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def absolute_data_paths(tree: Mapping[str, Any], base: str | Path) -> dict[str, Any]:
    """A copy of a (partial) recipe tree whose relative data paths (``DATA_PATH_KEYS``, ``~``
    expanded) are made absolute against the folder ``base``; other values as they are."""
    out = copy.deepcopy(dict(tree))
    for dotted in DATA_PATH_KEYS:
        *sections, leaf = dotted.split(".")
        node: Any = out
        for part in sections:
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            # abspath, not resolve(): the path as the user wrote it, ".." folded, links kept.
            node[leaf] = os.path.abspath(os.path.join(base, os.path.expanduser(node[leaf])))
    return out


def _key_of(item: str) -> str:
    return item.partition("=")[0].strip()


def _parse_override(item: str) -> tuple[str, Any]:
    """'model.nheads=4' -> ('model.nheads', 4), the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DdetrError(f"override '{item}': expected dotted key=value, e.g. train.epochs=12")
    if key not in SCHEMA:
        raise DdetrError(f"override '{item}': {unknown_keys_message([key])}")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader)
    except yaml.YAMLError as exc:
        raise DdetrError(f"override '{item}': cannot parse the value as YAML ({exc})") from None
    expects_str = isinstance(SCHEMA[key], str) or NULLABLE.get(key) is str
    if expects_str and value is not None and not isinstance(value, str):
        value = raw.strip()  # output_dir=2024 means the folder "2024"
    return key, value


def apply_overrides(
    recipe: Mapping[str, Any], overrides: Sequence[str], source: str = "recipe"
) -> dict[str, Any]:
    """A validated, complete copy of ``recipe`` with dotted ``key=value`` overrides applied.

    Values are parsed as YAML (``train.epochs=12``, ``model.class_names=[cat, dog]``,
    ``data.root=null``); relative data paths among them are made absolute against the current
    folder. ``recipe`` may be partial (missing keys take their defaults), e.g. the recipe stored
    in a checkpoint; ``source`` names it in error messages.
    """
    tree = normalise(recipe, source)
    typos = [item for item in overrides if "=" in item and _key_of(item) not in SCHEMA]
    if len(typos) > 1:
        quoted = ", ".join(f"'{item}'" for item in typos)
        keys = unknown_keys_message([_key_of(item) for item in typos])
        raise DdetrError(f"overrides {quoted}: {keys}")
    for item in overrides:
        key, value = _parse_override(item)
        partial: Any = value
        for part in reversed(key.split(".")):
            partial = {part: partial}
        partial = absolute_data_paths(normalise(partial, f"override '{item}'"), os.getcwd())
        tree = merge(tree, partial)
    return validate_recipe(tree, f"{source} with overrides" if overrides else source)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise DdetrError(f"recipe file not found: {path}")
    if path.is_dir():
        raise DdetrError(f"{path}: is a directory, not a recipe file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise DdetrError(f"{path}{line}: invalid YAML ({exc.problem})") from None
    except yaml.YAMLError as exc:
        raise DdetrError(f"{path}: invalid YAML ({exc})") from None
    except UnicodeDecodeError:
        raise DdetrError(f"{path}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise DdetrError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DdetrError(
            f"{path}: the top level must be a mapping of sections, got {describe_value(data)}"
        )
    return data


def _load_tree(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The merged, checked (but not default-filled) tree of one file and its bases."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(resolved) :], resolved))
        raise DdetrError(f"{path}: 'base:' inheritance cycle ({cycle})")
    data = _read_yaml(path)
    base = data.pop("base", None)
    tree = absolute_data_paths(normalise(data, str(path)), path.parent)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise DdetrError(f"{path}: base must be a recipe path, got {describe_value(base)}")
    # A packaged recipe's name (`base: refine`), else a path relative to this file.
    base_path = resolve_base(base, path)
    return merge(_load_tree(base_path, (*chain, resolved)), tree)


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a recipe file (with its ``base:`` chain), apply overrides, fill defaults, validate.

    ``path`` may also name a packaged recipe (``"refine"``). Relative data paths resolve
    against the folder of the file that sets them, those of ``overrides`` against the current
    folder: the result holds them absolute.

    ``load_recipe(None, overrides)`` is the defaults plus the overrides.
    """
    if path is None:
        return apply_overrides({}, overrides, "defaults")
    path = resolve_recipe(path)
    return apply_overrides(_load_tree(path, ()), overrides, str(path))


def load_run_recipe(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A run's own recipe.yaml (written resolved) with overrides applied. Its data paths are
    absolute; a relative one (runs of ddetr 0.1) meant the folder training ran in, taken to be
    the current folder, as ddetr 0.1 did."""
    path = Path(path)
    tree = _read_yaml(path)
    if "base" in tree:  # not written by ddetr: an ordinary recipe file
        return load_recipe(path, overrides)
    tree = absolute_data_paths(normalise(tree, str(path)), os.getcwd())
    return apply_overrides(tree, overrides, str(path))


def format_recipe(recipe: Mapping[str, Any]) -> str:
    """The recipe as YAML text (section order kept; strings like "off" quoted)."""
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=False)


def dump_recipe(recipe: Mapping[str, Any], path: str | Path) -> None:
    """Write a recipe as YAML atomically (a temporary file in the same folder, then rename)."""
    from ddetr_cli.files import atomic_write

    with atomic_write(path) as fh:
        fh.write(format_recipe(recipe))
