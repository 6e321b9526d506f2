"""Train the default pose models on one machine within a wall-time budget, then hand back compact checkpoints
(for a GPU lease whose files come back in pieces of limited size).

Runs, each a plain `binpose train pose` (python -m binpose.cli) on the vtest pedestrian set:
  sbpn-r18        models/train/configs/vtest_sbpn_r18.yaml, from scratch
  sbpn-r18-float  the same recipe, model.overrides.binary=false (the float twin)
  sbpn-r18-kd     the binary network started from sbpn-r18-float's best checkpoint and distilled from it
                  (the two-stage recipe: it starts when sbpn-r18-float has finished)
  bhrnet-w18      models/train/configs/vtest_bhrnet_w18.yaml, from scratch
  bhrnet-w18-float, bhrnet-w18-kd   the same two stages for BHRNet-W18

Runs without a dependency start together; a run whose overrides name another run ("{sbpn-r18-float}" stands for that
run's best checkpoint) starts when that run has ended, and is skipped if it left no checkpoint.

    python scripts/train_pose_defaults.py --budget 420 --out /tmp/pose-out
    python scripts/train_pose_defaults.py --runs sbpn-r18-float sbpn-r18-kd --budget sbpn-r18-float=200 \\
        --budget sbpn-r18-kd=290 --deadline 540 --checkpoints sbpn-r18-kd --out /tmp/pose-out
    cat /tmp/pose-out/sbpn-r18-kd.pt.part* > sbpn-r18.pt    # then scripts/bundle_weights.py --checkpoint sbpn-r18.pt ...

A compact checkpoint is the run's best.pt (by val AP) without optimizer, scheduler and RNG state; the weights stay
float32 (float16 would move binary activations across their thresholds: the binary network would not be the trained
one). The training code loads it as any checkpoint. Logs, metrics and curves of every run go into logs.tar.gz, so a
run whose checkpoint is not asked back (--checkpoints) still reports its val AP. --deadline stops whatever still runs
at that many seconds after the start and keeps what it saved (best.pt is written at each evaluation).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("train_pose_defaults")

def kd_sets(twin: str) -> list[str]:
    """The binary network started from its float twin's best checkpoint and distilled from it."""
    return [f"init_from={{{twin}}}", f"distill.teacher={{{twin}}}", "distill.alpha=0.7", "optim.lr=1e-3",
            "optim.warmup_epochs=0.5"]  # fmt: skip


RUNS: dict[str, tuple[str, list[str]]] = {
    "sbpn-r18": ("vtest_sbpn_r18", []),
    "sbpn-r18-float": ("vtest_sbpn_r18", ["model.overrides.binary=false"]),
    "sbpn-r18-kd": ("vtest_sbpn_r18", kd_sets("sbpn-r18-float")),
    "bhrnet-w18": ("vtest_bhrnet_w18", []),
    "bhrnet-w18-float": ("vtest_bhrnet_w18", ["model.overrides.binary=false"]),
    "bhrnet-w18-kd": ("vtest_bhrnet_w18", kd_sets("bhrnet-w18-float")),
}
PART_BYTES = 15 * 1024 * 1024
_REF = re.compile(r"\{([a-z0-9-]+)\}")


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


def best_checkpoint(run_dir: Path) -> Path | None:
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            return run_dir / name
    return None


def dependencies(sets: list[str]) -> set[str]:
    return {name for item in sets for name in _REF.findall(item)}


