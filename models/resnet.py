"""Bi-Real-style binary ResNets (the paper's classifiers) and their float twins.

Each residual unit holds one binary 3x3 conv: x -> B(x + t) -> binary conv -> BN -> + shortcut(x) -> PReLU.
Float parts: the stem (7x7 conv, BN, PReLU, max-pool; 3x3 conv and no pool for small inputs), the downsample shortcut
(AvgPool(2) -> 1x1 conv -> BN) and the classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .layers import BiRealUnit, BlockConfig
from .registry import register
from .spec import ModelSpec

STAGE_UNITS = {18: (4, 4, 4, 4), 34: (6, 8, 12, 6)}  # binary convs per stage (2 per basic block)


class Stem(nn.Module):
    def __init__(self, in_chans: int, width: int, small_input: bool, act: nn.Module, stride: int = 1) -> None:
        super().__init__()
        if small_input:
            self.conv = nn.Conv2d(in_chans, width, 3, stride, 1, bias=False)
            self.pool: nn.Module = nn.Identity()
        else:
            self.conv = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        self.bn = nn.BatchNorm2d(width)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.bn(self.conv(x))))


class BiRealBackbone(nn.Module):
    """Stem + four stages of Bi-Real units; output stride 32 (8 for small inputs)."""

    def __init__(
        self, depth: int, in_chans: int, width: int, small_input: bool, cfg: BlockConfig, stem_stride: int = 1
    ) -> None:
        super().__init__()
        self.stem = Stem(in_chans, width, small_input, nn.PReLU(width), stem_stride)
        stages: list[nn.Module] = []
        cin = width
        for i, units in enumerate(STAGE_UNITS[depth]):
            cout = width * 2**i
            stride = 2 if i > 0 else 1
            blocks = [BiRealUnit(cin if j == 0 else cout, cout, stride if j == 0 else 1, cfg) for j in range(units)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class BiRealResNet(nn.Module):
    def __init__(
        self, spec: ModelSpec, depth: int, width: int, small_input: bool, cfg: BlockConfig, stem_stride: int = 1
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = BiRealBackbone(depth, spec.in_chans, width, small_input, cfg, stem_stride)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.out_channels, spec.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.backbone(x)), 1))


def _create_resnet(
    name: str,
    depth: int,
    *,
    small_input: bool = False,
    binary: bool = True,
    num_classes: int = 1000,
    class_names: tuple[str, ...] | list[str] | None = None,
    in_chans: int = 3,
    input_size: int | tuple[int, int] | None = None,
    width: int = 64,
    weight_binarizer: str | None = "mlp",
    act_binarizer: str | None = "approxsign",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    stem_stride: int = 1,
    **unknown: Any,
) -> BiRealResNet:
    if unknown:
        raise TypeError(f"{name}: unknown overrides {sorted(unknown)}")
    if stem_stride != 1 and not small_input:
        raise ValueError(f"{name}: stem_stride applies to the small-input variant only (its 3x3 stem)")
    size = input_size if input_size is not None else (32 if small_input else 224)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{name}: {len(names)} class names for {num_classes} classes")
    spec = ModelSpec(
        name=name, task="classification", input_size=hw, in_chans=in_chans, num_classes=num_classes, class_names=names,
        binary=binary,
        extra={"depth": depth, "width": width, "small_input": small_input, "stem_stride": stem_stride,
               "weight_binarizer": weight_binarizer if binary else None,
               "act_binarizer": act_binarizer if binary else None},
    )  # fmt: skip
    if mean is not None or std is not None or in_chans != 3:
        default = spec.mean if in_chans == 3 else (0.5,) * in_chans
        spec = spec.replace(mean=tuple(mean or default), std=tuple(std or (spec.std if in_chans == 3 else default)))
    cfg = BlockConfig(binary=binary, weight_binarizer=weight_binarizer, act_binarizer=act_binarizer)
    return BiRealResNet(spec, depth, width, small_input, cfg, stem_stride)


@register("resnet18")
def resnet18(**overrides: Any) -> BiRealResNet:
    """Binary ResNet-18 (Bi-Real style, 16 binary 3x3 convs), 224x224, ImageNet-1k head by default."""
    return _create_resnet("resnet18", 18, **overrides)


@register("resnet34")
def resnet34(**overrides: Any) -> BiRealResNet:
    """Binary ResNet-34 (Bi-Real style, 32 binary 3x3 convs), 224x224, ImageNet-1k head by default."""
    return _create_resnet("resnet34", 34, **overrides)


@register("resnet18-small")
def resnet18_small(**overrides: Any) -> BiRealResNet:
    """Binary ResNet-18 for 28-32 px images: 3x3 stem (stride 1, or ``stem_stride=2`` for a 4x cheaper network), no
    max-pool; 10 classes and 32x32 by default."""
    overrides.setdefault("num_classes", 10)
    return _create_resnet("resnet18-small", 18, small_input=True, **overrides)
