"""What the pose networks share: the COCO-17 spec and the float heatmap layer."""

from __future__ import annotations

from typing import Any

from .spec import COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, COCO_SKELETON, ModelSpec


def pose_spec(name: str, binary: bool, input_size: int | tuple[int, int] | None, extra: dict[str, Any]) -> ModelSpec:
    """COCO-17 top-down spec; heatmaps at 1/4 of the input (256x192 -> 64x48)."""
    size = input_size if input_size is not None else (256, 192)
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if hw[0] % 32 or hw[1] % 32:
        raise ValueError(f"{name}: input size {hw} must be a multiple of 32 in both dimensions")
    return ModelSpec(
        name=name, task="pose", input_size=hw, keypoint_names=COCO_KEYPOINT_NAMES, skeleton=COCO_SKELETON,
        flip_pairs=COCO_FLIP_PAIRS, heatmap_size=(hw[0] // 4, hw[1] // 4), binary=binary, extra=extra,
    )  # fmt: skip
