"""Recipes: YAML files with ``base:`` inheritance, dotted ``key=value`` overrides, strict checks.

A resolved recipe is a nested plain dict holding every key of ``DEFAULTS``. Unknown keys, wrong
types and obviously invalid values are ``DdetrError``s that name the file (or override) and the
dotted key, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ddetr_cli.errors import DdetrError
from ddetr_cli.recipe_library import resolve_base, resolve_recipe

# The defaults are also the schema: a key exists iff it is here, and its value's type is the type
# every recipe must use (int is accepted where a float is expected).
DEFAULTS: dict[str, Any] = {
    "model": {
        "backbone": "resnet50",
        "pretrained_backbone": False,
        "backbone_norm": "frozen",
        "freeze_backbone_stem": True,
        "dilation": False,
        "num_classes": 91,
        "class_names": None,
        "num_feature_levels": 4,
        "hidden_dim": 256,
        "nheads": 8,
        "enc_layers": 6,
        "dec_layers": 6,
        "dim_feedforward": 1024,
        "dropout": 0.1,
        "num_queries": 300,
        "enc_n_points": 4,
        "dec_n_points": 4,
        "with_box_refine": False,
        "two_stage": False,
        "aux_loss": True,
        "attention_backend": "auto",
        "num_detections": 100,
    },
    "loss": {
        "cls_loss_coef": 2.0,
        "bbox_loss_coef": 5.0,
        "giou_loss_coef": 2.0,
        "focal_alpha": 0.25,
    },
    "matcher": {
        "set_cost_class": 2.0,
        "set_cost_bbox": 5.0,
        "set_cost_giou": 2.0,
    },
    "data": {
        # auto (the layout of data.root decides), coco, yolo, voc, shapes; see docs/data.md.
        "format": "auto",
        "root": None,
        "train": {"images": None, "annotations": None},
        "val": {"images": None, "annotations": None},
        "eval_min_size": 800,
        "eval_max_size": 1333,
        "num_workers": 2,
        # Training augmentation: paper (flip + multi-scale / crop), flip, none.
        "augment": "paper",
        # Built-in shapes (format: shapes): training pictures come from `seed`, the val split
        # from its own fixed seed.
        # task: shapes3 (circle, rectangle, triangle) or shapes6 (those plus ellipse, star,
        # cross: a second task from the same generator, for transfer experiments).
        "shapes": {"train_images": 2000, "val_images": 200, "seed": 0, "task": "shapes3"},
    },
    "train": {
        "epochs": 50,
        "batch_size": 2,
        "lr": 2.0e-4,
        "lr_backbone": 2.0e-5,
        "lr_linear_proj_mult": 0.1,
        "weight_decay": 1.0e-4,
        "lr_drop": 40,
        "clip_max_norm": 0.1,
        "amp": "off",
        "seed": 42,
        "output_dir": "runs/default",
        "eval_every": 1,
        "checkpoint_every": 1,
        "device": "auto",  # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda
        "log_every": 20,  # steps between metrics.jsonl lines
        "max_steps": 0,  # stop after this many optimiser steps in all (0: epochs decide)
        "accumulate": 1,  # batches whose gradients add up to one optimiser step
        "ema": 0.0,  # decay of an exponential moving average of the weights (0: off)
        "patience": 0,  # stop after this many evaluations without a better val AP (0: off)
        "tensorboard": False,  # TensorBoard event files in the run folder
    },
}

# The recipe schema's version, stored in every checkpoint. Renaming or removing a key (or
# changing what a value means) bumps it and adds a migration below, so that every checkpoint
# written since 0.1.0 keeps loading. Adding a key with a default needs neither: stored recipes
# are partial as far as validation is concerned, and missing keys take their defaults.
RECIPE_SCHEMA = 1
# schema N -> a function that turns a schema-N recipe (a nested dict) into a schema N+1 one.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def migrate_recipe(recipe: dict[str, Any], schema: int) -> dict[str, Any]:
    """A recipe stored under an older schema, brought to the current one."""
    if schema > RECIPE_SCHEMA:
        raise DdetrError(
            f"the recipe was written by a newer ddetr (recipe schema {schema}, this version "
            f"reads up to {RECIPE_SCHEMA}): upgrade ddetr-cli"
        )
    for version in range(schema, RECIPE_SCHEMA):
        recipe = MIGRATIONS[version](recipe)
    return recipe


# The torchvision ResNets the model builds (model/backbone.py), and the attention op's backends
# (ops/backends.py): listed here, where recipes are checked, and imported there.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
ATTENTION_BACKENDS = ("auto", "reference", "kernel")

# Paths of the data. A relative one means: in a recipe file, relative to that file's folder; on
# the command line (key=value), relative to the current folder. Resolved recipes hold them
# absolute, so a run's recipe.yaml and checkpoints work from any folder (docs/data.md#paths).
DATA_PATH_KEYS = (
    "data.root",
    "data.train.images",
    "data.train.annotations",
    "data.val.images",
    "data.val.annotations",
)

# Keys whose default is null, and what they accept once set.
_STR_LIST = "a list of strings"
_NULLABLE: dict[str, Any] = {
    "model.num_classes": int,  # null: from the data (training); default 91 (COCO ids)
    "model.class_names": _STR_LIST,
    "data.root": str,
    "data.train.images": str,
    "data.train.annotations": str,
    "data.val.images": str,
    "data.val.annotations": str,
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "model.backbone": (*BACKBONES, "convnet"),  # convnet: small, from scratch (shapes)
    "model.backbone_norm": ("frozen", "batch"),
    "model.attention_backend": ATTENTION_BACKENDS,
    "train.amp": ("off", "bf16", "fp16"),
    "data.format": ("auto", "coco", "yolo", "voc", "shapes"),
    "data.shapes.task": ("shapes3", "shapes6"),
    "data.augment": ("paper", "flip", "none"),
    "train.device": ("auto", "cpu", "cuda"),
}

# Inclusive lower bounds.
_MINIMUM: dict[str, float] = {
    "model.num_classes": 1,
    "model.num_feature_levels": 1,
    "model.hidden_dim": 1,
    "model.nheads": 1,
    "model.enc_layers": 1,
    "model.dec_layers": 1,
    "model.dim_feedforward": 1,
    "model.num_queries": 1,
    "model.enc_n_points": 1,
    "model.dec_n_points": 1,
    "model.num_detections": 1,
    "loss.cls_loss_coef": 0,
    "loss.bbox_loss_coef": 0,
    "loss.giou_loss_coef": 0,
    "matcher.set_cost_class": 0,
    "matcher.set_cost_bbox": 0,
    "matcher.set_cost_giou": 0,
    "data.eval_min_size": 1,
    "data.eval_max_size": 1,
    "data.num_workers": 0,
    "train.epochs": 1,
    "train.batch_size": 1,
    "train.lr": 0,
    "train.lr_backbone": 0,  # 0 = frozen backbone
    "train.lr_linear_proj_mult": 0,
    "train.weight_decay": 0,
    "train.lr_drop": 1,
    "train.clip_max_norm": 0,  # 0 = no clipping
    "train.seed": 0,
    "train.eval_every": 1,
    "train.checkpoint_every": 1,
    "data.shapes.train_images": 1,
    "data.shapes.val_images": 1,
    "data.shapes.seed": 0,
    "train.log_every": 1,
    "train.max_steps": 0,
    "train.accumulate": 1,
    "train.ema": 0,
    "train.patience": 0,
}


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


def _walk(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every section and leaf of a nested dict, depth first."""
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        items.append((dotted, value))
        if isinstance(value, Mapping):
            items.extend(_walk(value, dotted + "."))
    return items


