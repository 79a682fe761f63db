"""ddetr: Deformable DETR training, evaluation, prediction and benchmarking.

Public API (imported lazily so the CLI starts fast):
    load_recipe(path, overrides=[])   -> recipe dict
    build_model(recipe)               -> DeformableDETR
    load_weights(model, path)         -> model with a checkpoint's weights
    load_model(weights, recipe=None)  -> (model, recipe), architecture inferred when needed
    resolve_model(weights, recipe_path, overrides, device) -> (model, recipe), as the CLI does
    post_process(outputs, sizes)      -> top-k detections in pixels
    ms_deform_attn(...)               -> the multi-scale deformable attention op
    build_criterion(recipe)           -> the official Hungarian-matched losses
"""

from __future__ import annotations

from ddetr_cli.lazy import lazy_getattr

__version__ = "0.2.0.dev0"

_EXPORTS = {
    "load_recipe": "ddetr_cli.recipe",
    "build_model": "ddetr_cli.model",
    "post_process": "ddetr_cli.model",
    "load_weights": "ddetr_cli.weights",
    "load_model": "ddetr_cli.weights",
    "resolve_model": "ddetr_cli.weights",
    "save_checkpoint": "ddetr_cli.weights",
    "ms_deform_attn": "ddetr_cli.ops",
    "build_criterion": "ddetr_cli.train",
    "DdetrError": "ddetr_cli.errors",
}

__all__ = ["__version__", *_EXPORTS]

__getattr__ = lazy_getattr(__name__, _EXPORTS)
