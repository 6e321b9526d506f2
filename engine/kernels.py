"""Typed Python layer over the packed binary kernels (``engine._native``). numpy in, numpy out; no torch.

Bit encoding (every packer and kernel): bit 0 = +1, bit 1 = -1, so sgn(0) = +1.

Data layouts
------------
Packed activations (:class:`PackedActivations`)
    ``bits``: ``uint32`` array ``[N, H, W, ceil(C / 32)]`` (NHWC, packed along channels). Channel ``c`` of a pixel is
    bit ``c % 32`` of word ``c // 32`` of that pixel. Bits past ``C`` are zero (the kernels rely on it).
Packed weights (:class:`PackedConvWeights`)
    ``bits``: ``uint32`` array ``[O, KH, KW, ceil(Cg / 32)]`` (OHWI, packed along the input channels of one group,
    ``Cg = C_in / groups``), same bit order, tail bits zero. The native object keeps a blocked copy for the kernels.
Float tensors
    NHWC ``float32``, C-contiguous (inputs to :func:`pack_activations`, ``residual`` and float outputs of
    :func:`bconv2d`). Per-channel vectors are ``float32`` of length ``C``.

The convolution is exact: zero padding contributes 0 (as in ``torch.nn.functional.conv2d`` on +-1 tensors),
not +1. For output pixel ``q`` and output channel ``o`` the fused epilogue computes::

    dot = sum over valid taps of (+-1 input) * (+-1 weight)          # exact integer
    y   = scale[o] * dot + shift[o]                                    # one fused multiply-add
    y   = y + residual[q, o]                                           # if residual is given
    y   = prelu(y, slope[o])                       # act=PReLU(slope);  prelu(v, a) = v if v > 0 else a * v
    y   = prelu(y - gamma[o], slope[o]) + zeta[o]  # act=RPReLU(gamma, slope, zeta)
    float output: y;   packed output: bit = (y + next_threshold[o]) < 0

Threads: the kernels run on their own pool (``BINPOSE_THREADS``, default all CPUs; :func:`set_num_threads`) and
release the GIL. ISA: the best of ``amx``, ``avx512`` (VPOPCNTDQ), ``avx2``, ``scalar`` is chosen by CPUID
unless ``BINPOSE_ISA`` forces one (an unsupported name is an error); see :func:`available_isas`, :func:`set_isa`.
``amx`` (Sapphire Rapids and later, where Linux grants the tile state) is ``avx512`` plus AMX-INT8 convolutions: the
bits are expanded to +-1 bytes and multiplied on the tiles (TDPBSSD), for convs with >= 32 input channels per group
and at least :func:`get_amx_min_pixels` output pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine import _native

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
WordArray = npt.NDArray[np.uint32]
IntPair = int | tuple[int, int]
Padding = int | tuple[int, int] | tuple[int, int, int, int]

__all__ = [
    "ReLU",
    "PReLU",
    "RPReLU",
    "PackedActivations",
    "PackedConvWeights",
    "BConvResult",
    "BConv",
    "pack_activations",
    "unpack_activations",
    "bconv2d",
    "conv_output_shape",
    "available_isas",
    "active_isa",
    "set_isa",
    "get_amx_min_pixels",
    "set_amx_min_pixels",
    "get_num_threads",
    "set_num_threads",
    "set_thread_inline",
]


# ----------------------------------------------------------------------------------------------------------- runtime


def available_isas() -> list[str]:
    """ISAs usable on this CPU and build, best first (always ends with ``"scalar"``)."""
    return list(_native.available_isas())


def active_isa() -> str:
    """The ISA the kernels use now. Raises ``RuntimeError`` if ``BINPOSE_ISA`` names an unavailable one."""
    return str(_native.active_isa())


def set_isa(name: str) -> None:
    """Force the kernels onto ``name`` (``"amx"``, ``"avx512"``, ``"avx2"`` or ``"scalar"``); ``ValueError`` if
    unavailable."""
    _native.set_isa(name)
    logger.debug("binary kernels now use ISA %s", name)


def get_amx_min_pixels() -> int:
    """On the ``amx`` ISA, the smallest conv (output pixels, batch included) that runs on the AMX tiles; smaller ones
    (whose weight tiles would be reused too little) run on the AVX-512 popcount kernels."""
    return int(_native.get_amx_min_pixels())


def set_amx_min_pixels(n: int) -> None:
    """Set :func:`get_amx_min_pixels` (``n >= 1``; 1 sends every eligible conv to the tiles, as the tests do)."""
    _native.set_amx_min_pixels(int(n))


def get_num_threads() -> int:
    """Threads the kernels use (the calling thread included)."""
    return int(_native.get_num_threads())


def set_num_threads(n: int) -> None:
    """Resize the kernels' own thread pool (``n >= 1``). Independent of ``torch.set_num_threads``."""
    _native.set_num_threads(int(n))


