"""Type stubs of the C++ extension (engine/csrc/module.cpp). Use engine.kernels, the documented API."""

from typing import Any

import numpy as np
import numpy.typing as npt

def pack_signs(x: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]: ...
def unpack_signs(bits: npt.NDArray[np.uint64], n: int) -> npt.NDArray[np.float32]: ...
def pack_activations(
    x: npt.NDArray[np.float32], threshold: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.uint32]: ...
def unpack_activations(bits: npt.NDArray[np.uint32], channels: int) -> npt.NDArray[np.float32]: ...
def pack_weights(weight: npt.NDArray[np.float32]) -> npt.NDArray[np.uint32]: ...

class ConvWeights:
    out_channels: int
    in_channels_per_group: int
    kernel_h: int
    kernel_w: int
    groups: int
    def __init__(self, bits: npt.NDArray[np.uint32], in_channels_per_group: int, groups: int = 1) -> None: ...

def bconv2d(
    x: npt.NDArray[np.uint32],
    in_channels: int,
    weights: ConvWeights,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    scale: npt.NDArray[np.float32],
    shift: npt.NDArray[np.float32],
    residual: npt.NDArray[np.float32] | None = None,
    act: int = 0,
    slope: npt.NDArray[np.float32] | None = None,
    gamma: npt.NDArray[np.float32] | None = None,
    zeta: npt.NDArray[np.float32] | None = None,
    next_threshold: npt.NDArray[np.float32] | None = None,
    want_float: bool = True,
    want_bits: bool = False,
    out: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.uint32] | None]: ...
def available_isas() -> list[str]: ...
def active_isa() -> str: ...
def set_isa(name: str) -> None: ...
def get_amx_min_pixels() -> int: ...
def set_amx_min_pixels(n: int) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
def set_thread_inline(on: bool) -> None: ...

# Float NHWC ops of the runtime's glue (engine/csrc/float_ops.h); typed API in engine/float_ops.py.
def channel_act(
    x: npt.NDArray[np.float32],
    act: int,
    slope: npt.NDArray[np.float32] | None = None,
    gamma: npt.NDArray[np.float32] | None = None,
    zeta: npt.NDArray[np.float32] | None = None,
    out: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32] | None: ...
def maxpool2d(
    x: npt.NDArray[np.float32], kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
    out_hw: list[int], act: int = 0, slope: npt.NDArray[np.float32] | None = None,
    gamma: npt.NDArray[np.float32] | None = None, zeta: npt.NDArray[np.float32] | None = None, pack: bool = False,
    threshold: npt.NDArray[np.float32] | None = None,
) -> Any: ...  # fmt: skip
def avgpool2d(
    x: npt.NDArray[np.float32], kernel: list[int], stride: list[int], padding: list[int], out_hw: list[int],
    count_include_pad: bool,
) -> npt.NDArray[np.float32]: ...  # fmt: skip
def sum_upsampled(
    xs: list[npt.NDArray[np.float32]],
    ups: list[npt.NDArray[np.float32]],
    factors: list[int],
    act: int = 0,
    slope: npt.NDArray[np.float32] | None = None,
    gamma: npt.NDArray[np.float32] | None = None,
    zeta: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]: ...
def upsample_nearest(x: npt.NDArray[np.float32], factor: int) -> npt.NDArray[np.float32]: ...
def has_float_conv() -> bool: ...
def has_float_conv_bf16() -> bool: ...
def float_conv2d(
    x: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    out_channels: int,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    act: int = 0,
    slope: npt.NDArray[np.float32] | None = None,
    gamma: npt.NDArray[np.float32] | None = None,
    zeta: npt.NDArray[np.float32] | None = None,
    bf16: npt.NDArray[np.uint16] | None = None,
) -> npt.NDArray[np.float32]: ...
