"""Training data, losses, samplers, schedules and config, against hand-computed expectations."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from models.spec import COCO_FLIP_PAIRS
from models.train.config import load_config
from models.train.data import CocoKeypoints, FashionMNIST, ImageFolder, ResumableSampler, ShardSampler, read_idx, write_idx
from models.train.loop import lr_factor
from models.train.losses import distillation_loss, heatmap_mse

# ---------------------------------------------------------------------------------------------------- IDX / Fashion-MNIST


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX written by hand: two zero bytes, type 0x08 (ubyte), ndim, big-endian dims, raw data."""
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def test_read_idx_parses_a_hand_written_file(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "x-idx3-ubyte").write_bytes(_idx_bytes(a))
    with gzip.open(tmp_path / "x-idx3-ubyte.gz", "wb") as f:
        f.write(_idx_bytes(a))
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), a)
    write_idx(tmp_path / "y.gz", a)
    with gzip.open(tmp_path / "y.gz", "rb") as f:
        assert f.read() == _idx_bytes(a)


def test_read_idx_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def _write_fmnist(root: Path, n_train: int = 8, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        if prefix == "train":
            train = (images, labels)
    return train


def test_fashion_mnist_eval_normalizes_with_the_given_statistics(tmp_path: Path) -> None:
    images, labels = _write_fmnist(tmp_path)
    ds = FashionMNIST(tmp_path, "train", train=False, mean=(0.25,), std=(0.5,))
    assert len(ds) == 8
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y == 3
    expected = (images[3].astype(np.float64) / 255.0 - 0.25) / 0.5
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    x3, _ = FashionMNIST(tmp_path, "test", train=False, in_chans=3, input_size=(32, 32))[0]
    assert x3.shape == (3, 32, 32)


def test_fashion_mnist_train_augmentation_is_a_shifted_or_mirrored_copy(tmp_path: Path) -> None:
    images, _ = _write_fmnist(tmp_path)
    ds = FashionMNIST(tmp_path, "train", train=True, mean=(0.0,), std=(1.0,), padding=2, hflip=True, seed=5)
    padded = np.pad(images[0], 2)
    candidates = []
    for dy in range(5):
        for dx in range(5):
            crop = padded[dy : dy + 28, dx : dx + 28]
            candidates += [crop, crop[:, ::-1]]
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        x = np.rint(ds[0][0][0].numpy() * 255).astype(np.uint8)
        match = [i for i, c in enumerate(candidates) if np.array_equal(c, x)]
        assert match, "the augmented image is not a 2-px shift (optionally mirrored) of the original"
        seen.add(match[0])
        ds.set_epoch(epoch)
        assert torch.equal(ds[0][0], ds[0][0])  # same (seed, epoch, index) -> same augmentation
    assert len(seen) > 1


def test_fashion_mnist_missing_files_say_where_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path, "train")


def test_image_folder_classes_labels_and_center_crop(tmp_path: Path) -> None:
    for name, value in (("cat", 50), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            img = np.full((40, 60, 3), value, dtype=np.uint8)
            img[:, :, 0] = 255  # blue in OpenCV's BGR order
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), img)
    ds = ImageFolder(tmp_path, train=False, input_size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1), resize=20)
    assert ds.classes == ("cat", "dog") and len(ds) == 4
    x, y = ds[2]
    assert y == 1 and x.shape == (3, 16, 16)
    # RGB order: red = value, green = value, blue = 255.
    np.testing.assert_allclose(x[:, 8, 8].numpy(), [200 / 255, 200 / 255, 1.0], atol=1e-6)
    xt, _ = ImageFolder(tmp_path, train=True, input_size=(16, 16), lighting=0.0)[0]
    assert xt.shape == (3, 16, 16)


# ---------------------------------------------------------------------------------------------------- COCO top-down

# Box [100.5, 50.5, 96, 128] has the 192x256 aspect; padding 1 -> center (148.5, 114.5), scale (96, 128). With a 128x96
# input the crop is the image shifted by (101, 51); the 32x24 heatmap (stride 4) sees image point p at
# u = (p_x - 148.5) / 4 + 11.5, v = (p_y - 114.5) / 4 + 15.5.
BOX = [100.5, 50.5, 96.0, 128.0]


def _kp(u: float, v: float) -> tuple[float, float]:
    return 148.5 + 4 * (u - 11.5), 114.5 + 4 * (v - 15.5)


