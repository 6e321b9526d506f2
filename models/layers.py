"""Building blocks of binary networks and their float twins.

A binary network here is a float-simulated network: latent float weights, binarized on the fly (``BinaryConv2d``),
trainable with gradient estimators. The engine packs exactly these modules into bits. Every block takes ``binary`` and
builds the float twin of the same topology when it is False (plain ``nn.Conv2d`` on un-binarized activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .binarizers import Binarizer, BinarizerFactory, binarize_weight


class LearnableBias(nn.Module):
    """x + b_c: a learnable per-channel shift (ReActNet's RSign threshold, RPReLU's shifts)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """ReActNet's RPReLU (Liu et al. 2020, arXiv:2003.03488): y = PReLU(x - gamma_c) + zeta_c, slopes per channel."""

    def __init__(self, channels: int, init: float = 0.25) -> None:
        super().__init__()
        self.shift_in = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=init)
        self.shift_out = LearnableBias(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.shift_out(self.prelu(x - self.shift_in.bias))


class BinaryConv2d(nn.Conv2d):
    """Binary convolution: conv(B_a(x + t), alpha * B_w(w - mean(w))), no bias.

    ``threshold`` adds a learnable per-channel threshold t before the activation binarizer; alpha is the per-output-
    channel mean |w_c| of the centered latent weight (He et al. 2023). Zero padding, as in PyTorch.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        *,
        weight_binarizer: Binarizer,
        act_binarizer: Binarizer,
        threshold: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False)
        nn.init.xavier_uniform_(self.weight)
        self.weight_binarizer = weight_binarizer
        self.act_binarizer = act_binarizer
        self.threshold = LearnableBias(in_channels) if threshold else None

    def binary_weight(self) -> Tensor:
        """alpha * B(w_c): the weight the convolution uses."""
        return binarize_weight(self.weight, self.weight_binarizer)

    def binarize_input(self, x: Tensor) -> Tensor:
        if self.threshold is not None:
            x = self.threshold(x)
        return self.act_binarizer(x)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.binarize_input(x), self.binary_weight(), None, self.stride, self.padding, self.dilation,
                        self.groups)


@dataclass
class BlockConfig:
    """How a network's blocks are made: binary or float twin, and the binarizers of the binary convs."""

    binary: bool = True
    weight_binarizer: str | None = "mlp"
    act_binarizer: str | None = "approxsign"
    act: str = "prelu"  # activation after the residual add: "prelu" | "rprelu"

    def __post_init__(self) -> None:
        self._weights = BinarizerFactory(self.weight_binarizer)
        self._acts = BinarizerFactory(self.act_binarizer)

    def conv3x3(self, cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
        return self.conv(cin, cout, 3, stride, 1)

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
        if not self.binary:
            return nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        wb, ab = self._weights(), self._acts()
        if wb is None or ab is None:
            raise ValueError("a binary network needs both a weight and an activation binarizer")
        return BinaryConv2d(cin, cout, kernel, stride, padding, weight_binarizer=wb, act_binarizer=ab)

    def activation(self, channels: int) -> nn.Module:
        if self.act == "prelu":
            return nn.PReLU(channels)
        if self.act == "rprelu":
            return RPReLU(channels)
        raise ValueError(f"unknown activation {self.act!r}; use 'prelu' or 'rprelu'")


class ChannelPool(nn.Module):
    """Reduce C channels to C / r by averaging groups of r consecutive channels: a parameter-free shortcut."""

    def __init__(self, ratio: int) -> None:
        super().__init__()
        self.ratio = ratio

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, c // self.ratio, self.ratio, h, w).mean(dim=2)


def shortcut(cin: int, cout: int, stride: int, float_projection: bool = True) -> nn.Module:
    """The float shortcut of a Bi-Real unit: identity, AvgPool(stride) and, when the width changes, a float 1x1 conv +
    BN (or, with ``float_projection=False`` and cin a multiple of cout, a parameter-free ChannelPool)."""
    layers: list[nn.Module] = []
    if stride != 1:
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
    if cin != cout:
        if float_projection or cin % cout:
            layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        else:
            layers.append(ChannelPool(cin // cout))
    if not layers:
        return nn.Identity()
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


class BiRealUnit(nn.Module):
    """One binary conv with its own float shortcut (Bi-Real Net): act(BN(conv(x)) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: BlockConfig, float_projection: bool = True) -> None:
        super().__init__()
        self.conv = cfg.conv3x3(cin, cout, stride)
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = shortcut(cin, cout, stride, float_projection)
        self.act = cfg.activation(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))
