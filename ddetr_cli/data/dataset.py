"""The dataset interface the engine uses: pictures in, (normalised picture, target) out.

Augmentation randomness is seeded per sample from (seed, epoch, index), so a sample looks the
same whatever the worker count, the process count or an interruption and resume.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ddetr_cli.data.transforms import eval_resize, finish, train_transform, wrap
from ddetr_cli.errors import DdetrError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)
_MAX_SUBSTITUTES = 20  # consecutive unreadable pictures before giving up on the dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63)


class DetectionDataset(Dataset):
    """What training and evaluation read, whatever the data's format. Subclasses provide
    ``__len__``, ``image_id(i)``, ``load(i) -> (uint8 (3, H, W), xyxy boxes (N, 4), labels
    (N,))`` (raising ``DdetrError`` for an unreadable picture) and ``coco_ground_truth()``."""

    def __init__(
        self, train: bool, augment: str, min_size: int, max_size: int, seed: int = 0
    ) -> None:
        self.train = train
        self.transform = train_transform(augment) if train else None
        self.min_size = min_size
        self.max_size = max_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def image_id(self, index: int) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def coco_ground_truth(self) -> COCO:
        """The pictures and boxes as a pycocotools ``COCO`` (category ids = class indices):
        what evaluation scores detections against."""
        raise NotImplementedError

    def image_ids(self) -> list[int]:
        """Every picture's image id, unreadable ones included: the pictures evaluation scores."""
        return [self.image_id(i) for i in range(len(self))]

    def box_count(self) -> int | None:
        """How many boxes the pictures have, when that is known without reading them."""
        return None

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor | None, dict[str, Any]]:
        """``item``: an index, or (epoch, index) from ``ResumableBatchSampler`` so that
        persistent workers know the epoch without being told.

        Training replaces an unreadable picture by the next readable one (``target["failures"]``
        says which were skipped). Evaluation never does: it gives ``(None, {"image_id",
        "unreadable": why})`` for such a picture, which is then scored as a picture with no
        detections (see ``unreadable``)."""
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        if not self.train:
            try:
                image, boxes, labels = self.load(index)
            except DdetrError as exc:
                return None, {"image_id": self.image_id(index), "unreadable": str(exc)}
            return self._sample(image, boxes, labels, index, epoch)
        current, (image, boxes, labels), failures = self._load_substituting(index)
        pixels, target = self._sample(image, boxes, labels, current, epoch)
        target["failures"] = failures
        return pixels, target

    def _load_substituting(
        self, index: int
    ) -> tuple[int, tuple[Tensor, Tensor, Tensor], list[str]]:
        """(index read, its picture and boxes, the failures skipped on the way there)."""
        failures: list[str] = []
        for attempt in range(_MAX_SUBSTITUTES):
            # A bad picture is replaced by the next one, so batches keep their size and
            # processes stay in step; the failure travels with the target to be reported.
            current = (index + attempt) % len(self)
            try:
                return current, self.load(current), failures
            except DdetrError as exc:
                failures.append(str(exc))
        raise DdetrError(f"{_MAX_SUBSTITUTES} unreadable pictures in a row: {failures[-1]}")

    def _sample(
        self, image: Tensor, boxes: Tensor, labels: Tensor, index: int, epoch: int
    ) -> tuple[Tensor, dict[str, Any]]:
        height, width = image.shape[-2:]
        image, boxes = wrap(image, boxes)
        if self.train:
            with torch.random.fork_rng(devices=[]):
                # The CPU generator only, which the transforms draw from: torch.manual_seed
                # would also queue seeds for every GPU kind, formatting a traceback for each
                # (1.7 ms a picture, a third of the shapes demo's data time).
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                image, boxes = self.transform(image, boxes)
        else:
            image, boxes = eval_resize(image, boxes, self.min_size, self.max_size)
        pixels, target = finish(image, boxes, labels)
        target["image_id"] = self.image_id(index)
        target["orig_size"] = torch.tensor([height, width])
        return pixels, target


def unreadable(target: dict[str, Any]) -> str | None:
    """Why an evaluation sample's picture could not be read, or None when it was read."""
    return target.get("unreadable")