def _coco_fixture(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray]:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image[:, :, ::-1])  # stored as BGR, read back as RGB
    kps = np.zeros((17, 3))
    kps[0] = (*_kp(11, 10), 2)  # nose -> heatmap (u=11, v=10)
    kps[1] = (*_kp(5, 20), 2)  # left eye -> (5, 20)
    kps[2] = (*_kp(15, 4), 1)  # right eye -> (15, 4), labeled but occluded (v=1) still counts
    kps[3] = (*_kp(8, 8), 0)  # unlabeled: weight 0
    kps[4] = (260.0, 20.0, 2)  # outside the crop: weight 0
    coco = {
        "images": [{"id": 7, "file_name": "img.png", "width": 320, "height": 240}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": BOX, "keypoints": kps.reshape(-1).tolist(),
             "num_keypoints": 4, "iscrowd": 0, "area": 96.0 * 128.0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 10, 10], "keypoints": [0] * 51,
             "num_keypoints": 0, "iscrowd": 0, "area": 100.0},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }  # fmt: skip
    return coco, image


def _dataset(tmp_path: Path, coco: dict[str, Any], train: bool, **kw: Any) -> CocoKeypoints:
    return CocoKeypoints(tmp_path, coco, train=train, input_size=(128, 96), mean=(0, 0, 0), std=(1, 1, 1),
                         padding=1.0, sigma=2.0, **kw)  # fmt: skip


def _peak(hm: torch.Tensor) -> tuple[int, int]:
    v, u = np.unravel_index(int(hm.argmax()), tuple(hm.shape))
    return int(u), int(v)


def test_coco_sample_crop_and_heatmap_peaks(tmp_path: Path) -> None:
    coco, image = _coco_fixture(tmp_path)
    ds = _dataset(tmp_path, coco, train=False)
    assert len(ds) == 1  # the annotation without keypoints is skipped
    s = ds[0]
    np.testing.assert_allclose(s["center"].numpy(), [148.5, 114.5])
    np.testing.assert_allclose(s["scale"].numpy(), [96.0, 128.0])
    crop = s["image"].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(crop, image[51 : 51 + 128, 101 : 101 + 96] / 255.0, atol=1e-6)
    assert s["target"].shape == (17, 32, 24)
    assert _peak(s["target"][0]) == (11, 10)
    assert _peak(s["target"][1]) == (5, 20)
    assert _peak(s["target"][2]) == (15, 4)
    assert float(s["target"][0, 10, 11]) == pytest.approx(1.0)
    assert s["target_weight"][:6].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert float(s["target"][3:].abs().sum()) == 0.0
    assert int(s["image_id"]) == 7 and float(s["score"]) == 1.0


def test_coco_flipped_sample_swaps_flip_pairs(tmp_path: Path) -> None:
    coco, _ = _coco_fixture(tmp_path)
    off = {"scale_factor": 0.0, "rotation_prob": 0.0, "color_jitter": 0.0, "hflip": True}
    ds = _dataset(tmp_path, coco, train=True, augment=off)
    plain = _dataset(tmp_path, coco, train=False)[0]
    flipped = None
    for epoch in range(20):
        ds.set_epoch(epoch)
        s = ds[0]
        if bool(s["flipped"]):
            flipped = s
            break
    assert flipped is not None
    # The crop is mirrored; the nose (no pair) mirrors in place: u -> 24 - 1 - 11 = 12.
    np.testing.assert_allclose(flipped["image"].numpy(), plain["image"].numpy()[:, :, ::-1], atol=1e-5)
    assert _peak(flipped["target"][0]) == (12, 10)
    # The left eye at (5, 20) becomes the right eye at (18, 20); the right eye at (15, 4) the left eye at (8, 4).
    assert _peak(flipped["target"][2]) == (18, 20)
    assert _peak(flipped["target"][1]) == (8, 4)
    assert (1, 2) in COCO_FLIP_PAIRS and (3, 4) in COCO_FLIP_PAIRS
    # Weights move with their keypoints: unlabeled left ear (3) -> right ear (4); outside right ear (4) -> left ear (3).
    assert flipped["target_weight"][:5].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_coco_rotation_and_scale_move_keypoints_as_computed(tmp_path: Path) -> None:
    coco, _ = _coco_fixture(tmp_path)
    aug = {"scale_factor": 0.3, "rotation": 30.0, "rotation_prob": 1.0, "color_jitter": 0.3, "hflip": False,
           "occlusion_prob": 1.0}  # fmt: skip
    ds = _dataset(tmp_path, coco, train=True, augment=aug)
    s = ds[0]
    rot, scale = float(s["rotation"]), s["scale"].numpy()
    assert rot != 0.0 and not np.allclose(scale, [96.0, 128.0])
    assert abs(scale[0] / scale[1] - 0.75) < 1e-9 and 0.7 <= scale[0] / 96.0 <= 1.3
    # Heatmap point = heatmap size / scale * R_ccw(rot) (p - c) + heatmap center, worked out here independently.
    t = math.radians(rot)
    r = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    p = np.array(_kp(11, 10)) - np.array([148.5, 114.5])
    expected = np.array([24 / scale[0], 32 / scale[1]]) * (r @ p) + np.array([11.5, 15.5])
    np.testing.assert_allclose(s["keypoints"][0, :2].numpy(), expected, atol=1e-4)
    assert _peak(s["target"][0]) == tuple(int(round(v)) for v in expected)


