"""The stages of a request, each a plain function: decode -> boxes (client, detected or whole) -> crops -> [batcher]
-> decode keypoints / class probabilities -> response. The routes only wire them together."""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.keypoints import box_to_center_scale, crop_person, decode_heatmaps, flip_heatmaps
from models.spec import ModelSpec
from service.detect import detect_people, whole_image_box
from service.errors import ApiError
from service.imaging import (
    JPEG_REDUCTIONS,
    classification_input,
    decode_image,
    load_rgb,
    load_rgb_window,
    normalize,
    open_image,
)
from service.schemas import ClassScore, Keypoint, Person, PoseOptions

logger = logging.getLogger(__name__)


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def decode_base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL from a browser
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", "image is not valid base64; send the file's bytes base64-encoded") from None


def check_boxes(boxes: list[list[float]], width: int, height: int) -> list[list[float]]:
    """Client boxes clipped to the image. A box that misses the image, or reaches further than one image size
    beyond it (a unit or coordinate-order mistake), is refused with 400."""
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        inside_reach = -width <= x1 and x2 <= 2 * width and -height <= y1 and y2 <= 2 * height
        overlaps = x1 < width and x2 > 0 and y1 < height and y2 > 0
        if not (inside_reach and overlaps):
            raise ApiError(
                400, "box_outside_image",
                f"box {i} {[x1, y1, x2, y2]} lies outside the {width}x{height} image; "
                "boxes are [x1, y1, x2, y2] in pixels of the image sent",
            )  # fmt: skip
        cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
        cx2, cy2 = min(x2, float(width)), min(y2, float(height))
        if cx2 - cx1 < 1.0 or cy2 - cy1 < 1.0:
            raise ApiError(400, "box_outside_image", f"box {i} covers less than one pixel of the image")
        out.append([cx1, cy1, cx2, cy2])
    return out


def crop_regions(boxes: Sequence[Sequence[float]], aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x1, y1, x2, y2] -> the crops' centers [n, 2] and scales [n, 2] in image pixels (`box_to_center_scale`)."""
    centers, scales = np.zeros((len(boxes), 2)), np.zeros((len(boxes), 2))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        centers[i], scales[i] = box_to_center_scale([x1, y1, x2 - x1, y2 - y1], aspect)
    return centers, scales


def crops_union(centers: np.ndarray, scales: np.ndarray) -> tuple[float, float, float, float]:
    """The rectangle (x1, y1, x2, y2) holding every crop region (center -+ scale / 2), in image pixels."""
    lo, hi = (centers - scales / 2).min(axis=0), (centers + scales / 2).max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def decode_reduction(boxes: Sequence[Sequence[float]], input_size: tuple[int, int]) -> int:
    """The largest JPEG reduction r (8, 4 or 2; else 1) at which the crop region of every box [x1, y1, x2, y2]
    (the box after `box_to_center_scale`'s aspect fix and padding, as the crop uses it) still spans at least the
    input size (H, W) in pixels at 1/r scale, so that the reduction never makes a crop upsample. 1 without boxes."""
    if not boxes:
        return 1
    in_h, in_w = input_size
    _, scales = crop_regions(boxes, in_w / in_h)
    room = float(min((scales[:, 0] / in_w).min(), (scales[:, 1] / in_h).min()))  # smallest region / input size
    return next((r for r in JPEG_REDUCTIONS if r <= room), 1)


@dataclass
class PosePlan:
    """Everything between decoding and the network: the boxes, their crops and where the crops came from. Boxes,
    centers and scales are in pixels of the image sent, whatever scale it was decoded at."""

    width: int
    height: int
    boxes: list[list[float]]
    sources: list[str]
    box_scores: list[float]
    centers: np.ndarray  # [n, 2]
    scales: np.ndarray  # [n, 2]
    inputs: np.ndarray  # [n or 2n, C, H, W]; with flip the mirrored crops follow the originals
    flip: bool
    timings: dict[str, float] = field(default_factory=dict)
    rgb: np.ndarray | None = None  # the decoded pixels: 1/decode_scale of the image's size, or a window of them
    decode_scale: int = 1
    decode_origin: tuple[int, int] = (0, 0)  # (x, y) of rgb[0, 0] in the 1/decode_scale image


