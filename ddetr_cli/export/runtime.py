"""An ONNX file written by ``ddetr export``, run with onnxruntime behind the model's own call;
its ``ddetr.*`` metadata; the onnxruntime session.

``load_onnx_model`` gives an object that ``predict``, ``evaluate`` and ``bench`` can use in place
of the PyTorch detector: called on a list of normalised (3, H, W) pictures (or one (N, 3, H, W)
batch) it returns ``{"pred_logits", "pred_boxes"}`` as tensors on the asked device.

The graph has no padding mask, so pictures are never padded together: same-size pictures run
as one batch, pictures of other sizes in batches of their own. That gives exactly what the
PyTorch model gives each picture alone (PyTorch pads a mixed batch and masks the padding,
which leaves the results equal up to float rounding).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddetr_cli.errors import DdetrError
from ddetr_cli.extras import EXTRAS, require

METADATA_PREFIX = "ddetr."


def require_export_extra(*modules: str) -> None:
    """DdetrError naming the extra to install when an export dependency is missing."""
    for name in modules or EXTRAS["export"]:
        require(name, "export")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``ddetr.*`` metadata of an exported file, prefix removed (values are strings)."""
    onnx = require("onnx", "export")

    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(METADATA_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(METADATA_PREFIX)
    }


def ort_session(
    path: str | Path, device: str | torch.device = "cpu", threads: int | None = None
) -> Any:  # onnxruntime.InferenceSession; onnxruntime is an optional extra
    """An onnxruntime InferenceSession: CUDA provider for a cuda device when present."""
    ort = require("onnxruntime", "export")

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise DdetrError(
                "onnxruntime has no CUDA provider here: "
                "pip install onnxruntime-gpu, or use --device cpu"
            )
        index = torch.device(device).index or 0
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers)


class OnnxDetector:
    """An onnxruntime session of a ddetr export, as a ``model.protocol.Detector``: what can be
    chosen about running a PyTorch model was fixed when the file was written or loaded, so
    those calls change nothing."""

    training = False

    def __init__(
        self, path: Path, session: Any, metadata: dict[str, str], device: torch.device
    ) -> None:
        self.path = path
        self.session = session
        self.metadata = metadata
        self.device = device
        self.static = json.loads(metadata.get("static", "false"))
        self.postprocess = json.loads(metadata.get("postprocess", "false"))
        self.export_size = tuple(json.loads(metadata.get("export_image_size", "[0, 0]")))
        self.export_batch = int(metadata.get("export_batch_size", "1"))
        self.output_names = [o.name for o in session.get_outputs()]
        self.num_classes = int(metadata.get("num_classes", "0"))

    # ----------------------------------------------------------------- the Detector protocol

    def eval(self) -> OnnxDetector:
        return self

    def train(self, mode: bool = True) -> OnnxDetector:
        if mode:
            raise DdetrError(f"{self.path}: an ONNX model cannot be trained")
        return self

    def to(self, device: torch.device | str) -> OnnxDetector:
        """No-op: the session's provider was chosen from the device at load time."""
        return self

    def optimize_for_inference(self) -> OnnxDetector:
        """No-op: onnxruntime optimises the graph when it creates the session."""
        return self

    def set_attention_backend(self, backend: str | None) -> None:
        """No-op: the attention is part of the graph."""

    def fixed_runtime(self) -> tuple[str, str]:
        providers = ", ".join(self.session.get_providers())
        return "onnxruntime", f"the exported graph ({providers})"

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxDetector:
        return self  # the session is read-only; sharing it is safe

    def __repr__(self) -> str:
        providers = ",".join(self.session.get_providers())
        return f"OnnxDetector({self.path}, providers={providers}, static={self.static})"

    # ----------------------------------------------------------------- running

    def _run(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        array = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        if self.static:
            want = (self.export_batch, 3, *self.export_size)
            if tuple(array.shape[1:]) != want[1:]:
                raise DdetrError(
                    f"{self.path} was exported with --static for {want[2]}x{want[3]} pictures; "
                    f"got {array.shape[2]}x{array.shape[3]} (export without --static, or "
                    "resize the pictures to that size)"
                )
            logits, boxes = [], []
            for start in range(0, len(array), want[0]):
                chunk = array[start : start + want[0]]
                filled = len(chunk)
                if filled < want[0]:  # pad the batch with copies; pictures never interact
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], want[0] - filled, 0)])
                out = self.session.run(["pred_logits", "pred_boxes"], {"images": chunk})
                logits.append(out[0][:filled])
                boxes.append(out[1][:filled])
            return torch.from_numpy(np.concatenate(logits)), torch.from_numpy(np.concatenate(boxes))
        out = self.session.run(["pred_logits", "pred_boxes"], {"images": array})
        return torch.from_numpy(out[0]), torch.from_numpy(out[1])

    def __call__(self, images: Sequence[Tensor] | Tensor) -> dict[str, Tensor]:
        if self.postprocess:
            raise DdetrError(
                f"{self.path} was exported with --postprocess (scores, labels, boxes); ddetr "
                "runs exports without it (pred_logits, pred_boxes)"
            )
        if isinstance(images, Tensor) and images.dim() == 4:
            logits, boxes = self._run(images)
        else:
            if len(images) == 0:
                raise ValueError("expected at least one image")
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, image in enumerate(images):
                if image.dim() != 3:
                    raise ValueError(f"expected CHW image tensors, got shape {tuple(image.shape)}")
                groups.setdefault(tuple(image.shape), []).append(index)
            logits_parts: list[Tensor | None] = [None] * len(images)
            boxes_parts: list[Tensor | None] = [None] * len(images)
            for indices in groups.values():
                group_logits, group_boxes = self._run(torch.stack([images[i] for i in indices]))
                for row, index in enumerate(indices):
                    logits_parts[index] = group_logits[row]
                    boxes_parts[index] = group_boxes[row]
            logits = torch.stack(logits_parts)  # type: ignore[arg-type]
            boxes = torch.stack(boxes_parts)  # type: ignore[arg-type]
        return {"pred_logits": logits.to(self.device), "pred_boxes": boxes.to(self.device)}

    forward = __call__


def load_onnx_model(
    path: str | Path,
    recipe: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    overrides: Sequence[str] = (),
) -> tuple[OnnxDetector, dict[str, Any]]:
    """(onnxruntime-backed detector, recipe): the recipe stored in the file unless given, with
    ``overrides`` applied to it (data and post-processing keys matter; the architecture is the
    file's). CPU provider, or CUDA's for a cuda device."""
    from ddetr_cli.recipe import apply_overrides, validate_recipe

    require_export_extra("onnx", "onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise DdetrError(f"{path}: no such file")
    try:
        metadata = read_metadata(path)
    except DdetrError:
        raise
    except Exception as exc:
        raise DdetrError(f"{path}: not an ONNX file onnx can read ({type(exc).__name__})") from None
    if "recipe" not in metadata:
        raise DdetrError(f"{path}: no ddetr metadata; was it written by `ddetr export`?")
    stored = json.loads(metadata["recipe"])
    if recipe is None:
        recipe = validate_recipe(stored, f"{path} metadata")
    else:
        recipe = copy.deepcopy(recipe)
        ours, theirs = recipe["model"]["num_classes"], stored["model"]["num_classes"]
        if ours != theirs:
            raise DdetrError(
                f"{path} predicts {theirs} classes but the recipe says model.num_classes={ours}"
            )
    if overrides:
        recipe = apply_overrides(recipe, overrides, "overrides")
    dev = torch.device(device)
    session = ort_session(path, dev)
    return OnnxDetector(path, session, metadata, dev), recipe
