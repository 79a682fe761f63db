"""Detection data: COCO, Roboflow, YOLO and VOC folders, the built-in shapes, augmentation and
batching; ``data.formats`` (which recipes read) needs no torch, the rest loads on first use."""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("Splits", "build_datasets"), "ddetr_cli.data.build"),
    **dict.fromkeys(("CocoDataset", "read_coco"), "ddetr_cli.data.coco"),
    "DetectionDataset": "ddetr_cli.data.dataset",
    **dict.fromkeys(("DataSource", "detect_format"), "ddetr_cli.data.formats"),
    **dict.fromkeys(("ResumableBatchSampler", "collate"), "ddetr_cli.data.loader"),
    "ShapesDataset": "ddetr_cli.data.shapes_dataset",
    **dict.fromkeys(("data_classes", "load_source"), "ddetr_cli.data.sources"),
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