def set_thread_inline(on: bool) -> None:
    """``True``: kernels called from the calling thread run on that thread alone, never on the pool (for workers that
    each run whole inferences side by side). Per thread; ``False`` restores the pool."""
    _native.set_thread_inline(bool(on))


# ------------------------------------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class ReLU:
    """``y -> max(y, 0)`` (the float ops only; the binary epilogue takes PReLU or RPReLU)."""


@dataclass(frozen=True)
class PReLU:
    """``y -> y if y > 0 else slope[o] * y`` (per output channel)."""

    slope: FloatArray


@dataclass(frozen=True)
class RPReLU:
    """ReActNet's RPReLU: ``y -> prelu(y - gamma[o], slope[o]) + zeta[o]``."""

    gamma: FloatArray
    slope: FloatArray
    zeta: FloatArray


@dataclass(frozen=True)
class PackedActivations:
    """Sign bits of an NHWC activation tensor: ``bits`` is ``uint32 [N, H, W, ceil(channels / 32)]``."""

    bits: WordArray
    channels: int

    def __post_init__(self) -> None:
        if self.bits.dtype != np.uint32 or self.bits.ndim != 4 or not self.bits.flags.c_contiguous:
            raise ValueError("PackedActivations.bits must be a C-contiguous uint32 array [N, H, W, words]")
        if self.bits.shape[3] != (self.channels + 31) // 32:
            raise ValueError(
                f"PackedActivations: {self.bits.shape[3]} words per pixel do not match {self.channels} channels "
                f"(expected {(self.channels + 31) // 32})"
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Logical NHWC shape ``(N, H, W, C)``."""
        n, h, w, _ = self.bits.shape
        return int(n), int(h), int(w), self.channels

    def unpack(self) -> FloatArray:
        """The +1/-1 float32 NHWC tensor these bits encode."""
        return unpack_activations(self)


class PackedConvWeights:
    """Sign bits of a conv weight plus its geometry, ready for :func:`bconv2d`.

    ``bits``: ``uint32 [O, KH, KW, ceil(Cg / 32)]`` (OHWI), ``Cg = in_channels_per_group``. Build from float OIHW
    weights with :meth:`from_float` (bit = w < 0) or from stored bits with the constructor.
    """

    def __init__(self, bits: WordArray, in_channels_per_group: int, groups: int = 1) -> None:
        bits = np.ascontiguousarray(bits, dtype=np.uint32)
        if bits.ndim != 4:
            raise ValueError(f"PackedConvWeights: bits must be [O, KH, KW, words], got shape {bits.shape}")
        self.bits: WordArray = bits
        self.native: _native.ConvWeights = _native.ConvWeights(bits, int(in_channels_per_group), int(groups))
        o = int(bits.shape[0])
        self._ones: FloatArray = np.ones(o, dtype=np.float32)  # default scale / shift of bconv2d
        self._zeros: FloatArray = np.zeros(o, dtype=np.float32)

    @classmethod
    def from_float(cls, weight: npt.ArrayLike, groups: int = 1) -> PackedConvWeights:
        """Pack a float OIHW weight (``I = C_in / groups``) by sign: +1 where ``w >= 0``, -1 elsewhere."""
        w = np.ascontiguousarray(weight, dtype=np.float32)
        if w.ndim != 4:
            raise ValueError(f"PackedConvWeights.from_float: expected an OIHW weight, got shape {w.shape}")
        return cls(_native.pack_weights(w), w.shape[1], groups)

    @property
    def out_channels(self) -> int:
        return int(self.native.out_channels)

    @property
    def in_channels_per_group(self) -> int:
        return int(self.native.in_channels_per_group)

    @property
    def in_channels(self) -> int:
        return self.in_channels_per_group * self.groups

    @property
    def groups(self) -> int:
        return int(self.native.groups)

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.native.kernel_h), int(self.native.kernel_w)

    def unpack(self) -> FloatArray:
        """The +1/-1 float32 OIHW weight these bits encode."""
        o, kh, kw, _ = self.bits.shape
        ohwi = _native.unpack_activations(self.bits, self.in_channels_per_group)
        return np.ascontiguousarray(ohwi.transpose(0, 3, 1, 2))

    def __repr__(self) -> str:
        kh, kw = self.kernel_size
        return f"PackedConvWeights(out={self.out_channels}, in={self.in_channels}, kernel={kh}x{kw}, groups={self.groups})"


@dataclass(frozen=True)
class BConvResult:
    """Output of :func:`bconv2d`: float32 NHWC ``out`` and/or the packed sign bits ``bits`` for the next layer."""

    out: FloatArray | None
    bits: PackedActivations | None


# ------------------------------------------------------------------------------------------------------- functions


def _vec(name: str, v: npt.ArrayLike | None, n: int | None) -> FloatArray | None:
    """A per-channel float32 vector; ``n`` None: its length is left to the native op to check."""
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.ndim == 1 and v.flags.c_contiguous:
        if n is None or v.shape[0] == n:
            return v  # fast path: already what the kernels take
    a = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have one value per channel ({n}), got {a.shape[0]}")
    return a


ActArgs = tuple[int, FloatArray | None, FloatArray | None, FloatArray | None]


def act_args(act: ReLU | PReLU | RPReLU | None, n: int | None, where: str, relu: bool = True) -> ActArgs:
    """An activation as the native ops take it: (code 0 none | 1 PReLU | 2 RPReLU | 3 ReLU, slope, gamma, zeta), the
    per-channel vectors float32 (of length ``n``, checked here unless None). ``relu=False``: ReLU is refused (the
    binary epilogue has none)."""
    if act is None:
        return 0, None, None, None
    if isinstance(act, ReLU) and relu:
        return 3, None, None, None
    if isinstance(act, PReLU):
        return 1, _vec("PReLU.slope", act.slope, n), None, None
    if isinstance(act, RPReLU):
        return 2, _vec("RPReLU.slope", act.slope, n), _vec("RPReLU.gamma", act.gamma, n), _vec("RPReLU.zeta", act.zeta, n)
    kinds = "None, ReLU, PReLU or RPReLU" if relu else "None, PReLU or RPReLU"
    raise TypeError(f"{where}: act must be {kinds}, got {type(act).__name__}")


def _pair(name: str, v: IntPair | Sequence[int]) -> tuple[int, int]:
    if type(v) is int:
        return v, v
    if isinstance(v, int | np.integer):
        return int(v), int(v)
    t = tuple(int(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {v!r}")
    return t[0], t[1]


def _padding(v: Padding | Sequence[int]) -> tuple[int, int, int, int]:
    """int -> all sides; (ph, pw) -> symmetric; (top, left, bottom, right) as given."""
    if type(v) is int:
        return v, v, v, v
    if isinstance(v, int | np.integer):
        p = int(v)
        return p, p, p, p
    t = tuple(int(x) for x in v)
    if len(t) == 2:
        return t[0], t[1], t[0], t[1]
    if len(t) == 4:
        return t[0], t[1], t[2], t[3]
    raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right), got {v!r}")


def pack_activations(x_nhwc: npt.ArrayLike, threshold: npt.ArrayLike | None = None) -> PackedActivations:
    """Pack float NHWC activations: bit = ``(x + threshold[c]) < 0`` (``threshold=None``: ``x < 0``).

    ``threshold`` is a per-channel float vector of length C (the learned binarizer shift, if any).
    """
    x = np.ascontiguousarray(x_nhwc, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"pack_activations: expected NHWC (4-D), got shape {x.shape}")
    c = int(x.shape[3])
    thr = _vec("threshold", threshold, c)
    return PackedActivations(_native.pack_activations(x, thr), c)


def unpack_activations(p: PackedActivations) -> FloatArray:
    """+1/-1 float32 NHWC tensor of packed activations (for checks and debugging)."""
    return np.asarray(_native.unpack_activations(p.bits, p.channels))


def conv_output_shape(
    input_hw: tuple[int, int],
    weights: PackedConvWeights,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
) -> tuple[int, int]:
    """(OH, OW) of :func:`bconv2d` for an input of spatial size ``input_hw``."""
    sh, sw = _pair("stride", stride)
    pt, pl, pb, pr = _padding(padding)
    dh, dw = _pair("dilation", dilation)
    kh, kw = weights.kernel_size
    oh = (input_hw[0] + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (input_hw[1] + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return oh, ow


class BConv:
    """A binary conv with its geometry and fused epilogue checked and bound once, then called on many inputs: what
    the runtime holds per layer (a call then costs the native call only). Arguments as :func:`bconv2d`."""

    def __init__(
        self,
        weights: PackedConvWeights,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        scale: npt.ArrayLike | None = None,
        shift: npt.ArrayLike | None = None,
        act: PReLU | RPReLU | None = None,
        next_threshold: npt.ArrayLike | None = None,
        want_float: bool = True,
        want_bits: bool | None = None,
    ) -> None:
        o = weights.out_channels
        self.weights = weights
        self.want_bits = bool(next_threshold is not None if want_bits is None else want_bits)
        self.want_float = bool(want_float)
        self._geometry = (list(_pair("stride", stride)), list(_padding(padding)), list(_pair("dilation", dilation)))
        scale_v, shift_v = _vec("scale", scale, o), _vec("shift", shift, o)
        self._scale = scale_v if scale_v is not None else weights._ones
        self._shift = shift_v if shift_v is not None else weights._zeros
        self._act = act_args(act, o, "bconv2d", relu=False)
        self._thr = _vec("next_threshold", next_threshold, o)
        if not self.want_float and not self.want_bits:
            raise ValueError("bconv2d: ask for float output, bits, or both")

    def __call__(
        self, x: PackedActivations, residual: npt.ArrayLike | None = None, residual_in_place: bool = False
    ) -> BConvResult:
        """``residual_in_place``: for a caller with no further use for the residual: when it is a writable
        C-contiguous float32 array, the float output is written into it (and returned as ``out``), which saves a fresh
        output array (measured 15-35% of a 56x56x64 or 28x28x128 layer with its fused epilogue)."""
        w = self.weights
        if x.channels != w.in_channels:
            raise ValueError(
                f"bconv2d: input has {x.channels} channels, weights expect {w.in_channels} "
                f"({w.in_channels_per_group} per group x {w.groups} groups)"
            )
        res = None if residual is None else np.ascontiguousarray(residual, dtype=np.float32)
        into = res if residual_in_place and res is residual and res is not None and res.flags.writeable else None
        stride, padding, dilation = self._geometry
        act, slope, gamma, zeta = self._act
        out, bits = _native.bconv2d(x.bits, x.channels, w.native, stride, padding, dilation, self._scale, self._shift,
                                    res, act, slope, gamma, zeta, self._thr, self.want_float, self.want_bits,
                                    into)  # fmt: skip
        return BConvResult(out=out, bits=PackedActivations(bits, w.out_channels) if bits is not None else None)


def bconv2d(
    x: PackedActivations,
    weights: PackedConvWeights,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    scale: npt.ArrayLike | None = None,
    shift: npt.ArrayLike | None = None,
    residual: npt.ArrayLike | None = None,
    act: PReLU | RPReLU | None = None,
    next_threshold: npt.ArrayLike | None = None,
    want_float: bool = True,
    want_bits: bool | None = None,
) -> BConvResult:
    """Binary convolution of packed activations with packed weights, with the fused epilogue (module docstring).

    Args:
        x: packed NHWC input with ``weights.in_channels`` channels.
        weights: packed OHWI weights; ``weights.groups`` sets the groups.
        stride, dilation: int or ``(h, w)``.
        padding: zero padding, int, ``(ph, pw)`` or ``(top, left, bottom, right)``; exact (padded taps add 0).
        scale, shift: per output channel (default 1 and 0: ``y`` is then the integer dot product).
        residual: float32 NHWC of the output's shape ``(N, OH, OW, O)``, added after scale/shift.
        act: ``None``, :class:`PReLU` or :class:`RPReLU`, applied after the residual.
        next_threshold: per output channel; the packed output is ``(y + next_threshold) < 0``.
        want_float: return the float32 NHWC ``y``.
        want_bits: return the packed sign bits of ``y + next_threshold``; default: whether ``next_threshold``
            is given.

    Returns:
        :class:`BConvResult` with ``out`` (float32 ``[N, OH, OW, O]``) and/or ``bits`` (``PackedActivations``).
    """
    op = BConv(weights, stride, padding, dilation, scale, shift, act, next_threshold, want_float, want_bits)
    return op(x, residual)
