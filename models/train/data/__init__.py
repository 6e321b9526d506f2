"""Datasets: Fashion-MNIST (IDX files), ImageFolder trees, COCO keypoints top-down; samplers that resume mid-epoch.

Augmentation randomness is drawn from ``numpy.random.default_rng([seed, epoch, index])`` inside ``__getitem__``, so a
sample's augmentation depends only on (seed, epoch, index): identical across worker counts, processes and resumes.
"""

from .classification import FASHION_MNIST_CLASSES, FashionMNIST, ImageFolder, read_idx, write_idx
from .coco import CocoKeypoints
from .samplers import ResumableSampler, ShardSampler

__all__ = [
    "FASHION_MNIST_CLASSES",
    "CocoKeypoints",
    "FashionMNIST",
    "ImageFolder",
    "ResumableSampler",
    "ShardSampler",
    "read_idx",
    "write_idx",
]
