"""Drawing results on images: person boxes, keypoints and the skeleton, for any keypoint count."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import cv2
import numpy as np


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours around the hue circle."""
    colours = []
    for i in range(max(n, 1)):
        r, g, b = colorsys.hsv_to_rgb(i / max(n, 1), 0.85, 1.0)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def draw_pose(
    rgb: np.ndarray,
    boxes: Sequence[Sequence[float]],
    keypoints: Sequence[Sequence[Sequence[float]]],
    skeleton: Sequence[Sequence[int]] = (),
    score_threshold: float = 0.2,
) -> np.ndarray:
    """A copy of `rgb` with each person's box, its keypoints [K, 3] (x, y, score) above the threshold, and the
    skeleton edges whose two ends are both above it. Edges naming keypoints beyond K are skipped."""
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    radius = max(2, thickness + 1)
    for box in boxes:
        x1, y1, x2, y2 = (round(v) for v in box[:4])
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thickness, cv2.LINE_AA)
    for kpts in keypoints:
        k = len(kpts)
        colours = palette(k)
        visible = [len(p) < 3 or p[2] >= score_threshold for p in kpts]
        for e, (a, b) in enumerate(skeleton):
            if a < k and b < k and visible[a] and visible[b]:
                pa = (round(kpts[a][0]), round(kpts[a][1]))
                pb = (round(kpts[b][0]), round(kpts[b][1]))
                cv2.line(out, pa, pb, palette(len(skeleton))[e], thickness + 1, cv2.LINE_AA)
        for j, p in enumerate(kpts):
            if visible[j]:
                cv2.circle(out, (round(p[0]), round(p[1])), radius, colours[j], -1, cv2.LINE_AA)
    return out
