"""The binarizer study on Fashion-MNIST: the same small binary ResNet trained with each weight estimator, several seeds,
the same budget, the float twin as reference. Runs `binpose train classify` for every (binarizer, seed), resumable
(finished runs are skipped), then writes docs/studies/binarizers.{md,json,png}.

    python scripts/binarizer_study.py --epochs 1 --seeds 0 1 2 --jobs 2
    python scripts/binarizer_study.py --report-only      # rebuild the report from runs/study
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BINARIZERS = ["ste", "approxsign", "ede", "linear", "mlp"]
CONFIG = "fashion_mnist_resnet18_small"


def run_command(variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    out = args.runs / f"{variant}-s{seed}"
    cmd = [str(ROOT / ".venv/bin/binpose"), "train", "classify", "--config", CONFIG,
           "--set", f"seed={seed}", "--set", f"epochs={args.epochs}", "--set", f"output_dir={out}",
           "--set", f"model.overrides.stem_stride={args.stem_stride}", "--set", f"model.overrides.width={args.width}",
           "--set", "num_threads=1", "--set", "progress=false", "--set", "resume=auto"]  # fmt: skip
    if variant == "float":
        cmd += ["--set", "model.overrides.binary=false"]
    else:
        cmd += ["--set", f"model.overrides.weight_binarizer={variant}"]
    return cmd


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finished(out: Path, epochs: int) -> bool:
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("kind") == "eval"]
    return any(r.get("epoch", 0) >= epochs for r in evals)


def train_one(variant: str, seed: int, args: argparse.Namespace) -> None:
    out = args.runs / f"{variant}-s{seed}"
    if finished(out, args.epochs):
        print(f"[skip] {out} is finished", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    cmd = run_command(variant, seed, args)
    print("[run] " + " ".join(cmd), flush=True)
    start = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out / "stdout.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    print(f"[done] {out} in {time.time() - start:.0f}s", flush=True)


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for variant in [*BINARIZERS, "float"]:
        runs = []
        for seed in args.seeds:
            records = read_metrics(args.runs / f"{variant}-s{seed}" / "metrics.jsonl")
            evals = [r for r in records if r.get("kind") == "eval"]
            if not evals:
                continue
            last = max(evals, key=lambda r: r["step"])
            slopes = [r["mlp_slope0"] for r in records if r.get("kind") == "train" and "mlp_slope0" in r]
            runs.append({"seed": seed, "top1": last["top1"], "top5": last.get("top5"), "epoch": last["epoch"],
                         "curve": [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"],
                         "slope0_first": slopes[0] if slopes else None, "slope0_last": slopes[-1] if slopes else None})
        if runs:
            accs = [r["top1"] for r in runs]
            rows[variant] = {"runs": runs, "mean": statistics.mean(accs),
                             "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "min": min(accs), "max": max(accs)}
    return rows


def plot(rows: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows)
    for i, name in enumerate(names):
        accs = [r["top1"] for r in rows[name]["runs"]]
        ax_acc.scatter([i] * len(accs), accs, color="C0" if name != "float" else "C3", zorder=3)
        ax_acc.errorbar(i, rows[name]["mean"], yerr=rows[name]["std"], fmt="_", color="k", capsize=6)
        curve = rows[name]["runs"][0]["curve"]
        if curve:
            steps, losses = zip(*curve, strict=True)
            ax_loss.plot(steps, losses, label=name)
    ax_acc.set_xticks(range(len(names)), names)
    ax_acc.set_ylabel("Fashion-MNIST test top-1 (%)")
    ax_acc.set_title("Accuracy per weight estimator (dots: seeds; bar: mean +- std)")
    ax_acc.grid(axis="y", alpha=0.3)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (first seed)")
    ax_loss.set_title("Training loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs/study")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/studies")
    parser.add_argument("--only", nargs="+", default=None, help="variants to run (default: all and float)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    variants = args.only or [*BINARIZERS, "float"]
    if not args.report_only:
        jobs = [(v, s) for s in args.seeds for v in variants]
        with ThreadPoolExecutor(args.jobs) as pool:
            for f in [pool.submit(train_one, v, s, args) for v, s in jobs]:
                f.result()
    rows = summarize(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "binarizers.json").write_text(json.dumps(
        {"settings": {"epochs": args.epochs, "seeds": args.seeds, "width": args.width, "stem_stride": args.stem_stride,
                      "config": CONFIG},
         "results": {k: {kk: vv for kk, vv in v.items() if kk != "runs"} | {"runs": [
             {kk: vv for kk, vv in r.items() if kk != "curve"} for r in v["runs"]]} for k, v in rows.items()}},
        indent=2))  # fmt: skip
    plot(rows, args.out / "binarizers.png")
    lines = ["| weight estimator | runs | top-1 mean (%) | std | min | max |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {len(r['runs'])} | {r['mean']:.2f} | {r['std']:.2f} | "
                     f"{r['min']:.2f} | {r['max']:.2f} |")  # fmt: skip
    print("\n".join(lines))
    (args.out / "binarizers_table.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
