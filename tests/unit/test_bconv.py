"""Packed binary convolution against torch conv2d on +-1 tensors (exact), on every ISA and 1/2 threads,
plus the fused epilogue against a float64 numpy reference computed here."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import kernels
from engine.functional import binary_conv2d

ISAS = kernels.available_isas()


def sgn(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


@dataclass(frozen=True)
class Case:
    n: int
    cin: int
    cout: int
    h: int
    w: int
    k: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dil: tuple[int, int]
    groups: int

    def __str__(self) -> str:
        return (
            f"n{self.n}-c{self.cin}-o{self.cout}-{self.h}x{self.w}-k{self.k[0]}x{self.k[1]}-s{self.stride[0]}"
            f"{self.stride[1]}-p{self.pad[0]}{self.pad[1]}-d{self.dil[0]}{self.dil[1]}-g{self.groups}"
        )


def valid(c: Case) -> bool:
    eh = c.dil[0] * (c.k[0] - 1) + 1
    ew = c.dil[1] * (c.k[1] - 1) + 1
    return c.h + 2 * c.pad[0] >= eh and c.w + 2 * c.pad[1] >= ew and c.cin % c.groups == 0 and c.cout % c.groups == 0


def make_cases() -> list[Case]:
    """Hand-picked edge cases plus a seeded sample of the full grid (batch 1-3; channels 1..130; kernels 1x1, 3x3,
    5x5 and non-square; strides 1, 2, mixed; dilation 1-2; padding 0-2; groups 1-2; odd and tiny inputs)."""
    cases = [
        Case(1, 64, 64, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),
        Case(2, 3, 5, 7, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1),
        Case(1, 33, 18, 5, 9, (1, 3), (2, 1), (2, 2), (2, 2), 1),
        Case(2, 130, 36, 4, 3, (5, 5), (1, 1), (2, 2), (1, 1), 2),
        Case(1, 18, 18, 2, 2, (5, 5), (1, 1), (2, 2), (1, 1), 1),  # input smaller than the kernel
        Case(1, 1, 1, 1, 1, (3, 3), (1, 1), (1, 1), (1, 1), 1),  # 1x1 input, every tap but one padded
        Case(3, 65, 72, 9, 9, (1, 1), (1, 1), (0, 0), (1, 1), 1),
        Case(1, 64, 130, 6, 5, (1, 1), (2, 2), (0, 0), (1, 1), 2),
        Case(1, 63, 6, 5, 5, (3, 3), (1, 1), (0, 0), (2, 2), 1),
        Case(2, 64, 64, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), 2),  # groups, word-aligned group channels
        Case(1, 18, 64, 11, 13, (3, 3), (2, 1), (1, 2), (1, 1), 2),  # groups split a 32-bit word (9 + 9)
        Case(1, 130, 130, 3, 3, (3, 2), (1, 2), (2, 1), (2, 1), 1),
    ]
    rng = np.random.default_rng(1234)
    channels = [1, 3, 18, 33, 63, 64, 65, 130]
    kernels_ = [(1, 1), (3, 3), (5, 5), (1, 3), (3, 1), (2, 3)]
    strides = [(1, 1), (2, 2), (1, 2), (2, 1)]
    while len(cases) < 60:
        cin = int(rng.choice(channels))
        cout = int(rng.choice(channels))
        g = int(rng.choice([1, 2]))
        c = Case(
            int(rng.integers(1, 4)),
            cin,
            cout,
            int(rng.integers(1, 12)),
            int(rng.integers(1, 12)),
            kernels_[int(rng.integers(len(kernels_)))],
            strides[int(rng.integers(len(strides)))],
            (int(rng.integers(0, 3)), int(rng.integers(0, 3))),
            (int(rng.integers(1, 3)), int(rng.integers(1, 3))),
            g,
        )
        if valid(c):
            cases.append(c)
    return cases


CASES = make_cases()


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each ISA of the machine; on "amx" every conv with >= 32 channels per group goes to the tiles, however small."""
    before, min_pixels = kernels.active_isa(), kernels.get_amx_min_pixels()
    kernels.set_isa(request.param)
    kernels.set_amx_min_pixels(1)
    yield request.param
    kernels.set_isa(before)
    kernels.set_amx_min_pixels(min_pixels)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    before = kernels.get_num_threads()
    kernels.set_num_threads(request.param)
    yield request.param
    kernels.set_num_threads(before)


