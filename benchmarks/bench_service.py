"""The HTTP service end to end, on loopback, one uvicorn worker.

Run: ``.venv/bin/python -m benchmarks.bench_service [--model sbpn-r18] [--requests 100] [--clients 8 32] [--duration 15]``.

1. Latency: one 640x480 JPEG with one client box per request, sequential, keep-alive: p50/p90/p99 of the wall time
   seen by the client, and the server's own breakdown (decode, crop, queue, network).
2. Throughput: for each count in `--clients`, that many concurrent keep-alive connections for `--duration` seconds,
   each sending a pre-built request back to back (a lean load generator: the clients share the 2 cores with the
   server): requests/s, latency under load, mean batch size. A config's throughput is its best over the counts (the
   rate it sustains once saturated), and the target compares those; the ratios at each count are reported too.

Both run on the default packed backend (weights/NAME.bnn, or the seed-0 random-init network packed on the fly when no
weights are bundled: speed does not depend on the weights' values) and, in the same run, on the same service serving
the float twin (binary=False) on the onnx backend. Writes benchmarks/results/service.json and service.md.
The clients share the machine's cores with the server; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.args import parse_size
from service.process import ServiceProcess

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
PHOTO = Path("/usr/share/doc/opencv-doc/examples/data/basketball1.png")  # 640x480, two players
BOX = [404.0, 191.0, 494.0, 372.0]
logger = logging.getLogger("bench_service")


def test_image() -> tuple[bytes, str]:
    if PHOTO.exists():
        rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
        source = f"{PHOTO.name} (opencv-doc)"
    else:
        rgb = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
        source = "synthetic noise"
    assert rgb.shape[:2] == (480, 640), rgb.shape
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), source


def available(module: str, attr: str) -> bool:
    try:
        return callable(getattr(importlib.import_module(module), attr, None))
    except Exception:
        return False


def export_float_twin(model: str, out_dir: Path) -> str:
    import torch

    import models

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = models.build(model, binary=False).eval()
    h, w = net.spec.input_size
    torch.onnx.export(net, (torch.zeros(1, net.spec.in_chans, h, w),), str(out_dir / f"{model}.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=17,
                      dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})  # fmt: skip
    return "exported by torch.onnx (legacy exporter), engine.onnx not available yet"


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "n": len(values)}  # fmt: skip


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(number of network calls, crops) so far."""
    text = httpx.get(url + "/metrics", timeout=10).text
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model") != model:
                continue
            if s.name == "binpose_batch_size_count":
                count = s.value
            elif s.name == "binpose_batch_size_sum":
                total = s.value
    return count, total


def measure_latency(url: str, data: bytes, n: int, warmup: int) -> dict[str, Any]:
    files = {"image": ("frame.jpg", data, "image/jpeg")}
    form = {"boxes": json.dumps([BOX])}
    walls: list[float] = []
    server: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(warmup + n):
            t = time.perf_counter()
            r = c.post("/v1/pose", files=files, data=form)
            wall = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            if i < warmup:
                continue
            walls.append(wall)
            for k, v in r.json()["timings"].items():
                server.setdefault(k, []).append(v)
    return {"client_ms": percentiles(walls), "server_ms_p50": {k: float(np.median(v)) for k, v in server.items()}}


def pose_request(url: str, data: bytes, boxes: list[list[float]]) -> bytes:
    """The whole HTTP/1.1 request of one /v1/pose call (multipart: the JPEG and the boxes), built once: the load
    generator then only writes bytes and reads the answer, so on a 2-core machine it takes little CPU from the server
    (httpx spent about 1 ms of Python per request, the same for every backend, which hid the backends' difference)."""
    host = urlsplit(url).netloc
    boundary = "binpose-bench-0123456789"
    body = b"".join([
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"boxes\"\r\n\r\n{json.dumps(boxes)}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"f.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n".encode(), data, f"\r\n--{boundary}--\r\n".encode(),
    ])  # fmt: skip
    head = (f"POST /v1/pose HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def _client(url: str, request: bytes, until: float, latencies: list[float], errors: list[int]) -> None:
    """One keep-alive connection sending `request` back to back until `until`; the answer is read by its
    Content-Length and only its status line is parsed."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if status == 200:
                latencies.append((time.perf_counter() - t) * 1000)
            else:
                errors.append(status)
    finally:
        writer.close()


def measure_throughput(url: str, model: str, data: bytes, clients: int, duration: float) -> dict[str, Any]:
    calls0, crops0 = batch_stats(url, model)
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()

    request = pose_request(url, data, [BOX])

    async def run() -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_client(url, request, until, latencies, errors) for _ in range(clients)))

    asyncio.run(run())
    elapsed = time.perf_counter() - started
    calls1, crops1 = batch_stats(url, model)
    calls, crops = calls1 - calls0, crops1 - crops0
    return {
        "clients": clients,
        "seconds": elapsed,
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": len(latencies) / elapsed,
        "latency_ms": percentiles(latencies) if latencies else {},
        "mean_batch_size": crops / calls if calls else 0.0,
    }


def run_config(name: str, env: dict[str, str], args: argparse.Namespace, data: bytes) -> dict[str, Any]:
    logger.info("%s: starting the server", name)
    with ServiceProcess(env=env) as server:
        info = server.get_json(f"/v1/models/{args.model}")
        assert isinstance(info, dict)
        latency = measure_latency(server.url, data, args.requests, warmup=10)
        logger.info("%s: p50 %.1f ms", name, latency["client_ms"]["p50"])
        by_clients = []
        for clients in args.clients:
            by_clients.append(measure_throughput(server.url, args.model, data, clients, args.duration))
            logger.info("%s: %.1f requests/s with %d clients", name, by_clients[-1]["requests_per_s"], clients)
    keys = ("backend", "ops", "bops", "flops", "packed_bytes", "provenance", "weights_sha256")
    peak = max(by_clients, key=lambda t: t["requests_per_s"])
    return {"name": name, "model": {k: info.get(k) for k in keys}, "latency": latency, "throughput": peak,
            "throughput_by_clients": by_clients}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    size = result.get("input_size")
    at = f" at {size[0]}x{size[1]} ({result['packed_weights']})" if size else ""
    lines = [
        "# Service benchmark (loopback, 1 uvicorn worker)",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs ({result['machine']['processor']}), "
        f"load average {result['machine']['loadavg_before']} before, {result['machine']['loadavg_after']} after.",
        f"Model {result['model']}{at}, one 640x480 JPEG ({result['image']}) with one client box per request.",
        "",
        "| config | backend | model OPs | p50 ms | p90 ms | server p50 ms (queue / network) | req/s with "
        f"{' / '.join(map(str, result['clients']))} clients | peak req/s (clients, mean batch) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["configs"]:
        if "skipped" in c:
            lines.append(f"| {c['name']} | skipped: {c['skipped']} | | | | | | |")
            continue
        lat, thr, srv = c["latency"]["client_ms"], c["throughput"], c["latency"]["server_ms_p50"]
        each = " / ".join(f"{t['requests_per_s']:.1f}" for t in c["throughput_by_clients"])
        lines.append(
            f"| {c['name']} | {c['model']['backend']} | {c['model']['ops'] / 1e6:.1f} M | {lat['p50']:.1f} | "
            f"{lat['p90']:.1f} | {srv['total_ms']:.1f} ({srv['queue_ms']:.1f} / {srv['inference_ms']:.1f}) | "
            f"{each} | {thr['requests_per_s']:.1f} ({thr['clients']}, {thr['mean_batch_size']:.1f}) |"
        )
    lines += ["", "Targets (issue 5):"]
    for t in result["targets"]:
        lines.append(f"- {t['target']}: {t['value']} -> {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sbpn-r18")
    p.add_argument("--requests", type=int, default=100, help="sequential requests for the latency run")
    p.add_argument(
        "--clients", type=int, nargs="+", default=[8, 32],
        help="concurrent clients of the throughput runs, one run each; a config's throughput is its best "
        "(the rate it sustains once saturated: 8 clients leave the packed server's two processes idle part of the time)",
    )  # fmt: skip
    p.add_argument("--duration", type=float, default=15.0, help="seconds of the throughput run")
    p.add_argument("--threads", type=int, default=0, help="BINPOSE_THREADS of the server (0 = library default)")
    p.add_argument("--max-batch-size", type=int, default=None, help="default: each backend's own (packed 4, onnx 16)")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument(
        "--input-size", default=None, metavar="HxW",
        help="serve the model at this input size instead of the bundled one (both configs: seed-0 random-init "
        "weights, the speed does not depend on their values); results go to service-HxW.json/.md",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    size: list[int] | None = None
    if args.input_size:
        try:
            size = list(parse_size(args.input_size))
        except ValueError:
            p.error(f"--input-size takes HxW, e.g. 256x192; got {args.input_size!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    data, source = test_image()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    weights = REPO / "weights"
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    packed_note = f"bundled {weights / (args.model + '.bnn')}"
    manifest = weights / "manifest.json"
    entry = json.loads(manifest.read_text()).get("models", {}).get(args.model, {}) if manifest.exists() else {}
    overrides = dict(entry.get("overrides") or {})  # the network served: the bundled file's input size, width...
    if size is not None:
        overrides["input_size"] = size
    if (size is not None or not (weights / f"{args.model}.bnn").exists()) and available("engine.pack", "pack_model"):
        import torch

        import models
        from engine.pack import pack_model

        torch.manual_seed(0)
        net = models.build(args.model, **overrides).eval()
        pack_model(net, tmp / f"{args.model}.bnn", {"source": "bench: seed-0 random init"})
        weights, packed_note = tmp, f"seed-0 random init packed on the fly ({'x'.join(map(str, net.spec.input_size))})"
    common = {"BINPOSE_MODELS": args.model, "BINPOSE_MAX_WAIT_MS": str(args.max_wait_ms),
              "BINPOSE_WEIGHTS_DIR": str(weights), "BINPOSE_LOG_LEVEL": "warning"}  # fmt: skip
    if args.max_batch_size is not None:
        common["BINPOSE_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    if args.threads > 0:  # the engine reads BINPOSE_THREADS too
        common["BINPOSE_THREADS"] = str(args.threads)
    configs: list[dict[str, Any]] = []
    if available("engine", "load") and (weights / f"{args.model}.bnn").exists():
        configs.append(run_config("binary, packed", {**common, "BINPOSE_BACKEND": "packed"}, args, data))
    else:
        configs.append({"name": "binary, packed", "skipped": "engine.load or the .bnn file is missing"})
    # the float twin of the very network served, with float weights
    twin_overrides = {**overrides, "binary": False}
    twin = {**common, "BINPOSE_BACKEND": "onnx", "BINPOSE_CACHE_DIR": str(tmp / "onnx"),
            "BINPOSE_WEIGHTS_DIR": str(tmp / "twin"),
            "BINPOSE_MODEL_OVERRIDES": json.dumps({args.model: twin_overrides})}  # fmt: skip
    twin_note = "exported by engine.onnx.export_onnx"
    if not available("engine.onnx", "export_onnx"):
        # Until engine.onnx lands: the float twin has no binarizers, so torch's own exporter is faithful for it.
        twin_note = export_float_twin(args.model, tmp / "twin")
    configs.append(run_config("float twin, onnx", twin, args, data))
    configs[-1]["onnx_graph"] = twin_note

    ran = {c["name"]: c for c in configs if "skipped" not in c}
    targets = []
    if "binary, packed" in ran:
        p50 = ran["binary, packed"]["latency"]["client_ms"]["p50"]
        targets.append({"target": "p50 end-to-end < 25 ms (packed)", "value": f"{p50:.1f} ms", "met": p50 < 25})
    if len(ran) == 2:
        ratio = (
            ran["binary, packed"]["throughput"]["requests_per_s"] / ran["float twin, onnx"]["throughput"]["requests_per_s"]
        )
        targets.append({"target": "throughput >= 4x the float twin on onnx (peak of each)", "value": f"{ratio:.2f}x",
                        "met": ratio >= 4})  # fmt: skip
        same = [
            a["requests_per_s"] / b["requests_per_s"]
            for a, b in zip(ran["binary, packed"]["throughput_by_clients"],
                            ran["float twin, onnx"]["throughput_by_clients"], strict=True)
        ]  # fmt: skip
        clients = " / ".join(map(str, args.clients))
        ratios = " / ".join(f"{r:.2f}x" for r in same)
        targets.append({"target": f"the same with {clients} clients", "value": ratios, "met": min(same) >= 4})
    result = {
        "command": "python -m benchmarks.bench_service " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "loadavg_before": loadavg_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },  # fmt: skip
        "model": args.model,
        "input_size": size,
        "packed_weights": packed_note,
        "float_twin": "models.build(model, binary=False), seed-0 random init",
        "image": source,
        "clients": args.clients,
        "duration_s": args.duration,
        "configs": configs,
        "targets": targets,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "service" if size is None else f"service-{size[0]}x{size[1]}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
