"""Detection data: COCO, Roboflow, YOLO and VOC folders, the built-in shapes, augmentation and
batching."""

from ddetr_cli.data.build import Splits, build_datasets
from ddetr_cli.data.coco import CocoDataset, read_coco
from ddetr_cli.data.dataset import DetectionDataset
from ddetr_cli.data.formats import DataSource, detect_format
from ddetr_cli.data.loader import ResumableBatchSampler, collate
from ddetr_cli.data.shapes_dataset import ShapesDataset
from ddetr_cli.data.sources import data_classes, load_source

__all__ = [
    "CocoDataset", "DataSource", "DetectionDataset", "ResumableBatchSampler", "ShapesDataset",
    "Splits", "build_datasets", "collate", "data_classes", "detect_format",
    "load_source", "read_coco",
]  # fmt: skip
