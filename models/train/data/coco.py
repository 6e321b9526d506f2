"""COCO keypoints, top-down: one sample per person box, cropped by an affine warp to the model input.

Person boxes come from the ground truth (``iscrowd == 0``, at least one labeled keypoint when training) or from a
detections file in COCO results format (``[{"image_id", "category_id": 1, "bbox": [x, y, w, h], "score"}]``). Each box
is clipped to the image, expanded to the input's aspect ratio and padded (``models.keypoints.box_to_center_scale``).

Training augmentation: random scale (x clip(1 + N(0, sf), 1 - sf, 1 + sf)), rotation (clip(N(0, r), -2r, 2r) with
probability ``rotation_prob``), a shift of the box center (uniform, up to ``shift_factor`` x the box's size on each axis,
as a detector's off-center boxes), horizontal flip with the spec's flip pairs, half-body crops, colour jitter
(brightness, contrast, saturation), grey scale (with probability ``grayscale_prob``; black-and-white photos) and
occlusion (a random rectangle of noise). Targets: Gaussian heatmaps at the
heatmap size and a per-keypoint weight (1 if labeled, v > 0, and inside the crop; else 0).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from models.keypoints import (
    affine_points,
    box_to_center_scale,
    crop_person,
    flip_points,
    get_affine_transform,
    render_heatmaps,
)
from models.spec import COCO_FLIP_PAIRS

logger = logging.getLogger(__name__)

DEFAULT_AUGMENT: dict[str, Any] = {"scale_factor": 0.35, "rotation": 45.0, "rotation_prob": 0.6, "hflip": True,
                                   "color_jitter": 0.2, "occlusion_prob": 0.0, "half_body_prob": 0.0,
                                   "shift_factor": 0.0, "grayscale_prob": 0.0}  # fmt: skip
UPPER_BODY = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)


def load_coco(annotations: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(annotations, Mapping):
        return dict(annotations)
    with open(annotations) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _clip_box(box: Sequence[float], width: int, height: int) -> list[float] | None:
    """Clip [x, y, w, h] to the image [0, width] x [0, height]; None if nothing is left."""
    x, y, w, h = (float(v) for v in box)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + max(0.0, w)), min(float(height), y + max(0.0, h))
    if x2 <= x1 or y2 <= y1:
        return None
    return [x1, y1, x2 - x1, y2 - y1]


class CocoKeypoints(Dataset[dict[str, Tensor]]):
    """Top-down COCO keypoint samples.

    Each item is a dict of tensors: ``image`` [C, H, W] (normalized by ``mean``/``std``), ``target`` [K, h, w],
    ``target_weight`` [K], ``keypoints`` [K, 3] (in the crop's heatmap coordinates, after augmentation), ``center``
    [2], ``scale`` [2], ``rotation`` [] (of the crop in the original image, for decoding), ``image_id``, ``score``
    (box score; 1 for ground-truth boxes) and ``index``."""

    def __init__(
        self,
        images_dir: str | Path,
        annotations: str | Path | Mapping[str, Any],
        train: bool,
        input_size: Sequence[int] = (256, 192),
        heatmap_size: Sequence[int] | None = None,
        num_keypoints: int = 17,
        flip_pairs: Sequence[Sequence[int]] = COCO_FLIP_PAIRS,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        sigma: float = 2.0,
        padding: float = 1.25,
        augment: Mapping[str, Any] | None = None,
        detections: str | Path | Sequence[Mapping[str, Any]] | None = None,
        detection_score_threshold: float = 0.0,
        seed: int = 0,
        repeat: int = 1,
        cache_images: bool = False,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.coco = load_coco(annotations)
        self.train = train
        self.input_size = (int(input_size[0]), int(input_size[1]))
        hm = heatmap_size or (self.input_size[0] // 4, self.input_size[1] // 4)
        self.heatmap_size = (int(hm[0]), int(hm[1]))
        self.num_keypoints, self.flip_pairs = num_keypoints, [tuple(p) for p in flip_pairs]
        self.mean, self.std, self.sigma, self.padding = tuple(mean), tuple(std), sigma, padding
        self.augment = {**DEFAULT_AUGMENT, **(augment or {})}
        self.aspect = self.input_size[1] / self.input_size[0]
        self.seed, self.epoch = seed, 0
        self.images = {int(im["id"]): im for im in self.coco["images"]}
        self.samples = self._detection_samples(detections, detection_score_threshold) if detections is not None \
            else self._ground_truth_samples()  # fmt: skip
        logger.info("COCO keypoints: %d person samples from %d images (%s boxes)", len(self.samples),
                    len(self.images), "detected" if detections is not None else "ground-truth")  # fmt: skip
        if int(repeat) < 1:
            raise ValueError(f"repeat must be a positive integer, got {repeat!r}")
        self.repeat = int(repeat)  # one epoch = ``repeat`` passes, each with its own augmentation (small sets)
        self._cache: dict[int, NDArray[Any]] = {}
        if cache_images:  # decoded once, before DataLoader workers fork (they share the pages copy-on-write)
            for image_id in sorted({int(s["image_id"]) for s in self.samples}):
                self._cache[image_id] = self.load_image(image_id)
            logger.info("COCO keypoints: cached %d decoded images (%.0f MB)", len(self._cache),
                        sum(a.nbytes for a in self._cache.values()) / 1e6)  # fmt: skip

    # -------------------------------------------------------------------------------------------- samples
    def _sample(self, image_id: int, box: Sequence[float], keypoints: NDArray[np.float64], score: float) -> dict[str, Any]:
        center, scale = box_to_center_scale(box, self.aspect, self.padding)
        return {"image_id": image_id, "center": center, "scale": scale, "keypoints": keypoints, "score": score}

    def _ground_truth_samples(self) -> list[dict[str, Any]]:
        samples = []
        for ann in self.coco.get("annotations", []):
            if ann.get("iscrowd", 0) or int(ann.get("category_id", 1)) != 1:
                continue
            kps = np.asarray(ann.get("keypoints", [0] * 3 * self.num_keypoints), dtype=np.float64).reshape(-1, 3)
            if kps.shape[0] != self.num_keypoints:
                raise ValueError(f"annotation {ann.get('id')} has {kps.shape[0]} keypoints, expected {self.num_keypoints}")
            if (kps[:, 2] > 0).sum() == 0:
                continue
            im = self.images[int(ann["image_id"])]
            box = _clip_box(ann["bbox"], int(im["width"]), int(im["height"]))
            if box is None or box[2] * box[3] <= 0:
                continue
            samples.append(self._sample(int(ann["image_id"]), box, kps, 1.0))
        return samples

    def _detection_samples(
        self, detections: str | Path | Sequence[Mapping[str, Any]], threshold: float
    ) -> list[dict[str, Any]]:
        if isinstance(detections, (str, Path)):
            with open(detections) as f:
                dets = json.load(f)
        else:
            dets = list(detections)
        samples = []
        empty = np.zeros((self.num_keypoints, 3))
        for det in dets:
            if int(det.get("category_id", 1)) != 1 or float(det.get("score", 1.0)) < threshold:
                continue
            image_id = int(det["image_id"])
            if image_id not in self.images:
                raise ValueError(f"detection for image {image_id}, which the annotation file does not list")
            im = self.images[image_id]
            box = _clip_box(det["bbox"], int(im["width"]), int(im["height"]))
            if box is not None:
                samples.append(self._sample(image_id, box, empty, float(det.get("score", 1.0))))
        return samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    # -------------------------------------------------------------------------------------------- items
    def load_image(self, image_id: int) -> NDArray[Any]:
        cached = self._cache.get(image_id)
        if cached is not None:
            return cached
        path = self.images_dir / self.images[image_id]["file_name"]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"cannot read image {path} (image id {image_id})")
        rgb: NDArray[Any] = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return rgb

    def _half_body(
        self, kps: NDArray[np.float64], rng: np.random.Generator
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
        visible = kps[:, 2] > 0
        upper = [i for i in UPPER_BODY if i < len(kps) and visible[i]]
        lower = [i for i in range(len(kps)) if i not in UPPER_BODY and visible[i]]
        chosen = upper if (rng.random() < 0.5 and len(upper) > 2) or len(lower) <= 2 else lower
        if len(chosen) < 2:
            return None
        pts = kps[chosen, :2]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        center, scale = box_to_center_scale([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], self.aspect, 1.5)
        return center, scale

    def _color_jitter(self, img: NDArray[np.float32], rng: np.random.Generator, strength: float) -> NDArray[np.float32]:
        for op in rng.permutation(3):
            f = rng.uniform(1 - strength, 1 + strength)
            if op == 0:  # brightness
                img = img * f
            elif op == 1:  # contrast
                img = (img - img.mean()) * f + img.mean()
            else:  # saturation
                grey = img.mean(axis=2, keepdims=True)
                img = (img - grey) * f + grey
        return np.clip(img, 0.0, 1.0)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        s = self.samples[index % len(self.samples)]
        image = self.load_image(s["image_id"])
        kps = s["keypoints"].copy()
        center, scale, rot = s["center"].copy(), s["scale"].copy(), 0.0
        aug = self.augment
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flipped = False
        if self.train:
            if aug["half_body_prob"] > 0 and rng.random() < aug["half_body_prob"]:
                half = self._half_body(kps, rng)
                if half is not None:
                    center, scale = half
            sf, rf = float(aug["scale_factor"]), float(aug["rotation"])
            scale = scale * float(np.clip(rng.normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
            if aug["shift_factor"] > 0:  # the box's size is the padded scale / padding
                center = center + rng.uniform(-1.0, 1.0, 2) * float(aug["shift_factor"]) * scale / self.padding
            if rng.random() < float(aug["rotation_prob"]):
                rot = float(np.clip(rng.normal() * rf, -2.0 * rf, 2.0 * rf))
            if aug["hflip"] and rng.random() < 0.5:
                flipped = True
                width = image.shape[1]
                image = image[:, ::-1]
                kps = flip_points(kps, width, self.flip_pairs)
                center = np.array([width - 1 - center[0], center[1]])
        in_h, in_w = self.input_size
        crop = crop_person(np.ascontiguousarray(image), center, scale, rot, (in_h, in_w)).astype(np.float32) / 255.0
        if self.train:
            if aug["color_jitter"] > 0:
                crop = self._color_jitter(crop, rng, float(aug["color_jitter"]))
            if aug["grayscale_prob"] > 0 and rng.random() < aug["grayscale_prob"]:
                crop = np.repeat(crop @ np.array([0.299, 0.587, 0.114], np.float32)[:, None], crop.shape[2], axis=2)
            if aug["occlusion_prob"] > 0 and rng.random() < aug["occlusion_prob"]:
                oh, ow = int(rng.uniform(0.1, 0.4) * in_h), int(rng.uniform(0.1, 0.4) * in_w)
                y, x = int(rng.integers(0, in_h - oh + 1)), int(rng.integers(0, in_w - ow + 1))
                crop[y : y + oh, x : x + ow] = rng.random((oh, ow, crop.shape[2]), dtype=np.float32)
        hm_h, hm_w = self.heatmap_size
        to_heatmap = get_affine_transform(center, scale, rot, (hm_w, hm_h))
        pts = affine_points(kps[:, :2], to_heatmap)
        target, inside = render_heatmaps(pts, (hm_h, hm_w), self.sigma)
        weight = ((kps[:, 2] > 0) & inside).astype(np.float32)
        target *= weight[:, None, None]
        image_tensor = (crop - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image_tensor.transpose(2, 0, 1))),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "keypoints": torch.from_numpy(np.concatenate([pts, kps[:, 2:3]], axis=1).astype(np.float32)),
            "center": torch.from_numpy(center.astype(np.float64)),
            "scale": torch.from_numpy(scale.astype(np.float64)),
            "rotation": torch.tensor(rot, dtype=torch.float64),
            "flipped": torch.tensor(flipped),
            "image_id": torch.tensor(s["image_id"], dtype=torch.int64),
            "score": torch.tensor(s["score"], dtype=torch.float64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
