"""Person boxes for top-down pose: OpenCV's HOG people detector (ships inside OpenCV 4, nothing to download), or the
whole image as one person."""

from __future__ import annotations

import threading

import cv2
import numpy as np

_local = threading.local()


def _hog() -> cv2.HOGDescriptor:
    # One detector per thread: HOGDescriptor holds scratch buffers and is not documented as thread-safe.
    hog = getattr(_local, "hog", None)
    if hog is None:
        hog = cv2.HOGDescriptor()
        hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())  # type: ignore[attr-defined]
        _local.hog = hog
    return hog


def whole_image_box(width: int, height: int) -> list[float]:
    return [0.0, 0.0, float(width), float(height)]


def detect_people(
    rgb: np.ndarray, max_side: int = 640, score_threshold: float = 0.3, nms_iou: float = 0.45
) -> list[tuple[list[float], float]]:
    """Boxes [x1, y1, x2, y2] in image pixels and SVM scores, best first. Large images are searched at `max_side`
    (HOG finds people from about 64x128 pixels up)."""
    h, w = rgb.shape[:2]
    factor = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_AREA) if factor < 1 else rgb
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] < 128 or grey.shape[1] < 64:
        return []
    rects, weights = _hog().detectMultiScale(grey, winStride=(8, 8), padding=(8, 8), scale=1.05)
    if len(rects) == 0:
        return []
    scores = np.asarray(weights, np.float64).reshape(-1)
    boxes_xywh = [[int(x), int(y), int(bw), int(bh)] for x, y, bw, bh in rects]
    keep = cv2.dnn.NMSBoxes(boxes_xywh, scores.tolist(), score_threshold, nms_iou)
    out: list[tuple[list[float], float]] = []
    for i in np.asarray(keep, np.int64).reshape(-1):
        x, y, bw, bh = boxes_xywh[i]
        box = [x / factor, y / factor, (x + bw) / factor, (y + bh) / factor]
        box = [min(max(box[0], 0.0), w), min(max(box[1], 0.0), h), min(max(box[2], 0.0), w), min(max(box[3], 0.0), h)]
        out.append((box, float(scores[i])))
    out.sort(key=lambda item: -item[1])
    return out
