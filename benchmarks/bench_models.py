"""Whole-model benchmark: the packed runtime vs the float twin in torch and in ONNX Runtime, measured in one run.

    .venv/bin/python -m benchmarks.bench_models [--models resnet18 sbpn-r18 bhrnet-w32] [--batches 1 8] [--threads 1 2]

Writes benchmarks/results/models.json and models.md: latency per (model, batch, threads, backend), speed-ups of the
packed runtime, .bnn size vs the float twin's FP32 weights, and the runtime's per-op profile (batch 1, 1 thread).
Random weights: speed does not depend on their values. Timings are noisy on shared machines: compare within one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engine
import models
from benchmarks.args import parse_size
from engine import kernels
from engine.onnx import export_onnx
from engine.pack import pack_model

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODELS = ("resnet18", "sbpn-r18", "bhrnet-w32")
TARGETS = {"resnet18": 6.0, "sbpn-r18": 4.0, "bhrnet-w32": 4.0}  # packed vs ORT float twin, batch 1, 1 thread

logger = logging.getLogger("bench_models")


def _time_blocks(
    fns: dict[str, tuple[Callable[[], Any], Callable[[], Any]]], budget_s: float, blocks: int = 3, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Times each ``name -> (setup, fn)`` in ``blocks`` alternating blocks of back-to-back calls (``budget_s /
    blocks`` seconds each, after ``setup`` and a warm-up call): each backend runs warm, on its own, as it would in
    service, while a slow spell of a shared machine still falls on every backend alike. (Alternating single calls
    would not do: each call would start with caches emptied by another backend, and ONNX Runtime's spinning workers
    would run into the next backend's call.)"""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for b in range(blocks):
        for name, (setup, fn) in fns.items():
            setup()
            for _ in range(warmup if b == 0 else 1):
                fn()
            start = time.perf_counter()
            while len(times[name]) < 2 * (b + 1) or (time.perf_counter() - start < budget_s / blocks
                                                     and len(times[name]) < 200 * (b + 1) // blocks):  # fmt: skip
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "runs": len(v)} for k, v in times.items()}


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parse_model(arg: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:HxW`` (another input size, e.g. the bundled pose default's ``sbpn-r18:128x96``)."""
    name, _, size = arg.partition(":")
    if not size:
        return name, {}
    try:
        return name, {"input_size": parse_size(size)}
    except ValueError:
        raise ValueError(f"{arg!r}: expected NAME or NAME:HxW, e.g. sbpn-r18:128x96") from None


def bench_model(arg: str, batches: Sequence[int], threads: Sequence[int], budget_s: float, work: Path) -> dict[str, Any]:
    name, overrides = parse_model(arg)
    torch.manual_seed(0)
    binary = models.build(name, **overrides).eval()
    twin = models.build(name, binary=False, **overrides).eval()
    bnn = pack_model(binary, work / f"{name}.bnn")
    onnx_path = export_onnx(twin, work / f"{name}-float.onnx")
    pm = engine.load(bnn)
    float_bytes = sum(p.numel() * 4 for p in twin.parameters())
    spec: Any = binary.spec
    h, w = spec.input_size
    rows: list[dict[str, Any]] = []
    for t in threads:
        torch.set_num_threads(t)
        kernels.set_num_threads(t)
        pm.num_threads = t  # the kernels' threads; the runtime keeps torch's glue at 1 thread (no oversubscription)
        sess = _ort_session(onnx_path, t)
        for b in batches:
            x = torch.randn(b, 3, h, w)
            xn = x.numpy()
            row: dict[str, Any] = {"model": arg, "batch": b, "threads": t}
            with torch.no_grad():
                row.update(_time_blocks({
                    "packed": (lambda: None, functools.partial(pm, x)),  # sets its own threads (torch's glue at 1)
                    "torch_float": (functools.partial(torch.set_num_threads, t), functools.partial(twin, x)),
                    "onnx_float": (lambda: None, functools.partial(sess.run, None, {"input": xn})),
                }, budget_s))  # fmt: skip
            for base in ("torch_float", "onnx_float"):
                row[f"speedup_vs_{base}"] = row[base]["median_ms"] / row["packed"]["median_ms"]
            logger.info("%s b%d t%d: packed %.2f ms, torch %.2f ms, ORT %.2f ms (x%.1f vs ORT)", name, b, t,
                        row["packed"]["median_ms"], row["torch_float"]["median_ms"], row["onnx_float"]["median_ms"],
                        row["speedup_vs_onnx_float"])  # fmt: skip
            rows.append(row)
    # per-op profile of the packed runtime, batch 1, 1 thread
    torch.set_num_threads(1)
    kernels.set_num_threads(1)
    pm.num_threads = 1
    prof = pm.profile(torch.randn(1, 3, h, w), runs=10)
    by_type: dict[str, float] = {}
    for p in prof:
        by_type[p["type"]] = by_type.get(p["type"], 0.0) + p["ms"]
    total = sum(by_type.values())
    return {
        "model": arg, "input_size": [h, w], "bnn_bytes": bnn.stat().st_size, "float_fp32_weight_bytes": float_bytes,
        "size_ratio": float_bytes / bnn.stat().st_size, "rows": rows,
        "profile_b1_t1": {"total_ms": total, "by_type_ms": dict(sorted(by_type.items(), key=lambda kv: -kv[1])),
                          "binary_share": by_type.get("bconv", 0.0) / total if total else 0.0,
                          "ops": prof},
    }  # fmt: skip


def to_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Model benchmark ({result['machine']['cpu']}, ISA {result['machine']['isa']})", "",
        "Latency in ms (median over 3 alternating blocks of back-to-back calls per backend); speed-up = float twin / "
        "packed. Command: "
        "`.venv/bin/python -m benchmarks.bench_models`. Load average (1 min) at start / end: "
        f"{result['machine'].get('loadavg_start', ['?'])[0]} / {result['machine'].get('loadavg_end', ['?'])[0]} "
        f"on {result['machine']['cores']} cores.", "",
        "| model | batch | threads | packed | torch FP32 | ORT FP32 | x vs torch | x vs ORT |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for m in result["models"]:
        for r in m["rows"]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['threads']} | {r['packed']['median_ms']:.2f} | "
                f"{r['torch_float']['median_ms']:.2f} | {r['onnx_float']['median_ms']:.2f} | "
                f"{r['speedup_vs_torch_float']:.1f} | {r['speedup_vs_onnx_float']:.1f} |"
            )
    lines += ["", "| model | .bnn bytes | FP32 weights bytes | smaller by | target (b1, t1 vs ORT) | met |",
              "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for m in result["models"]:
        r1 = next((r for r in m["rows"] if r["batch"] == 1 and r["threads"] == 1), None)
        target = TARGETS.get(m["model"])
        met = "" if r1 is None or target is None else ("yes" if r1["speedup_vs_onnx_float"] >= target else "no")
        lines.append(f"| {m['model']} | {m['bnn_bytes']:,} | {m['float_fp32_weight_bytes']:,} | "
                     f"{m['size_ratio']:.1f}x | {target or '-'}x | {met} |")  # fmt: skip
    lines += ["", "Packed runtime profile, batch 1, 1 thread (ms per op type):", ""]
    for m in result["models"]:
        p = m["profile_b1_t1"]
        parts = ", ".join(f"{k} {v:.2f}" for k, v in p["by_type_ms"].items())
        lines.append(f"- {m['model']}: total {p['total_ms']:.2f} ms, binary convs {100 * p['binary_share']:.0f}%: {parts}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_models", description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--budget", type=float, default=1.5, help="seconds of timed runs per measurement")
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    args = p.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("engine").setLevel(logging.WARNING)
    import onnxruntime as ort

    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "isa": kernels.active_isa(),
               "torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}  # fmt: skip
    try:
        with open("/proc/cpuinfo") as f:
            machine["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    machine["loadavg_start"] = list(os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(n, args.batches, args.threads, args.budget, Path(tmp)) for n in args.models]
    machine["loadavg_end"] = list(os.getloadavg())
    result = {"machine": machine, "models": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "models.json").write_text(json.dumps(result, indent=1))
    md = to_markdown(result)
    (out / "models.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
