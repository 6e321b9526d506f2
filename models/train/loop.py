"""The trainer: one loop for classification and pose, single process or torchrun (DistributedDataParallel).

- Optimizer (Adam by default) with three parameter groups: float weights (``optim.weight_decay``), parameters that
  never decay (latent binary weights, BatchNorm, biases, PReLU slopes) and the learned binarizers' parameters
  (``optim.binarizer_lr``). The learning rate follows a per-step linear or cosine decay to 0 after optional warmup.
- Optional distillation from a float teacher checkpoint (``distill.teacher``): soft cross-entropy for classifiers,
  heatmap MSE to the teacher's heatmaps for pose.
- Mixed precision on CUDA (bfloat16, or float16 with a GradScaler); DDP with nccl on GPU, gloo on CPU.
- Checkpoints (``output_dir/last.pt``, ``best.pt``) hold everything needed to resume bit for bit: model, optimizer,
  scheduler, scaler, every rank's RNG states, epoch, global step and the batches consumed in the current epoch.
- Metrics go to ``output_dir/metrics.jsonl`` (one JSON object per line, ``kind`` = "train" or "eval") and a plot of
  the curves to ``output_dir/curves.png``; progress bars (tqdm) on rank 0.

Checkpoint format (a dict saved with ``torch.save``)::

    format: "binpose-checkpoint", format_version: 1
    model: registered model name             overrides: dict given to models.build(model, **overrides)
    state_dict: the model's state dict (CPU)  spec: ModelSpec.to_dict()
    metrics: last evaluation metrics          config: the full training config
    optimizer, scheduler, scaler: state dicts epoch: epochs completed; step: optimizer steps done
    step_in_epoch: batches done in ``epoch``  rng: per-rank RNG states; world_size
    best: {"metric", "value"}                 created: ISO time; torch_version

``load_checkpoint_model(path)`` rebuilds the network from ``model``, ``overrides`` and ``state_dict``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import models
from models.binarizers import (
    binarizer_parameters,
    latent_weight_parameters,
    mlp_slope_at_zero,
    set_binarizer_progress,
)

from .config import Config
from .data import CocoKeypoints, FashionMNIST, ImageFolder, ResumableSampler, ShardSampler
from .evaluate import evaluate_classifier, evaluate_pose
from .losses import distillation_loss, heatmap_mse

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "binpose-checkpoint"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_pref: str = "auto") -> tuple[DistEnv, torch.device]:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); join the process group (nccl on GPU, gloo on
    CPU) when there is more than one process. Returns the environment and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    env = DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available; set device=cpu or auto")
    device = torch.device("cuda", env.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if env.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return env, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values, so checkpoints load with ``torch.load(weights_only=True)``."""
    version, mt, gauss = random.getstate()
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = np_state
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- checkpoints
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically (temporary file, then rename), so an interrupted save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint holds only tensors and plain containers (no pickled code)."""
    ckpt: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a binpose checkpoint (a dict with 'model', 'overrides', 'state_dict')")
    return ckpt


def load_checkpoint_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network a checkpoint holds: ``models.build(ckpt["model"], **ckpt["overrides"])`` + its weights."""
    ckpt = load_checkpoint(path, map_location)
    model = models.build(ckpt["model"], **ckpt.get("overrides", {}))
    model.load_state_dict(ckpt["state_dict"])
    return model