def plan_pose(
    data: bytes, options: PoseOptions, spec: ModelSpec, max_pixels: int, max_persons: int, reduce: bool = False
) -> PosePlan:
    """Decode, find the boxes and make the network inputs (runs in a worker thread).

    With `reduce` (/v1/pose) and boxes known before decoding (client boxes or the whole image), a JPEG is decoded at
    the reduced scale `decode_reduction` allows, and only its window under the crops (`load_rgb_window`). HOG
    detection, other formats, rendering (which draws on the full image) and the offline scorer (whose results should
    not depend on a speed-up) decode at full size."""
    t = time.perf_counter()
    img = open_image(data, max_pixels)
    width, height = img.size
    limit = min(options.max_persons, max_persons)
    detect = options.boxes is None and options.detector != "whole"
    boxes: list[list[float]] = []
    sources: list[str] = []
    scores: list[float] = []
    if options.boxes is not None:
        boxes = check_boxes(options.boxes, width, height)[:limit]
        sources, scores = ["client"] * len(boxes), [1.0] * len(boxes)
    elif not detect:
        boxes, sources, scores = [whole_image_box(width, height)], ["whole"], [1.0]
    in_h, in_w = spec.input_size
    centers, scales = crop_regions(boxes, in_w / in_h)
    fast = reduce and not detect and img.format == "JPEG"
    wanted = decode_reduction(boxes, (in_h, in_w)) if fast else 1
    origin = (0, 0)
    if fast and len(boxes):  # only the window under the crops: their regions' union
        rgb, r, origin = load_rgb_window(img, wanted, crops_union(centers, scales))
    else:
        rgb, r = load_rgb(img, wanted)
    timings = {"decode_ms": ms_since(t)}
    if r > 1 or origin != (0, 0):
        logger.debug("decoded a %dx%d JPEG at 1/%d scale, the %dx%d window at %s", width, height, r,
                     rgb.shape[1], rgb.shape[0], origin)  # fmt: skip

    t = time.perf_counter()
    if detect:
        found = detect_people(rgb)[:limit]
        boxes = [b for b, _ in found]
        sources, scores = ["hog"] * len(found), [s for _, s in found]
        centers, scales = crop_regions(boxes, in_w / in_h)
    timings["detect_ms"] = ms_since(t)

    t = time.perf_counter()
    crops = np.zeros((len(boxes), in_h, in_w, 3), np.uint8)
    for i in range(len(boxes)):
        # The same region in the decoded pixels (x_decoded = (x + 0.5) / r - 0.5, minus the window's origin). Centers
        # and scales stay in image pixels, so decode_heatmaps maps keypoints straight back to the image sent.
        center = centers[i] if r == 1 else (centers[i] + 0.5) / r - 0.5
        crops[i] = crop_person(rgb, center - np.asarray(origin, np.float64), scales[i] / r, 0.0, (in_h, in_w))
    if options.flip and len(boxes):
        crops = np.concatenate([crops, crops[:, :, ::-1]])
    inputs = normalize(crops, spec) if len(boxes) else np.zeros((0, spec.in_chans, in_h, in_w), np.float32)
    timings["preprocess_ms"] = ms_since(t)
    return PosePlan(width, height, boxes, sources, scores, centers, scales, inputs, options.flip, timings, rgb, r, origin)


def finish_pose(plan: PosePlan, heatmaps: np.ndarray, spec: ModelSpec, score_threshold: float) -> list[Person]:
    """Heatmaps -> persons with named keypoints in image pixels, best instance first."""
    n = len(plan.boxes)
    if n == 0:
        return []
    if plan.flip:
        heatmaps = 0.5 * (heatmaps[:n] + flip_heatmaps(heatmaps[n:], spec.flip_pairs))
    coords, scores = decode_heatmaps(heatmaps, plan.centers, plan.scales, spec.input_size)
    names = spec.keypoint_names or tuple(f"kp{j}" for j in range(heatmaps.shape[1]))
    persons = []
    for i in range(n):
        kpts = [
            Keypoint(name=names[j], x=float(coords[i, j, 0]), y=float(coords[i, j, 1]), score=float(scores[i, j]),
                     visible=bool(scores[i, j] >= score_threshold))
            for j in range(coords.shape[1])
        ]  # fmt: skip
        visible = scores[i][scores[i] >= score_threshold]
        quality = float(visible.mean()) if visible.size else 0.0
        persons.append(
            Person(
                box=[float(v) for v in plan.boxes[i]],
                box_source=plan.sources[i],  # type: ignore[arg-type]
                box_score=plan.box_scores[i],
                score=quality,
                keypoints=kpts,
            )
        )
    persons.sort(key=lambda p: -p.score)
    return persons


def plan_classify(data: bytes, spec: ModelSpec, max_pixels: int) -> tuple[np.ndarray, dict[str, float]]:
    t = time.perf_counter()
    rgb = decode_image(data, max_pixels)
    timings = {"decode_ms": ms_since(t)}
    t = time.perf_counter()
    x = classification_input(rgb, spec)
    timings["preprocess_ms"] = ms_since(t)
    return x, timings


def finish_classify(logits: np.ndarray, spec: ModelSpec, top_k: int) -> list[ClassScore]:
    z = logits.astype(np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")[: min(top_k, len(p))]
    names = spec.class_names
    return [
        ClassScore(index=int(i), name=names[i] if i < len(names) else f"class_{i}", probability=float(p[i])) for i in order
    ]
