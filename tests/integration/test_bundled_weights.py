"""The bundled weights: every weights/manifest.json entry is its file (sha256, size, loadable as the model it names),
and the bundled models still score what the manifest records for them, measured here through today's engine and
scorer: the pose model's val OKS AP by pycocotools on the vtest_pose val split (`binpose score pose --eval`, ground-truth
boxes, flip test, as scripts/bundle_weights.py measured it), the classifier's top-1 on Fashion-MNIST's 10k test images
(Debian's dataset-fashion-mnist: skipped where it is not installed, a failure on CI)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bundle_weights import FMNIST, fashion_mnist_test, top1_of  # scripts/: what measured the recorded numbers
from system_deps import missing

import engine

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
VAL = ROOT / "datasets" / "vtest_pose"


def manifest() -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = json.loads((WEIGHTS / "manifest.json").read_text())["models"]
    return models


def test_every_manifest_entry_is_its_file() -> None:
    entries = manifest()
    assert {"sbpn-r18", "resnet18-small"} <= set(entries), "the service's defaults must be bundled"
    for name, e in entries.items():
        path = WEIGHTS / e["file"]
        assert path.is_file(), f"{name}: {path} is missing"
        assert path.stat().st_size == e["bytes"], name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"], f"{name}: sha256 differs from the manifest"
        for key in ("data", "command", "metrics", "provenance"):
            assert e.get(key), f"{name}: the manifest says nothing under {key!r}"
        packed = engine.load(path)
        assert packed.name == e["model"] == path.stem, name
        if "input_size" in e["overrides"]:
            assert tuple(packed.spec.input_size) == tuple(e["overrides"]["input_size"]), name
    twin = entries["sbpn-r18"]["float_twin"]  # the float twin is recorded, not bundled (54 MB of FP32 weights)
    assert twin["bundled"] is False and not (WEIGHTS / "sbpn-r18-float.bnn").exists()
    assert twin["metrics"]["val_torch_ground_truth_boxes_flip"]["AP"] > 0


def test_bundled_pose_model_scores_its_recorded_val_ap(tmp_path: Path) -> None:
    recorded = manifest()["sbpn-r18"]["metrics"]["val_packed_ground_truth_boxes_flip"]
    out, report = tmp_path / "val.json", tmp_path / "val.report.json"
    cmd = [sys.executable, "-m", "binpose.cli", "score", "pose",
           "--annotations", str(VAL / "annotations" / "person_keypoints_val.json"), "--images", str(VAL / "images" / "val"),
           "--model", "sbpn-r18", "--backend", "packed", "--weights-dir", str(WEIGHTS), "--flip", "--eval",
           "--no-progress", "--out", str(out), "--report", str(report)]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-5000:]}"
    rep = json.loads(report.read_text())
    assert rep["persons"] == 480 and not rep["failed"]
    # 0.01: the float glue may round differently on another ISA (and the stem runs in FP32 where AMX-BF16 is absent),
    # which moves a few keypoints by a pixel; a broken kernel or decoder moves AP by far more.
    assert abs(rep["metrics"]["AP"] - recorded["AP"]) <= 0.01, (rep["metrics"], recorded)
    assert abs(rep["metrics"]["PCK"] - recorded["PCK"]) <= 0.01, (rep["metrics"], recorded)


def test_bundled_classifier_scores_its_recorded_test_top1() -> None:
    if not (FMNIST / "t10k-images-idx3-ubyte.gz").exists() and not (FMNIST / "t10k-images-idx3-ubyte").exists():
        missing(f"Fashion-MNIST is not installed in {FMNIST} (apt-get install dataset-fashion-mnist)")
    images, labels = fashion_mnist_test(FMNIST)
    assert images.shape == (10000, 28, 28)
    entry = manifest()["resnet18-small"]
    packed = engine.load(WEIGHTS / entry["file"])
    top1 = top1_of(packed, images, labels, packed.spec.mean[0], packed.spec.std[0])
    assert abs(top1 - entry["metrics"]["test_top1_packed"]) <= 0.2, (top1, entry["metrics"])
