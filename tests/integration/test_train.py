"""Short training runs on tiny data written here: both tasks learn, resume reproduces the run, torchrun (2 CPU
processes, gloo) keeps the ranks in agreement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import models
from models.train.cli import main as train_main
from models.train.config import load_config
from models.train.data import write_idx
from models.train.loop import Trainer, load_checkpoint, load_checkpoint_model, train

REPO = Path(__file__).resolve().parents[2]


def _write_tiny_fmnist(root: Path, n_train: int = 256, n_test: int = 60) -> None:
    """Ten classes that a small net separates quickly: class c is a bright 6x6 square at one of ten positions."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            y, x = 3 + 8 * (int(c) // 4), 3 + 6 * (int(c) % 4)
            images[i, y : y + 6, x : x + 6] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)


def _classify_config(data: Path, out: Path, **extra: Any) -> dict[str, Any]:
    sets = [f"data.root={data}", f"output_dir={out}", "model.name=resnet18-small", "model.overrides.in_chans=1",
            "model.overrides.input_size=28", "model.overrides.width=8", "model.overrides.weight_binarizer=mlp",
            "batch_size=32", "epochs=2", "max_steps_per_epoch=4", "num_workers=0", "log_every=1", "progress=false",
            "optim.lr=3e-3", "data.augment.random_crop_padding=0", "data.augment.hflip=false", "num_threads=1"]  # fmt: skip
    sets += [f"{k}={v}" for k, v in extra.items()]
    return load_config("classify", None, sets)


def _train_losses(out: Path) -> list[float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["kind"] == "train"]


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    _write_tiny_fmnist(root)
    return root


def test_classify_cli_run_learns_and_writes_a_checkpoint(fmnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text((REPO / "models/train/configs/fashion_mnist_resnet18_small.yaml").read_text())
    args = ["classify", "--config", str(config), "--set", f"data.root={fmnist}", "--set", f"output_dir={out}"]
    # hflip off: the tiny data's classes are positions, which a mirror would swap.
    for kv in ("model.overrides.width=8", "model.overrides.weight_binarizer=ste", "batch_size=32", "epochs=3",
               "max_steps_per_epoch=6", "num_workers=0", "log_every=1", "progress=false", "optim.lr=1e-2", "seed=3",
               "data.augment.hflip=false", "data.augment.random_crop_padding=1", "num_threads=1"):  # fmt: skip
        args += ["--set", kv]
    assert train_main(args) == 0
    losses = _train_losses(out)
    assert len(losses) == 18
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2, 3] and evals[-1]["num_samples"] == 60
    assert "mlp_slope0" not in evals[-1] and "binarizer_lr" not in records[0]  # ste: nothing learned in the binarizer
    assert (out / "curves.png").stat().st_size > 1000 and (out / "best.pt").exists()

    ckpt = torch.load(out / "last.pt", weights_only=True)  # what engine.pack and the service do: no pickled code
    for key in ("model", "overrides", "state_dict", "spec", "metrics", "config", "optimizer", "scheduler", "epoch"):
        assert key in ckpt
    assert ckpt["model"] == "resnet18-small" and ckpt["epoch"] == 3 and ckpt["step"] == 18
    assert ckpt["spec"]["class_names"][9] == "ankle boot" and ckpt["spec"]["mean"] == [0.286]
    assert ckpt["metrics"]["top1"] == pytest.approx(evals[-1]["top1"])
    # The packer's path: rebuild from "model" + "overrides", load "state_dict".
    model = models.build(ckpt["model"], **ckpt["overrides"])
    model.load_state_dict(ckpt["state_dict"])
    spec = models.get_spec(ckpt["model"], **ckpt["overrides"])
    assert spec.in_chans == 1 and spec.extra["width"] == 8 and spec.class_names[0] == "t-shirt/top"


def test_distillation_from_a_float_teacher(fmnist: Path, tmp_path: Path) -> None:
    teacher_cfg = _classify_config(fmnist, tmp_path / "teacher", **{"model.overrides.binary": "false", "epochs": 1})
    train(teacher_cfg)
    teacher = load_checkpoint_model(tmp_path / "teacher" / "last.pt")
    assert not models.ModelSpec.from_dict(load_checkpoint(tmp_path / "teacher" / "last.pt")["spec"]).binary
    assert isinstance(teacher, torch.nn.Module)
    student_cfg = _classify_config(fmnist, tmp_path / "student", **{"distill.teacher": tmp_path / "teacher" / "last.pt",
                                                                     "model.overrides.weight_binarizer": "ste",
                                                                     "optim.lr": 1e-2})  # fmt: skip
    train(student_cfg)
    losses = _train_losses(tmp_path / "student")
    assert np.isfinite(losses).all() and np.mean(losses[-2:]) < np.mean(losses[:2])


