"""What a registered model is, apart from its weights: task, input, normalization, labels, keypoints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

COCO_KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# 0-based index pairs (COCO's skeleton is 1-based; this is the same graph).
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)  # fmt: skip
COCO_FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
# COCO OKS sigmas, in keypoint order.
COCO_OKS_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Metadata of a network. Inputs are float32 NCHW, RGB (or grey) scaled to [0, 1] then normalized:
    (x - mean) / std per channel. Classification outputs logits [N, num_classes]; pose outputs heatmaps
    [N, K, heatmap_size[0], heatmap_size[1]]."""

    name: str
    task: str  # "classification" | "pose"
    input_size: tuple[int, int]  # (H, W)
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 0
    class_names: tuple[str, ...] = ()
    keypoint_names: tuple[str, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()
    heatmap_size: tuple[int, int] | None = None  # (H, W), pose only
    binary: bool = True
    extra: dict[str, Any] = field(default_factory=dict)  # architecture hyper-parameters (width, binarizers, ...)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("input_size", "mean", "std", "class_names", "keypoint_names", "heatmap_size"):
            if d[key] is not None:
                d[key] = list(d[key])
        d["skeleton"] = [list(p) for p in self.skeleton]
        d["flip_pairs"] = [list(p) for p in self.flip_pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        d = dict(d)
        for key in ("input_size", "mean", "std", "class_names", "keypoint_names"):
            if key in d and d[key] is not None:
                d[key] = tuple(d[key])
        if d.get("heatmap_size") is not None:
            d["heatmap_size"] = tuple(d["heatmap_size"])
        for key in ("skeleton", "flip_pairs"):
            if key in d:
                d[key] = tuple(tuple(p) for p in d[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