# ---------------------------------------------------------------------------------------------------- optimization
def param_groups(model: nn.Module, optim_cfg: Config) -> list[dict[str, Any]]:
    """float weights (decay) | no decay (latent binary weights, 1-d params: BN, biases, PReLU) | binarizers."""
    binarizer_ids = {id(p) for p in binarizer_parameters(model)}
    latent_ids = {id(p) for p in latent_weight_parameters(model)}
    decay, no_decay, binarizer = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in binarizer_ids:
            binarizer.append(p)
        elif id(p) in latent_ids or p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": float(optim_cfg["weight_decay"]), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if binarizer:
        groups.append({"params": binarizer, "weight_decay": 0.0, "lr": float(optim_cfg["binarizer_lr"]),
                       "name": "binarizer"})  # fmt: skip
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim_cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(model, optim_cfg)
    name, lr = optim_cfg["name"].lower(), float(optim_cfg["lr"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(optim_cfg["betas"]))  # type: ignore[arg-type]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg["betas"]))  # type: ignore[arg-type]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg["momentum"]), nesterov=True)
    raise ValueError(f"optim.name must be adam, adamw or sgd; got {name!r}")


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0, min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``: linear warmup, then linear or cosine
    decay from 1 to ``min_ratio`` at ``total``, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
    if schedule == "linear":
        return min_ratio + (1.0 - min_ratio) * (1.0 - t)
    if schedule == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"optim.schedule must be linear, cosine or constant; got {schedule!r}")


def _scheduled(schedule: str, step: int, total: int, warmup: int, min_ratio: float) -> float:
    return lr_factor(schedule, step, total, warmup, min_ratio)


def schedule_lambdas(
    optimizer: torch.optim.Optimizer, optim_cfg: Config, total_steps: int, steps_per_epoch: int
) -> list[Callable[[int], float]]:
    """One learning-rate multiplier per parameter group of ``optimizer`` (see ``lr_factor``)."""
    warmup = int(round(float(optim_cfg.get("warmup_epochs") or 0) * steps_per_epoch))
    main = optim_cfg["schedule"]
    min_ratio = float(optim_cfg.get("min_lr_ratio") or 0.0)
    lambdas: list[Callable[[int], float]] = []
    for group in optimizer.param_groups:
        sched = main
        if group.get("name") == "binarizer" and optim_cfg.get("binarizer_schedule", "same") != "same":
            sched = optim_cfg["binarizer_schedule"]
        lambdas.append(functools.partial(_scheduled, sched, total=total_steps, warmup=warmup, min_ratio=min_ratio))
    return lambdas


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim_cfg: Config, total_steps: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_lambdas(optimizer, optim_cfg, total_steps, steps_per_epoch))


# ---------------------------------------------------------------------------------------------------- tasks
SizedDataset = Any  # a map-style Dataset with __len__ (torch's Dataset type does not declare it)


class Task:
    """What differs between classification and pose: data, loss, evaluation."""

    main_metric = "loss"

    def __init__(self, config: Config) -> None:
        self.config = config

    def datasets(self, spec: Any) -> tuple[SizedDataset, SizedDataset | None]:
        raise NotImplementedError

    def inputs(self, batch: Any, device: torch.device) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def loss(self, output: Tensor, extra: Any, teacher_output: Tensor | None) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device, epoch: int) -> dict[str, float]:
        raise NotImplementedError


class ClassifyTask(Task):
    main_metric = "top1"

    def datasets(self, spec: Any) -> tuple[SizedDataset, SizedDataset | None]:
        data, aug, seed = self.config["data"], self.config["data"]["augment"], int(self.config["seed"])
        common = {"input_size": spec.input_size, "in_chans": spec.in_chans, "mean": spec.mean, "std": spec.std}
        if data["kind"] == "fashion_mnist":
            train = FashionMNIST(data["root"], data["train_split"], train=True, padding=int(aug["random_crop_padding"]),
                                 hflip=bool(aug["hflip"]), seed=seed, **common)  # fmt: skip
            val = FashionMNIST(data["root"], data["val_split"], train=False, **common) if data["val_split"] else None
            return train, val
        if data["kind"] == "image_folder":
            root = Path(data["root"])
            train_if = ImageFolder(root / data["train_split"], train=True, scale=aug["random_resized_crop_scale"],
                                   hflip=bool(aug["hflip"]), lighting=float(aug["lighting"]), seed=seed,
                                   **common)  # fmt: skip
            val_if = None
            if data["val_split"]:
                val_if = ImageFolder(root / data["val_split"], train=False, resize=aug.get("resize"), **common)
                if val_if.classes != train_if.classes:
                    raise ValueError(f"{root}: the {data['train_split']} and {data['val_split']} class folders differ")
            return train_if, val_if
        raise ValueError(f"data.kind for classification must be fashion_mnist or image_folder; got {data['kind']!r}")

    def inputs(self, batch: Any, device: torch.device) -> tuple[Tensor, Any]:
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def loss(self, output: Tensor, extra: Any, teacher_output: Tensor | None) -> Tensor:
        smoothing = float(self.config.get("label_smoothing") or 0.0)
        if teacher_output is not None:
            d = self.config["distill"]
            return distillation_loss(output, teacher_output, extra, float(d["alpha"]), float(d["temperature"]),
                                     smoothing)  # fmt: skip
        return nn.functional.cross_entropy(output.float(), extra, label_smoothing=smoothing)

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device, epoch: int) -> dict[str, float]:
        return evaluate_classifier(model, loader, device)


