"""COCO keypoint evaluation round trip through the results writer and real pycocotools, on a fixture built here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.coco import coco_keypoint_eval, keypoint_results, oks_nms, pck, write_results


def _fixture() -> tuple[dict[str, Any], list[tuple[int, np.ndarray]]]:
    """Three images, five people with all 17 keypoints visible, areas from 2,000 to 40,000 px^2 (medium and large)."""
    rng = np.random.default_rng(0)
    images, annotations, people = [], [], []
    ann_id = 1
    for image_id, n_people in ((1, 1), (2, 2), (3, 2)):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for _ in range(n_people):
            w, h = rng.uniform(40, 160), rng.uniform(60, 250)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            kps = np.stack([rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17), np.full(17, 2.0)], axis=1)
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": w * h,
                                "bbox": [x, y, w, h], "num_keypoints": 17,
                                "keypoints": kps.reshape(-1).tolist()})  # fmt: skip
            people.append((image_id, kps))
            ann_id += 1
    gt = {"images": images, "annotations": annotations,
          "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}]}  # fmt: skip
    return gt, people


def _results(people: list[tuple[int, np.ndarray]], noise: float = 0.0, seed: int = 1) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    coords = np.stack([kps[:, :2] + rng.normal(0, noise, size=(17, 2)) for _, kps in people])
    scores = np.full((len(people), 17), 0.9)
    return keypoint_results(coords, scores, [image_id for image_id, _ in people])


def test_ground_truth_round_trip_scores_ap_one(tmp_path: Path) -> None:
    gt, people = _fixture()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    results = _results(people)
    write_results(tmp_path / "res.json", results)
    loaded = json.loads((tmp_path / "res.json").read_text())
    assert loaded[0]["category_id"] == 1 and len(loaded[0]["keypoints"]) == 51 and "bbox" not in loaded[0]
    assert loaded[0]["score"] == pytest.approx(0.9)  # box 1 x mean keypoint score
    metrics = coco_keypoint_eval(tmp_path / "gt.json", loaded)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert coco_keypoint_eval(gt, loaded)["AP"] == pytest.approx(1.0)  # a dict works as well as a file


def test_pck_counts_keypoints_within_a_fifth_of_the_box() -> None:
    gt, people = _fixture()
    assert coco_keypoint_eval(gt, _results(people))["PCK"] == pytest.approx(1.0)
    # Move keypoint j of every person by (j + 1) / 20 of its box's larger side, along x: j = 0..2 are within 0.2
    # (0.05, 0.10, 0.15), j = 3 is moved by 0.19 instead (inside), j = 4.. are outside: 4 of 17 correct.
    moved = []
    for (image_id, kps), ann in zip(people, gt["annotations"], strict=True):
        size = max(ann["bbox"][2], ann["bbox"][3])
        k = kps.copy()
        k[:, 0] += np.where(np.arange(17) == 3, 0.19, (np.arange(17) + 1) / 20) * size
        moved.append((image_id, k))
    assert pck(gt, _results(moved)) == pytest.approx(4 / 17)
    assert pck(gt, _results(moved[:3])) == pytest.approx(3 * 4 / 17 / 5)  # people without a result: all wrong
    assert pck(gt, []) == 0.0


def test_perturbed_keypoints_score_lower() -> None:
    gt, people = _fixture()
    small = coco_keypoint_eval(gt, _results(people, noise=3.0))["AP"]
    large = coco_keypoint_eval(gt, _results(people, noise=15.0))["AP"]
    assert large < small < 1.0


def test_missing_people_lower_recall() -> None:
    gt, people = _fixture()
    metrics = coco_keypoint_eval(gt, _results(people[:3]))
    assert metrics["AR"] == pytest.approx(3 / 5)


def test_empty_results_score_zero() -> None:
    gt, _ = _fixture()
    metrics = coco_keypoint_eval(gt, [])
    assert metrics["AP"] == 0.0 and metrics["AR"] == 0.0


def test_unknown_image_id_is_a_clear_error() -> None:
    gt, people = _fixture()
    results = _results(people)
    results[0]["image_id"] = 99
    with pytest.raises(ValueError, match="absent from the ground truth"):
        coco_keypoint_eval(gt, results)


def test_oks_nms_drops_duplicates_only() -> None:
    _, people = _fixture()
    results = _results(people)
    # A second, slightly shifted, lower-scored copy of the first person: a duplicate from an overlapping box.
    dup = dict(results[0])
    kps = np.array(dup["keypoints"]).reshape(17, 3)
    kps[:, :2] += 0.5
    dup["keypoints"], dup["score"] = kps.reshape(-1).tolist(), 0.5
    kept = oks_nms(results + [dup], threshold=0.9)
    assert len(kept) == len(results)
    assert all(r["score"] == pytest.approx(0.9) for r in kept)


def test_dataset_targets_decode_back_to_ground_truth(tmp_path: Path) -> None:
    """Geometry end to end: crop + Gaussian targets of the ground truth, decoded with DARK and mapped back to the image,
    score AP = 1 (and lie within 0.3 px of the annotations)."""
    import cv2

    from models.keypoints import decode_heatmaps
    from models.train.data import CocoKeypoints

    gt, people = _fixture()
    for im in gt["images"]:
        cv2.imwrite(str(tmp_path / im["file_name"]), np.zeros((480, 640, 3), dtype=np.uint8))
    ds = CocoKeypoints(tmp_path, gt, train=False, input_size=(256, 192), sigma=2.0)
    assert len(ds) == 5
    coords, scores, image_ids = [], [], []
    for i in range(len(ds)):
        s = ds[i]
        c, sc = decode_heatmaps(s["target"][None].numpy(), s["center"][None].numpy(), s["scale"][None].numpy())
        coords.append(c[0])
        scores.append(sc[0])
        image_ids.append(int(s["image_id"]))
        np.testing.assert_allclose(c[0], people[i][1][:, :2], atol=0.3)
    metrics = coco_keypoint_eval(gt, keypoint_results(np.stack(coords), np.stack(scores), image_ids))
    assert metrics["AP"] == pytest.approx(1.0)
