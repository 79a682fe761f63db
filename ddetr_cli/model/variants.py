"""What the model can be built as, without importing torch (recipes list these choices)."""

from __future__ import annotations

# The torchvision ResNets the backbone builds (model/backbone.py); "convnet" is the small one.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
