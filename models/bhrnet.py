"""BHRNet: a binary HRNet for top-down pose.

Topology (HRNet, Sun et al. 2019, made binary and lighter): a stem to 1/4 resolution (float 3x3 stride-2 conv, then a
binary stride-2 Bi-Real unit), a high-resolution stage of Bi-Real units at 64 channels, then stages with 2, 3 and 4
parallel branches of widths W, 2W, 4W, 8W. Each branch is a chain of Bi-Real units (binary 3x3 conv -> BN -> + float
shortcut -> RPReLU). After every module the branches exchange information (fusion): a lower-resolution branch reaches a
higher one through a float 1x1 conv + BN and nearest upsampling (cheap: it runs at the low resolution); a higher one
reaches a lower one through binary stride-2 3x3 convs + BN. New branches start from the lowest one with a binary
stride-2 unit. The heatmaps come from the highest-resolution branch through a float 1x1 conv.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BiRealUnit, BlockConfig
from .pose import pose_spec
from .registry import register
from .spec import ModelSpec


class Downsample(nn.Module):
    """Fusion path from a higher to a lower resolution: ``steps`` binary 3x3 stride-2 convs with BN."""

    def __init__(self, cin: int, cout: int, steps: int, cfg: BlockConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for s in range(steps):
            last = s == steps - 1
            c = cout if last else cin
            layers += [cfg.conv3x3(cin, c, 2), nn.BatchNorm2d(c)]
            if not last:
                layers.append(cfg.activation(c))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Fusion path from a lower to a higher resolution: float 1x1 conv + BN at the low resolution, nearest upsampling."""

    def __init__(self, cin: int, cout: int, factor: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.bn(self.conv(x)), scale_factor=float(self.factor), mode="nearest")


class HRModule(nn.Module):
    """Parallel branches of Bi-Real units, then multi-resolution fusion into ``num_out`` branches."""

    def __init__(self, widths: list[int], units: int, num_out: int, cfg: BlockConfig) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BiRealUnit(w, w, 1, cfg) for _ in range(units)]) for w in widths
        )
        fuse: list[nn.ModuleList] = []
        acts: list[nn.Module] = []
        for i in range(num_out):
            paths: list[nn.Module] = []
            for j, w in enumerate(widths):
                if j == i:
                    paths.append(nn.Identity())
                elif j > i:
                    paths.append(Upsample(w, widths[i], 2 ** (j - i)))
                else:
                    paths.append(Downsample(w, widths[i], i - j, cfg))
            fuse.append(nn.ModuleList(paths))
            acts.append(cfg.activation(widths[i]))
        self.fuse = nn.ModuleList(fuse)
        self.acts = nn.ModuleList(acts)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        ys = [branch(x) for branch, x in zip(self.branches, xs, strict=True)]
        outs = []
        for paths, act in zip(self.fuse, self.acts, strict=True):
            total = ys[0] if isinstance(paths[0], nn.Identity) else paths[0](ys[0])  # type: ignore[index]
            for j in range(1, len(ys)):
                total = total + paths[j](ys[j])  # type: ignore[index]
            outs.append(act(total))
        return outs


class BHRNet(nn.Module):
    def __init__(self, spec: ModelSpec, width: int, modules: tuple[int, int, int], units: int, cfg: BlockConfig) -> None:
        super().__init__()
        self.spec = spec
        self.stem_conv = nn.Conv2d(spec.in_chans, 64, 3, 2, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(64)
        self.stem_act = cfg.activation(64)
        self.stem_unit = BiRealUnit(64, 64, 2, cfg)
        self.stage1 = nn.Sequential(*[BiRealUnit(64, 64, 1, cfg) for _ in range(units)])
        widths = [width * 2**i for i in range(4)]
        # transitions: branch 0 from the stage-1 output; each new branch from the lowest existing one
        self.transition0 = BiRealUnit(64, widths[0], 1, cfg)
        self.transitions = nn.ModuleList(
            BiRealUnit(64 if b == 1 else widths[b - 1], widths[b], 2, cfg) for b in range(1, 4)
        )
        stages = []
        for s, count in enumerate(modules):
            nb = s + 2
            last_stage = s == len(modules) - 1
            stage = [
                HRModule(widths[:nb], units, 1 if (last_stage and m == count - 1) else nb, cfg) for m in range(count)
            ]
            stages.append(nn.ModuleList(stage))
        self.stages = nn.ModuleList(stages)
        self.final = nn.Conv2d(widths[0], spec.num_keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_unit(self.stem_act(self.stem_bn(self.stem_conv(x))))
        x = self.stage1(x)
        xs = [self.transition0(x), self.transitions[0](x)]
        for s, stage in enumerate(self.stages):
            if s > 0:
                xs = xs + [self.transitions[s](xs[-1])]
            for module in stage:  # type: ignore[attr-defined]
                xs = module(xs)
        return self.final(xs[0])


def _create_bhrnet(
    name: str,
    width: int,
    *,
    binary: bool = True,
    input_size: int | tuple[int, int] | None = None,
    modules: tuple[int, int, int] | list[int] = (1, 3, 2),
    units: int = 2,
    weight_binarizer: str | None = "mlp",
    act_binarizer: str | None = "approxsign",
    **unknown: Any,
) -> BHRNet:
    if unknown:
        raise TypeError(f"{name}: unknown overrides {sorted(unknown)}")
    mods = (int(modules[0]), int(modules[1]), int(modules[2]))
    extra = {"width": width, "modules": list(mods), "units": units,
             "weight_binarizer": weight_binarizer if binary else None,
             "act_binarizer": act_binarizer if binary else None}
    spec = pose_spec(name, binary, input_size, extra)
    cfg = BlockConfig(binary=binary, weight_binarizer=weight_binarizer, act_binarizer=act_binarizer, act="rprelu")
    return BHRNet(spec, width, mods, units, cfg)


@register("bhrnet-w18")
def bhrnet_w18(**overrides: Any) -> BHRNet:
    """Binary HRNet, branch widths 18/36/72/144; 256x192 -> 17 heatmaps of 64x48."""
    return _create_bhrnet("bhrnet-w18", 18, **overrides)


@register("bhrnet-w32")
def bhrnet_w32(**overrides: Any) -> BHRNet:
    """Binary HRNet, branch widths 32/64/128/256; 256x192 -> 17 heatmaps of 64x48."""
    return _create_bhrnet("bhrnet-w32", 32, **overrides)
