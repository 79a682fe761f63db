"""The built-in shapes data as datasets (no files) and as a COCO ground truth for evaluation."""

from __future__ import annotations

import contextlib
import functools
import io
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ddetr_cli.data import shapes
from ddetr_cli.data.dataset import DetectionDataset

if TYPE_CHECKING:
    from pycocotools.coco import COCO


class ShapesDataset(DetectionDataset):
    """Pictures 0..count-1 of the shapes split with ``split_seed``; image ids start at 1."""

    def __init__(
        self,
        split_seed: int,
        count: int,
        train: bool,
        augment: str = "flip",
        task: str = "shapes3",
    ) -> None:
        super().__init__(train, augment, shapes.IMAGE_SIZE, shapes.IMAGE_SIZE, seed=split_seed)
        self.split_seed = split_seed
        self.count = count
        self.task = task
        self._coco: COCO | None = None

    def __len__(self) -> int:
        return self.count

    def image_id(self, index: int) -> int:
        return index + 1

    def load(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        # Copies: nothing downstream may change the kept picture.
        return tuple(t.clone() for t in _picture(self.split_seed, index, self.task))

    def coco_ground_truth(self) -> COCO:
        if self._coco is None:  # drawn once: it draws every picture
            self._coco = coco_from_dict(
                shapes.coco_dict(self.split_seed, self.count, task=self.task)
            )
        return self._coco

    def box_count(self) -> int | None:
        # A training split is drawn as it is read: counting its boxes would draw it all.
        return None if self.train else len(self.coco_ground_truth().getAnnIds())


# Pictures kept once made (by each loader process): making one takes 1-3 ms, a tenth of the
# demo's training step when every epoch makes them again. At 49 KB a picture the demo's 4,600
# (train and val) take 226 MB and the most kept 400 MB; fewer kept than an epoch reads would
# make the LRU evict pictures the same epoch reads again.
KEPT_PICTURES = 8192


@functools.lru_cache(maxsize=KEPT_PICTURES)
def _picture(seed: int, index: int, task: str) -> tuple[Tensor, Tensor, Tensor]:
    """(uint8 (3, H, W) picture, xyxy boxes, labels) of picture ``index`` of a split."""
    picture = shapes.make_picture(seed, index, task)
    image = torch.from_numpy(picture.image).permute(2, 0, 1).contiguous()
    return image, torch.from_numpy(picture.boxes), torch.from_numpy(picture.labels)


def coco_from_dict(data: dict[str, Any]) -> COCO:
    """A pycocotools COCO object from an in-memory annotation dict (without its prints)."""
    from pycocotools.coco import COCO  # only here: the model, training steps and bench need none

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
