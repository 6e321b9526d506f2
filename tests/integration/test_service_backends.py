"""Every available backend serves the same network with the same answers: one server per backend, all on the same
seeded weights (torch: seed-0 random init; packed: that network packed by engine.pack.pack_model; onnx: that
network exported by engine.onnx), compared on keypoints (/v1/pose) and on raw heatmaps (/v2 infer)."""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import models
from service.process import ServiceProcess

MODEL = "sbpn-r18"
BOXES = [[190.0, 40.0, 360.0, 340.0], [20.0, 30.0, 200.0, 330.0]]
DATA = Path("/usr/share/doc/opencv-doc/examples/data/messi5.jpg")


def has(module: str, attr: str) -> bool:
    try:
        if importlib.util.find_spec(module) is None:
            return False
        return callable(getattr(importlib.import_module(module), attr, None))
    except ImportError:
        return False


def image_png() -> bytes:
    if DATA.exists():
        rgb = np.asarray(Image.open(DATA).convert("RGB"))
    else:
        rgb = np.random.default_rng(0).integers(0, 255, (342, 548, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NAME.bnn packed from the seed-0 network (when the engine can pack); the torch and onnx servers build the same
    network from the same seed."""
    out = tmp_path_factory.mktemp("weights")
    if has("engine.pack", "pack_model"):
        from engine.pack import pack_model

        torch.manual_seed(0)
        pack_model(models.build(MODEL).eval(), out / f"{MODEL}.bnn", provenance={"source": "test: seed-0 random init"})
    return out


def serve(backend: str, weights_dir: Path, log: Path) -> ServiceProcess:
    # BINPOSE_STEM_BF16=0: the packed engine's RGB stem in FP32. Its default AMX-BF16 stem is ~1e-5 off FP32 (tested
    # against float64 in tests/unit/test_float_ops.py), and in this random-init network, whose pre-activations have no
    # trained margins, any such difference flips bits downstream: "float rounding" is the FP32 engine's contract.
    env = {"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": backend, "BINPOSE_WEIGHTS_DIR": str(weights_dir),
           "BINPOSE_CACHE_DIR": str(weights_dir / f"cache-{backend}"), "BINPOSE_MAX_BATCH_SIZE": "4",
           "BINPOSE_THREADS": "1", "BINPOSE_STEM_BF16": "0"}  # fmt: skip
    return ServiceProcess(env=env, log_path=log).start()


def ask(server: ServiceProcess, x: np.ndarray) -> tuple[dict, np.ndarray]:  # type: ignore[type-arg]
    with httpx.Client(base_url=server.url, timeout=120) as c:
        pose = c.post("/v1/pose", files={"image": ("m.png", image_png(), "image/png")},
                      data={"boxes": json.dumps(BOXES), "flip": "true"})  # fmt: skip
        assert pose.status_code == 200, pose.text
        tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
        out = c.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
        assert out.status_code == 200, out.text
        (t,) = out.json()["outputs"]
        return pose.json(), np.array(t["data"], np.float32).reshape(t["shape"])


@pytest.fixture(scope="module")
def torch_answers(weights_dir: Path) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:  # type: ignore[type-arg]
    x = np.random.default_rng(1).standard_normal((2, 3, 256, 192)).astype(np.float32)
    server = serve("torch", weights_dir, weights_dir / "torch.log")
    try:
        pose, heatmaps = ask(server, x)
    finally:
        server.stop()
    yield pose, heatmaps, x


def _skip_reason(backend: str) -> str | None:
    if backend == "packed" and not has("engine", "load"):
        return "engine.load is not available yet (engine issue)"
    if backend == "packed" and not has("engine.pack", "pack_model"):
        return "engine.pack.pack_model is not available yet (engine issue)"
    if backend == "onnx" and not has("engine.onnx", "export_onnx"):
        return "engine.onnx.export_onnx is not available yet (engine issue)"
    return None


@pytest.mark.parametrize("backend", ["packed", "onnx"])
def test_backend_matches_torch(backend: str, weights_dir: Path, torch_answers: tuple, tmp_path: Path) -> None:  # type: ignore[type-arg]
    reason = _skip_reason(backend)
    if reason:
        pytest.skip(reason)
    ref_pose, ref_heatmaps, x = torch_answers
    server = serve(backend, weights_dir, tmp_path / "server.log")
    try:
        info = server.get_json(f"/v1/models/{MODEL}")
        pose, heatmaps = ask(server, x)
    finally:
        server.stop()
    assert info["backend"] == backend  # type: ignore[index]
    assert pose["backend"] == backend
    # The network itself: equal up to float rounding (folded scale/shift, other kernels).
    np.testing.assert_allclose(heatmaps, ref_heatmaps, rtol=1e-4, atol=1e-4)
    # The whole pipeline: the same persons and keypoints.
    assert len(pose["persons"]) == len(ref_pose["persons"]) == len(BOXES)
    by_box = {tuple(p["box"]): p for p in ref_pose["persons"]}  # persons come best first; ties may swap
    for got in pose["persons"]:
        want = by_box[tuple(got["box"])]
        xy = np.array([[k["x"], k["y"]] for k in got["keypoints"]])
        ref_xy = np.array([[k["x"], k["y"]] for k in want["keypoints"]])
        np.testing.assert_allclose(xy, ref_xy, atol=0.05)
        np.testing.assert_allclose([k["score"] for k in got["keypoints"]], [k["score"] for k in want["keypoints"]],
                                   rtol=1e-3, atol=1e-4)  # fmt: skip


@pytest.mark.parametrize(("backend", "default"), [("packed", 4), ("torch", 16), ("onnx", 16)])
def test_batch_size_default_is_the_backends_own(backend: str, default: int, weights_dir: Path) -> None:
    """Unset, BINPOSE_MAX_BATCH_SIZE is what the backend runs best (packed: 4, its runtime gains nothing from larger
    batches; the float backends: 16); set, it wins."""
    from service.backends import LoadOptions, load_model
    from service.settings import Settings
    from service.state import ServiceState

    if backend == "packed" and not (weights_dir / f"{MODEL}.bnn").exists():
        pytest.skip("the engine cannot pack here")
    if backend == "onnx" and not has("onnxruntime", "InferenceSession"):
        pytest.skip("onnxruntime is not installed")
    loaded = load_model(MODEL, backend, LoadOptions(weights_dir=weights_dir, cache_dir=weights_dir / f"bs-{backend}"))
    assert loaded.batch_size == default
    assert ServiceState(Settings(models=[MODEL])).batch_size(loaded) == default
    assert ServiceState(Settings(models=[MODEL], max_batch_size=7)).batch_size(loaded) == 7
