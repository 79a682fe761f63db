"""Checking a (possibly partial) recipe tree against the schema: unknown keys with a suggestion,
types, choices, ranges, and the combinations the model cannot build.

Errors are ``DdetrError``s that name the source (file, override, checkpoint) and the dotted key,
so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe.schema import (
    CHOICES,
    DEFAULTS,
    MAXIMUM,
    MINIMUM,
    NULLABLE,
    SCHEMA,
    STR_LIST,
)


def _suggest(dotted: str) -> str:
    """' (did you mean 'x.y'?)' for the closest valid key, or ''."""
    leaf = dotted.rsplit(".", 1)[-1]
    same_leaf = [key for key in SCHEMA if key.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return f" (did you mean '{same_leaf[0]}'?)"
    close = difflib.get_close_matches(dotted, list(SCHEMA), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_keys_message(keys: Sequence[str]) -> str:
    """Every unknown key with its suggestion, so that one run shows all the typos."""
    listed = ", ".join(f"'{key}'{_suggest(key)}" for key in keys)
    return f"unknown key {listed}" if len(keys) == 1 else f"{len(keys)} unknown keys: {listed}"


def _unknown_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a (partial) recipe tree that the schema does not have; an unknown
    section is one key (its contents are not looked at)."""
    unknown = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or dotted not in SCHEMA:
            unknown.append(str(dotted))
        elif isinstance(SCHEMA[dotted], Mapping) and isinstance(value, Mapping):
            unknown += _unknown_keys(value, dotted + ".")
    return unknown


def describe_value(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_leaf(dotted: str, value: Any, source: str) -> Any:
    """The value, type-checked against the schema; ints become floats where floats are expected."""
    default = SCHEMA[dotted]
    if value is None and dotted in NULLABLE:
        return None
    if default is None:  # a nullable key set to a value (None returned above)
        kind = NULLABLE[dotted]
        if kind is STR_LIST:
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return list(value)
            raise DdetrError(
                f"{source}: {dotted} must be {STR_LIST} or null, got {describe_value(value)}"
            )
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise DdetrError(
            f"{source}: {dotted} must be a string (a path) or null, got {describe_value(value)}"
        )
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise DdetrError(f"{source}: {dotted} must be true or false, got {describe_value(value)}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DdetrError(f"{source}: {dotted} must be an integer, got {describe_value(value)}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise DdetrError(f"{source}: {dotted} must be a number, got {describe_value(value)}")
    if isinstance(value, str):
        return value
    raise DdetrError(f"{source}: {dotted} must be a string, got {describe_value(value)}")


def normalise(tree: Any, source: str, prefix: str = "") -> dict[str, Any]:
    """A copy of a (possibly partial) recipe tree with unknown keys and wrong types rejected."""
    where = prefix.rstrip(".") or "the recipe"
    if tree is None and prefix:
        return {}  # an empty section ("loss:" with nothing under it)
    if not isinstance(tree, Mapping):
        raise DdetrError(f"{source}: {where} must be a mapping, got {describe_value(tree)}")
    unknown = _unknown_keys(tree, prefix)
    if unknown:
        raise DdetrError(f"{source}: {unknown_keys_message(unknown)}")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(SCHEMA[dotted], Mapping):
            out[key] = normalise(value, source, dotted + ".")
        else:
            out[key] = _check_leaf(dotted, value, source)
    return out


def merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, anything else in ``top`` replaces ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _check_ranges(recipe: dict[str, Any], source: str) -> None:
    for dotted, choices in CHOICES.items():
        value = _get(recipe, dotted)
        if value not in choices:
            raise DdetrError(
                f"{source}: {dotted} must be one of {', '.join(choices)}, got {value!r}"
                f"{_close_choice(value, choices)}"
            )
    for dotted, low in MINIMUM.items():
        value = _get(recipe, dotted)
        if value is None:
            continue
        high, inclusive = MAXIMUM.get(dotted, (math.inf, True))
        if value < low or value > high or (value == high and not inclusive):
            bound = (
                f">= {low}"
                if high == math.inf
                else f"in [{low}, {high:g}{']' if inclusive else ')'}"
            )
            raise DdetrError(f"{source}: {dotted} must be {bound}, got {value!r}")
    model = recipe["model"]
    if model["hidden_dim"] % model["nheads"]:
        raise DdetrError(
            f"{source}: model.hidden_dim ({model['hidden_dim']}) must be divisible by "
            f"model.nheads ({model['nheads']})"
        )
    if model["hidden_dim"] % 32:
        # The input projections normalise with GroupNorm(32, hidden_dim), as the official.
        raise DdetrError(
            f"{source}: model.hidden_dim must be a multiple of 32 (GroupNorm with 32 groups), "
            f"got {model['hidden_dim']}"
        )
    if model["two_stage"] and not model["with_box_refine"]:
        # The official model crashes in this configuration (Deformable-DETR issue #182).
        raise DdetrError(
            f"{source}: model.two_stage requires model.with_box_refine: true "
            "(two-stage uses the refinement heads)"
        )
    names, count = model["class_names"], model["num_classes"]
    if names is not None and count is not None and len(names) != count:
        raise DdetrError(
            f"{source}: model.class_names has {len(names)} names but model.num_classes is "
            f"{model['num_classes']} (one name per class index)"
        )


def _close_choice(value: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def validate_recipe(recipe: Mapping[str, Any], source: str = "recipe") -> dict[str, Any]:
    """A complete, checked copy of a possibly partial recipe, e.g. one read from a checkpoint.

    Missing keys take their defaults; unknown keys, wrong types and invalid values raise
    ``DdetrError`` with ``source`` (a file name, "checkpoint ...") in the message.
    """
    full = merge(DEFAULTS, normalise(recipe, source))
    _check_ranges(full, source)
    return full
