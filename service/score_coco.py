"""COCO keypoint files for the batch scorer: ground truth and detections in, keypoint results out, AP/AR through
pycocotools. numpy only (no torch): the scorer runs where the service runs.

Results follow COCO's format: a list of ``{"image_id", "category_id": 1, "keypoints": [x, y, score] * K, "score"}``
with no "bbox" field (a non-empty one switches pycocotools to its box branch). An empty result list is scored as
AP = AR = 0 without calling pycocotools, whose ``loadRes`` crashes on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.coco import COCO_KEYPOINT_METRICS

logger = logging.getLogger(__name__)

PERSON_CATEGORY_ID = 1
ScoredBox = tuple[list[float], float]  # [x1, y1, x2, y2] in image pixels, score


def load_coco(path: str | Path) -> dict[str, Any]:
    """A COCO annotation file as a dict; ValueError with what is missing when it is not one."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path} is not a COCO annotation file: it needs an 'images' list (and 'annotations')")
    data.setdefault("annotations", [])
    return data


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def _usable_box(box: Sequence[float], width: float | None, height: float | None) -> bool:
    """At least one pixel wide and high, and overlapping the image when its size is known."""
    x1, y1, x2, y2 = box
    if not (np.isfinite(box).all() and x2 - x1 >= 1.0 and y2 - y1 >= 1.0):
        return False
    if width is not None and height is not None:
        return x1 < width and x2 > 0 and y1 < height and y2 > 0
    return True


def ground_truth_boxes(gt: dict[str, Any]) -> dict[int, list[ScoredBox]]:
    """Person boxes of the annotations (not crowd regions), per image id, score 1."""
    sizes = {int(im["id"]): (im.get("width"), im.get("height")) for im in gt["images"]}
    out: dict[int, list[ScoredBox]] = {image_id: [] for image_id in sizes}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("category_id", PERSON_CATEGORY_ID) != PERSON_CATEGORY_ID:
            continue
        image_id = int(ann["image_id"])
        box = xywh_to_xyxy(ann["bbox"])
        if image_id in out and _usable_box(box, *sizes[image_id]):
            out[image_id].append((box, 1.0))
    return out


def read_detections(path: str | Path, min_score: float = 0.0) -> dict[int, list[ScoredBox]]:
    """A COCO detections file (a list of {image_id, category_id, bbox [x, y, w, h], score}): person boxes at or above
    ``min_score`` per image id, best first."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a COCO detections file: expected a list of {{image_id, bbox, score}}")
    out: dict[int, list[ScoredBox]] = {}
    for det in data:
        if det.get("category_id", PERSON_CATEGORY_ID) != PERSON_CATEGORY_ID:
            continue
        score = float(det.get("score", 1.0))
        box = xywh_to_xyxy(det["bbox"])
        if score >= min_score and _usable_box(box, None, None):
            out.setdefault(int(det["image_id"]), []).append((box, score))
    for boxes in out.values():
        boxes.sort(key=lambda item: -item[1])
    return out


def keypoint_result(image_id: int, keypoints: Sequence[Sequence[float]], score: float) -> dict[str, Any]:
    """One COCO keypoint result from [[x, y, score], ...] in image pixels."""
    flat = [round(float(v), 3) for kp in keypoints for v in kp[:3]]
    return {"image_id": int(image_id), "category_id": PERSON_CATEGORY_ID, "keypoints": flat, "score": float(score)}


def annotation_keypoint_results(gt: dict[str, Any]) -> list[dict[str, Any]]:
    """The annotations' own keypoints as results (score 1 where labelled, 0 elsewhere): an oracle that checks the
    results writer and the evaluator; its AP is 1."""
    results = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0) or not ann.get("num_keypoints", 0):
            continue
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        triples = [[x, y, 1.0 if v > 0 else 0.0] for x, y, v in kps]
        results.append(keypoint_result(int(ann["image_id"]), triples, 1.0))
    return results


def format_metrics(metrics: dict[str, float]) -> str:
    """AP/AR as a two-line table."""
    names = [n for n in COCO_KEYPOINT_METRICS if n in metrics]
    return " | ".join(f"{n:>6}" for n in names) + "\n" + " | ".join(f"{metrics[n]:6.3f}" for n in names)