def test_coco_shift_moves_the_crop_within_its_bound_and_grayscale_gives_luma(tmp_path: Path) -> None:
    coco, image = _coco_fixture(tmp_path)
    off = {"scale_factor": 0.0, "rotation_prob": 0.0, "color_jitter": 0.0, "hflip": False}
    ds = _dataset(tmp_path, coco, train=True, augment={**off, "shift_factor": 0.2, "grayscale_prob": 1.0})
    centers = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        s = ds[0]
        c = s["center"].numpy()
        centers.append(c)
        # The box is 96x128 (padding 1): the center moves by at most 0.2 of it on each axis.
        assert abs(c[0] - 148.5) <= 0.2 * 96 + 1e-9 and abs(c[1] - 114.5) <= 0.2 * 128 + 1e-9
        # Keypoints follow the shifted crop: the nose sits at (11, 10) of the unshifted heatmap, 4 pixels per cell.
        expected = np.array([11.0, 10.0]) - (c - np.array([148.5, 114.5])) / 4.0
        np.testing.assert_allclose(s["keypoints"][0, :2].numpy(), expected, atol=1e-4)
        # Grey scale: every channel holds the same luma, 0.299 R + 0.587 G + 0.114 B of the crop's pixels.
        crop = s["image"].numpy()
        assert np.array_equal(crop[0], crop[1]) and np.array_equal(crop[1], crop[2])
    assert np.ptp(np.array(centers), axis=0).min() > 5.0  # it does move
    # Integer shift of the crop (the center lands on whole pixels only by chance): check luma on the unshifted one.
    still = _dataset(tmp_path, coco, train=True, augment={**off, "grayscale_prob": 1.0})[0]["image"].numpy()
    luma = image[51 : 51 + 128, 101 : 101 + 96].astype(np.float64) @ [0.299, 0.587, 0.114] / 255.0
    np.testing.assert_allclose(still[0], luma, atol=1e-5)


def test_coco_repeat_and_image_cache(tmp_path: Path) -> None:
    coco, image = _coco_fixture(tmp_path)
    aug = {"scale_factor": 0.3, "rotation": 30.0, "rotation_prob": 1.0, "hflip": True}
    plain = _dataset(tmp_path, coco, train=True, augment=aug)
    ds = _dataset(tmp_path, coco, train=True, augment=aug, repeat=3, cache_images=True)
    assert len(plain) == 1 and len(ds) == 3
    np.testing.assert_array_equal(ds.load_image(7), image)
    plain0 = plain[0]
    (tmp_path / "img.png").unlink()  # the cache answers from now on; the plain dataset would fail
    items = [ds[i] for i in range(3)]
    assert all(int(it["image_id"]) == 7 for it in items)
    for key in ("image", "target"):  # item 0 is the plain dataset's item 0; the repeats are other augmentations
        torch.testing.assert_close(items[0][key], plain0[key], rtol=0, atol=0)
    assert not torch.equal(items[0]["image"], items[1]["image"]) and not torch.equal(items[1]["image"], items[2]["image"])
    with pytest.raises(OSError, match="cannot read"):
        plain[0]
    with pytest.raises(ValueError, match="repeat"):
        _dataset(tmp_path, coco, train=True, repeat=0)


def test_coco_detection_boxes(tmp_path: Path) -> None:
    coco, _ = _coco_fixture(tmp_path)
    dets = [{"image_id": 7, "category_id": 1, "bbox": BOX, "score": 0.9},
            {"image_id": 7, "category_id": 1, "bbox": [300, 200, 100, 100], "score": 0.3},  # clipped to the image
            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.05}]  # fmt: skip
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ds = _dataset(tmp_path, coco, train=False, detections=tmp_path / "dets.json", detection_score_threshold=0.1)
    assert len(ds) == 2
    np.testing.assert_allclose(ds.samples[1]["center"], [310.0, 220.0])  # box [300, 200, 20, 40]
    assert float(ds[0]["score"]) == pytest.approx(0.9)
    assert float(ds[0]["target_weight"].sum()) == 0.0


# ---------------------------------------------------------------------------------------------------- losses


