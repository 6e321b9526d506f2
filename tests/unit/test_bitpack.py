"""Bit packing against numpy references: bit order, thresholds, sgn(0) = +1, tail bits, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from engine import _native, kernels

CHANNELS = [1, 3, 7, 8, 9, 18, 31, 32, 33, 36, 63, 64, 65, 72, 100, 130, 144]


def ref_pack32(bits: np.ndarray) -> np.ndarray:
    """Reference packer: boolean [..., C] -> uint32 [..., ceil(C/32)], channel c -> bit c%32 of word c//32."""
    c = bits.shape[-1]
    words = (c + 31) // 32
    padded = np.zeros(bits.shape[:-1] + (words * 32,), dtype=bool)
    padded[..., :c] = bits
    weights = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)
    grouped = padded.reshape(bits.shape[:-1] + (words, 32)).astype(np.uint64)
    return (grouped * weights).sum(axis=-1).astype(np.uint32)


@pytest.fixture(params=kernels.available_isas())
def isa(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    before = kernels.active_isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(before)


def with_zeros(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = x.copy()
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(1, flat.size // 10), replace=False)
    flat[idx[: len(idx) // 2]] = 0.0
    flat[idx[len(idx) // 2 :]] = -0.0
    return x


@pytest.mark.parametrize("n", [1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 130])
def test_pack_signs_uint64_round_trip(n: int) -> None:
    rng = np.random.default_rng(n)
    x = with_zeros(rng.standard_normal((5, n)).astype(np.float32), rng)
    bits = _native.pack_signs(x)
    assert bits.dtype == np.uint64 and bits.shape == (5, (n + 63) // 64)
    ref = ref_pack32(x < 0)
    # The uint64 layout is the uint32 layout read two words at a time (little endian).
    ref64 = np.zeros((5, 2 * bits.shape[1]), dtype=np.uint32)
    ref64[:, : ref.shape[1]] = ref
    assert np.array_equal(bits.view(np.uint32), ref64)
    assert np.array_equal(_native.unpack_signs(bits, n), np.where(x >= 0, 1.0, -1.0).astype(np.float32))


@pytest.mark.parametrize("c", CHANNELS)
def test_pack_activations_matches_reference(isa: str, c: int) -> None:
    rng = np.random.default_rng(c)
    x = with_zeros(rng.standard_normal((2, 3, 5, c)).astype(np.float32), rng)
    p = kernels.pack_activations(x)
    assert p.bits.dtype == np.uint32 and p.bits.shape == (2, 3, 5, (c + 31) // 32)
    assert np.array_equal(p.bits, ref_pack32(x < 0))  # sgn(0) = sgn(-0) = +1 -> bit 0
    assert np.array_equal(p.unpack(), np.where(x >= 0, 1.0, -1.0))


@pytest.mark.parametrize("c", [1, 18, 33, 64, 65, 130])
def test_pack_activations_threshold(isa: str, c: int) -> None:
    rng = np.random.default_rng(100 + c)
    x = rng.standard_normal((1, 4, 3, c)).astype(np.float32)
    thr = rng.standard_normal(c).astype(np.float32)
    x[0, 0, 0] = -thr  # exactly on the threshold: x + thr == 0 -> +1
    p = kernels.pack_activations(x, thr)
    assert np.array_equal(p.bits, ref_pack32((x + thr) < 0))


@pytest.mark.parametrize("c", [1, 5, 31, 32, 33, 64, 65, 130])
def test_unpack_round_trip_and_zero_tail(c: int) -> None:
    rng = np.random.default_rng(c)
    pm1 = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(3, 2, 2, c))
    p = kernels.pack_activations(pm1)
    assert np.array_equal(p.unpack(), pm1)
    if c % 32:
        assert not np.any(p.bits[..., -1] >> np.uint32(c % 32))


@pytest.mark.parametrize("o,i,kh,kw", [(1, 1, 1, 1), (5, 3, 3, 3), (18, 33, 3, 1), (7, 65, 2, 3), (4, 130, 1, 1)])
def test_pack_weights_ohwi(o: int, i: int, kh: int, kw: int) -> None:
    rng = np.random.default_rng(o * i)
    w = with_zeros(rng.standard_normal((o, i, kh, kw)).astype(np.float32), rng)
    pw = kernels.PackedConvWeights.from_float(w)
    assert pw.bits.shape == (o, kh, kw, (i + 31) // 32)
    assert np.array_equal(pw.bits, ref_pack32(w.transpose(0, 2, 3, 1) < 0))
    assert np.array_equal(pw.unpack(), np.where(w >= 0, 1.0, -1.0))
    assert (pw.out_channels, pw.in_channels, pw.kernel_size, pw.groups) == (o, i, (kh, kw), 1)


def test_weights_reject_nonzero_tail_bits() -> None:
    bits = np.zeros((2, 1, 1, 1), dtype=np.uint32)
    bits[0, 0, 0, 0] = 1 << 20
    with pytest.raises(ValueError, match="past in_channels_per_group"):
        kernels.PackedConvWeights(bits, in_channels_per_group=18)


def test_packed_activations_validates_words() -> None:
    with pytest.raises(ValueError, match="words per pixel"):
        kernels.PackedActivations(np.zeros((1, 1, 1, 2), dtype=np.uint32), channels=18)
