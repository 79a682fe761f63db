"""Inference-time folding of frozen batch norms into the convolutions they follow."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

# (conv, norm) attribute pairs of torchvision's ResNet blocks and stem, and their downsample.
_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"), ("0", "1"))


@torch.no_grad()
def _folded(conv: nn.Conv2d, norm: FrozenBatchNorm2d) -> nn.Conv2d:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias.copy_(bias)
    fused.requires_grad_(False)
    return fused


def fold_frozen_batchnorms(module: nn.Module) -> int:
    """Replace every conv -> FrozenBatchNorm2d pair under `module` by one biased conv.

    y = (W x) * s + t == (W * s) x + t, so this saves a full read and write of every backbone
    feature map per norm (a large share of CPU inference). The state dict changes shape (convs
    gain a bias, the norms vanish): use it on a model that is only run, never saved or trained.
    Returns the number of norms folded.
    """
    folded = 0
    for parent in list(module.modules()):
        for conv_name, norm_name in _PAIRS:
            conv = parent._modules.get(conv_name)
            norm = parent._modules.get(norm_name)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
                parent._modules[conv_name] = _folded(conv, norm)
                parent._modules[norm_name] = nn.Identity()
                folded += 1
    return folded
