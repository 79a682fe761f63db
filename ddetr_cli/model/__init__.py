"""Deformable DETR model: every configuration of the official release."""

from ddetr_cli.model.detector import MLP, DeformableDETR, build_model
from ddetr_cli.model.postprocess import post_process
from ddetr_cli.model.utils import inverse_sigmoid, pad_images

__all__ = ["MLP", "DeformableDETR", "build_model", "inverse_sigmoid", "pad_images", "post_process"]
