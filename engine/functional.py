"""Torch-facing functional API over the packed binary kernels (design contract 3).

torch only converts at the boundary: the tensors are signed, packed and convolved by ``engine.kernels``.
"""

from __future__ import annotations

import numpy as np
import torch

from engine import kernels

__all__ = ["binary_conv2d"]

_IntOrPair = int | tuple[int, int] | list[int]


def _pair(name: str, v: _IntOrPair) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return t[0], t[0]
    if len(t) != 2:
        raise ValueError(f"binary_conv2d: {name} must be an int or a pair, got {v!r}")
    return t[0], t[1]


def binary_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: _IntOrPair = 1,
    padding: _IntOrPair = 0,
    dilation: _IntOrPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """Binary 2-D convolution, exactly ``conv2d(sgn(input), sgn(weight), bias, stride, padding, dilation, groups)``.

    ``sgn(x) = +1 if x >= 0 else -1`` (so 0 -> +1, unlike ``torch.sign``); padding is zero padding, as in
    ``torch.nn.functional.conv2d``. ``input`` is NCHW (or CHW), ``weight`` OIHW with ``I = C_in / groups``;
    int or pair arguments as in torch (``padding`` may not be a string). Computed by the packed XNOR-popcount
    kernels; the result is a float32 tensor on the input's device. No gradient flows through it.
    """
    if isinstance(padding, str):
        raise ValueError("binary_conv2d: string padding is not supported; pass ints, e.g. padding=1")
    if weight.dim() != 4:
        raise ValueError(f"binary_conv2d: weight must be OIHW (4-D), got shape {tuple(weight.shape)}")
    squeeze = input.dim() == 3
    x = input.unsqueeze(0) if squeeze else input
    if x.dim() != 4:
        raise ValueError(f"binary_conv2d: input must be NCHW or CHW, got shape {tuple(input.shape)}")
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(
            f"binary_conv2d: input has {x.shape[1]} channels but weight expects {weight.shape[1]} x groups={groups}"
        )
    if weight.shape[0] % groups != 0:
        raise ValueError(f"binary_conv2d: out_channels {weight.shape[0]} not divisible by groups={groups}")
    ph, pw = _pair("padding", padding)
    with torch.no_grad():
        x_nhwc = x.detach().to("cpu", torch.float32).permute(0, 2, 3, 1).contiguous().numpy()
        w = weight.detach().to("cpu", torch.float32).contiguous().numpy()
        shift = None
        if bias is not None:
            shift = bias.detach().to("cpu", torch.float32).reshape(-1).numpy()
    packed = kernels.pack_activations(x_nhwc)
    pw_bits = kernels.PackedConvWeights.from_float(w, groups=groups)
    res = kernels.bconv2d(
        packed,
        pw_bits,
        stride=_pair("stride", stride),
        padding=(ph, pw),
        dilation=_pair("dilation", dilation),
        shift=shift,
        want_float=True,
    )
    assert res.out is not None
    out = torch.from_numpy(np.ascontiguousarray(res.out)).permute(0, 3, 1, 2).contiguous()
    if squeeze:
        out = out.squeeze(0)
    return out.to(input.device)
