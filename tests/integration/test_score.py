"""`binpose score` on a small COCO-format set written here (stick figures drawn with OpenCV, their keypoints and boxes
as ground truth): the annotations' own keypoints score AP = 1 through the writer and pycocotools, the network path
matches the seeded network run directly here, a corrupt file is reported and never fatal, Ray gives the same results
as local worker processes, and classification of a folder writes the top-k."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import models
from models.coco import COCO_KEYPOINT_METRICS, coco_keypoint_eval
from models.keypoints import box_to_center_scale, crop_person, decode_heatmaps
from models.spec import COCO_KEYPOINT_NAMES, COCO_SKELETON, IMAGENET_MEAN, IMAGENET_STD
from service.score import main as score_main
from service.score import write_classes

ROOT = Path(__file__).resolve().parents[2]
POSE, CLS = "sbpn-r18", "resnet18-small"
BATCH = 4
W, H = 320, 240


def stick_figure(rng: np.random.Generator, x0: float, y0: float, height: float) -> np.ndarray:
    """17 COCO keypoints [x, y, v] of a standing person whose head top is at (x0, y0)."""
    u = height / 8.0
    # nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles (left = the person's left = image right)
    pts = [(0, 0.6), (0.25, 0.4), (-0.25, 0.4), (0.5, 0.5), (-0.5, 0.5), (1.0, 1.5), (-1.0, 1.5), (1.4, 2.8),
           (-1.4, 2.8), (1.6, 4.0), (-1.6, 4.0), (0.7, 4.2), (-0.7, 4.2), (0.8, 6.0), (-0.8, 6.0), (0.8, 7.8),
           (-0.8, 7.8)]  # fmt: skip
    kps = np.array([[x0 - dx * u + rng.uniform(-2, 2), y0 + dy * u + rng.uniform(-2, 2), 2.0] for dx, dy in pts])
    kps[rng.choice(17, size=2, replace=False), :] = 0.0  # two unlabelled keypoints per person, as in COCO
    return kps


def write_coco_set(folder: Path) -> dict[str, Any]:
    """Images with 0-2 stick figures, one image listed but corrupt; returns the annotation dict (also written)."""
    rng = np.random.default_rng(7)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    people_per_image = [1, 2, 1, 0, 2, 1]
    for image_id, count in enumerate(people_per_image, start=1):
        img = np.full((H, W, 3), 30, np.uint8)
        img[:] += rng.integers(0, 20, (H, W, 3), dtype=np.uint8)
        for p in range(count):
            kps = stick_figure(rng, 70 + 160 * p + rng.uniform(-10, 10), 20 + rng.uniform(0, 15), 190)
            color = tuple(int(c) for c in rng.integers(120, 255, 3))
            for a, b in COCO_SKELETON:
                if kps[a, 2] > 0 and kps[b, 2] > 0:
                    cv2.line(img, tuple(int(v) for v in kps[a, :2]), tuple(int(v) for v in kps[b, :2]), color, 4)
            labelled = kps[kps[:, 2] > 0]
            x1, y1 = labelled[:, :2].min(axis=0) - 8
            x2, y2 = labelled[:, :2].max(axis=0) + 8
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, W - 1), min(y2, H - 1)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "area": float((x2 - x1) * (y2 - y1)),
                "keypoints": [float(v) for v in kps.reshape(-1)], "num_keypoints": int((kps[:, 2] > 0).sum()),
            })  # fmt: skip
        name = f"{image_id:012d}.jpg"
        cv2.imwrite(str(folder / name), img)
        images.append({"id": image_id, "file_name": name, "width": W, "height": H})
    corrupt_id = len(people_per_image) + 1
    (folder / f"{corrupt_id:012d}.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated")
    images.append({"id": corrupt_id, "file_name": f"{corrupt_id:012d}.jpg", "width": W, "height": H})
    categories = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINT_NAMES),
                   "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}]  # fmt: skip
    gt = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(gt))
    return gt


@pytest.fixture(scope="module")
def coco_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("coco")
    return folder, write_coco_set(folder)


def run_score(*args: str) -> subprocess.CompletedProcess[str]:
    """`binpose score ...` as a user runs it (a fresh process, its own worker processes)."""
    cmd = [sys.executable, "-m", "binpose.cli", "score", *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "CI": ""})
    assert r.returncode == 0, f"{cmd} exited {r.returncode}:\n{r.stdout}\n{r.stderr[-5000:]}"
    return r


def test_annotation_keypoints_through_writer_and_evaluator_score_ap_one(
    coco_set: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, gt = coco_set
    out = tmp_path / "oracle.json"
    code = score_main(["pose", "--annotations", str(folder / "annotations.json"), "--out", str(out), "--eval",
                       "--keypoints-from-annotations", "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert len(results) == len(gt["annotations"])
    for r in results:
        assert set(r) == {"image_id", "category_id", "keypoints", "score"} and r["category_id"] == 1
        assert len(r["keypoints"]) == 3 * 17
    report = json.loads((tmp_path / "oracle.report.json").read_text())
    assert report["metrics"]["AP"] == pytest.approx(1.0) and report["metrics"]["AR"] == pytest.approx(1.0)
    printed = capsys.readouterr().out
    assert "AP" in printed and "1.000" in printed

    # The evaluator discriminates: the same poses moved by a third of the person's height score far lower.
    moved = [{**r, "keypoints": [v + (60.0 if i % 3 == 1 else 0.0) for i, v in enumerate(r["keypoints"])]}
             for r in results]  # fmt: skip
    assert coco_keypoint_eval(gt, moved)["AP"] < 0.2
    # No results at all: zeros, not pycocotools' crash on an empty list.
    assert coco_keypoint_eval(gt, []) == dict.fromkeys(COCO_KEYPOINT_METRICS, 0.0)


def reference_pose(gt: dict[str, Any], folder: Path) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Per image: (keypoints [17, 2], scores [17]) for each ground-truth box, from the seeded random-init network run
    here on calls of the scorer's batch shape, on one thread like a scorer worker."""
    torch.manual_seed(0)
    net: Any = models.build(POSE).eval()
    in_h, in_w = net.spec.input_size
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    crops, where = [], []
    for im in gt["images"]:
        bgr = cv2.imread(str(folder / im["file_name"]))
        if bgr is None:
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for ann in (a for a in gt["annotations"] if a["image_id"] == im["id"]):
            center, scale = box_to_center_scale(ann["bbox"], in_w / in_h)
            crop = crop_person(rgb, center, scale, 0.0, (in_h, in_w))
            crops.append(((crop.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))
            where.append((im["id"], center, scale))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    heatmaps = []
    try:
        for start in range(0, len(crops), BATCH):
            batch = np.zeros((BATCH, *crops[0].shape), np.float32)
            part = crops[start : start + BATCH]
            batch[: len(part)] = part
            with torch.inference_mode():
                heatmaps.append(net(torch.from_numpy(batch)).numpy()[: len(part)])
    finally:
        torch.set_num_threads(threads)
    centers = np.array([c for _, c, _ in where])
    scales = np.array([s for _, _, s in where])
    coords, scores = decode_heatmaps(np.concatenate(heatmaps), centers, scales, (in_h, in_w))
    out: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i, (image_id, _, _) in enumerate(where):
        out.setdefault(image_id, []).append((coords[i], scores[i]))
    return out


@pytest.fixture(scope="module")
def local_run(coco_set: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = coco_set
    out = tmp_path_factory.mktemp("local") / "results.json"
    run_score("pose", "--annotations", str(folder / "annotations.json"), "--out", str(out), "--backend", "torch",
              "--model", POSE, "--workers", "2", "--batch-size", str(BATCH), "--eval")  # fmt: skip
    return out


def test_network_scoring_matches_the_network_run_directly(coco_set: tuple[Path, dict[str, Any]], local_run: Path) -> None:
    folder, gt = coco_set
    results = json.loads(local_run.read_text())
    reference = reference_pose(gt, folder)
    assert len(results) == sum(len(v) for v in reference.values()) == len(gt["annotations"])
    for image_id, persons in reference.items():
        got = [np.array(r["keypoints"]).reshape(17, 3) for r in results if r["image_id"] == image_id]
        assert len(got) == len(persons)
        for coords, scores in persons:
            errors = [np.abs(g[:, :2] - coords).max() for g in got]
            best = got[int(np.argmin(errors))]
            assert min(errors) < 0.01, f"image {image_id}: keypoints differ by {min(errors):.4f} px from the reference"
            np.testing.assert_allclose(best[:, 2], scores, atol=2e-3)

    report = json.loads(local_run.with_suffix(".report.json").read_text())
    assert report["images"] == len(gt["images"]) and report["scored"] == len(gt["images"]) - 1
    assert [Path(f["file"]).name for f in report["failed"]] == [gt["images"][-1]["file_name"]]
    assert report["images_without_persons"] == 1  # the image without people
    assert set(report["metrics"]) == set(COCO_KEYPOINT_METRICS)


def test_ray_run_gives_the_same_results_as_the_local_run(
    coco_set: tuple[Path, dict[str, Any]], local_run: Path, tmp_path: Path
) -> None:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        pytest.skip("Ray Data is not installed (pip install 'ray[data]', the project's `ray` extra)")
    folder, _ = coco_set
    out = tmp_path / "ray.json"
    run_score("pose", "--annotations", str(folder / "annotations.json"), "--out", str(out), "--backend", "torch",
              "--model", POSE, "--workers", "2", "--batch-size", str(BATCH), "--ray", "--ray-num-cpus", "2",
              "--no-progress")  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(local_run.read_text())
    ray_report = json.loads(out.with_suffix(".report.json").read_text())
    local_report = json.loads(local_run.with_suffix(".report.json").read_text())
    assert ray_report["engine"] == "ray" and local_report["engine"] == "local"
    assert ray_report["failed"] == local_report["failed"] and ray_report["scored"] == local_report["scored"]


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("classify")
    rng = np.random.default_rng(3)
    (folder / "sub").mkdir()
    for name in ("a.png", "b.jpg", "sub/c.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (folder / "notes.txt").write_text("not an image")
    yield folder


def test_classify_folder_writes_top_k_and_reports_the_corrupt_file(class_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "classes.csv"
    # In this process (--workers 0): the worker-process path is the pose tests' part.
    threads = torch.get_num_threads()  # the scorer sets its --threads on the process it runs in
    try:
        args = ["--model", CLS, "--backend", "torch", "--workers", "0", "--top-k", "3", "--batch-size", str(BATCH)]
        code = score_main(["classify", "--images", str(class_folder), "--out", str(out), *args, "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(row["file"], []).append(row)
    assert sorted(by_file) == ["a.png", "b.jpg", "sub/c.png"]

    # Reference: the seeded network on the image resized to its input (the documented transform for small inputs).
    torch.manual_seed(0)
    net: Any = models.build(CLS).eval()
    in_h, in_w = net.spec.input_size
    for name, ranked in by_file.items():
        bgr = cv2.imread(str(class_folder / name))
        assert bgr is not None
        small = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (in_w, in_h), interpolation=cv2.INTER_AREA)
        mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
        x = ((small.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        with torch.inference_mode():
            p = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(x))).double(), dim=1)[0].numpy()
        top = np.argsort(-p)[:3]
        assert [int(r["rank"]) for r in ranked] == [1, 2, 3]
        assert [int(r["class_index"]) for r in ranked] == top.tolist()
        np.testing.assert_allclose([float(r["probability"]) for r in ranked], p[top], rtol=1e-4)

    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["images"] == 4 and report["scored"] == 3
    assert [Path(f["file"]).name for f in report["failed"]] == ["broken.png"] and report["failed"][0]["error"]
    assert report["ignored_files"] == ["notes.txt"]

    # The same top-k as JSON, chosen by the output's suffix.
    records: list[dict[str, Any]] = [{"file": f, "top_k": [{"index": int(r["class_index"]), "name": r["class_name"],
                                      "probability": float(r["probability"])} for r in ranked]}
               for f, ranked in by_file.items()]  # fmt: skip
    write_classes(tmp_path / "classes.json", [
        {"path": str(class_folder / r["file"]), "error": "", "results": json.dumps(r["top_k"])} for r in records
    ], class_folder)  # fmt: skip
    assert json.loads((tmp_path / "classes.json").read_text()) == records
