"""Sliced evaluation (``ddetr evaluate --slice H W``): the model's detections on the val
split's pictures as they are (not resized), each cut into tiles by ``inference.slicing``, in
the original pictures' coordinates, so COCOeval scores them against the same ground truth as
an unsliced evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from ddetr_cli.errors import DdetrError
from ddetr_cli.evaluation.coco import Detections, coco_results
from ddetr_cli.inference.slicing import SlicedDetector, SliceOptions


def sliced_detections(
    model: nn.Module,
    recipe: dict[str, Any],
    dataset: Any,
    options: SliceOptions,
    batch_size: int,
    device: Any,
    indices: Iterable[int] | None = None,
) -> tuple[Detections, dict[str, Any]]:
    """(the detections of the ``dataset`` pictures at ``indices`` (default: all), the
    detector's summary: tiles and seconds per picture). ``dataset`` is an evaluation dataset
    (``DetectionDataset``): a picture it cannot read is listed in ``unreadable``, not run."""
    detector = SlicedDetector.for_recipe(model, options, recipe, device, batch_size)
    found = Detections()
    for index in range(len(dataset)) if indices is None else indices:
        image_id = dataset.image_id(index)
        try:
            picture, _boxes, _labels = dataset.load(index)
        except DdetrError as exc:
            found.unreadable[image_id] = str(exc)
            continue
        found.results += coco_results(image_id, detector.detect(picture))
    return found, detector.summary()