def test_resume_reproduces_the_run(fmnist: Path, tmp_path: Path) -> None:
    full = _classify_config(fmnist, tmp_path / "full", **{"model.overrides.weight_binarizer": "ede"})
    train(full)
    # Stop mid-epoch 1 (after 3 of 4 steps), then resume from last.pt: the rest of the run must be the same.
    part = _classify_config(fmnist, tmp_path / "part", **{"model.overrides.weight_binarizer": "ede", "stop_after_steps": 3})
    train(part)
    stopped = load_checkpoint(tmp_path / "part" / "last.pt")
    assert stopped["step"] == 3 and stopped["epoch"] == 0 and stopped["step_in_epoch"] == 3
    resumed = _classify_config(fmnist, tmp_path / "part", **{"model.overrides.weight_binarizer": "ede", "resume": "auto"})
    train(resumed)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["step"] == b["step"] == 8
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    la, lb = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "part")
    assert len(la) == len(lb) == 8
    np.testing.assert_allclose(lb, la, rtol=0, atol=1e-6)
    assert a["metrics"]["top1"] == pytest.approx(b["metrics"]["top1"])


def test_init_from_starts_with_the_checkpoint_weights(fmnist: Path, tmp_path: Path) -> None:
    first = _classify_config(fmnist, tmp_path / "first", **{"model.overrides.weight_binarizer": "ste", "epochs": 1})
    train(first)
    saved = load_checkpoint(tmp_path / "first" / "last.pt")["state_dict"]
    further = _classify_config(fmnist, tmp_path / "further", **{"model.overrides.weight_binarizer": "ste",
                                                                 "init_from": tmp_path / "first" / "last.pt"})  # fmt: skip
    trainer = Trainer(further)
    fresh = Trainer(_classify_config(fmnist, tmp_path / "fresh", **{"model.overrides.weight_binarizer": "ste"}))
    for key, value in saved.items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert any(not torch.equal(fresh.model.state_dict()[k], v) for k, v in saved.items() if v.is_floating_point())
    wrong = _classify_config(fmnist, tmp_path / "wrong",
                             **{"model.name": "resnet18", "init_from": tmp_path / "first" / "last.pt"})
    with pytest.raises(ValueError, match="init_from"):
        Trainer(wrong)


def test_init_from_a_float_twin_starts_its_binary_twin(fmnist: Path, tmp_path: Path) -> None:
    first = _classify_config(fmnist, tmp_path / "float", **{"model.overrides.binary": False, "epochs": 1})
    train(first)
    saved = load_checkpoint(tmp_path / "float" / "last.pt")["state_dict"]
    binary = Trainer(_classify_config(fmnist, tmp_path / "binary", **{"init_from": tmp_path / "float" / "last.pt"}))
    state = binary.model.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert any(".threshold." in k for k in state if k not in saved)  # binary-only tensors keep their init
    train(_classify_config(fmnist, tmp_path / "binary2", **{"epochs": 1}))
    with pytest.raises(ValueError, match="do not match"):  # binary -> float: the float twin has no thresholds
        Trainer(_classify_config(fmnist, tmp_path / "back", **{"model.overrides.binary": False,
                                                               "init_from": tmp_path / "binary2" / "last.pt"}))


def test_time_budget_cuts_epochs_and_fits_the_schedule(fmnist: Path, tmp_path: Path) -> None:
    trainer = Trainer(_classify_config(fmnist, tmp_path / "budget", **{"epochs": 10, "time_budget_s": 100,
                                                                       "optim.schedule": "cosine"}))  # fmt: skip
    trainer.epoch, trainer._t_start = 1, time.perf_counter()
    trainer._fit_time_budget(40.0)  # 100 s left after epoch 1, 40 s an epoch: 2 more fit
    assert trainer.epochs == 3 and trainer.total_steps == 3 * trainer.steps_per_epoch
    ends = [f(trainer.total_steps) for f in trainer.scheduler.lr_lambdas]
    assert ends == pytest.approx([0.0] * len(ends))  # cosine ends at the new last step
    mid = trainer.scheduler.lr_lambdas[0](int(1.5 * trainer.steps_per_epoch))
    assert mid == pytest.approx(0.5, abs=0.02)
    trainer._fit_time_budget(1.0)  # enough time for all: nothing changes
    assert trainer.epochs == 3
    # end to end: an impossible budget stops after the first (evaluated) epoch
    train(_classify_config(fmnist, tmp_path / "tiny", **{"epochs": 4, "time_budget_s": 1e-3}))
    evals = [json.loads(x) for x in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in evals if r["kind"] == "eval"] == [1]