def test_heatmap_mse_weights_keypoints() -> None:
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 2.0  # squared error 4 in keypoint 0
    target[0, 1] = 1.0  # squared error 1 x 4 pixels in keypoint 1
    assert float(heatmap_mse(pred, target)) == pytest.approx((4 + 4) / 8)
    assert float(heatmap_mse(pred, target, torch.tensor([[1.0, 0.0]]))) == pytest.approx(4 / 8)


def test_distillation_loss_by_hand() -> None:
    student = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> (1/4, 3/4)
    teacher = torch.tensor([[0.0, 0.0]])  # softmax -> (1/2, 1/2)
    labels = torch.tensor([0])
    soft = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    hard = -math.log(0.25)
    assert float(distillation_loss(student, teacher, labels, 0.9, 1.0)) == pytest.approx(0.9 * soft + 0.1 * hard)
    # T = 2: student / 2 -> softmax (1 / (1 + sqrt 3), sqrt 3 / (1 + sqrt 3)), soft term scaled by T^2 = 4.
    q0 = 1 / (1 + math.sqrt(3))
    soft2 = -(0.5 * math.log(q0) + 0.5 * math.log(1 - q0))
    assert float(distillation_loss(student, teacher, labels, 0.5, 2.0)) == pytest.approx(0.5 * 4 * soft2 + 0.5 * hard)


# ---------------------------------------------------------------------------------------------------- samplers, schedules


def test_resumable_sampler_partitions_and_skips() -> None:
    data = list(range(10))
    parts = [list(ResumableSampler(data, 2, r, shuffle=True, seed=1)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5
    assert sorted(parts[0] + parts[1]) == data
    s = ResumableSampler(data, 2, 0, shuffle=True, seed=1)
    s.set_epoch(0, skip=3)
    assert list(s) == parts[0][3:] and len(s) == 2
    s.set_epoch(1)
    assert list(s) != parts[0]  # another epoch, another order
    padded = [list(ResumableSampler(list(range(3)), 2, r, shuffle=False)) for r in range(2)]
    assert padded == [[0, 2], [1, 0]]  # padded to 4 with the first index, like DistributedSampler
    assert [list(ShardSampler(list(range(5)), 2, r)) for r in range(2)] == [[0, 2, 4], [1, 3]]


def test_lr_schedules() -> None:
    assert lr_factor("linear", 0, 100) == pytest.approx(1.0)
    assert lr_factor("linear", 25, 100) == pytest.approx(0.75)
    assert lr_factor("linear", 100, 100) == pytest.approx(0.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 25, 100) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor("linear", 1, 100, warmup=4) == pytest.approx(0.5)  # (1 + 1) / 4
    assert lr_factor("linear", 52, 100, warmup=4) == pytest.approx(0.5)  # (52 - 4) / 96 of the way down
    assert lr_factor("constant", 99, 100) == 1.0


def test_config_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("task: classify\nmodel:\n  name: resnet18-small\n  overrides: {width: 16}\noptim: {lr: 0.01}\n")
    cfg = load_config("classify", path, ["optim.lr=2e-3", "model.overrides.weight_binarizer=ede", "data.root=/x/1",
                                         "epochs=3", "distill.teacher=null"])  # fmt: skip
    assert cfg["optim"]["lr"] == 2e-3 and cfg["optim"]["schedule"] == "linear"  # default kept
    assert cfg["model"]["overrides"] == {"width": 16, "weight_binarizer": "ede"}
    assert cfg["data"]["root"] == "/x/1" and cfg["epochs"] == 3 and cfg["distill"]["teacher"] is None
    with pytest.raises(ValueError, match="binpose train classify"):
        load_config("pose", path)
    with pytest.raises(ValueError, match="key=value"):
        load_config("classify", path, ["optim.lr"])


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "models/train/configs").glob("*.yaml")))
def test_bundled_configs_load_and_build(path: Path) -> None:
    import yaml

    import models

    task = yaml.safe_load(path.read_text())["task"]
    cfg = load_config(task, path)
    spec = models.get_spec(cfg["model"]["name"], **cfg["model"]["overrides"])
    assert spec.task == ("classification" if task == "classify" else "pose")
    if "imagenet" in path.name:  # the paper's recipe
        assert cfg["optim"]["lr"] == 2.5e-3 and cfg["optim"]["schedule"] == "linear" and cfg["epochs"] == 120
        assert cfg["batch_size"] == 256 and cfg["optim"]["weight_decay"] == 0.0
        assert cfg["distill"]["alpha"] == 0.9 and cfg["distill"]["temperature"] == 1.0


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    import random

    from models.train.loop import _rng_state, _set_rng_state

    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    torch.save({"rng": [_rng_state()]}, tmp_path / "s.pt")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    _set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
