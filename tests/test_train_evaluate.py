"""evaluate_coco: the 12 pycocotools numbers, from a model's outputs on a data loader."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ddetr_cli.data import ShapesDataset, collate
from ddetr_cli.data.shapes import VAL_SEED
from ddetr_cli.evaluation.coco import STAT_NAMES, evaluate_coco


class _Oracle(nn.Module):
    """Outputs the ground truth of the pictures it is shown, in the model's output format."""

    def __init__(self, dataset: ShapesDataset) -> None:
        super().__init__()
        self.dataset = dataset
        self.calls = 0

    def forward(self, images):
        logits = torch.full((len(images), 5, 3), -10.0)
        boxes = torch.full((len(images), 5, 4), 0.5)
        for b in range(len(images)):
            _, target = self.dataset[self.calls]
            self.calls += 1
            n = len(target["labels"])
            logits[b, torch.arange(n), target["labels"]] = 10.0
            boxes[b, :n] = target["boxes"]
        return {"pred_logits": logits, "pred_boxes": boxes}


def test_perfect_predictions_score_one():
    dataset = ShapesDataset(VAL_SEED, 6, train=False)
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate)
    stats = evaluate_coco(_Oracle(dataset), loader)
    assert tuple(stats) == STAT_NAMES
    assert abs(stats["AP"] - 1.0) < 1e-6 and abs(stats["AP50"] - 1.0) < 1e-6


def test_public_api_exports_build_criterion():
    import ddetr_cli

    assert callable(ddetr_cli.build_criterion)
