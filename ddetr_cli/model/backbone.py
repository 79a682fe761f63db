"""ResNet backbone returning the feature levels Deformable DETR uses, with their masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

from ddetr_cli.errors import DdetrError
from ddetr_cli.model.variants import BACKBONES as RESNETS

# Stage names in stride order 8, 16, 32; layer1 (stride 4) is never a feature level.
_STAGES = ("layer2", "layer3", "layer4")


def _stage_channels(stage: nn.Sequential) -> int:
    last_block = stage[-1]
    last_conv = last_block.conv3 if hasattr(last_block, "conv3") else last_block.conv2
    return last_conv.out_channels


def _imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet weights (the V1 set the official code trained from)."""
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # offline, proxy, corrupt cache: all end the same way for the user
        file_name = weights.url.rsplit("/", 1)[-1]
        raise DdetrError(
            f"could not get ImageNet weights for {name} ({type(exc).__name__}); offline? "
            f"set model.pretrained_backbone=false, or put {file_name} in "
            f"{torch.hub.get_dir()}/checkpoints"
        ) from exc


class Backbone(nn.Module):
    """torchvision ResNet trunk; `body` holds the official `backbone.0.body.*` keys.

    Returns the last `num_levels` (at most 3) of the stride-8/16/32 maps, each with its
    padding mask nearest-interpolated from the image mask (docs/design.md#padding-mask).
    """

    def __init__(
        self,
        name: str = "resnet50",
        num_levels: int = 3,
        dilation: bool = False,
        norm: str = "frozen",
        freeze_stem: bool = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise DdetrError(f"unknown backbone {name!r}; choose one of {', '.join(RESNETS)}")
        norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
        resnet = getattr(torchvision.models, name)(
            weights=None,
            replace_stride_with_dilation=[False, False, dilation],
            norm_layer=norm_layer,
        )
        if pretrained:
            resnet.load_state_dict(_imagenet_state_dict(name))
        stages = _STAGES[3 - min(num_levels, 3) :]
        self.strides = [{"layer2": 8, "layer3": 16, "layer4": 32}[s] for s in stages]
        if dilation:
            self.strides[-1] //= 2
        self.num_channels = [_stage_channels(getattr(resnet, s)) for s in stages]
        if freeze_stem:
            for param_name, param in resnet.named_parameters():
                if not param_name.startswith(_STAGES):
                    param.requires_grad_(False)
        self.body = IntermediateLayerGetter(resnet, {s: str(i) for i, s in enumerate(stages)})

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        levels = []
        for feature in self.body(images).values():
            level_mask = F.interpolate(mask[None].float(), size=feature.shape[-2:])[0].bool()
            levels.append((feature, level_mask))
        return levels


def _conv_block(c_in: int, c_out: int, norm: type[nn.Module]) -> nn.Sequential:
    """Two 3x3 convs, the first with stride 2, each followed by a norm and a ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


class ConvNetBackbone(nn.Module):
    """A small CNN trained from scratch for small pictures (the shapes demo): five stride-2
    blocks of ``width`` x (1, 2, 4, 8, 8) channels; the last `num_levels` of the stride-8/16/32
    maps are feature levels, like the ResNet's layer2/3/4. Width 16 keeps a 128x128 picture at
    about 0.06 GFLOPs, a quarter of width 32, so a CPU trains it in minutes."""

    def __init__(
        self, num_levels: int = 3, norm: str = "batch", freeze_stem: bool = False, width: int = 16
    ) -> None:
        super().__init__()
        norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.stem = _conv_block(3, widths[0], norm_layer)
        self.layer1 = _conv_block(widths[0], widths[1], norm_layer)
        self.layer2 = _conv_block(widths[1], widths[2], norm_layer)
        self.layer3 = _conv_block(widths[2], widths[3], norm_layer)
        self.layer4 = _conv_block(widths[3], widths[4], norm_layer)
        self.stages = list(_STAGES[3 - min(num_levels, 3) :])
        self.strides = [{"layer2": 8, "layer3": 16, "layer4": 32}[s] for s in self.stages]
        self.num_channels = [widths[_STAGES.index(s) + 2] for s in self.stages]
        if freeze_stem:
            for module in (self.stem, self.layer1):
                module.requires_grad_(False)

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        x = self.layer1(self.stem(images))
        levels = []
        for name in _STAGES:
            x = getattr(self, name)(x)
            if name in self.stages:
                level_mask = F.interpolate(mask[None].float(), size=x.shape[-2:])[0].bool()
                levels.append((x, level_mask))
        return levels
