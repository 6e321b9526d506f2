"""COCO keypoint results and their evaluation, shared by training (models.train) and the batch scorer (service):
numpy and pycocotools only.

COCO keypoint results are a list of ``{"image_id", "category_id": 1, "keypoints": [x, y, score] * K, "score"}``;
no "bbox" field (pycocotools would switch to its box branch). An empty result list is scored as AP = AR = 0 without
calling pycocotools, whose ``loadRes`` crashes on it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.spec import COCO_OKS_SIGMAS

logger = logging.getLogger(__name__)

COCO_OKS_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# PCK: the fraction of labelled keypoints within PCK_ALPHA x the larger side of their person's box (see ``pck``)
COCO_KEYPOINT_METRICS = (*COCO_OKS_METRICS, "PCK")
PCK_ALPHA = 0.2


def keypoint_results(
    coords: NDArray[np.floating],
    scores: NDArray[np.floating],
    image_ids: Sequence[int],
    box_scores: Sequence[float] | None = None,
    keypoint_score_threshold: float = 0.2,
) -> list[dict[str, Any]]:
    """COCO results from decoded keypoints [N, K, 2] and their scores [N, K].

    Instance score = box score x mean of the keypoint scores above ``keypoint_score_threshold`` (SimpleBaseline's
    rescoring; the mean of all scores if none is above)."""
    coords = np.asarray(coords, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    results = []
    for i, image_id in enumerate(image_ids):
        s = scores[i]
        good = s[s > keypoint_score_threshold]
        quality = float(good.mean()) if good.size else float(s.mean())
        box = 1.0 if box_scores is None else float(box_scores[i])
        kps = np.concatenate([coords[i], s[:, None]], axis=1).reshape(-1)
        results.append({"image_id": int(image_id), "category_id": 1, "keypoints": [round(float(v), 3) for v in kps],
                        "score": box * quality})  # fmt: skip
    return results


def write_results(path: str | Path, results: list[dict[str, Any]]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f)


def _oks(a: NDArray[np.float64], others: NDArray[np.float64], area: float, sigmas: NDArray[np.float64]) -> NDArray[Any]:
    var = (2 * sigmas) ** 2
    d2 = ((others[:, :, :2] - a[None, :, :2]) ** 2).sum(axis=2)
    e = d2 / var[None, :] / (max(area, 1e-9) * 2)
    return np.exp(-e).mean(axis=1)  # type: ignore[no-any-return]


def oks_nms(
    results: list[dict[str, Any]], threshold: float = 0.9, sigmas: Sequence[float] = COCO_OKS_SIGMAS
) -> list[dict[str, Any]]:
    """Per image, greedily keep the highest-scoring pose and drop poses whose OKS with it exceeds ``threshold``
    (duplicates from overlapping detection boxes). The OKS scale is the area of the kept pose's keypoint box."""
    s = np.asarray(sigmas, dtype=np.float64)
    by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    kept: list[dict[str, Any]] = []
    for rs in by_image.values():
        rs = sorted(rs, key=lambda r: -r["score"])
        kps = np.array([r["keypoints"] for r in rs], dtype=np.float64).reshape(len(rs), -1, 3)
        alive = np.ones(len(rs), dtype=bool)
        for i in range(len(rs)):
            if not alive[i]:
                continue
            kept.append(rs[i])
            rest = np.nonzero(alive)[0]
            rest = rest[rest > i]
            if rest.size:
                span = kps[i, :, :2].max(axis=0) - kps[i, :, :2].min(axis=0)
                oks = _oks(kps[i], kps[rest], float(span[0] * span[1]), s)
                alive[rest[oks > threshold]] = False
    return kept


def coco_keypoint_eval(
    ground_truth: str | Path | dict[str, Any],
    results: list[dict[str, Any]],
    sigmas: Sequence[float] = COCO_OKS_SIGMAS,
) -> dict[str, float]:
    """COCO keypoint AP/AR (OKS) of ``results`` against a COCO keypoint annotation file or dict, via pycocotools.

    Returns AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl and PCK (``pck``, alpha 0.2) as fractions in [0, 1]."""
    if not results:
        logger.warning("no keypoint results to evaluate: AP, AR and PCK are 0")
        return dict.fromkeys(COCO_KEYPOINT_METRICS, 0.0)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # pycocotools prints its progress and tables
        if isinstance(ground_truth, dict):
            gt = COCO()
            gt.dataset = ground_truth
            gt.createIndex()
        else:
            gt = COCO(str(ground_truth))
        known = set(gt.getImgIds())
        unknown = {r["image_id"] for r in results} - known
        if unknown:
            raise ValueError(f"results name image ids absent from the ground truth: {sorted(unknown)[:10]}")
        dt = gt.loadRes([{k: v for k, v in r.items() if k != "bbox"} for r in results])
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    logger.debug("pycocotools:\n%s", stdout.getvalue())
    metrics = {name: float(v) for name, v in zip(COCO_OKS_METRICS, ev.stats[: len(COCO_OKS_METRICS)], strict=True)}
    metrics["PCK"] = pck(gt.dataset, results, PCK_ALPHA)
    return metrics


def pck(ground_truth: dict[str, Any], results: list[dict[str, Any]], alpha: float = PCK_ALPHA) -> float:
    """Percentage of correct keypoints, as a fraction: over every labelled keypoint (v > 0) of every non-crowd person
    in ``ground_truth``, the share that lies within ``alpha`` x max(box width, box height) of the prediction. Each
    person is compared with the result of its image whose keypoints lie closest to its own (mean distance over its
    labelled keypoints), which is its own box's result when the boxes were the ground-truth ones; a person with no
    result in its image counts all its keypoints as wrong."""
    by_image: dict[int, list[NDArray[np.float64]]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(np.asarray(r["keypoints"], np.float64).reshape(-1, 3)[:, :2])
    correct = total = 0
    for ann in ground_truth.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        kps = np.asarray(ann.get("keypoints", []), np.float64).reshape(-1, 3)
        labelled = kps[:, 2] > 0
        n = int(labelled.sum())
        if n == 0:
            continue
        total += n
        candidates = by_image.get(int(ann["image_id"]), [])
        if not candidates:
            continue
        dists = [np.linalg.norm(c[: len(kps)][labelled] - kps[labelled, :2], axis=1) for c in candidates]
        best = min(dists, key=lambda d: float(d.mean()))
        size = max(float(ann["bbox"][2]), float(ann["bbox"][3]), 1e-9)
        correct += int((best <= alpha * size).sum())
    return correct / total if total else 0.0
