"""Keypoint geometry against hand-computed values (pixel-center convention, scale in pixels)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models import keypoints
from models.keypoints import (
    affine_points,
    box_to_center_scale,
    crop_person,
    decode_heatmaps,
    flip_heatmaps,
    flip_points,
    get_affine_transform,
    render_heatmaps,
)


def test_box_to_center_scale_fixes_aspect_then_pads() -> None:
    # Box 30 wide, 80 tall; aspect 0.75 needs width 60 for height 80; padding 1.25 -> (75, 100).
    center, scale = box_to_center_scale([10, 20, 30, 80], aspect_ratio=0.75, padding=1.25)
    np.testing.assert_allclose(center, [25.0, 60.0])
    np.testing.assert_allclose(scale, [75.0, 100.0])
    # A wide box keeps its width: 120 x 40 -> height 160.
    _, scale = box_to_center_scale([0, 0, 120, 40], aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(scale, [120.0, 160.0])


def test_affine_maps_region_edges_to_output_edges() -> None:
    m = get_affine_transform([25.0, 60.0], [75.0, 100.0], 0.0, (48, 64))
    # Factor 48/75 = 0.64 on both axes; the center goes to ((48-1)/2, (64-1)/2).
    np.testing.assert_allclose(m, [[0.64, 0.0, 23.5 - 0.64 * 25], [0.0, 0.64, 31.5 - 0.64 * 60]], atol=1e-12)
    corners = affine_points([[25 - 37.5, 60 - 50], [25 + 37.5, 60 + 50]], m)
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [47.5, 63.5]], atol=1e-12)
    inv = get_affine_transform([25.0, 60.0], [75.0, 100.0], 0.0, (48, 64), inverse=True)
    np.testing.assert_allclose(affine_points([[23.5, 31.5]], inv), [[25.0, 60.0]], atol=1e-12)


def test_rotation_is_counter_clockwise_on_screen() -> None:
    m = get_affine_transform([25.0, 60.0], [64.0, 64.0], 90.0, (64, 64))
    # A point 10 px right of the center ends up 10 px above it (y points down).
    np.testing.assert_allclose(affine_points([[35.0, 60.0]], m), [[31.5, 21.5]], atol=1e-9)


def test_crop_at_unit_scale_is_a_shift() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(100, 100, 3), dtype=np.uint8)
    # Region 48 x 64 centered at (40.5, 50.5) onto 48 x 64: out = p - (40.5, 50.5) + (23.5, 31.5) = p - (17, 19).
    crop = crop_person(image, [40.5, 50.5], [48.0, 64.0], 0.0, (64, 48))
    assert crop.shape == (64, 48, 3)
    np.testing.assert_array_equal(crop, image[19 : 19 + 64, 17 : 17 + 48])


def test_crop_rotated_90_equals_rot90() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((9, 9)).astype(np.float32)
    crop = crop_person(image, [4.0, 4.0], [9.0, 9.0], 90.0, (9, 9))
    np.testing.assert_allclose(crop, np.rot90(image), atol=1e-5)


def test_crop_outside_image_is_zero() -> None:
    image = np.full((10, 10), 7, dtype=np.uint8)
    crop = crop_person(image, [-20.0, 5.0], [10.0, 10.0], 0.0, (10, 10))
    assert crop.max() == 0


def test_keypoint_lands_on_known_heatmap_peak() -> None:
    # Region 192 x 256 at unit scale onto a 256x192 crop; heatmap 64x48 (stride 4): pixel u is centered at 4u + 1.5.
    center, scale = np.array([300.0, 200.0]), np.array([192.0, 256.0])
    # Heatmap pixel (u=10, v=15) <- crop pixel (41.5, 61.5) <- image pixel (41.5 - 95.5 + 300, 61.5 - 127.5 + 200).
    keypoint = np.array([[246.0, 134.0]])
    m = get_affine_transform(center, scale, 0.0, (48, 64))
    np.testing.assert_allclose(affine_points(keypoint, m), [[10.0, 15.0]], atol=1e-9)
    maps, inside = render_heatmaps(affine_points(keypoint, m), (64, 48), sigma=2.0)
    assert inside.tolist() == [True]
    assert np.unravel_index(maps[0].argmax(), maps[0].shape) == (15, 10)
    assert maps[0, 15, 10] == pytest.approx(1.0)
    assert maps[0, 15, 12] == pytest.approx(np.exp(-4 / 8), rel=1e-6)  # two pixels right: exp(-d^2 / (2 sigma^2))


def test_render_marks_points_outside_the_region() -> None:
    maps, inside = render_heatmaps([[-0.6, 3.0], [47.5, 63.5], [10.0, 64.0]], (64, 48))
    assert inside.tolist() == [False, True, False]
    assert maps[0].max() == 0 and maps[2].max() == 0


@pytest.mark.parametrize("refine, tol", [("dark", 0.02), ("quarter", 0.26), ("none", 0.51)])
def test_decode_of_encode_recovers_keypoints(refine: str, tol: float) -> None:
    rng = np.random.default_rng(2)
    centers = np.array([[320.0, 240.0], [100.0, 90.0]])
    scales = np.array([[150.0, 200.0], [60.0, 80.0]])
    rotations = np.array([0.0, 30.0])
    heatmaps = np.zeros((2, 5, 64, 48), dtype=np.float32)
    truth = np.zeros((2, 5, 2))
    for i in range(2):
        pts_hm = np.stack([rng.uniform(4, 44, 5), rng.uniform(4, 60, 5)], axis=1)  # sub-pixel heatmap positions
        heatmaps[i], _ = render_heatmaps(pts_hm, (64, 48), sigma=2.0)
        inv = get_affine_transform(centers[i], scales[i], rotations[i], (48, 64), inverse=True)
        truth[i] = affine_points(pts_hm, inv)
    coords, scores = decode_heatmaps(heatmaps, centers, scales, (256, 192), rotations, refine=refine)
    # Tolerance in heatmap pixels, converted to image pixels (scale / heatmap width).
    px = np.array([150.0 / 48, 60.0 / 48])[:, None]
    err = np.linalg.norm(coords - truth, axis=-1) / px
    assert err.max() < tol * np.sqrt(2)
    assert scores.shape == (2, 5) and np.all(scores > 0.8)


def test_flip_heatmaps_mirrors_and_swaps_pairs() -> None:
    hm = np.zeros((1, 3, 2, 4), dtype=np.float32)
    hm[0, 0, 0, 0] = 1.0  # channel 0, left column
    hm[0, 1, 1, 1] = 2.0  # channel 1 -> goes to channel 2, column 4-1-1 = 2
    hm[0, 2, 0, 3] = 3.0  # channel 2 -> goes to channel 1, column 0
    out = flip_heatmaps(hm, [(1, 2)])
    expected = np.zeros_like(hm)
    expected[0, 0, 0, 3] = 1.0
    expected[0, 2, 1, 2] = 2.0
    expected[0, 1, 0, 0] = 3.0
    np.testing.assert_array_equal(out, expected)


def test_flip_points_mirrors_and_swaps_pairs() -> None:
    pts = np.array([[1.0, 5.0, 1.0], [2.0, 6.0, 2.0], [3.0, 7.0, 0.0]])
    out = flip_points(pts, width=10, flip_pairs=[(1, 2)])
    np.testing.assert_allclose(out, [[8.0, 5.0, 1.0], [6.0, 7.0, 0.0], [7.0, 6.0, 2.0]])


def _dark_reference(hm: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """DARK written out map by map with OpenCV's whole-map Gaussian blur (the textbook procedure)."""
    out = np.stack([x, y], axis=-1).astype(np.float64)
    ksize = int(2 * np.ceil(3 * sigma) + 1)
    for i, j in np.ndindex(*hm.shape[:2]):
        m = hm[i, j]
        px, py = int(x[i, j]), int(y[i, j])
        if m.max() <= 0 or not (1 <= px < m.shape[1] - 1 and 1 <= py < m.shape[0] - 1):
            continue
        s = cv2.GaussianBlur(m, (ksize, ksize), sigma)
        lg = np.log(np.maximum(s * (m.max() / s.max()), 1e-10))
        dx, dy = 0.5 * (lg[py, px + 1] - lg[py, px - 1]), 0.5 * (lg[py + 1, px] - lg[py - 1, px])
        dxx = lg[py, px + 1] - 2 * lg[py, px] + lg[py, px - 1]
        dyy = lg[py + 1, px] - 2 * lg[py, px] + lg[py - 1, px]
        dxy = 0.25 * (lg[py + 1, px + 1] - lg[py + 1, px - 1] - lg[py - 1, px + 1] + lg[py - 1, px - 1])
        det = dxx * dyy - dxy * dxy
        if det > 1e-12 and dxx < 0:
            out[i, j, 0] += np.clip(-(dyy * dx - dxy * dy) / det, -1, 1)
            out[i, j, 1] += np.clip(-(dxx * dy - dxy * dx) / det, -1, 1)
    return out


def test_dark_offset_matches_the_whole_map_procedure() -> None:
    """The patch-only DARK step equals blurring every whole map with cv2 (peaks inside, at borders, flat maps)."""
    rng = np.random.default_rng(7)
    hm = rng.random((3, 6, 32, 24)) ** 4
    hm[0, 0] = 0.0  # an empty map
    hm[1, 1, 0, 5] = 9.0  # peak on the top border
    hm[2, 2, 16, 23] = 9.0  # peak on the right border
    hm[2, 3, 1, 1] = 9.0  # peak one pixel from a corner
    flat = hm.reshape(3, 6, -1).argmax(-1)
    y, x = np.divmod(flat, 24)
    got = keypoints._dark_offset(hm, x, y, 2.0)
    np.testing.assert_allclose(got, _dark_reference(hm, x, y, 2.0), rtol=0, atol=1e-9)