def parse_budgets(items: list[str], runs: list[str]) -> dict[str, float]:
    """`--budget 420` (every run) and/or `--budget NAME=420` (one run)."""
    budgets: dict[str, float] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        for run in runs if not sep else [name]:
            if run not in runs:
                raise SystemExit(f"--budget {item}: {run!r} is not among --runs {runs}")
            budgets[run] = float(value)
    missing = [r for r in runs if r not in budgets]
    if missing:
        raise SystemExit(f"no --budget for {missing}")
    return budgets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", action="append", required=True,
                        help="wall-time budget in seconds: S for every run, NAME=S for one (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="where the compact checkpoints and logs go")
    parser.add_argument("--runs", nargs="+", default=["sbpn-r18", "sbpn-r18-float", "bhrnet-w18"], choices=list(RUNS))
    parser.add_argument("--checkpoints", nargs="*", default=None, help="runs whose checkpoints go to --out (default all)")
    parser.add_argument("--workers", type=int, default=4, help="data-loader workers per run")
    parser.add_argument("--deadline", type=float, default=None, help="stop every run this many seconds after the start")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "pose-defaults")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more overrides for every run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    budgets = parse_budgets(args.budget, args.runs)
    for name in args.runs:
        unknown = dependencies(RUNS[name][1]) - set(args.runs)
        if unknown:
            parser.error(f"{name} starts from {sorted(unknown)}: add it to --runs")
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    skipped: set[str] = set()
    run_dirs = {name: args.runs_dir / name for name in args.runs}
    t0 = time.time()

    def start(name: str) -> None:
        config, sets = RUNS[name]
        resolved = []
        for item in sets + args.extra:
            for dep in _REF.findall(item):
                ckpt = best_checkpoint(run_dirs[dep])
                assert ckpt is not None  # checked by the caller
                item = item.replace("{" + dep + "}", str(ckpt))
            resolved.append(item)
        run_dir = run_dirs[name]
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "binpose.cli", "train", "pose", "--config", config,
               "--set", f"output_dir={run_dir}", "--set", f"time_budget_s={budgets[name]}",
               "--set", f"num_workers={args.workers}", "--set", "progress=false"]  # fmt: skip
        for item in resolved:
            cmd += ["--set", item]
        log = open(run_dir / "train.log", "wb")  # noqa: SIM115  (closed when the process ends)
        logger.info("%s: %s", name, " ".join(cmd))
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip

    def finished(name: str) -> bool:
        return name in skipped or (name in procs and procs[name].poll() is not None)

    while True:
        for name in args.runs:
            if name in procs or name in skipped:
                continue
            deps = dependencies(RUNS[name][1])
            if not all(finished(d) for d in deps):
                continue
            if any(d in skipped or best_checkpoint(run_dirs[d]) is None for d in deps):
                logger.error("%s: skipped, a run it starts from left no checkpoint", name)
                skipped.add(name)
            else:
                start(name)
        if all(finished(n) for n in args.runs):
            break
        if args.deadline is not None and time.time() - t0 > args.deadline:
            for name, proc in procs.items():
                if proc.poll() is None:
                    logger.error("%s: stopped at the %.0f s deadline", name, args.deadline)
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs.values():
                proc.wait()
            skipped.update(n for n in args.runs if n not in procs)
            break
        time.sleep(5)
        states = {n: ("running" if p.poll() is None else f"exit {p.returncode}") for n, p in procs.items()}
        logger.info("%.0f s: %s", time.time() - t0, states)

    for name in args.runs:
        if args.checkpoints is not None and name not in args.checkpoints:
            continue
        best = best_checkpoint(run_dirs[name])
        if best is None:
            logger.error("%s: no checkpoint; see its train.log", name)
            continue
        dst = args.out / f"{name}.pt"
        compact(best, dst)
        parts = split(dst)
        logger.info("%s: %s -> %s", name, best.name, ", ".join(p.name for p in parts))
    with tarfile.open(args.out / "logs.tar.gz", "w:gz") as tar:
        for name, run_dir in run_dirs.items():
            if not run_dir.exists():
                continue
            for f in sorted(run_dir.iterdir()):
                if f.suffix in {".log", ".jsonl", ".json", ".png"} and not f.name.startswith("results_"):
                    tar.add(f, arcname=f"{name}/{f.name}")
    ok = all(n in procs and procs[n].returncode == 0 for n in args.runs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
