"""Pack a trained model into weights/NAME.bnn, measure the packed file with the engine (not the training code's
evaluation), and record it in weights/manifest.json.

Classifiers are measured on the Fashion-MNIST test set; pose models with `binpose score pose --eval` (the service's
own pipeline on the packed file) on a COCO-format validation set.

    python scripts/bundle_weights.py --checkpoint runs/default/fmnist-mlp/last.pt \
        --command "binpose train classify --config fashion_mnist_resnet18_small ..."
    python scripts/bundle_weights.py --checkpoint runs/pose/bhrnet-w18/last.pt --command "binpose train pose ..." \
        --data "vtest_pose (docs/data.md)" --pose-images datasets/vtest_pose/images/val \
        --pose-annotations datasets/vtest_pose/annotations/person_keypoints_val.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_test(root: Path) -> tuple[np.ndarray, np.ndarray]:
    from models.train.data.classification import _find_idx, read_idx

    images = read_idx(_find_idx(root, "t10k-images-idx3-ubyte")).astype(np.float32) / 255.0
    labels = read_idx(_find_idx(root, "t10k-labels-idx1-ubyte")).astype(np.int64)
    return images, labels


def top1_of(predict, images: np.ndarray, labels: np.ndarray, mean: float, std: float, batch: int = 500) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    for i in range(0, len(images), batch):
        x = torch.from_numpy((images[i : i + batch] - mean) / std)[:, None]
        with torch.no_grad():
            correct += int((predict(x).argmax(dim=1).numpy() == labels[i : i + batch]).sum())
    return 100.0 * correct / len(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--name", default=None, help="weights/NAME.bnn (the service serves it as NAME); default: the model")
    parser.add_argument("--command", required=True, help="the command that trained the checkpoint")
    parser.add_argument("--data", default="Fashion-MNIST (Debian dataset-fashion-mnist): 60k train, 10k test")
    parser.add_argument("--fmnist", type=Path, default=FMNIST)
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--pose-images", type=Path, help="pose: validation images folder")
    parser.add_argument("--pose-annotations", type=Path, help="pose: validation COCO keypoint annotations")
    args = parser.parse_args()

    import engine
    import models
    from engine.pack import load_checkpoint, pack_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    name = args.name or str(ckpt["model"])
    args.weights.mkdir(parents=True, exist_ok=True)
    out = args.weights / f"{name}.bnn"
    pack_checkpoint(args.checkpoint, out)
    packed = engine.load(out)
    spec = packed.spec
    if spec.task == "classification":
        images, labels = fashion_mnist_test(args.fmnist)
        packed_top1 = top1_of(packed, images, labels, spec.mean[0], spec.std[0])
        module = models.build(str(ckpt["model"]), **dict(ckpt["overrides"]))
        module.load_state_dict(ckpt["state_dict"])
        module.eval()
        torch_top1 = top1_of(module, images, labels, spec.mean[0], spec.std[0])
        metrics = {"test_top1_packed": packed_top1, "test_top1_float_simulated": torch_top1}
        summary = f"trained on Fashion-MNIST train; test top-1 {packed_top1:.2f}% (packed engine, 10k test images)"
    else:
        if not (args.pose_images and args.pose_annotations):
            parser.error("a pose model needs --pose-images and --pose-annotations")
        results = ROOT / "runs" / f"bundle-{name}-val.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(ROOT / ".venv/bin/binpose"), "score", "pose", "--annotations", str(args.pose_annotations),
                        "--images", str(args.pose_images), "--model", name, "--backend", "packed",
                        "--weights-dir", str(args.weights), "--flip", "--eval", "--no-progress", "--out", str(results),
                        "--report", str(results.with_suffix(".report.json"))],
                       check=True)  # fmt: skip
        report = json.loads(results.with_suffix(".report.json").read_text())
        val = {k: float(v) for k, v in report["metrics"].items()}
        metrics = {"val_packed_ground_truth_boxes_flip": val}
        summary = f"val OKS AP {100 * val['AP']:.1f} (packed engine, ground-truth boxes, flip test)"

    manifest_path = args.weights / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    manifest["models"][name] = {
        "file": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "model": str(ckpt["model"]),
        "overrides": {k: v for k, v in dict(ckpt["overrides"]).items() if k != "class_names"},
        "data": args.data,
        "command": args.command,
        "bundle_command": "python " + " ".join([str(Path(sys.argv[0]).relative_to(ROOT)) if Path(sys.argv[0]).is_absolute()
                                                else sys.argv[0], *sys.argv[1:]]),
        "metrics": {**metrics, "training": ckpt.get("metrics")},
        "provenance": summary,
        "date": dt.date.today().isoformat(),
    }  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest["models"][name], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
