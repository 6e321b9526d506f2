"""The .bnn format: contents checked against the module, bad files rejected clearly, the pack CLI end to end."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
import models
from binpose.cli import main as binpose_main
from engine.kernels import PackedConvWeights
from engine.pack import FORMAT_NAME, FORMAT_VERSION, BnnFormatError, pack_model, read_bnn
from models.complexity import profile
from models.layers import BinaryConv2d


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("resnet18-small", width=16).eval()


@pytest.fixture()
def bnn_path(tmp_path: Path, small_model: torch.nn.Module) -> Path:
    return pack_model(small_model, tmp_path / "m.bnn", {"note": "test"})


def _header(data: bytes) -> tuple[int, dict]:
    n = struct.unpack("<Q", data[:8])[0]
    return n, json.loads(data[8 : 8 + n])


def test_file_is_plain_safetensors_with_metadata(bnn_path: Path, small_model: torch.nn.Module) -> None:
    data = bnn_path.read_bytes()
    assert not data.startswith(b"\x80")  # no pickle protocol header
    _, header = _header(data)
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == str(FORMAT_VERSION)
    assert json.loads(meta["spec"]) == json.loads(json.dumps(small_model.spec.to_dict()))
    assert json.loads(meta["complexity"]) == profile(small_model).to_dict()
    assert json.loads(meta["provenance"])["note"] == "test"
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F32", "U32"}


def test_weight_bits_are_the_binarizers_output(bnn_path: Path, small_model: torch.nn.Module) -> None:
    """Every stored weight-bit tensor unpacks to B(w - mean(w)) of some binary conv, in graph order."""
    bnn = read_bnn(bnn_path)
    stored = [bnn.tensors[op["params"]["weight"]] for op in bnn.graph["ops"] if op["type"] == "bconv"]
    convs = [m for m in small_model.modules() if isinstance(m, BinaryConv2d)]
    assert len(stored) == len(convs)
    for bits, conv in zip(stored, convs, strict=True):
        with torch.no_grad():
            w = conv.weight
            expected = conv.weight_binarizer(w - w.mean(dim=(1, 2, 3), keepdim=True)).numpy()
        unpacked = PackedConvWeights(bits, conv.in_channels).unpack()
        np.testing.assert_array_equal(unpacked, expected)


def test_packed_is_much_smaller_than_float(tmp_path: Path) -> None:
    model = models.build("resnet18")
    path = pack_model(model, tmp_path / "r18.bnn")
    float_bytes = sum(p.numel() * 4 for p in models.build("resnet18", binary=False).parameters())
    assert float_bytes / path.stat().st_size >= 10


def test_load_reports_metadata(bnn_path: Path, small_model: torch.nn.Module) -> None:
    pm = engine.load(bnn_path)
    import hashlib

    assert pm.sha256 == hashlib.sha256(bnn_path.read_bytes()).hexdigest()
    assert pm.file_bytes == bnn_path.stat().st_size
    assert pm.spec == small_model.spec
    assert pm.provenance["note"] == "test"


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1, -200])
def test_truncated_file_is_rejected(bnn_path: Path, keep: int) -> None:
    data = bnn_path.read_bytes()
    bnn_path.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    with pytest.raises(BnnFormatError, match="truncated|too short|implausible"):
        engine.load(bnn_path)


def test_flipped_tensor_byte_is_detected(bnn_path: Path) -> None:
    data = bytearray(bnn_path.read_bytes())
    data[-3] ^= 0x10
    bnn_path.write_bytes(bytes(data))
    with pytest.raises(BnnFormatError, match="sha256 mismatch"):
        engine.load(bnn_path)


def test_tampered_graph_is_detected(bnn_path: Path) -> None:
    data = bnn_path.read_bytes()
    n, header = _header(data)
    header["__metadata__"]["graph"] = header["__metadata__"]["graph"].replace('"prelu"', '"rprelu"', 1)
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    bnn_path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(BnnFormatError, match="sha256 mismatch"):
        engine.load(bnn_path)


def test_flipped_header_byte_is_a_clear_error(bnn_path: Path) -> None:
    data = bytearray(bnn_path.read_bytes())
    data[12] ^= 0xFF
    bnn_path.write_bytes(bytes(data))
    with pytest.raises(BnnFormatError):
        engine.load(bnn_path)


def test_unknown_version_is_rejected(bnn_path: Path) -> None:
    data = bnn_path.read_bytes()
    n, header = _header(data)
    header["__metadata__"]["format_version"] = "99"
    raw = json.dumps(header).encode()
    bnn_path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(BnnFormatError, match="version 99 is not supported"):
        engine.load(bnn_path)


def test_other_safetensors_file_is_rejected(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    p = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(p))
    with pytest.raises(BnnFormatError, match="not a binpose .bnn"):
        engine.load(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="binpose pack"):
        engine.load(tmp_path / "nope.bnn")


def test_pack_cli_random_init_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "tmp.bnn"
    assert binpose_main(["pack", "--model", "resnet18-small", "--random-init", "--out", str(out)]) == 0
    pm = engine.load(out)
    y = pm(torch.zeros(2, 3, 32, 32))
    assert y.shape == (2, 10)
    assert pm.provenance["source"] == "random-init" and pm.provenance["model"] == "resnet18-small"


def test_pack_cli_from_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = models.build("resnet18-small", width=16, num_classes=4).eval()
    ckpt = tmp_path / "c.pt"
    torch.save({"model": "resnet18-small", "overrides": {"width": 16, "num_classes": 4},
                "state_dict": model.state_dict(), "spec": model.spec.to_dict(),
                "metrics": {"top1": 0.5}, "config": {"epochs": 1}}, ckpt)  # fmt: skip
    out = tmp_path / "c.bnn"
    assert binpose_main(["pack", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    pm = engine.load(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(pm(x), ref, rtol=1e-4, atol=1e-5)
    assert pm.provenance["metrics"] == {"top1": 0.5} and pm.provenance["config"] == {"epochs": 1}


def test_pack_cli_needs_random_init(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        binpose_main(["pack", "--model", "resnet18-small", "--out", str(tmp_path / "x.bnn")])