_SCHEMA: dict[str, Any] = dict(_walk(DEFAULTS))


def _suggest(dotted: str) -> str:
    """' (did you mean 'x.y'?)' for the closest valid key, or ''."""
    leaf = dotted.rsplit(".", 1)[-1]
    same_leaf = [key for key in _SCHEMA if key.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return f" (did you mean '{same_leaf[0]}'?)"
    close = difflib.get_close_matches(dotted, list(_SCHEMA), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_keys_message(keys: Sequence[str]) -> str:
    """Every unknown key with its suggestion, so that one run shows all the typos."""
    listed = ", ".join(f"'{key}'{_suggest(key)}" for key in keys)
    return f"unknown key {listed}" if len(keys) == 1 else f"{len(keys)} unknown keys: {listed}"


def _unknown_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a (partial) recipe tree that the schema does not have; an unknown
    section is one key (its contents are not looked at)."""
    unknown = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or dotted not in _SCHEMA:
            unknown.append(str(dotted))
        elif isinstance(_SCHEMA[dotted], Mapping) and isinstance(value, Mapping):
            unknown += _unknown_keys(value, dotted + ".")
    return unknown


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _check_leaf(dotted: str, value: Any, source: str) -> Any:
    """The value, type-checked against the schema; ints become floats where floats are expected."""
    default = _SCHEMA[dotted]
    if value is None and dotted in _NULLABLE:
        return None
    if default is None:
        kind = _NULLABLE[dotted]
        if value is None:
            return None
        if kind is _STR_LIST:
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return list(value)
            raise DdetrError(
                f"{source}: {dotted} must be {_STR_LIST} or null, got {_describe(value)}"
            )
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise DdetrError(
            f"{source}: {dotted} must be a string (a path) or null, got {_describe(value)}"
        )
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise DdetrError(f"{source}: {dotted} must be true or false, got {_describe(value)}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise DdetrError(f"{source}: {dotted} must be an integer, got {_describe(value)}")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise DdetrError(f"{source}: {dotted} must be a number, got {_describe(value)}")
    if isinstance(value, str):
        return value
    raise DdetrError(f"{source}: {dotted} must be a string, got {_describe(value)}")


def _normalise(tree: Any, source: str, prefix: str = "") -> dict[str, Any]:
    """A copy of a (possibly partial) recipe tree with unknown keys and wrong types rejected."""
    where = prefix.rstrip(".") or "the recipe"
    if tree is None and prefix:
        return {}  # an empty section ("loss:" with nothing under it)
    if not isinstance(tree, Mapping):
        raise DdetrError(f"{source}: {where} must be a mapping, got {_describe(tree)}")
    unknown = _unknown_keys(tree, prefix)
    if unknown:
        raise DdetrError(f"{source}: {_unknown_keys_message(unknown)}")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(_SCHEMA[dotted], Mapping):
            out[key] = _normalise(value, source, dotted + ".")
        else:
            out[key] = _check_leaf(dotted, value, source)
    return out


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: sections merge key by key, anything else in ``top`` replaces ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


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


def _check_ranges(recipe: dict[str, Any], source: str) -> None:
    for dotted, choices in _CHOICES.items():
        value = _get(recipe, dotted)
        if value not in choices:
            raise DdetrError(
                f"{source}: {dotted} must be one of {', '.join(choices)}, got {value!r}"
                f"{_close_choice(value, choices)}"
            )
    for dotted, low in _MINIMUM.items():
        value = _get(recipe, dotted)
        if value is not None and value < low:
            raise DdetrError(f"{source}: {dotted} must be >= {low}, got {value!r}")
    model = recipe["model"]
    if not 0.0 <= model["dropout"] < 1.0:
        raise DdetrError(f"{source}: model.dropout must be in [0, 1), got {model['dropout']!r}")
    if not 0.0 <= recipe["loss"]["focal_alpha"] <= 1.0:
        alpha = recipe["loss"]["focal_alpha"]
        raise DdetrError(f"{source}: loss.focal_alpha must be in [0, 1], got {alpha!r}")
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
    full = _merge(DEFAULTS, _normalise(recipe, source))
    _check_ranges(full, source)
    return full


def _key_of(item: str) -> str:
    return item.partition("=")[0].strip()


def _parse_override(item: str) -> tuple[str, Any]:
    """'model.nheads=4' -> ('model.nheads', 4), the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DdetrError(f"override '{item}': expected dotted key=value, e.g. train.epochs=12")
    if key not in _SCHEMA:
        raise DdetrError(f"override '{item}': {_unknown_keys_message([key])}")
    try:
        value = yaml.load(raw, Loader=_RecipeLoader)
    except yaml.YAMLError as exc:
        raise DdetrError(f"override '{item}': cannot parse the value as YAML ({exc})") from None
    expects_str = isinstance(_SCHEMA[key], str) or _NULLABLE.get(key) is str
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
    tree = _normalise(recipe, source)
    typos = [item for item in overrides if "=" in item and _key_of(item) not in _SCHEMA]
    if len(typos) > 1:
        quoted = ", ".join(f"'{item}'" for item in typos)
        keys = _unknown_keys_message([_key_of(item) for item in typos])
        raise DdetrError(f"overrides {quoted}: {keys}")
    for item in overrides:
        key, value = _parse_override(item)
        partial: Any = value
        for part in reversed(key.split(".")):
            partial = {part: partial}
        partial = absolute_data_paths(_normalise(partial, f"override '{item}'"), os.getcwd())
        tree = _merge(tree, partial)
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
            f"{path}: the top level must be a mapping of sections, got {_describe(data)}"
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
    tree = absolute_data_paths(_normalise(data, str(path)), path.parent)
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise DdetrError(f"{path}: base must be a recipe path, got {_describe(base)}")
    # A packaged recipe's name (`base: refine`), else a path relative to this file.
    base_path = resolve_base(base, path)
    return _merge(_load_tree(base_path, (*chain, resolved)), tree)


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
    tree = absolute_data_paths(_normalise(tree, str(path)), os.getcwd())
    return apply_overrides(tree, overrides, str(path))


def format_recipe(recipe: Mapping[str, Any]) -> str:
    """The recipe as YAML text (section order kept; strings like "off" quoted)."""
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=False)


def dump_recipe(recipe: Mapping[str, Any], path: str | Path) -> None:
    """Write a recipe as YAML atomically (a temporary file in the same folder, then rename)."""
    from ddetr_cli.files import atomic_write

    with atomic_write(path) as fh:
        fh.write(format_recipe(recipe))
