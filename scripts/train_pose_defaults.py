"""Train the default pose models side by side on one machine within a wall-time budget, then hand back compact
checkpoints (for a GPU lease whose files come back in pieces of limited size).

Runs, each a plain `binpose train pose` (python -m binpose.cli) on the vtest pedestrian set:
  sbpn-r18        models/train/configs/vtest_sbpn_r18.yaml
  sbpn-r18-float  the same recipe, model.overrides.binary=false (the float twin)
  bhrnet-w18      models/train/configs/vtest_bhrnet_w18.yaml

    python scripts/train_pose_defaults.py --budget 420 --out /tmp/pose-out
    cat /tmp/pose-out/sbpn-r18.pt.part* > sbpn-r18.pt    # then scripts/bundle_weights.py --checkpoint sbpn-r18.pt ...

A compact checkpoint is the run's best.pt (by val AP) without optimizer, scheduler and RNG state; the weights stay
float32 (float16 would move binary activations across their thresholds: the binary network would not be the trained
one). The training code loads it as any checkpoint. Logs, metrics and curves of every run go into logs.tar.gz, so a
run whose checkpoint is not asked back (--checkpoints) still reports its val AP.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("train_pose_defaults")

RUNS: dict[str, tuple[str, list[str]]] = {
    "sbpn-r18": ("vtest_sbpn_r18", []),
    "sbpn-r18-float": ("vtest_sbpn_r18", ["model.overrides.binary=false"]),
    "bhrnet-w18": ("vtest_bhrnet_w18", []),
}
PART_BYTES = 15 * 1024 * 1024


def compact(src: Path, dst: Path) -> None:
    """Keep what inference and packing need: the weights (float32, as trained) and the metadata."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    keep = {k: v for k, v in ckpt.items() if k not in {"optimizer", "scheduler", "scaler", "rng"}}
    torch.save({**keep, "compact": "optimizer, scheduler and RNG state dropped"}, dst)


def split(path: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    data, parts = path.read_bytes(), []
    for i in range(0, len(data), part_bytes):
        part = path.with_name(f"{path.name}.part{i // part_bytes}")
        part.write_bytes(data[i : i + part_bytes])
        parts.append(part)
    path.unlink()
    return parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, required=True, help="wall-time budget of each run, seconds")
    parser.add_argument("--out", type=Path, required=True, help="where the compact checkpoints and logs go")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--checkpoints", nargs="*", default=None, help="runs whose checkpoints go to --out (default all)")
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers per run")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "pose-defaults")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for name in args.runs:
        config, sets = RUNS[name]
        run_dir = args.runs_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "binpose.cli", "train", "pose", "--config", config,
               "--set", f"output_dir={run_dir}", "--set", f"time_budget_s={args.budget}",
               "--set", f"num_workers={args.workers}", "--set", "progress=false"]  # fmt: skip
        for item in sets + args.extra:
            cmd += ["--set", item]
        log = open(run_dir / "train.log", "wb")  # noqa: SIM115  (closed when the process ends)
        logger.info("%s: %s", name, " ".join(cmd))
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), run_dir)
    t0 = time.time()
    while any(p.poll() is None for p, _ in procs.values()):
        time.sleep(10)
        states = {n: ("running" if p.poll() is None else f"exit {p.returncode}") for n, (p, _) in procs.items()}
        logger.info("%.0f s: %s", time.time() - t0, states)
    for name, (proc, run_dir) in procs.items():
        best = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "last.pt"
        if args.checkpoints is not None and name not in args.checkpoints:
            continue
        if not best.exists():
            logger.error("%s: no checkpoint (exit %s); see its train.log", name, proc.returncode)
            continue
        dst = args.out / f"{name}.pt"
        compact(best, dst)
        parts = split(dst)
        logger.info("%s: %s -> %s", name, best.name, ", ".join(p.name for p in parts))
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for name, (_, run_dir) in procs.items():
            for f in sorted(run_dir.iterdir()):
                if f.suffix in {".log", ".jsonl", ".json", ".png"} and not f.name.startswith("results_"):
                    tar.add(f, arcname=f"{name}/{f.name}")
    return 0 if all(p.returncode == 0 for p, _ in procs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
