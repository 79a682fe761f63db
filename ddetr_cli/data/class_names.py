"""COCO 2017 category names indexed by category id (the official model's class indices)."""

_NA = "N/A"  # index 0 and the ids COCO 2017 never uses

COCO_CLASS_NAMES: list[str] = [
    _NA,  # 0
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",  # 10
    "fire hydrant",
    _NA,  # 12
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",  # 20
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    _NA,  # 26
    "backpack",
    "umbrella",
    _NA,  # 29
    _NA,  # 30
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",  # 40
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    _NA,  # 45
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",  # 50
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",  # 60
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    _NA,  # 66
    "dining table",
    _NA,  # 68
    _NA,  # 69
    "toilet",  # 70
    _NA,  # 71
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",  # 80
    "sink",
    "refrigerator",
    _NA,  # 83
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",  # 90
]


def class_names(recipe: dict) -> list[str] | None:
    """The names of a recipe's classes: its own `model.class_names`, else COCO's for a nameless
    91-class model (the official release, whose class indices are COCO category ids)."""
    names = recipe["model"]["class_names"]
    if names is None and recipe["model"]["num_classes"] == len(COCO_CLASS_NAMES):
        return COCO_CLASS_NAMES
    return names
