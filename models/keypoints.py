"""Top-down keypoint geometry: person boxes to crops, crops to heatmaps and back. numpy + OpenCV only (no torch), so the
HTTP service and the training data pipeline share one implementation.

Conventions
-----------
- Coordinates are (x, y) in pixels with the pixel-center convention: the center of the pixel in column i, row j is
  (x=i, y=j), so an image W pixels wide spans x in [-0.5, W - 0.5]. OpenCV's warpAffine samples in this convention.
- A person region is a ``center`` (x, y) and a ``scale`` (w, h): the width and height of the region in source pixels
  (not HRNet's "pixels / 200"). ``box_to_center_scale`` pads a box and fixes its aspect ratio to the model input's.
- ``get_affine_transform(center, scale, rot, (W, H))`` maps the region onto an output of W x H pixels edge to edge:
  the region's left edge ``cx - w/2`` goes to ``-0.5`` and its right edge to ``W - 0.5``. The same function serves the
  input crop (output = input size) and the heatmap (output = heatmap size): a heatmap pixel u, for a stride-4 network,
  covers input pixels 4u..4u+3, so its center is input x = 4u + 1.5. Horizontal flips are exact in this convention
  (crop x -> W - 1 - x, heatmap u -> w - 1 - u): no one-pixel shift is needed in flip test.
- ``rot_deg`` rotates the image content counter-clockwise as seen on screen (y points down) about the region center.
- Heatmaps are unnormalized Gaussians exp(-d^2 / (2 sigma^2)) evaluated at pixel centers around the exact sub-pixel
  keypoint (no rounding), so decoding with DARK recovers the keypoint to a small fraction of a heatmap pixel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
ImageArray = NDArray[np.integer | np.floating]  # HxW or HxWxC, uint8 or float

__all__ = [
    "affine_points",
    "box_to_center_scale",
    "crop_person",
    "decode_heatmaps",
    "flip_heatmaps",
    "flip_points",
    "get_affine_transform",
    "render_heatmaps",
]


def box_to_center_scale(box_xywh: ArrayLike, aspect_ratio: float, padding: float = 1.25) -> tuple[FloatArray, FloatArray]:
    """Center (x, y) and scale (w, h) in pixels of a person box [x, y, w, h] (x, y = top-left corner).

    The box is widened or heightened to ``aspect_ratio`` = input width / input height (192/256 = 0.75 for 256x192),
    never shrunk, then both sides are multiplied by ``padding`` (1.25 leaves context around the person).
    """
    x, y, w, h = (float(v) for v in np.asarray(box_xywh, dtype=np.float64).reshape(4))
    if aspect_ratio <= 0:
        raise ValueError(f"aspect_ratio must be positive (input width / height), got {aspect_ratio}")
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    scale = np.array([w * padding, h * padding], dtype=np.float64)
    return center, scale


def get_affine_transform(
    center: ArrayLike,
    scale: ArrayLike,
    rot_deg: float,
    output_size_wh: Sequence[int],
    inverse: bool = False,
) -> FloatArray:
    """The 2x3 matrix that maps source pixels onto an output of ``output_size_wh`` = (W, H) pixels.

    p_out = S R (p - center) + ((W - 1) / 2, (H - 1) / 2), with S = diag(W / scale_w, H / scale_h) and R the
    counter-clockwise (on screen) rotation by ``rot_deg``. ``inverse=True`` gives the output-to-source map.
    """
    c = np.asarray(center, dtype=np.float64).reshape(2)
    s = np.asarray(scale, dtype=np.float64).reshape(2)
    if np.any(s <= 0):
        raise ValueError(f"scale must be positive (region width, height in pixels), got {s.tolist()}")
    out_w, out_h = float(output_size_wh[0]), float(output_size_wh[1])
    theta = math.radians(rot_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so a counter-clockwise turn on screen sends (1, 0) to (cos, -sin).
    rotation = np.array([[cos, sin], [-sin, cos]], dtype=np.float64)
    linear = np.diag([out_w / s[0], out_h / s[1]]) @ rotation
    offset = np.array([(out_w - 1.0) / 2.0, (out_h - 1.0) / 2.0]) - linear @ c
    if inverse:
        inv = np.linalg.inv(linear)
        return np.concatenate([inv, (-inv @ offset)[:, None]], axis=1)
    return np.concatenate([linear, offset[:, None]], axis=1)


def affine_points(points: ArrayLike, matrix: ArrayLike) -> FloatArray:
    """Apply a 2x3 affine matrix to points [..., 2] (x, y); extra trailing columns are not accepted."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    if p.shape[-1] != 2:
        raise ValueError(f"points must have shape [..., 2], got {p.shape}")
    return p @ m[:, :2].T + m[:, 2]


