"""scripts/train_pose_defaults.py, the GPU-lease driver: a chained run (the binary network started from its float
twin's checkpoint and distilled from it) on the committed vtest set, cut short, hands back a compact checkpoint in
pieces that the training code loads."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train_pose_defaults.py"


def _load_script():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_pose_defaults", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budgets_and_dependencies() -> None:
    mod = _load_script()
    runs = ["sbpn-r18-float", "sbpn-r18-kd"]
    assert mod.parse_budgets(["100", "sbpn-r18-kd=30"], runs) == {"sbpn-r18-float": 100.0, "sbpn-r18-kd": 30.0}
    with pytest.raises(SystemExit, match="no --budget"):
        mod.parse_budgets(["sbpn-r18-kd=30"], runs)
    with pytest.raises(SystemExit, match="not among --runs"):
        mod.parse_budgets(["bhrnet-w18=30"], runs)
    assert mod.dependencies(mod.RUNS["sbpn-r18-kd"][1]) == {"sbpn-r18-float"}
    assert mod.dependencies(mod.RUNS["sbpn-r18"][1]) == set()
    assert mod.dependencies(mod.RUNS["bhrnet-w18-kd"][1]) == {"bhrnet-w18-float"}


def test_chain_without_its_twin_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--runs", "sbpn-r18-kd", "--budget", "1", "--out",
                           str(tmp_path)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "add it to --runs" in proc.stderr


def test_chained_runs_hand_back_a_loadable_compact_checkpoint(tmp_path: Path) -> None:
    out, runs_dir = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "--runs", "sbpn-r18-float", "sbpn-r18-kd", "--budget", "60",
           "--checkpoints", "sbpn-r18-kd", "--workers", "0", "--runs-dir", str(runs_dir), "--out", str(out),
           "--set", "model.overrides.input_size=[64, 64]", "--set", "data.repeat=1", "--set", "batch_size=16",
           "--set", "stop_after_steps=2", "--set", "num_threads=1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted(out.glob("sbpn-r18-kd.pt.part*"), key=lambda p: int(p.name.rsplit("part", 1)[1]))
    assert parts and not (out / "sbpn-r18-float.pt.part0").exists()  # only the runs asked for come back
    assert all(p.stat().st_size <= 15 * 1024 * 1024 for p in parts)
    whole = tmp_path / "kd.pt"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    ckpt = torch.load(whole, map_location="cpu", weights_only=True)
    assert "optimizer" not in ckpt and "rng" not in ckpt
    twin = runs_dir / "sbpn-r18-float" / "last.pt"  # stop_after_steps saves last.pt, no evaluation ran
    assert ckpt["config"]["init_from"] == str(twin) and ckpt["config"]["distill"]["teacher"] == str(twin)
    assert ckpt["overrides"].get("binary", True) is not False
    # the binary run really started from the twin: its float stem (not binarized) moved only two steps from it
    twin_sd = torch.load(twin, map_location="cpu", weights_only=True)["state_dict"]
    stem = "backbone.stem.conv.weight"
    scratch = torch.nn.init.kaiming_normal_(torch.empty_like(twin_sd[stem]))
    near = (ckpt["state_dict"][stem] - twin_sd[stem]).norm()
    assert near < 0.2 * (scratch - twin_sd[stem]).norm()
    from models.train.loop import load_checkpoint_model

    model = load_checkpoint_model(whole)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"sbpn-r18-float/train.log", "sbpn-r18-kd/train.log"} <= names
