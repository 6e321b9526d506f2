"""The committed vtest_pose dataset (scripts/build_pose_dataset.py) is valid COCO-17 keypoint data with a clean time split.

Fast and offline: reads the JSON with pycocotools; mediapipe is not needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from models.spec import COCO_KEYPOINT_NAMES

ROOT = Path(__file__).resolve().parents[2] / "datasets" / "vtest_pose"
SPLITS = ("train", "val")
VTEST_FRAMES = 795
COCO_KEYPOINTS = list(COCO_KEYPOINT_NAMES)


def _ann_file(split: str) -> Path:
    return ROOT / "annotations" / f"person_keypoints_{split}.json"


@pytest.fixture(scope="module")
def cocos() -> dict[str, COCO]:
    out = {}
    for split in SPLITS:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            out[split] = COCO(str(_ann_file(split)))
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, dict]:
    return {split: json.loads(_ann_file(split).read_text()) for split in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_loads_and_is_not_empty(cocos: dict[str, COCO], split: str) -> None:
    c = cocos[split]
    assert len(c.getImgIds()) >= (50 if split == "val" else 200)
    assert len(c.getAnnIds()) >= (150 if split == "val" else 600)
    # every listed image carries at least one pose (only person frames are stored)
    assert all(c.getAnnIds(imgIds=[i]) for i in c.getImgIds())


@pytest.mark.parametrize("split", SPLITS)
def test_category_is_coco_person(cocos: dict[str, COCO], split: str) -> None:
    cats = cocos[split].loadCats(cocos[split].getCatIds())
    assert len(cats) == 1 and cats[0]["id"] == 1 and cats[0]["name"] == "person"
    assert cats[0]["keypoints"] == COCO_KEYPOINTS
    sk = np.array(cats[0]["skeleton"])
    assert sk.shape == (19, 2) and sk.min() == 1 and sk.max() == 17  # 1-based as in COCO


@pytest.mark.parametrize("split", SPLITS)
def test_annotations_are_well_formed(cocos: dict[str, COCO], split: str) -> None:
    c = cocos[split]
    for ann in c.loadAnns(c.getAnnIds()):
        img = c.imgs[ann["image_id"]]
        w_img, h_img = img["width"], img["height"]
        k = np.asarray(ann["keypoints"], dtype=np.float64)
        assert k.shape == (51,), ann["id"]
        k = k.reshape(17, 3)
        v = k[:, 2]
        assert set(np.unique(v)) <= {0, 1, 2}
        lab = v > 0
        assert ann["num_keypoints"] == int(lab.sum()) >= 1
        # labelled keypoints lie in the image; unlabelled ones are (0, 0, 0) as in COCO
        assert (k[lab, 0] >= 0).all() and (k[lab, 0] <= w_img - 1).all(), ann["id"]
        assert (k[lab, 1] >= 0).all() and (k[lab, 1] <= h_img - 1).all(), ann["id"]
        assert (k[~lab, :2] == 0).all()
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= w_img + 1e-6 and y + h <= h_img + 1e-6, ann["id"]
        # the box holds the labelled keypoints
        assert (k[lab, 0] >= x - 1e-6).all() and (k[lab, 0] <= x + w + 1e-6).all()
        assert (k[lab, 1] >= y - 1e-6).all() and (k[lab, 1] <= y + h + 1e-6).all()
        assert ann["area"] > 0 and ann["iscrowd"] == 0 and ann["category_id"] == 1
        # the teacher's per-keypoint confidences are kept
        s = np.asarray(ann["keypoint_scores"])
        assert s.shape == (17,) and (s >= 0).all() and (s <= 1).all()


@pytest.mark.parametrize("split", SPLITS)
def test_images_are_vtest_frames_on_disk(raw: dict[str, dict], split: str) -> None:
    ids = [im["id"] for im in raw[split]["images"]]
    assert len(ids) == len(set(ids))
    for im in raw[split]["images"]:
        # only frames of vtest.avi: the still photos stay out of training and model selection
        m = re.fullmatch(r"vtest_(\d{6})\.jpg", im["file_name"])
        assert m and int(m.group(1)) == im["frame_index"]
        assert (im["width"], im["height"]) == (768, 576)
        p = ROOT / "images" / split / im["file_name"]
        assert p.is_file() and p.stat().st_size > 10_000


def test_time_split_val_is_last_fifth_and_disjoint(raw: dict[str, dict]) -> None:
    train = [im["frame_index"] for im in raw["train"]["images"]]
    val = [im["frame_index"] for im in raw["val"]["images"]]
    val_start = round(VTEST_FRAMES * 0.8)
    assert raw["val"]["info"]["val_start_frame"] == val_start
    assert raw["val"]["info"]["frames_total"] == VTEST_FRAMES
    assert max(train) < val_start <= min(val)
    assert max(val) < VTEST_FRAMES
    assert not set(train) & set(val)
    assert not {im["id"] for im in raw["train"]["images"]} & {im["id"] for im in raw["val"]["images"]}
    # val covers the last fifth of the video, not a corner of it
    assert min(val) - val_start < 20 and VTEST_FRAMES - max(val) < 20
