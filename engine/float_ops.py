"""Float NHWC ops of the packed runtime's glue, in the native core (``engine._native``). numpy in, numpy out; no torch.

Binary convs leave float tensors in NHWC. These ops keep them there and run on the kernels' own thread pool, so the
glue between binary layers (pooling, the sums of HRNet's branch fusion, activations, nearest upsampling) neither
reorders memory nor wakes torch's pool. Semantics follow ``torch.nn.functional`` (tests check them against it):

- :func:`max_pool2d`: implicit -inf padding, dilation, ``ceil_mode`` (NaN inputs are not propagated), an activation
  fused; :func:`max_pool2d_pack` also packs the result's sign bits in the same pass.
- :func:`avg_pool2d`: ``count_include_pad`` and ``ceil_mode`` with torch's divisor rules (no dilation).
- :func:`sum_upsampled`: ``act(sum(xs) + sum(nearest_upsample(u, f)))`` in one pass.
- :func:`channel_act`: ReLU, PReLU or RPReLU per channel, in place when ``out`` is given.
- :func:`direct_conv2d`: a register-tiled float conv for few input channels (stems).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine import _native, kernels
from engine.kernels import PReLU, ReLU, RPReLU, act_args

FloatArray = npt.NDArray[np.float32]

__all__ = ["ReLU", "Activation", "channel_act", "max_pool2d", "max_pool2d_pack", "avg_pool2d", "sum_upsampled",
           "upsample_nearest", "pool_output_size", "DirectConvWeights", "has_direct_conv", "has_direct_conv_bf16",
           "direct_conv2d", "bf16_split"]  # fmt: skip


Activation = ReLU | PReLU | RPReLU | None


def _nhwc(name: str, x: npt.ArrayLike) -> FloatArray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 4:
        raise ValueError(f"{name}: expected float32 NHWC (4-D), got shape {a.shape}")
    return a


def _pair(name: str, v: int | Sequence[int]) -> list[int]:
    return list(kernels._pair(name, v))


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output length (``ceil_mode``: the last window must start inside the input or left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    if out < 1:
        raise ValueError(f"pooling: output size would be {out} for input {size}, kernel {kernel}, padding {padding}")
    return out


def _pool_args(
    name: str, x: FloatArray, kernel: int | Sequence[int], stride: int | Sequence[int] | None,
    padding: int | Sequence[int], dilation: int | Sequence[int], ceil_mode: bool,
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:  # fmt: skip
    k = _pair("kernel", kernel)
    s = _pair("stride", stride if stride is not None and stride != [] else kernel)
    p, d = _pair("padding", padding), _pair("dilation", dilation)
    if p[0] * 2 > k[0] or p[1] * 2 > k[1]:
        raise ValueError(f"{name}: padding {p} must be at most half the kernel {k}")
    out = [pool_output_size(int(x.shape[1 + i]), k[i], s[i], p[i], d[i], ceil_mode) for i in range(2)]
    return k, s, p, d, out


def max_pool2d(
    x: npt.ArrayLike, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, ceil_mode: bool = False,
    act: Activation = None,
) -> FloatArray:  # fmt: skip
    """Max pooling of float32 NHWC ``x`` (``torch.nn.functional.max_pool2d`` semantics; stride defaults to kernel),
    then ``act`` per channel in the same pass."""
    a = _nhwc("max_pool2d", x)
    k, s, p, d, out = _pool_args("max_pool2d", a, kernel, stride, padding, dilation, ceil_mode)
    code, slope, gamma, zeta = act_args(act, None, "max_pool2d")
    return np.asarray(_native.maxpool2d(a, k, s, p, d, out, code, slope, gamma, zeta))


def max_pool2d_pack(
    x: npt.ArrayLike, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, ceil_mode: bool = False,
    act: Activation = None, threshold: npt.ArrayLike | None = None,
) -> tuple[FloatArray, kernels.PackedActivations]:  # fmt: skip
    """:func:`max_pool2d` with ``act``, and the result's sign bits as :func:`engine.kernels.pack_activations` packs
    them (bit = ``(y + threshold[c]) < 0``), in one pass: ``(y, bits)``."""
    a = _nhwc("max_pool2d_pack", x)
    k, s, p, d, out = _pool_args("max_pool2d_pack", a, kernel, stride, padding, dilation, ceil_mode)
    code, slope, gamma, zeta = act_args(act, None, "max_pool2d_pack")
    thr = None if threshold is None else np.ascontiguousarray(threshold, dtype=np.float32).reshape(-1)
    y, bits = _native.maxpool2d(a, k, s, p, d, out, code, slope, gamma, zeta, True, thr)
    return np.asarray(y), kernels.PackedActivations(np.asarray(bits), int(a.shape[3]))


def avg_pool2d(
    x: npt.ArrayLike, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0, ceil_mode: bool = False, count_include_pad: bool = True,
) -> FloatArray:  # fmt: skip
    """Average pooling of float32 NHWC ``x`` (``torch.nn.functional.avg_pool2d`` semantics)."""
    a = _nhwc("avg_pool2d", x)
    k, s, p, _, out = _pool_args("avg_pool2d", a, kernel, stride, padding, 1, ceil_mode)
    return np.asarray(_native.avgpool2d(a, k, s, p, out, bool(count_include_pad)))


def channel_act(x: npt.ArrayLike, act: Activation, out: FloatArray | None = None) -> FloatArray:
    """``act`` per channel of float32 NHWC ``x``; written into ``out`` (may be ``x`` itself) if given."""
    a = _nhwc("channel_act", x)
    code, slope, gamma, zeta = act_args(act, None, "channel_act")
    if out is not None:
        if out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable or out.shape != a.shape:
            raise ValueError("channel_act: out must be a writable C-contiguous float32 array of the input's shape")
        _native.channel_act(a, code, slope, gamma, zeta, out)
        return out
    return np.asarray(_native.channel_act(a, code, slope, gamma, zeta, None))


def sum_upsampled(
    xs: Sequence[npt.ArrayLike], ups: Sequence[tuple[npt.ArrayLike, int]] = (), act: Activation = None
) -> FloatArray:
    """``act(sum(xs) + sum(nearest_upsample(u, f) for u, f in ups))`` for float32 NHWC tensors, in one pass."""
    full = [_nhwc("sum_upsampled", v) for v in xs]
    low = [_nhwc("sum_upsampled", u) for u, _ in ups]
    code, slope, gamma, zeta = act_args(act, None, "sum_upsampled")
    return np.asarray(_native.sum_upsampled(full, low, [int(f) for _, f in ups], code, slope, gamma, zeta))


def upsample_nearest(x: npt.ArrayLike, factor: int) -> FloatArray:
    """Nearest upsampling of float32 NHWC ``x`` by an integer factor."""
    return np.asarray(_native.upsample_nearest(_nhwc("upsample_nearest", x), int(factor)))


def bf16_split(x: npt.ArrayLike) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint16]]:
    """``hi = bf16(x)``, ``lo = bf16(x - hi)`` as bf16 bit patterns (round to nearest even; finite float32 values):
    ``hi + lo`` is ``x`` to about 2^-16 relative."""
    v = np.ascontiguousarray(x, dtype=np.float32)

    def rne(f: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
        b = f.view(np.uint32).astype(np.uint64)
        return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)

    hi = rne(v)
    lo = rne(v - (hi.astype(np.uint32) << 16).view(np.float32))
    return hi, lo


class DirectConvWeights:
    """Float conv weights laid out for :func:`direct_conv2d`: ``[KH, KW, Cin, OCp]`` with the output channels padded
    to a multiple of 16, plus the bias padded the same way. Built once from OIHW weights (groups 1).

    With ``bf16`` (default), where the kernels have the AMX-BF16 conv and a kernel row of input channels fits one tile
    row (12 to 32 values: the stems that see RGB pixels), also ``bf16``: the weights as AMX tiles
    ``[chunks, OCp / 16, hi|lo, 16, 32]`` (K = KH x KW x Cin values in chunks of 32, as bf16 pairs per row, 16 output
    channels per tile); ``None`` otherwise."""

    def __init__(self, weight: npt.ArrayLike, bias: npt.ArrayLike | None = None, bf16: bool = True) -> None:
        w = np.asarray(weight, dtype=np.float32)
        if w.ndim != 4:
            raise ValueError(f"DirectConvWeights: expected OIHW weights, got shape {w.shape}")
        o, i, kh, kw = (int(v) for v in w.shape)
        ocp = (o + 15) // 16 * 16
        packed = np.zeros((kh, kw, i, ocp), np.float32)
        packed[..., :o] = w.transpose(2, 3, 1, 0)
        b = np.zeros(ocp, np.float32)
        if bias is not None:
            b[:o] = np.asarray(bias, dtype=np.float32).reshape(-1)
        self.weight, self.bias, self.out_channels, self.in_channels = packed, b, o, i
        use = bf16 and 12 <= kw * i <= 32 and has_direct_conv_bf16()
        self.bf16 = _bf16_tiles(packed) if use else None


def _bf16_tiles(packed: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    kh, kw, i, ocp = packed.shape
    chunks = (kh * kw * i + 31) // 32
    rows = np.zeros((chunks * 32, ocp), np.float32)  # K in (ky, kx, ci) order, zero rows up to whole chunks
    rows[: kh * kw * i] = packed.reshape(kh * kw * i, ocp)
    # [chunk][16 pairs][2][ocp / 16 blocks][16 channels] -> [chunk][block][pair][channel][2]: a 64-byte row per pair
    tiles = rows.reshape(chunks, 16, 2, ocp // 16, 16).transpose(0, 3, 1, 4, 2).reshape(chunks, ocp // 16, 16, 32)
    hi, lo = bf16_split(tiles)
    return np.ascontiguousarray(np.stack([hi, lo], axis=2))


def has_direct_conv() -> bool:
    """Whether the active ISA has :func:`direct_conv2d` (AVX-512 today); otherwise use a library conv."""
    return bool(_native.has_float_conv())


def has_direct_conv_bf16() -> bool:
    """Whether the active ISA runs :func:`direct_conv2d` on AMX-BF16 tiles (for weights with ``bf16`` tiles)."""
    return bool(_native.has_float_conv_bf16())


def direct_conv2d(
    x: npt.ArrayLike, weights: DirectConvWeights, stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, act: Activation = None,
) -> FloatArray:  # fmt: skip
    """``act(conv2d(x, w) + bias)`` of float32 NHWC ``x`` (groups 1), register-tiled over output pixels and channels:
    for convs with few input channels (the stems), where GEMM-based convs lose most of their time to layout.
    ``padding``: int, ``(ph, pw)`` or ``(top, left, bottom, right)``. Raises ``RuntimeError`` where
    :func:`has_direct_conv` is false."""
    a = _nhwc("direct_conv2d", x)
    p = list(kernels._padding(padding))
    code, slope, gamma, zeta = act_args(act, None, "direct_conv2d")
    return np.asarray(
        _native.float_conv2d(a, weights.weight, weights.bias, weights.out_channels, _pair("stride", stride), p,
                             _pair("dilation", dilation), code, slope, gamma, zeta, weights.bf16)
    )  # fmt: skip
