"""Evaluation: top-1/top-5 for classifiers; COCO keypoint AP/AR (OKS, through pycocotools) for pose networks.

COCO keypoint results are a list of ``{"image_id", "category_id": 1, "keypoints": [x, y, score] * K, "score"}``;
no "bbox" field (pycocotools would switch to its box branch). An empty result list is scored as AP = AR = 0 without
calling pycocotools, whose ``loadRes`` crashes on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from numpy.typing import NDArray
from torch import Tensor, nn
from torch.utils.data import DataLoader

from models.coco import coco_keypoint_eval, keypoint_results, oks_nms, write_results
from models.keypoints import decode_heatmaps, flip_heatmaps

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------- classification
def topk_correct(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the k highest logits, for each k (k is capped at the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy over ``loader``; summed across processes when distributed (each
    process must see a disjoint shard)."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # n, top1, top5, loss sum
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images).float()
        c1, c5 = topk_correct(logits, labels, (1, 5))
        loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        totals += torch.tensor([labels.numel(), c1, c5, float(loss)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(totals)
    n = max(float(totals[0]), 1.0)
    return {"top1": 100.0 * float(totals[1]) / n, "top5": 100.0 * float(totals[2]) / n, "loss": float(totals[3]) / n,
            "num_samples": int(totals[0])}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- pose
@torch.no_grad()
def predict_pose(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    flip_pairs: Sequence[Sequence[int]],
    flip_test: bool = True,
    refine: str = "dark",
    sigma: float = 2.0,
) -> dict[str, NDArray[Any]]:
    """Run a pose network over a top-down loader (batches with "image", "center", "scale", "rotation", "image_id",
    "score"); returns coords [N, K, 2] in image pixels, scores [N, K], image_ids [N], box_scores [N].

    Flip test: the horizontally flipped crop's heatmaps are mirrored back, their left/right channels swapped, and
    averaged with the plain ones (exact alignment in the pixel-center convention of models.keypoints)."""
    model.eval()
    out: dict[str, list[NDArray[Any]]] = {"coords": [], "scores": [], "image_ids": [], "box_scores": []}
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        heatmaps = model(images).float().cpu().numpy()
        if flip_test:
            flipped = model(torch.flip(images, dims=[3])).float().cpu().numpy()
            heatmaps = 0.5 * (heatmaps + flip_heatmaps(flipped, flip_pairs))
        coords, scores = decode_heatmaps(
            heatmaps, batch["center"].numpy(), batch["scale"].numpy(),
            rotations=batch["rotation"].numpy(), refine=refine, sigma=sigma,
        )  # fmt: skip
        out["coords"].append(coords)
        out["scores"].append(scores)
        out["image_ids"].append(batch["image_id"].numpy())
        out["box_scores"].append(batch["score"].numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in out.items()}


def evaluate_pose(
    model: nn.Module,
    loader: DataLoader[Any],
    device: torch.device,
    ground_truth: str | Path | dict[str, Any],
    flip_pairs: Sequence[Sequence[int]],
    flip_test: bool = True,
    refine: str = "dark",
    sigma: float = 2.0,
    oks_nms_threshold: float | None = 0.9,
    keypoint_score_threshold: float = 0.2,
    results_path: str | Path | None = None,
) -> dict[str, float]:
    """Predict, gather across processes, write COCO results (rank 0) and score them with pycocotools."""
    pred = predict_pose(model, loader, device, flip_pairs, flip_test, refine, sigma)
    results = keypoint_results(pred["coords"], pred["scores"], pred["image_ids"].tolist(),
                               pred["box_scores"].tolist(), keypoint_score_threshold)  # fmt: skip
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        gathered: list[list[dict[str, Any]]] = [[] for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, results)
        results = [r for part in gathered for r in part]
    metrics: dict[str, float] = {}
    if not distributed or dist.get_rank() == 0:
        if oks_nms_threshold is not None:
            results = oks_nms(results, oks_nms_threshold)
        if results_path is not None:
            write_results(results_path, results)
        metrics = coco_keypoint_eval(ground_truth, results)
        metrics["num_results"] = float(len(results))
    if distributed:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics
