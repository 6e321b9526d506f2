"""Training configuration: nested dicts with defaults per task, read from YAML and overridden by ``key=value`` pairs.

A dotted key addresses a nested entry (``optim.lr=1e-3``, ``model.overrides.weight_binarizer=ede``); the value is
parsed as YAML (numbers, booleans, null, lists ``[1, 2]``), so ``--set data.root=/data/fmnist`` stays a string.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

Config = dict[str, Any]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


_COMMON: Config = {
    "seed": 0,
    "output_dir": "runs/default",
    "epochs": 1,
    "batch_size": 32,  # global: divided among torchrun processes
    "eval_batch_size": None,  # per process; default batch_size // world_size
    "max_steps_per_epoch": None,  # cut epochs short (smoke tests)
    "model": {"name": None, "overrides": {}},
    "optim": {
        "name": "adam",  # adam | adamw | sgd
        "lr": 1e-3,
        "betas": [0.9, 0.999],
        "momentum": 0.9,  # sgd only
        "weight_decay": 0.0,  # float params except BN/bias; latent binary weights always get 0
        "schedule": "linear",  # linear | cosine | constant (per step, to 0 at the end)
        "warmup_epochs": 0.0,
        "min_lr_ratio": 0.0,
        "binarizer_lr": 1e-3,  # the learned estimators' own group
        "binarizer_schedule": "same",  # same | constant
        "grad_clip": None,
    },
    "distill": {"teacher": None, "alpha": 0.9, "temperature": 1.0},
    "amp": True,  # used on CUDA only
    "amp_dtype": "bfloat16",  # bfloat16 | float16 (float16 uses a GradScaler)
    "device": "auto",  # auto | cpu | cuda
    "sync_bn": False,
    "find_unused_parameters": False,
    "num_workers": 2,
    "num_threads": None,  # torch intra-op threads per process (torchrun sets OMP_NUM_THREADS=1 with several)
    "log_every": 20,
    "eval_every": 1,  # epochs
    "checkpoint_every_steps": None,  # also save mid-epoch (resume skips the consumed batches)
    "stop_after_steps": None,  # save and exit after this many steps in total (time-limited jobs); resume continues
    "time_budget_s": None,  # after epoch 1, cut epochs to fit this wall time (eval and saves included)
    "resume": None,  # path to a checkpoint, or "auto" (output_dir/last.pt if present)
    "init_from": None,  # a checkpoint whose weights start this run (train further with a fresh optimizer/schedule)
    "progress": True,
    "deterministic": False,
}

DEFAULTS: dict[str, Config] = {
    "classify": {
        **copy.deepcopy(_COMMON),
        "data": {
            "kind": "fashion_mnist",  # fashion_mnist | image_folder
            "root": "/usr/share/datasets/fashion-mnist",
            "train_split": "train",  # image_folder: subfolder names
            "val_split": "test",
            "augment": {
                "random_crop_padding": 2,  # fashion_mnist
                "hflip": True,
                "random_resized_crop_scale": [0.08, 1.0],  # image_folder
                "lighting": 0.1,  # AlexNet PCA lighting strength (image_folder)
                "resize": None,  # image_folder eval: resize short side (default input * 256 / 224)
            },
        },
        "label_smoothing": 0.0,
    },
    "pose": {
        **copy.deepcopy(_COMMON),
        "data": {
            "kind": "coco",
            "train_images": None,
            "train_annotations": None,
            "val_images": None,
            "val_annotations": None,
            "val_detections": None,  # COCO results file of person boxes; null = ground-truth boxes
            "detection_score_threshold": 0.0,
            "padding": 1.25,
            "sigma": 2.0,
            "repeat": 1,  # passes over the training set per epoch, each differently augmented (small sets)
            "cache_images": False,  # decode every image once, before the loader workers start
            "augment": {
                "scale_factor": 0.35,
                "rotation": 45.0,
                "rotation_prob": 0.6,
                "hflip": True,
                "color_jitter": 0.2,
                "occlusion_prob": 0.0,
                "half_body_prob": 0.0,
                "shift_factor": 0.0,  # center shift, as a fraction of the box size
                "grayscale_prob": 0.0,
            },
        },
        "eval": {"flip_test": True, "refine": "dark", "oks_nms": 0.9, "keypoint_score_threshold": 0.2},
    },
}


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> Config:
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "overrides":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(config: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {key!r}: {part!r} is a {type(child).__name__}, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value, e.g. optim.lr=1e-3")
    key, raw = item.split("=", 1)
    value = _yaml(raw) if raw.strip() else ""
    return key.strip(), value


def load_config(task: str, path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Defaults of ``task`` <- the YAML file <- ``key=value`` overrides, in that order."""
    if task not in DEFAULTS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DEFAULTS)}")
    config = copy.deepcopy(DEFAULTS[task])
    if path is not None:
        with open(path) as f:
            loaded = _yaml(f.read()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping, got {type(loaded).__name__}")
        file_task = loaded.pop("task", task)
        if file_task != task:
            raise ValueError(f"{path} is a {file_task!r} config; run `binpose train {file_task}` instead")
        config = deep_merge(config, loaded)
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(config, key, value)
    config["task"] = task
    if not config["model"].get("name"):
        raise ValueError("the config names no model: set model.name (see `binpose models`)")
    return config