def _write_tiny_coco(root: Path, n_images: int = 8) -> Path:
    """Grey images with one person box each; every labeled keypoint is drawn as a bright dot."""
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for i in range(n_images):
        img = np.full((96, 128, 3), 40, dtype=np.uint8)
        x, y, w, h = 30.0 + rng.uniform(-5, 5), 8.0 + rng.uniform(-3, 3), 60.0, 80.0
        kps = np.zeros((17, 3))
        for k in range(17):
            px, py = x + rng.uniform(5, w - 5), y + rng.uniform(5, h - 5)
            kps[k] = (px, py, 2)
            cv2.circle(img, (int(round(px)), int(round(py))), 2, (255, 255, 255), -1)
        cv2.imwrite(str(root / f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 128, "height": 96})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
                            "area": w * h, "num_keypoints": 17, "keypoints": kps.reshape(-1).tolist()})  # fmt: skip
    path = root / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "person"}]}))  # fmt: skip
    return path


def test_pose_run_learns_and_evaluates_with_pycocotools(tmp_path: Path) -> None:
    ann = _write_tiny_coco(tmp_path)
    out = tmp_path / "run"
    sets = [f"data.train_images={tmp_path}", f"data.train_annotations={ann}", f"data.val_images={tmp_path}",
            f"data.val_annotations={ann}", f"output_dir={out}", "model.name=sbpn-r18",
            "model.overrides.input_size=[64, 64]", "model.overrides.head_width=64", "batch_size=4", "epochs=2",
            # ede, not the MLP: the MLP estimator runs over all 11M latent weights, tens of seconds per CPU step.
            "model.overrides.weight_binarizer=ede", "num_workers=0", "log_every=1", "progress=false", "optim.lr=2e-3",
            "data.augment.rotation_prob=0.0", "num_threads=1", "data.augment.scale_factor=0.1"]  # fmt: skip
    metrics = train(load_config("pose", None, sets))
    losses = _train_losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["num_results"] == 8
    results = json.loads((out / "results_val_epoch2.json").read_text())
    assert len(results) == 8 and len(results[0]["keypoints"]) == 51
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["spec"]["task"] == "pose" and ckpt["spec"]["heatmap_size"] == [16, 16]


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from models.train.config import load_config
from models.train.loop import Trainer
trainer = Trainer(load_config("classify", None, sys.argv[2:]))
metrics = trainer.fit()
torch.save({"state_dict": trainer.model.state_dict(), "metrics": metrics, "world": dist.get_world_size(),
            "local_batch": trainer.local_batch}, f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
trainer.close()
"""


def test_torchrun_two_cpu_processes_agree(fmnist: Path, tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    sets = [f"data.root={fmnist}", f"output_dir={tmp_path / 'run'}", "model.name=resnet18-small",
            "model.overrides.in_chans=1", "model.overrides.input_size=28", "model.overrides.width=8", "batch_size=32",
            "epochs=2", "max_steps_per_epoch=3", "num_workers=0", "log_every=1", "progress=false", "device=cpu"]  # fmt: skip
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path), *sets],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["world"] == 2 and r0["local_batch"] == 16
    for key, value in r0["state_dict"].items():
        torch.testing.assert_close(r1["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert r0["metrics"]["num_samples"] == 60 and r0["metrics"] == r1["metrics"]  # sharded eval, summed
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "mlp_slope0" in records[-1] and "binarizer_lr" in records[0]  # the default binarizer is the MLP
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["step"] == 6
    for key, value in r0["state_dict"].items():
        torch.testing.assert_close(ckpt["state_dict"][key], value, rtol=0, atol=0, msg=key)
    Trainer  # noqa: B018  (imported for the script's API)