class PoseTask(Task):
    main_metric = "AP"

    def datasets(self, spec: Any) -> tuple[SizedDataset, SizedDataset | None]:
        data, seed = self.config["data"], int(self.config["seed"])
        if not data.get("train_images") or not data.get("train_annotations"):
            raise ValueError("pose training needs data.train_images and data.train_annotations (COCO keypoints JSON)")
        common = {"input_size": spec.input_size, "heatmap_size": spec.heatmap_size,
                  "num_keypoints": spec.num_keypoints, "flip_pairs": spec.flip_pairs, "mean": spec.mean,
                  "std": spec.std, "sigma": float(data["sigma"]), "padding": float(data["padding"]),
                  "seed": seed}  # fmt: skip
        train = CocoKeypoints(data["train_images"], data["train_annotations"], train=True, augment=data["augment"],
                              repeat=int(data.get("repeat") or 1), cache_images=bool(data.get("cache_images")),
                              **common)  # fmt: skip
        val = None
        if data.get("val_images") and data.get("val_annotations"):
            val = CocoKeypoints(data["val_images"], data["val_annotations"], train=False,
                                detections=data.get("val_detections"),
                                detection_score_threshold=float(data.get("detection_score_threshold") or 0.0),
                                cache_images=bool(data.get("cache_images")), **common)  # fmt: skip
        self.flip_pairs = spec.flip_pairs
        return train, val

    def inputs(self, batch: Any, device: torch.device) -> tuple[Tensor, Any]:
        return batch["image"].to(device, non_blocking=True), (
            batch["target"].to(device, non_blocking=True),
            batch["target_weight"].to(device, non_blocking=True),
        )

    def loss(self, output: Tensor, extra: Any, teacher_output: Tensor | None) -> Tensor:
        target, weight = extra
        loss = heatmap_mse(output, target, weight)
        if teacher_output is not None:
            alpha = float(self.config["distill"]["alpha"])
            loss = (1.0 - alpha) * loss + alpha * heatmap_mse(output, teacher_output.float(), None)
        return loss

    def evaluate(self, model: nn.Module, loader: DataLoader[Any], device: torch.device, epoch: int) -> dict[str, float]:
        ev, data = self.config["eval"], self.config["data"]
        return evaluate_pose(
            model, loader, device, data["val_annotations"], self.flip_pairs, flip_test=bool(ev["flip_test"]),
            refine=ev["refine"], sigma=float(data["sigma"]), oks_nms_threshold=ev.get("oks_nms"),
            keypoint_score_threshold=float(ev["keypoint_score_threshold"]),
            results_path=Path(self.config["output_dir"]) / f"results_val_epoch{epoch + 1}.json",
        )  # fmt: skip


TASKS: dict[str, type[Task]] = {"classify": ClassifyTask, "pose": PoseTask}


