"""Classification data: Fashion-MNIST from its IDX files and ImageFolder trees (``root/<class>/<image>``).

Images are normalized with the model spec's mean and std (the service normalizes the same way), returned as float32
CHW tensors with an int64 label.
"""

from __future__ import annotations

import gzip
import logging
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

_IDX_DTYPES: dict[int, Any] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}  # fmt: skip
# AlexNet's PCA lighting noise: eigenvalues and eigenvectors of ImageNet's RGB covariance.
_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])


def read_idx(path: str | Path) -> NDArray[np.generic]:
    """Read an IDX file (LeCun's MNIST format; gzipped if the name ends in .gz)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=_IDX_DTYPES[dtype_code], offset=4 + 4 * ndim)
    if array.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape}, payload holds {array.size} values")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def write_idx(path: str | Path, array: NDArray[Any]) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz); used by tests and data tools."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(
        f"{root / stem}(.gz) not found: point data.root at the Fashion-MNIST IDX files "
        "(Debian: apt-get install dataset-fashion-mnist -> /usr/share/datasets/fashion-mnist)"
    )


def _normalize(image: NDArray[np.floating], mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """HxWxC float in [0, 1] -> CHW tensor, (x - mean) / std per channel."""
    x = (image - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


class _EpochSeeded:
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


class FashionMNIST(_EpochSeeded, Dataset[tuple[Tensor, int]]):
    """Fashion-MNIST (60k train / 10k test, 28x28 grey) from ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Training augmentation: zero-pad by ``padding`` and take a random 28x28 crop, random horizontal flip. Images are
    resized to ``input_size`` if it is not 28x28 and replicated to ``in_chans`` channels."""

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        train: bool | None = None,
        input_size: Sequence[int] = (28, 28),
        in_chans: int = 1,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        padding: int = 2,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        prefix = {"train": "train", "test": "t10k", "t10k": "t10k", "val": "t10k"}.get(split)
        if prefix is None:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        root = Path(root)
        self.images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        self.labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self.labels):
            raise ValueError(f"{root}: {self.images.shape} images for {self.labels.shape} labels")
        self.train = (split == "train") if train is None else train
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_chans, self.mean, self.std = in_chans, tuple(mean), tuple(std)
        self.padding, self.hflip, self.seed = padding, hflip, seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        img = self.images[index]
        if self.train:
            rng = self._rng(index)
            if self.padding:
                p = self.padding
                padded = np.pad(img, p)
                y, x = rng.integers(0, 2 * p + 1, size=2)
                img = padded[y : y + img.shape[0], x : x + img.shape[1]]
            if self.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
        if img.shape != self.input_size:
            img = cv2.resize(np.ascontiguousarray(img), self.input_size[::-1], interpolation=cv2.INTER_LINEAR)
        x = np.repeat(img.astype(np.float32)[:, :, None] / 255.0, self.in_chans, axis=2)
        return _normalize(x, self.mean, self.std), int(self.labels[index])


class ImageFolder(_EpochSeeded, Dataset[tuple[Tensor, int]]):
    """``root/<class name>/<image>``; classes are the sorted subfolder names, labels their positions.

    Training: random-resized crop (area fraction ``scale``, aspect 3/4..4/3), horizontal flip, AlexNet PCA lighting.
    Evaluation: resize the short side to ``resize`` (default input * 256 / 224), center crop."""

    def __init__(
        self,
        root: str | Path,
        train: bool,
        input_size: Sequence[int] = (224, 224),
        in_chans: int = 3,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        lighting: float = 0.1,
        resize: int | None = None,
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist (expected root/<class>/<image>)")
        self.classes = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
        if not self.classes:
            raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")
        self.samples: list[tuple[Path, int]] = [
            (f, label)
            for label, name in enumerate(self.classes)
            for f in sorted((root / name).rglob("*"))
            if f.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not self.samples:
            raise ValueError(f"{root}: no images with extensions {IMAGE_EXTENSIONS}")
        self.train = train
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_chans, self.mean, self.std = in_chans, tuple(mean), tuple(std)
        self.scale, self.hflip, self.lighting, self.seed = tuple(scale), hflip, lighting, seed
        self.resize = resize or int(round(min(self.input_size) * 256 / 224))

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: Path) -> NDArray[Any]:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if self.in_chans == 1 else cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"cannot decode image {path}")
        if self.in_chans == 1:
            return img[:, :, None]
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def _random_resized_crop(self, img: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
        h, w = img.shape[:2]
        for _ in range(10):
            area = h * w * rng.uniform(self.scale[0], self.scale[1])
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                return img[y : y + ch, x : x + cw]
        side = min(h, w)  # fallback: central square
        y, x = (h - side) // 2, (w - side) // 2
        return img[y : y + side, x : x + side]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        img = self._load(path)
        out_h, out_w = self.input_size
        if self.train:
            rng = self._rng(index)
            img = self._random_resized_crop(img, rng)
            img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR).reshape(out_h, out_w, -1)
            if self.hflip and rng.random() < 0.5:
                img = img[:, ::-1]
            x = img.astype(np.float32) / 255.0
            if self.lighting > 0 and x.shape[2] == 3:
                alpha = rng.normal(0.0, self.lighting, size=3)
                x = x + (_EIGVEC @ (alpha * _EIGVAL)).astype(np.float32)[None, None, :]
        else:
            h, w = img.shape[:2]
            f = self.resize / min(h, w)
            rw, rh = max(out_w, int(round(w * f))), max(out_h, int(round(h * f)))
            img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR).reshape(rh, rw, -1)
            y, x0 = (rh - out_h) // 2, (rw - out_w) // 2
            x = img[y : y + out_h, x0 : x0 + out_w].astype(np.float32) / 255.0
        return _normalize(x, self.mean, self.std), label