def crop_person(
    image: ImageArray,
    center: ArrayLike,
    scale: ArrayLike,
    rot: float,
    input_size_hw: Sequence[int],
    interpolation: int = cv2.INTER_LINEAR,
) -> ImageArray:
    """Crop the region (center, scale, rot) of ``image`` (HxW or HxWxC) to ``input_size_hw`` = (H, W); outside the
    image is zero."""
    in_h, in_w = int(input_size_hw[0]), int(input_size_hw[1])
    matrix = get_affine_transform(center, scale, rot, (in_w, in_h))
    crop: ImageArray = cv2.warpAffine(
        image, matrix, (in_w, in_h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return crop


def flip_points(points: ArrayLike, width: int, flip_pairs: Sequence[Sequence[int]]) -> FloatArray:
    """Mirror keypoints [..., K, 2+] of an image ``width`` px wide (x -> width - 1 - x) and swap left/right pairs."""
    p = np.array(points, dtype=np.float64, copy=True)
    p[..., 0] = width - 1 - p[..., 0]
    for a, b in flip_pairs:
        p[..., [a, b], :] = p[..., [b, a], :]
    return p


def flip_heatmaps(heatmaps: NDArray[np.floating], flip_pairs: Sequence[Sequence[int]]) -> NDArray[np.floating]:
    """Undo a horizontal flip of the input on heatmaps [..., K, h, w]: mirror the columns and swap left/right
    channels. Averaging ``flip_heatmaps(net(flipped_crop))`` with ``net(crop)`` is the flip test."""
    out = np.array(heatmaps[..., ::-1], copy=True)
    for a, b in flip_pairs:
        out[..., [a, b], :, :] = out[..., [b, a], :, :]
    return out


def render_heatmaps(
    points: ArrayLike, heatmap_size_hw: Sequence[int], sigma: float = 2.0
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Gaussian targets for keypoints already in heatmap coordinates, [K, 2] -> heatmaps [K, h, w] and a [K] mask of
    the keypoints inside the heatmap region [-0.5, w - 0.5] x [-0.5, h - 0.5]. Keypoints outside get an all-zero map."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    h, w = int(heatmap_size_hw[0]), int(heatmap_size_hw[1])
    inside = (p[:, 0] >= -0.5) & (p[:, 0] <= w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= h - 0.5)
    inside &= np.isfinite(p).all(axis=1)
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    gx = np.exp(-((xs[None, :] - p[:, :1]) ** 2) / (2.0 * sigma**2))  # [K, w]
    gy = np.exp(-((ys[None, :] - p[:, 1:2]) ** 2) / (2.0 * sigma**2))  # [K, h]
    maps = gy[:, :, None] * gx[:, None, :]
    maps[~inside] = 0.0
    return maps.astype(np.float32), inside


def _argmax_2d(heatmaps: NDArray[np.floating]) -> tuple[NDArray[np.int64], NDArray[np.int64], FloatArray]:
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0].astype(np.float64)
    return idx % w, idx // w, maxvals


def _quarter_offset(hm: FloatArray, x: NDArray[np.int64], y: NDArray[np.int64]) -> FloatArray:
    """Shift 0.25 px from the peak toward the higher neighbour on each axis (SimpleBaseline's refinement)."""
    n, k, h, w = hm.shape
    out = np.stack([x, y], axis=-1).astype(np.float64)
    for i in range(n):
        for j in range(k):
            px, py = int(x[i, j]), int(y[i, j])
            m = hm[i, j]
            if 0 < px < w - 1:
                out[i, j, 0] += 0.25 * np.sign(m[py, px + 1] - m[py, px - 1])
            if 0 < py < h - 1:
                out[i, j, 1] += 0.25 * np.sign(m[py + 1, px] - m[py - 1, px])
    return out


def _reflect101(i: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Indices past either end of [0, n) mirrored without repeating the edge (OpenCV's BORDER_REFLECT_101)."""
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.abs(i) % period
    return np.where(i >= n, period - i, i)


# Central differences of a 3x3 block of values v[a, b] (a = row, b = column; flattened a * 3 + b) at its center:
# columns dx, dy, dxx, dyy, dxy.
_DIFFERENCES = np.zeros((9, 5))
_DIFFERENCES[[5, 3], 0] = 0.5, -0.5  # dx = (v[1, 2] - v[1, 0]) / 2
_DIFFERENCES[[7, 1], 1] = 0.5, -0.5  # dy = (v[2, 1] - v[0, 1]) / 2
_DIFFERENCES[[5, 4, 3], 2] = 1.0, -2.0, 1.0  # dxx
_DIFFERENCES[[7, 4, 1], 3] = 1.0, -2.0, 1.0  # dyy
_DIFFERENCES[[8, 6, 2, 0], 4] = 0.25, -0.25, -0.25, 0.25  # dxy = (v[2, 2] - v[2, 0] - v[0, 2] + v[0, 0]) / 4
_DIFFERENCES.flags.writeable = False


@functools.lru_cache(maxsize=8)
def _shifted_gaussian(ksize: int, sigma: float) -> FloatArray:
    """[ksize + 2, 3]: column b holds cv2's Gaussian kernel at rows b .. b + ksize - 1, so that `patch @ taps` blurs
    a (ksize + 2)-wide patch at its three central positions. Read-only (cached)."""
    g = cv2.getGaussianKernel(ksize, sigma).reshape(-1)
    taps = np.zeros((ksize + 2, 3))
    for b in range(3):
        taps[b : b + ksize, b] = g
    taps.flags.writeable = False
    return taps


def _dark_offset(hm: FloatArray, x: NDArray[np.int64], y: NDArray[np.int64], sigma: float) -> FloatArray:
    """DARK (Zhang et al. 2020): smooth each map with a Gaussian, take its log, and step to the maximum of the
    second-order Taylor expansion at the integer peak: offset = -H^-1 g (central differences).

    Only the 3x3 smoothed values around each peak enter the step, so only they are computed: one patch of
    (ksize + 2)^2 pixels per map (reflect-101 borders, as cv2.GaussianBlur), all maps at once. DARK's rescaling of the
    smoothed map to the original peak height multiplies it by a constant, which adds a constant to the log and
    cancels in every difference, so it is left out."""
    n, k, h, w = hm.shape
    out = np.stack([x, y], axis=-1).astype(np.float64)
    ksize = int(2 * math.ceil(3 * sigma) + 1)
    r = ksize // 2
    ok = (hm.max(axis=(2, 3)) > 0) & (x >= 1) & (x < w - 1) & (y >= 1) & (y < h - 1)
    ii, jj = np.nonzero(ok)
    if ii.size == 0:
        return out
    taps = _shifted_gaussian(ksize, sigma)  # [ksize + 2, 3]: the kernel centred on patch offsets -1, 0, +1
    span = np.arange(-(r + 1), r + 2)  # the rows / columns of the peak's patch, relative to the peak
    rows = _reflect101(y[ii, jj][:, None] + span, h)
    cols = _reflect101(x[ii, jj][:, None] + span, w)
    flat = ((ii * k + jj)[:, None] * h + rows)[:, :, None] * w + cols[:, None, :]  # one gather: [m, ksize+2, ksize+2]
    patch = np.ascontiguousarray(hm).reshape(-1)[flat]
    smooth = taps.T @ (patch @ taps)  # [m, 3, 3]: blurred along the columns, then the rows
    lg = np.log(np.maximum(smooth, 1e-10)).reshape(-1, 9)
    dx, dy, dxx, dyy, dxy = (lg @ _DIFFERENCES).T  # central differences on the 3x3 log values
    det = dxx * dyy - dxy * dxy
    good = (det > 1e-12) & (dxx < 0)  # a proper maximum; otherwise keep the integer peak
    safe = np.where(good, det, 1.0)
    ox = np.clip(-(dyy * dx - dxy * dy) / safe, -1.0, 1.0)
    oy = np.clip(-(dxx * dy - dxy * dx) / safe, -1.0, 1.0)
    out[ii, jj, 0] += np.where(good, ox, 0.0)
    out[ii, jj, 1] += np.where(good, oy, 0.0)
    return out


def decode_heatmaps(
    heatmaps: NDArray[np.floating],
    centers: ArrayLike,
    scales: ArrayLike,
    input_size: Sequence[int] | None = None,
    rotations: ArrayLike | None = None,
    refine: str = "dark",
    sigma: float = 2.0,
) -> tuple[FloatArray, FloatArray]:
    """Keypoints in source-image pixels from heatmaps [N, K, h, w] of crops with ``centers`` [N, 2], ``scales``
    [N, 2] (and ``rotations`` [N] degrees, default 0).

    Returns (coords [N, K, 2], scores [N, K]); the score is the heatmap maximum. ``refine`` picks the sub-pixel step:
    "dark" (Taylor expansion of the log of the smoothed map; ``sigma`` is the smoothing, use the training sigma),
    "quarter" (0.25 px toward the higher neighbour) or "none". ``input_size`` (H, W) of the crop, when given, is
    checked against the heatmap's aspect ratio; the mapping itself needs only the heatmap size, since heatmap and
    crop cover the same region.
    """
    hm = np.asarray(heatmaps, dtype=np.float64)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be [N, K, h, w], got shape {hm.shape}")
    n, k, h, w = hm.shape
    c = np.asarray(centers, dtype=np.float64).reshape(n, 2)
    s = np.asarray(scales, dtype=np.float64).reshape(n, 2)
    r = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=np.float64).reshape(n)
    if input_size is not None and abs(input_size[0] * w - input_size[1] * h) > max(input_size):
        raise ValueError(f"heatmap size {(h, w)} does not match the aspect of input size {tuple(input_size)}")
    x, y, scores = _argmax_2d(hm)
    if refine == "dark":
        coords = _dark_offset(hm, x, y, sigma)
    elif refine == "quarter":
        coords = _quarter_offset(hm, x, y)
    elif refine == "none":
        coords = np.stack([x, y], axis=-1).astype(np.float64)
    else:
        raise ValueError(f"refine must be one of 'dark', 'quarter', 'none'; got {refine!r}")
    out = np.empty_like(coords)
    for i in range(n):
        inv = get_affine_transform(c[i], s[i], float(r[i]), (w, h), inverse=True)
        out[i] = affine_points(coords[i], inv)
    return out, scores