def tensors(c: Case, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c.n, c.cin, c.h, c.w, generator=g)
    x[x.abs() < 0.05] = 0.0  # exact zeros: sgn(0) = +1
    w = torch.randn(c.cout, c.cin // c.groups, *c.k, generator=g)
    return x, w


@pytest.mark.parametrize("case", CASES, ids=str)
def test_binary_conv2d_matches_torch(case: Case, isa: str, threads: int) -> None:
    x, w = tensors(case, zlib.crc32(str(case).encode()))
    ref = F.conv2d(sgn(x), sgn(w), None, case.stride, case.pad, case.dil, case.groups)
    out = binary_conv2d(x, w, None, case.stride, case.pad, case.dil, case.groups)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("case", CASES[:12], ids=str)
def test_binary_conv2d_bias_and_int_args(case: Case) -> None:
    x, w = tensors(case, 7)
    b = torch.randn(case.cout)
    ref = F.conv2d(sgn(x), sgn(w), b, case.stride, case.pad, case.dil, case.groups)
    out = binary_conv2d(x, w, b, stride=case.stride, padding=case.pad, dilation=case.dil, groups=case.groups)
    # torch may add the bias before the (exact, integer) sum: allow one float rounding of the result.
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-5)
    # The integer part is exact.
    assert torch.equal(
        torch.round(out - b.view(1, -1, 1, 1)), F.conv2d(sgn(x), sgn(w), None, case.stride, case.pad, case.dil, case.groups)
    )


def test_binary_conv2d_scalar_args_and_chw() -> None:
    x, w = torch.randn(5, 9, 8), torch.randn(4, 5, 3, 3)
    ref = F.conv2d(sgn(x[None]), sgn(w), None, 2, 1, 1)[0]
    assert torch.equal(binary_conv2d(x, w, stride=2, padding=1), ref)


@pytest.mark.parametrize("case", [c for c in CASES if c.k[0] * c.k[1] > 1][:20], ids=str)
def test_isa_paths_agree_with_scalar(case: Case) -> None:
    x, w = tensors(case, 99)
    before, min_pixels = kernels.active_isa(), kernels.get_amx_min_pixels()
    try:
        kernels.set_amx_min_pixels(1)
        outs = {}
        for name in ISAS:
            kernels.set_isa(name)
            outs[name] = binary_conv2d(x, w, None, case.stride, case.pad, case.dil, case.groups)
    finally:
        kernels.set_isa(before)
        kernels.set_amx_min_pixels(min_pixels)
    for name in ISAS:
        assert torch.equal(outs[name], outs["scalar"]), name


