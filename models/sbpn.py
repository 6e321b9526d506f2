"""SBPN: a binary SimpleBaseline-style pose network.

Backbone: the binary Bi-Real ResNet (float stem and downsample shortcuts, binary 3x3 convs), output stride 32.
Head: three upsampling stages. SimpleBaseline uses 4x4 stride-2 deconvolutions; here each stage is nearest 2x
upsampling followed by a Bi-Real unit (binary 3x3 conv -> BN -> + shortcut -> RPReLU), whose shortcut is the upsampled
input itself, channel-pooled (parameter-free) when the width halves 512 -> 256. The same receptive field growth as a
deconvolution, but every MAC of the head is binary and the engine needs only one binary conv kernel. Output: a float
1x1 conv to 17 heatmaps at 1/4 of the input.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BiRealUnit, BlockConfig
from .pose import pose_spec
from .registry import register
from .resnet import BiRealBackbone
from .spec import ModelSpec


class UpsampleUnit(nn.Module):
    """Nearest 2x upsampling, then a Bi-Real unit with a parameter-free shortcut."""

    def __init__(self, cin: int, cout: int, cfg: BlockConfig) -> None:
        super().__init__()
        self.unit = BiRealUnit(cin, cout, 1, cfg, float_projection=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.unit(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SBPN(nn.Module):
    def __init__(self, spec: ModelSpec, depth: int, head_width: int, cfg: BlockConfig) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = BiRealBackbone(depth, spec.in_chans, 64, False, cfg)
        cin = self.backbone.out_channels
        stages = []
        for _ in range(3):
            stages.append(UpsampleUnit(cin, head_width, cfg))
            cin = head_width
        self.head = nn.Sequential(*stages)
        self.final = nn.Conv2d(head_width, spec.num_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.head(self.backbone(x)))


def _create_sbpn(
    name: str,
    depth: int,
    *,
    binary: bool = True,
    input_size: int | tuple[int, int] | None = None,
    head_width: int = 256,
    weight_binarizer: str | None = "mlp",
    act_binarizer: str | None = "approxsign",
    **unknown: Any,
) -> SBPN:
    if unknown:
        raise TypeError(f"{name}: unknown overrides {sorted(unknown)}")
    if 512 % head_width:
        raise ValueError(f"{name}: head_width must divide 512, got {head_width}")
    extra = {"depth": depth, "head_width": head_width, "weight_binarizer": weight_binarizer if binary else None,
             "act_binarizer": act_binarizer if binary else None}
    spec = pose_spec(name, binary, input_size, extra)
    cfg = BlockConfig(binary=binary, weight_binarizer=weight_binarizer, act_binarizer=act_binarizer, act="rprelu")
    return SBPN(spec, depth, head_width, cfg)


@register("sbpn-r18")
def sbpn_r18(**overrides: Any) -> SBPN:
    """Binary SimpleBaseline pose network on a binary ResNet-18; 256x192 -> 17 heatmaps of 64x48."""
    return _create_sbpn("sbpn-r18", 18, **overrides)


@register("sbpn-r34")
def sbpn_r34(**overrides: Any) -> SBPN:
    """Binary SimpleBaseline pose network on a binary ResNet-34; 256x192 -> 17 heatmaps of 64x48."""
    return _create_sbpn("sbpn-r34", 34, **overrides)