# ---------------------------------------------------------------------------------------------------- metrics
class MetricsLog:
    """Append-only JSONL on rank 0; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def plot_curves(records: list[dict[str, Any]], path: Path, main_metric: str) -> None:
    """Training loss and learning rate by step, evaluation metric by epoch, as one PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
        axes[2].plot([r["step"] for r in train], [r["lr"] for r in train], lw=1, label="lr")
        if any("binarizer_lr" in r for r in train):
            axes[2].plot([r["step"] for r in train], [r.get("binarizer_lr", np.nan) for r in train], lw=1,
                         label="binarizer lr")  # fmt: skip
        axes[2].legend()
    if evals:
        axes[1].plot([r["epoch"] for r in evals], [r.get(main_metric, np.nan) for r in evals], marker="o",
                     label=f"val {main_metric}")  # fmt: skip
        axes[1].legend()
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title=f"validation {main_metric}", xlabel="epoch")
    axes[2].set(title="learning rate", xlabel="step")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Build everything from a config (see models.train.config), then ``fit()``."""

    def __init__(self, config: Config) -> None:
        self._t_start = time.perf_counter()
        self.config = config
        self.env, self.device = setup_distributed(config.get("device", "auto"))
        if config.get("num_threads"):
            torch.set_num_threads(int(config["num_threads"]))
        if config.get("deterministic"):
            torch.use_deterministic_algorithms(True)
        seed_everything(int(config["seed"]))
        self.task = TASKS[config["task"]](config)
        self.out_dir = Path(config["output_dir"])
        self.model_name = config["model"]["name"]
        self.overrides: dict[str, Any] = dict(config["model"].get("overrides") or {})
        model = models.build(self.model_name, **self.overrides)
        self.train_set, self.val_set = self.task.datasets(model.spec)
        model = self._match_classes(model)
        self.spec: models.ModelSpec = model.spec  # type: ignore[assignment]
        seed_everything(int(config["seed"]))  # same init whatever the dataset setup consumed
        model = models.build(self.model_name, **self.overrides)
        if config.get("init_from"):
            self._init_from(model, Path(config["init_from"]))
        model = model.to(self.device)
        if config.get("sync_bn") and self.env.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model

        batch = int(config["batch_size"])
        if batch % self.env.world_size:
            raise ValueError(f"batch_size {batch} (global) is not divisible by the {self.env.world_size} processes")
        self.local_batch = batch // self.env.world_size
        self.sampler = ResumableSampler(self.train_set, self.env.world_size, self.env.rank, True, int(config["seed"]))
        workers = int(config.get("num_workers") or 0)
        pin = self.device.type == "cuda"
        self.train_loader: DataLoader[Any] = DataLoader(
            self.train_set, batch_size=self.local_batch, sampler=self.sampler, num_workers=workers, drop_last=True,
            pin_memory=pin)  # fmt: skip
        if len(self.train_set) < batch:
            raise ValueError(f"the training set has {len(self.train_set)} samples, fewer than one batch ({batch})")
        self.val_loader: DataLoader[Any] | None = None
        if self.val_set is not None:
            self.val_loader = DataLoader(
                self.val_set, batch_size=int(config.get("eval_batch_size") or self.local_batch),
                sampler=ShardSampler(self.val_set, self.env.world_size, self.env.rank), num_workers=workers,
                pin_memory=pin)  # fmt: skip
        full = len(self.train_set) // self.env.world_size // self.local_batch
        limit = config.get("max_steps_per_epoch")
        self.steps_per_epoch = min(full, int(limit)) if limit else full
        self.epochs = int(config["epochs"])
        self.total_steps = self.steps_per_epoch * self.epochs

        self.optimizer = build_optimizer(self.model, config["optim"])
        self.scheduler = build_scheduler(self.optimizer, config["optim"], self.total_steps, self.steps_per_epoch)
        self.use_amp = bool(config.get("amp")) and self.device.type == "cuda"
        self.amp_dtype = torch.float16 if config.get("amp_dtype") == "float16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.teacher = self._load_teacher()
        self.ddp: nn.Module = self.model
        if self.env.distributed:
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(config.get("find_unused_parameters")))  # fmt: skip

        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.metrics: dict[str, float] = {}
        self.best: dict[str, Any] = {"metric": self.task.main_metric, "value": None}
        self.log = MetricsLog(self.out_dir / "metrics.jsonl", self.env.is_main)
        resume = config.get("resume")
        if resume == "auto":
            resume = self.out_dir / "last.pt" if (self.out_dir / "last.pt").exists() else None
        if resume:
            self._resume(Path(resume))
        elif self.env.is_main and self.log.path.exists():
            self.log.path.unlink()  # a fresh run in an old directory starts a fresh log
        if self.env.is_main:
            n_params = sum(p.numel() for p in self.model.parameters())
            logger.info("%s: %d parameters, %d train samples, %d steps/epoch x %d epochs, %d process(es) on %s",
                        self.model_name, n_params, len(self.train_set), self.steps_per_epoch, self.epochs,
                        self.env.world_size, self.device)  # fmt: skip

    # ------------------------------------------------------------------------------------------------ setup helpers
    def _match_classes(self, model: nn.Module) -> nn.Module:
        """Give a classifier the dataset's class names (and count) unless the config fixed them."""
        classes = getattr(self.train_set, "classes", None)
        if self.config["task"] != "classify" or not classes or "class_names" in self.overrides:
            return model
        if "num_classes" in self.overrides and int(self.overrides["num_classes"]) != len(classes):
            raise ValueError(f"model.overrides.num_classes={self.overrides['num_classes']} but the data has "
                             f"{len(classes)} classes")  # fmt: skip
        self.overrides["num_classes"] = len(classes)
        self.overrides["class_names"] = list(classes)
        return models.build(self.model_name, **self.overrides)

    def _init_from(self, model: nn.Module, path: Path) -> None:
        """Start from another run's weights (training further with a new schedule); the optimizer starts afresh."""
        ckpt = load_checkpoint(path)
        if ckpt["model"] != self.model_name:
            raise ValueError(f"init_from {path}: it holds {ckpt['model']!r}, this run trains {self.model_name!r}")
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        # a float twin may start its binary twin (two-stage training): only the binary-only tensors (activation
        # thresholds, learned estimators) then keep their initial values; anything else missing is an error
        binary_only = [k for k in missing if ".threshold." in k or "_binarizer." in k]
        if unexpected or len(binary_only) != len(missing):
            raise ValueError(f"init_from {path}: weights do not match {self.model_name!r} with these overrides "
                             f"(missing {sorted(set(missing) - set(binary_only))[:5]}, unexpected {unexpected[:5]})")
        if self.env.is_main:
            logger.info("initialized from %s (its metrics: %s)%s", path, ckpt.get("metrics"),
                        f"; {len(binary_only)} binary-only tensors keep their init" if binary_only else "")

    def _load_teacher(self) -> nn.Module | None:
        path = self.config["distill"].get("teacher")
        if not path:
            return None
        teacher = load_checkpoint_model(path).to(self.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if self.env.is_main:
            logger.info("distilling from %s (alpha %.2f, T %.1f)", path, self.config["distill"]["alpha"],
                        self.config["distill"]["temperature"])  # fmt: skip
        return teacher

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=self.amp_dtype)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        rng = _rng_state()
        rngs: list[Any] = [rng]
        if self.env.distributed:
            rngs = [None] * self.env.world_size
            dist.all_gather_object(rngs, rng)
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "model": self.model_name, "overrides": self.overrides, "state_dict": state,
            "spec": self.spec.to_dict(), "metrics": dict(self.metrics), "config": self.config,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epoch, "step": self.step,
            "step_in_epoch": self.step_in_epoch, "rng": rngs, "world_size": self.env.world_size, "best": self.best,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": str(torch.__version__),
        }  # fmt: skip

    def save(self, name: str = "last.pt") -> Path | None:
        ckpt = self.checkpoint()  # every rank takes part (RNG gather)
        path = self.out_dir / name
        if self.env.is_main:
            save_checkpoint(path, ckpt)
        return path if self.env.is_main else None

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt["model"] != self.model_name:
            raise ValueError(f"{path} holds {ckpt['model']!r}, the config trains {self.model_name!r}")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.step_in_epoch = int(ckpt["epoch"]), int(ckpt["step"]), int(ckpt["step_in_epoch"])
        self.metrics, self.best = dict(ckpt.get("metrics", {})), dict(ckpt.get("best", self.best))
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.env.world_size:
            _set_rng_state(rngs[self.env.rank])
        elif self.env.is_main:
            logger.warning("%s was saved by %d processes, resuming with %d: RNG states are not restored",
                           path, len(rngs), self.env.world_size)  # fmt: skip
        self.log.truncate_after(self.step)
        if self.env.is_main:
            logger.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # ------------------------------------------------------------------------------------------------ training
    def _batches(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * self.local_batch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(self.epoch)
        for i, batch in enumerate(self.train_loader, start=self.step_in_epoch):
            if i >= self.steps_per_epoch:
                break
            yield batch

    def train_step(self, batch: Any) -> float:
        self.ddp.train()
        set_binarizer_progress(self.model, self.step / max(self.total_steps, 1))
        inputs, extra = self.task.inputs(batch, self.device)
        with self._autocast():
            output = self.ddp(inputs)
            teacher_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_out = self.teacher(inputs)
            loss = self.task.loss(output, extra, teacher_out)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}: lower optim.lr or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        clip = self.config["optim"].get("grad_clip")
        if clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), float(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.step_in_epoch += 1
        return float(loss.detach())

    def _lrs(self) -> dict[str, float]:
        out = {}
        for g in self.optimizer.param_groups:
            if g.get("name") == "binarizer":
                out["binarizer_lr"] = float(g["lr"])
            else:
                out["lr"] = float(g["lr"])
        return out

    def _sync_buffers(self) -> None:
        """DDP broadcasts rank 0's buffers (BatchNorm running statistics) at the start of each forward, so after the
        last step of an epoch every rank holds its own; copy rank 0's so evaluation and checkpoints agree."""
        for buf in self.model.buffers():
            dist.broadcast(buf, src=0)

    def _fit_time_budget(self, epoch_seconds: float) -> None:
        """After the first epoch (evaluated, saved): cut ``epochs`` so that the run ends within ``time_budget_s`` of
        wall time counted from the trainer's start (a GPU lease, a CI slot), and fit the learning-rate schedule to the
        new length, so that it still decays to its end."""
        budget = self.config.get("time_budget_s")
        if not budget or self.epoch != 1:
            return
        remaining = float(budget) - (time.perf_counter() - self._t_start)
        fit = max(1, 1 + int(remaining / max(epoch_seconds, 1e-9)))
        if self.env.distributed:  # every process must agree on the length (and all take part in the broadcast)
            t = torch.tensor([fit], dtype=torch.int64, device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(t, src=0)
            fit = int(t.item())
        if fit >= self.epochs:
            return
        if self.env.is_main:
            logger.info("time budget %.0f s: %d epochs of %.1f s fit, not %d; the schedule follows",
                        float(budget), fit, epoch_seconds, self.epochs)  # fmt: skip
        self.epochs = fit
        self.total_steps = self.steps_per_epoch * self.epochs
        self.scheduler.lr_lambdas = schedule_lambdas(self.optimizer, self.config["optim"], self.total_steps,
                                                     self.steps_per_epoch)  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        return self.task.evaluate(self.model, self.val_loader, self.device, self.epoch)

    def fit(self) -> dict[str, float]:
        """Train to ``epochs``; returns the last evaluation metrics."""
        from tqdm import tqdm

        log_every = int(self.config.get("log_every") or 20)
        ckpt_every = self.config.get("checkpoint_every_steps")
        eval_every = int(self.config.get("eval_every") or 1)
        stop_after = self.config.get("stop_after_steps")
        budget = self.config.get("time_budget_s")  # epoch 1 is evaluated so that its time is a fair estimate
        while self.epoch < self.epochs:
            totals = torch.zeros(2, dtype=torch.float64)
            bar = tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch + 1}/{self.epochs}",
                       disable=not (self.env.is_main and self.config.get("progress", True)), dynamic_ncols=True,
                       leave=False)  # fmt: skip
            t0 = time.perf_counter()
            for batch in self._batches():
                loss = self.train_step(batch)
                totals += torch.tensor([loss, 1.0], dtype=torch.float64)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                    rec = {"kind": "train", "epoch": self.epoch + 1, "step": self.step, "loss": loss, **self._lrs(),
                           "samples_per_s": totals[1].item() * self.local_batch * self.env.world_size
                           / max(time.perf_counter() - t0, 1e-9)}  # fmt: skip
                    slope = mlp_slope_at_zero(self.model)
                    if slope is not None:
                        rec["mlp_slope0"] = slope
                    self.log.write(rec)
                if self.step_in_epoch < self.steps_per_epoch:
                    if stop_after and self.step >= int(stop_after):
                        bar.close()
                        self.save("last.pt")
                        if self.env.is_main:
                            logger.info("stopping at step %d (stop_after_steps); resume with --set resume=auto",
                                        self.step)  # fmt: skip
                        return self.metrics
                    if ckpt_every and self.step % int(ckpt_every) == 0:
                        self.save("last.pt")
            bar.close()
            if self.env.distributed:
                dist.all_reduce(totals)
                self._sync_buffers()
            self.epoch += 1
            self.step_in_epoch = 0
            record: dict[str, Any] = {"kind": "eval", "epoch": self.epoch, "step": self.step,
                                      "train_loss": float(totals[0] / max(float(totals[1]), 1.0)),
                                      "epoch_seconds": time.perf_counter() - t0}  # fmt: skip
            if self.epoch % eval_every == 0 or self.epoch == self.epochs or (self.epoch == 1 and budget):
                self.metrics = self.evaluate()
                record.update(self.metrics)
                value = self.metrics.get(self.task.main_metric)
                improved = value is not None and (self.best["value"] is None or value > self.best["value"])
                if improved:
                    self.best = {"metric": self.task.main_metric, "value": value, "epoch": self.epoch}
            else:
                improved = False
            slope = mlp_slope_at_zero(self.model)
            if slope is not None:
                record["mlp_slope0"] = slope
            self.log.write(record)
            if self.env.is_main:
                shown = {k: round(v, 4) for k, v in record.items() if isinstance(v, float)}
                logger.info("epoch %d/%d: %s", self.epoch, self.epochs, shown)
            self.save("last.pt")
            if improved and self.env.is_main:
                save_checkpoint(self.out_dir / "best.pt", load_checkpoint(self.out_dir / "last.pt"))
            if self.env.is_main:
                plot_curves(self.log.read(), self.out_dir / "curves.png", self.task.main_metric)
            self._fit_time_budget(time.perf_counter() - t0)
            if stop_after and self.step >= int(stop_after) and self.epoch < self.epochs:
                logger.info("stopping at step %d (stop_after_steps)", self.step)
                break
        return self.metrics

    def close(self) -> None:
        if self.env.distributed and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train(config: Config) -> dict[str, float]:
    """Train as ``config`` says; returns the final evaluation metrics."""
    trainer = Trainer(config)
    try:
        metrics = trainer.fit()
        if trainer.env.is_main:
            summary = {"model": trainer.model_name, "overrides": trainer.overrides, "metrics": metrics,
                       "best": trainer.best, "epochs": trainer.epochs, "steps": trainer.step}  # fmt: skip
            (trainer.out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return metrics
    finally:
        trainer.close()