NETWORK_SHAPES = [  # the networks' own sizes, where the amx ISA picks tiles or popcounts by the pixel count
    Case(1, 64, 64, 56, 56, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    Case(1, 64, 128, 56, 56, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    Case(2, 256, 256, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    Case(1, 512, 512, 7, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    Case(3, 256, 512, 14, 14, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    Case(1, 96, 48, 23, 17, (3, 3), (1, 1), (1, 1), (2, 2), 1),
]


@pytest.mark.parametrize("case", NETWORK_SHAPES, ids=str)
def test_network_shapes_on_every_isa(case: Case) -> None:
    x, w = tensors(case, 7)
    ref = F.conv2d(sgn(x), sgn(w), None, case.stride, case.pad, case.dil, case.groups)
    before = kernels.active_isa()
    try:
        for name in ISAS:
            kernels.set_isa(name)
            out = binary_conv2d(x, w, None, case.stride, case.pad, case.dil, case.groups)
            assert torch.equal(out, ref), name
    finally:
        kernels.set_isa(before)


@pytest.mark.parametrize("case", [Case(1, 4100, 32, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 2)], ids=str)
def test_wide_groups_off_word_boundaries(case: Case, isa: str) -> None:
    """2050 channels per group: the second group starts mid-word and spans more than 64 words."""
    x, w = tensors(case, 5)
    ref = F.conv2d(sgn(x), sgn(w), None, case.stride, case.pad, case.dil, case.groups)
    assert torch.equal(binary_conv2d(x, w, None, case.stride, case.pad, case.dil, case.groups), ref)


def test_amx_min_pixels_is_validated() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        kernels.set_amx_min_pixels(0)


# ------------------------------------------------------------------------------------------------ fused epilogue


def ref_pack32(bits: np.ndarray) -> np.ndarray:
    c = bits.shape[-1]
    words = (c + 31) // 32
    padded = np.zeros(bits.shape[:-1] + (words * 32,), dtype=bool)
    padded[..., :c] = bits
    return (
        (padded.reshape(bits.shape[:-1] + (words, 32)).astype(np.uint64) << np.arange(32, dtype=np.uint64))
        .sum(axis=-1)
        .astype(np.uint32)
    )


EPI_CASES = [
    Case(2, 64, 64, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    Case(1, 33, 18, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1), 1),
    Case(1, 130, 72, 5, 4, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    Case(2, 36, 36, 5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2),  # 18 outputs per group: bits straddle words
    Case(1, 18, 144, 4, 9, (3, 1), (1, 2), (1, 0), (1, 1), 1),
]


@pytest.mark.parametrize("act", [None, "prelu", "rprelu"])
@pytest.mark.parametrize("use_residual", [False, True])
@pytest.mark.parametrize("case", EPI_CASES, ids=str)
def test_fused_epilogue(case: Case, act: str | None, use_residual: bool, isa: str, threads: int) -> None:
    rng = np.random.default_rng(5)
    x, w = tensors(case, 11)
    x_nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    thr_in = rng.standard_normal(case.cin).astype(np.float32) * 0.3
    o = case.cout
    scale = rng.uniform(0.01, 0.2, o).astype(np.float32)
    shift = rng.standard_normal(o).astype(np.float32)
    nxt = rng.standard_normal(o).astype(np.float32) * 0.5

    # Independent reference: torch conv2d on the +-1 tensors (exact integers), then the epilogue in float64.
    xs = torch.from_numpy(np.where(x_nhwc + thr_in < 0, -1.0, 1.0).astype(np.float32)).permute(0, 3, 1, 2)
    dot = F.conv2d(xs, sgn(w), None, case.stride, case.pad, case.dil, case.groups)
    y = dot.permute(0, 2, 3, 1).double().numpy() * scale + shift
    residual = rng.standard_normal(y.shape).astype(np.float32) if use_residual else None
    if residual is not None:
        y = y + residual
    act_obj: kernels.PReLU | kernels.RPReLU | None = None
    if act == "prelu":
        slope = rng.uniform(-0.5, 0.5, o).astype(np.float32)
        act_obj = kernels.PReLU(slope)
        y = np.where(y > 0, y, slope * y)
    elif act == "rprelu":
        gamma, slope, zeta = (rng.standard_normal(o).astype(np.float32) * 0.3 for _ in range(3))
        act_obj = kernels.RPReLU(gamma=gamma, slope=slope, zeta=zeta)
        t = y - gamma
        y = np.where(t > 0, t, slope * t) + zeta

    packed = kernels.pack_activations(x_nhwc, thr_in)
    pw = kernels.PackedConvWeights.from_float(w.numpy(), groups=case.groups)
    res = kernels.bconv2d(
        packed,
        pw,
        case.stride,
        case.pad,
        case.dil,
        scale=scale,
        shift=shift,
        residual=residual,
        act=act_obj,
        next_threshold=nxt,
        want_float=True,
    )
    assert res.out is not None and res.bits is not None
    assert res.out.shape == y.shape and res.bits.channels == o
    np.testing.assert_allclose(res.out, y, rtol=1e-5, atol=1e-5)
    v = y + nxt
    want = ref_pack32(v < 0)
    decided = np.abs(v) > 1e-4  # ignore values within float rounding of the threshold
    got_pm = res.bits.unpack()
    assert np.array_equal((got_pm < 0)[decided], (v < 0)[decided])
    if decided.all():
        assert np.array_equal(res.bits.bits, want)
    if o % 32:
        assert not np.any(res.bits.bits[..., -1] >> np.uint32(o % 32))  # tail bits stay zero

    bits_only = kernels.bconv2d(
        packed,
        pw,
        case.stride,
        case.pad,
        case.dil,
        scale=scale,
        shift=shift,
        residual=residual,
        act=act_obj,
        next_threshold=nxt,
        want_float=False,
    )
    assert bits_only.out is None and bits_only.bits is not None
    assert np.array_equal(bits_only.bits.bits, res.bits.bits)

    if residual is not None:  # the float output written over the residual's own array: same values and bits
        conv = kernels.BConv(pw, case.stride, case.pad, case.dil, scale, shift, act_obj, nxt, want_float=True)
        own = residual.copy()
        in_place = conv(packed, own, residual_in_place=True)
        assert in_place.out is own and in_place.bits is not None
        np.testing.assert_allclose(own, y, rtol=1e-5, atol=1e-5)
        assert np.array_equal(in_place.bits.bits, res.bits.bits)
        frozen = residual.copy()
        frozen.flags.writeable = False  # not writable: a fresh output, the residual untouched
        fresh = conv(packed, frozen, residual_in_place=True)
        assert fresh.out is not frozen and np.array_equal(frozen, residual)
        np.testing.assert_allclose(fresh.out, y, rtol=1e-5, atol=1e-5)


def test_chained_layers_via_bits() -> None:
    """Bits written by one layer's epilogue feed the next layer exactly like packing its float output."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 9, 18)).astype(np.float32)
    w1 = kernels.PackedConvWeights.from_float(rng.standard_normal((36, 18, 3, 3)).astype(np.float32))
    w2 = kernels.PackedConvWeights.from_float(rng.standard_normal((18, 36, 3, 3)).astype(np.float32))
    thr = rng.standard_normal(36).astype(np.float32) + 0.5  # integers + 0.5: never exactly on the threshold
    r1 = kernels.bconv2d(kernels.pack_activations(x), w1, padding=1, next_threshold=thr)
    assert r1.out is not None and r1.bits is not None
    via_float = kernels.pack_activations(r1.out, thr)
    assert np.array_equal(r1.bits.bits, via_float.bits)
    a = kernels.bconv2d(r1.bits, w2, padding=1).out
    b = kernels.bconv2d(via_float, w2, padding=1).out
    assert a is not None and b is not None and np.array_equal(a, b)


# ------------------------------------------------------------------------------------------------ errors, runtime


def test_errors_are_explained() -> None:
    p = kernels.pack_activations(np.ones((1, 4, 4, 8), dtype=np.float32))
    w = kernels.PackedConvWeights.from_float(np.ones((4, 6, 3, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="channels"):
        kernels.bconv2d(p, w)
    w8 = kernels.PackedConvWeights.from_float(np.ones((4, 8, 5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        kernels.bconv2d(p, w8)
    with pytest.raises(ValueError, match="residual"):
        kernels.bconv2d(
            p,
            kernels.PackedConvWeights.from_float(np.ones((4, 8, 1, 1), dtype=np.float32)),
            residual=np.zeros((1, 3, 3, 4), dtype=np.float32),
        )
    with pytest.raises(ValueError, match="not available"):
        kernels.set_isa("neon-avx9000")
    with pytest.raises(ValueError, match="groups"):
        binary_conv2d(torch.randn(1, 6, 4, 4), torch.randn(4, 4, 3, 3), groups=2)


def test_runtime_controls() -> None:
    assert ISAS[-1] == "scalar" and kernels.active_isa() in ISAS
    before = kernels.get_num_threads()
    kernels.set_num_threads(3)
    assert kernels.get_num_threads() == 3
    kernels.set_num_threads(before)
    with pytest.raises(ValueError):
        kernels.set_num_threads(0)


def _run_env(env_extra: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_env_overrides() -> None:
    code = "from engine import kernels as k; print(k.active_isa(), k.get_num_threads())"
    r = _run_env({"BINPOSE_ISA": "scalar", "BINPOSE_THREADS": "3"}, code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["scalar", "3"]
    bad = _run_env({"BINPOSE_ISA": "avx9000"}, code)
    assert bad.returncode != 0 and "BINPOSE_ISA" in bad.stderr


def test_concurrent_calls_from_python_threads() -> None:
    """Several Python threads share the kernel pool (calls are serialized inside, GIL released): all results exact."""
    import concurrent.futures

    rng = np.random.default_rng(8)
    xs = [rng.standard_normal((1, 6, 7, 33)).astype(np.float32) for _ in range(8)]
    wf = rng.standard_normal((20, 33, 3, 3)).astype(np.float32)
    pw = kernels.PackedConvWeights.from_float(wf)
    refs = [
        F.conv2d(sgn(torch.from_numpy(x).permute(0, 3, 1, 2)), sgn(torch.from_numpy(wf)), None, 1, 1)
        .permute(0, 2, 3, 1)
        .numpy()
        for x in xs
    ]

    def work(i: int) -> bool:
        out = kernels.bconv2d(kernels.pack_activations(xs[i]), pw, padding=1).out
        return out is not None and np.array_equal(out, refs[i])

    before = kernels.get_num_threads()
    kernels.set_num_threads(2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            assert all(ex.map(work, list(range(8)) * 5))
    finally:
        kernels.set_num_threads(before)
