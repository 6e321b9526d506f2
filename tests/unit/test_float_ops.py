"""The runtime's native float NHWC ops against torch.nn.functional on the same data (1 and 2 kernel threads)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import float_ops, kernels


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = kernels.get_num_threads()
    kernels.set_num_threads(request.param)
    yield request.param
    kernels.set_num_threads(before)


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def _x(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


POOLS = [  # (N, H, W, C), kernel, stride, padding, dilation, ceil_mode
    ((1, 112, 112, 64), 3, 2, 1, 1, False),
    ((2, 9, 7, 5), 3, 2, 1, 1, True),
    ((1, 8, 6, 33), 2, 2, 0, 1, False),
    ((3, 7, 5, 18), 2, 2, 0, 1, True),
    ((1, 10, 11, 3), (3, 2), (1, 2), (1, 0), 1, False),
    ((1, 13, 12, 17), 3, 2, 1, 2, True),
    ((1, 1, 1, 7), 1, 1, 0, 1, False),
]


@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOLS)
def test_max_pool2d_matches_torch(threads: int, shape: tuple[int, ...], k: int, s: int, p: int, d: int, ceil: bool) -> None:
    x = _x(shape)
    got = float_ops.max_pool2d(x, k, s, p, d, ceil)
    want = _nhwc(F.max_pool2d(_nchw(x), k, s, p, d, ceil))
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape,k,s,p,d,ceil", [c for c in POOLS if c[4] == 1])
def test_avg_pool2d_matches_torch(
    threads: int, shape: tuple[int, ...], k: int, s: int, p: int, d: int, ceil: bool, count_include_pad: bool
) -> None:
    x = _x(shape, 1)
    got = float_ops.avg_pool2d(x, k, s, p, ceil, count_include_pad)
    want = _nhwc(F.avg_pool2d(_nchw(x), k, s, p, ceil, count_include_pad))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _acts(c: int) -> list[tuple[str, float_ops.Activation]]:
    rng = np.random.default_rng(c)
    v = [rng.standard_normal(c).astype(np.float32) for _ in range(3)]
    return [
        ("none", None),
        ("relu", float_ops.ReLU()),
        ("prelu", kernels.PReLU(v[0])),
        ("rprelu", kernels.RPReLU(gamma=v[1], slope=v[0], zeta=v[2])),
    ]


def _torch_act(t: torch.Tensor, act: float_ops.Activation) -> torch.Tensor:
    if act is None:
        return t
    if isinstance(act, float_ops.ReLU):
        return torch.relu(t)
    if isinstance(act, kernels.PReLU):
        return F.prelu(t, torch.from_numpy(act.slope).to(t.dtype))
    assert isinstance(act, kernels.RPReLU)
    g, z = (torch.from_numpy(v).to(t.dtype).reshape(1, -1, 1, 1) for v in (act.gamma, act.zeta))
    return F.prelu(t - g, torch.from_numpy(act.slope).to(t.dtype)) + z


@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOLS)
def test_max_pool2d_with_act_and_pack_matches_torch(
    threads: int, shape: tuple[int, ...], k: int, s: int, p: int, d: int, ceil: bool
) -> None:
    """The fused pooling (ResNet's stem: pool, PReLU, sign bits in one pass) vs torch's pool and activation, and the
    bits vs numpy's signs of ``y + threshold`` (bit 1 = -1)."""
    x = _x(shape, 3)
    c = shape[3]
    thr = np.random.default_rng(c).standard_normal(c).astype(np.float32)
    for name, act in _acts(c):
        want = _nhwc(_torch_act(F.max_pool2d(_nchw(x), k, s, p, d, ceil), act))
        np.testing.assert_allclose(float_ops.max_pool2d(x, k, s, p, d, ceil, act), want, rtol=1e-6, atol=1e-6)
        for threshold in (thr, None):
            y, bits = float_ops.max_pool2d_pack(x, k, s, p, d, ceil, act, threshold)
            np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6, err_msg=name)
            signs = np.where(y + (threshold if threshold is not None else 0) < 0, -1.0, 1.0)
            assert bits.channels == c and bits.bits.shape[:3] == y.shape[:3]
            np.testing.assert_array_equal(kernels.unpack_activations(bits), signs, err_msg=name)


@pytest.mark.parametrize("shape", [(1, 128, 96, 64), (2, 5, 3, 18), (1, 1, 1, 1)])
def test_channel_act_matches_torch_new_and_in_place(threads: int, shape: tuple[int, ...]) -> None:
    x = _x(shape, 2)
    for name, act in _acts(shape[3]):
        want = _nhwc(_torch_act(_nchw(x), act))
        np.testing.assert_allclose(float_ops.channel_act(x, act), want, rtol=1e-6, atol=1e-6, err_msg=name)
        y = x.copy()
        assert float_ops.channel_act(y, act, out=y) is y
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("n_full,factors", [(1, []), (2, []), (3, [2]), (1, [2, 4, 8]), (2, [4])])
def test_sum_upsampled_matches_torch(threads: int, n_full: int, factors: list[int]) -> None:
    n, h, w, c = 2, 16, 24, 18
    xs = [_x((n, h, w, c), 10 + i) for i in range(n_full)]
    ups = [(_x((n, h // f, w // f, c), 20 + f), f) for f in factors]
    for name, act in _acts(c):
        total = sum((_nchw(v) for v in xs), torch.zeros(n, c, h, w))
        for u, f in ups:
            total = total + F.interpolate(_nchw(u), scale_factor=f, mode="nearest")
        want = _nhwc(_torch_act(total, act))
        got = float_ops.sum_upsampled(xs, ups, act)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("shape,f", [((1, 8, 6, 256), 2), ((2, 3, 5, 17), 3), ((1, 1, 1, 4), 1)])
def test_upsample_nearest_matches_torch(threads: int, shape: tuple[int, ...], f: int) -> None:
    x = _x(shape, 3)
    want = _nhwc(F.interpolate(_nchw(x), scale_factor=f, mode="nearest"))
    np.testing.assert_array_equal(float_ops.upsample_nearest(x, f), want)


def test_bad_arguments_raise_clear_errors() -> None:
    x = _x((1, 8, 8, 4))
    with pytest.raises(ValueError, match="NHWC"):
        float_ops.max_pool2d(x[0], 2)
    with pytest.raises(ValueError, match="padding"):
        float_ops.max_pool2d(x, 2, 2, 2)
    with pytest.raises(ValueError, match="output size"):
        float_ops.avg_pool2d(_x((1, 1, 1, 4)), 3)
    with pytest.raises(ValueError, match="one entry per channel"):
        float_ops.channel_act(x, kernels.PReLU(np.ones(3, np.float32)))
    with pytest.raises(ValueError, match="H/f"):
        float_ops.sum_upsampled([x], [(_x((1, 3, 4, 4)), 2)])
    with pytest.raises(ValueError, match="same shape"):
        float_ops.sum_upsampled([x, _x((1, 8, 8, 5))])
    with pytest.raises(TypeError, match="ReLU"):
        float_ops.channel_act(x, "relu")  # type: ignore[arg-type]
    if float_ops.has_direct_conv():
        dw = float_ops.DirectConvWeights(_x((16, 3, 3, 3)))
        with pytest.raises(ValueError, match="Cin = 4"):
            float_ops.direct_conv2d(x, dw, 1, 1)
        with pytest.raises(ValueError, match="smaller than the kernel"):
            float_ops.direct_conv2d(_x((1, 1, 1, 3)), dw)


DIRECT = [  # Cin, OC, kernel, stride, padding, dilation, (H, W)
    (3, 64, (7, 7), 2, 3, 1, (37, 30)),
    (3, 64, (3, 3), 2, 1, 1, (32, 24)),
    (1, 20, (3, 3), 1, 1, 1, (9, 11)),
    (4, 70, (1, 5), (1, 2), (0, 2, 0, 1), 1, (6, 13)),
    (2, 16, (3, 3), 1, 0, 2, (8, 8)),
    (3, 130, (2, 2), 2, 0, 1, (5, 7)),
    (3, 64, (3, 3), 1, 1, 1, (4, 11)),  # a row's tail of 5 pixels after the 6-pixel tiles
    (3, 32, (3, 3), 1, 1, 1, (5, 15)),  # a tail of 7 after the 8-pixel tiles of two channel blocks
    # AMX-BF16 path where the CPU has it (KW x Cin of 12 to 32 values): odd widths (partial 16-pixel runs), channel
    # tails (one block left in the last pass: 40, 130 -> 144), dilation along the height, a 32-value kernel row
    (3, 40, (7, 7), 2, 3, 1, (45, 37)),
    (3, 130, (5, 5), 1, 2, 1, (11, 19)),
    (4, 48, (3, 4), (2, 1), (1, 2, 0, 1), (2, 1), (13, 35)),
    (4, 16, (2, 8), 1, 0, 1, (6, 40)),
]


def _conv_reference(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, s: Any, p: Any, d: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conv in float64, and its error scale: the conv of |x| with |w| (the sum of the products' magnitudes)."""
    pt = (p, p, p, p) if isinstance(p, int) else p
    xt = F.pad(_nchw(x).double(), (pt[1], pt[3], pt[0], pt[2]))
    wt = torch.from_numpy(w).double()
    z = F.conv2d(xt, wt, torch.from_numpy(b).double(), s, 0, d)
    return z, F.conv2d(xt.abs(), wt.abs(), None, s, 0, d)


@pytest.mark.skipif(not float_ops.has_direct_conv(), reason="the direct float conv needs AVX-512 (else torch conv runs)")
@pytest.mark.parametrize("cin,oc,k,s,p,d,hw", DIRECT)
def test_direct_conv2d_matches_torch(
    threads: int, cin: int, oc: int, k: tuple[int, int], s: int, p: int | tuple[int, ...], d: int, hw: tuple[int, int]
) -> None:
    x = _x((2, *hw, cin), 5)
    rng = np.random.default_rng(oc)
    w = rng.standard_normal((oc, cin, *k)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    dw = float_ops.DirectConvWeights(w, b)
    z, magnitude = _conv_reference(x, w, b, s, p, d)
    # FP32 products: float rounding. The AMX-BF16 path: three bf16 products per term, off by about 2^-16 of each
    # product's magnitude (engine/csrc/float_conv_amx.cpp): bounded here by 2^-14 x the sum of |x * w|.
    bf16 = dw.bf16 is not None
    assert bf16 == (float_ops.has_direct_conv_bf16() and 12 <= k[1] * cin <= 32)
    bound = _nhwc(magnitude) * 2.0**-14 + 1e-5 if bf16 else None
    for name, act in _acts(oc):
        want = _nhwc(_torch_act(z, act)).astype(np.float32)
        got = float_ops.direct_conv2d(x, dw, s, p, d, act)
        assert got.shape == want.shape, name
        if bound is None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
        else:  # the activations scale by at most max(1, |slope|)
            slope = np.abs(getattr(act, "slope", np.ones(oc, np.float32))).max()
            err = np.abs(got.astype(np.float64) - want)
            assert (err <= bound * max(1.0, float(slope))).all(), f"{name}: {float((err / bound).max())} x the bound"


@pytest.mark.skipif(not float_ops.has_direct_conv_bf16(), reason="needs AMX-BF16 (Sapphire Rapids or later)")
def test_bf16_stem_is_closer_to_float64_than_bf16_alone_and_avx512_ignores_it() -> None:
    """The three-product split is ~256x more exact than one bf16 product, and forcing the avx512 kernels (or a
    geometry the AMX kernel does not take: dilation along the width) runs the FP32 kernel on the same weights."""
    x = _x((1, 64, 48, 3), 9)
    w = np.random.default_rng(1).standard_normal((64, 3, 7, 7)).astype(np.float32)
    b = np.zeros(64, np.float32)
    dw = float_ops.DirectConvWeights(w, b)
    assert dw.bf16 is not None and dw.bf16.shape == (5, 4, 2, 16, 32)
    z, magnitude = _conv_reference(x, w, b, 2, 3, 1)
    want, scale = _nhwc(z), _nhwc(magnitude)
    got = float_ops.direct_conv2d(x, dw, 2, 3)
    hi, _ = float_ops.bf16_split(x)
    whi, _ = float_ops.bf16_split(w)
    as_f32 = lambda h: (h.astype(np.uint32) << 16).view(np.float32)  # noqa: E731
    one_product, _ = _conv_reference(as_f32(hi), as_f32(whi), b, 2, 3, 1)
    err3 = float((np.abs(got - want) / scale).max())
    err1 = float((np.abs(_nhwc(one_product) - want) / scale).max())
    assert err3 < 2.0**-14 and err1 > 64 * err3, (err3, err1)
    before = kernels.active_isa()
    try:
        kernels.set_isa("avx512")
        fp32 = float_ops.direct_conv2d(x, dw, 2, 3)
    finally:
        kernels.set_isa(before)
    np.testing.assert_allclose(fp32, want, rtol=1e-5, atol=1e-4)
    assert not np.array_equal(fp32, got)  # a different kernel ran
    dilated, _ = _conv_reference(x, w, b, 2, 3, (1, 2))
    np.testing.assert_allclose(float_ops.direct_conv2d(x, dw, 2, 3, (1, 2)), _nhwc(dilated), rtol=1e-5, atol=1e-4)


def test_bf16_split_is_round_to_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-7 + 2.0**-9, -3.0e-3, 1.0e30], np.float32)
    hi, lo = float_ops.bf16_split(x)
    as_f32 = (hi.astype(np.uint32) << 16).view(np.float32)
    # 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1 + 3 x 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: the even one is 1 + 2^-6.
    assert as_f32.tolist()[:4] == [1.0, 1.0, 1.0 + 2.0**-6, 1.0 + 2.0**-7]
    rest = (lo.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(as_f32.astype(np.float64) + rest, x.astype(np.float64), rtol=2.0**-16)
