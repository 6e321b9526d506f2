"""Training losses: weighted heatmap MSE for pose, soft cross-entropy distillation for classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def heatmap_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """mean over N, K, h, w of w_k * (pred - target)^2, with per-keypoint weights ``weight`` [N, K] (visibility:
    0 for unlabeled keypoints or keypoints outside the crop, 1 otherwise)."""
    if pred.shape != target.shape:
        raise ValueError(f"heatmap shapes differ: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
    sq = (pred.float() - target.float()) ** 2
    if weight is not None:
        sq = sq * weight.float()[:, :, None, None]
    return sq.mean()


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """-sum_c p_c log softmax(logits)_c, averaged over the batch."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.9,
    temperature: float = 1.0,
    label_smoothing: float = 0.0,
) -> Tensor:
    """alpha * T^2 * CE(softmax(teacher / T), student / T) + (1 - alpha) * CE(labels, student).

    The paper's recipe is alpha = 0.9, T = 1 (the T^2 factor, Hinton et al. 2015, is then 1)."""
    with torch.no_grad():
        soft = F.softmax(teacher_logits.float() / temperature, dim=1)
    soft_loss = soft_cross_entropy(student_logits / temperature, soft) * temperature**2
    hard_loss = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    return alpha * soft_loss + (1.0 - alpha) * hard_loss
