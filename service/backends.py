"""Backends by name: how a model's weights become a function from a float32 NCHW batch to its output batch.

- packed: engine.load(weights/NAME.bnn), the bit-packed network run by the engine's kernels (the product).
- torch:  the float-simulated network (models.build), with weights/NAME.pt if present, else seeded random init.
- onnx:   ONNX Runtime on weights/NAME.onnx, or on the torch network exported by engine.onnx.export_onnx.
- auto:   packed where weights/NAME.bnn exists and the engine can load it, otherwise torch.

Every backend returns a LoadedModel: the one interface the rest of the service sees.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.spec import ModelSpec

logger = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoadOptions:
    weights_dir: Path = Path("weights")
    cache_dir: Path | None = None
    threads: int = 0
    seed: int = 0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # models.build overrides per model
    # The network runs in an inference process beside the server's (service/isolation.py), which needs a core of its
    # own for HTTP, decoding and cropping.
    beside_server: bool = False


def packed_threads(options: LoadOptions) -> int | None:
    """The packed runtime's threads: as configured (threads, else BINPOSE_THREADS), else, beside the server, all CPUs
    but one. The runtime spreads a batch's images over Python threads that share one GIL between layers; beside a
    busy server they compete with it for the cores as well (sbpn-r18 128x96, 8 clients, 2 CPUs: 300-314 req/s with
    2 threads, 320-338 with 1). None: the engine's default (all CPUs)."""
    if options.threads > 0:
        return options.threads
    if os.environ.get("BINPOSE_THREADS"):
        return int(os.environ["BINPOSE_THREADS"])
    if options.beside_server:
        return max(1, (os.cpu_count() or 1) - 1)
    return None


@dataclass
class LoadedModel:
    """A model ready to serve: its spec, its batch function and what /v1/models reports about it."""

    name: str
    backend: str
    spec: ModelSpec
    infer: InferFn
    complexity: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    provenance: Any = "random-init"
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_path: str | None = None
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    # Most crops/images per network call unless BINPOSE_MAX_BATCH_SIZE says otherwise: what this backend runs best.
    batch_size: int = 16

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        h, w = self.spec.input_size
        return (batch, self.spec.in_chans, h, w)

    def warm_up(self, batch_size: int) -> float:
        """Run the network on zeros at batch 1 and at `batch_size`, so the first request pays no one-time costs."""
        started = time.perf_counter()
        for n in sorted({1, max(1, batch_size)}):
            self.infer(np.zeros(self.input_shape(n), np.float32))
        self.warmup_seconds = time.perf_counter() - started
        return self.warmup_seconds


BackendLoader = Callable[[str, LoadOptions], LoadedModel]
BACKENDS: dict[str, BackendLoader] = {}


def register_backend(name: str) -> Callable[[BackendLoader], BackendLoader]:
    def deco(fn: BackendLoader) -> BackendLoader:
        if name in BACKENDS:
            logger.warning("backend %r registered twice; the later one wins", name)
        BACKENDS[name] = fn
        return fn

    return deco


def list_backends() -> list[str]:
    return sorted(BACKENDS)


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def engine_available() -> bool:
    """True when engine.load exists (the engine issue may not have landed yet)."""
    if not module_available("engine"):
        return False
    try:
        engine = importlib.import_module("engine")
    except Exception:  # a broken native build must not take the service down with it
        logger.exception("engine failed to import")
        return False
    return callable(getattr(engine, "load", None))


def onnx_export_available() -> bool:
    if not module_available("engine.onnx"):
        return False
    try:
        return callable(getattr(importlib.import_module("engine.onnx"), "export_onnx", None))
    except Exception:
        logger.exception("engine.onnx failed to import")
        return False


def load_model(name: str, backend: str, options: LoadOptions) -> LoadedModel:
    """Load `name` on `backend` ("auto" resolves to packed or torch). Raises ValueError/FileNotFoundError with a hint."""
    if backend == "auto":
        bnn = options.weights_dir / f"{name}.bnn"
        if bnn.exists() and engine_available():
            backend = "packed"
        else:
            why = "engine.load is not available yet" if bnn.exists() else f"{bnn} does not exist"
            logger.warning("model %s: backend auto -> torch (%s)", name, why)
            backend = "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list_backends()} or auto")
    started = time.perf_counter()
    loaded = BACKENDS[backend](name, options)
    loaded.load_seconds = time.perf_counter() - started
    logger.info("loaded %s on %s in %.2f s (%s)", name, backend, loaded.load_seconds, loaded.provenance)
    return loaded


# -- weights on disk ---------------------------------------------------------------------------------------------


def read_manifest(weights_dir: Path) -> dict[str, dict[str, Any]]:
    """weights/manifest.json as {model name: entry}; accepts {"models": {...}}, {"models": [...]}, {name: {...}}."""
    path = weights_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.exception("cannot read %s; ignoring it", path)
        return {}
    entries = data.get("models", data) if isinstance(data, dict) else data
    if isinstance(entries, list):
        return {str(e["name"]): e for e in entries if isinstance(e, dict) and "name" in e}
    if isinstance(entries, dict):
        return {str(k): v for k, v in entries.items() if isinstance(v, dict)}
    return {}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_entry(name: str, options: LoadOptions) -> dict[str, Any]:
    return read_manifest(options.weights_dir).get(name, {})


# -- torch ---------------------------------------------------------------------------------------------------------


def _set_torch_threads(threads: int) -> None:
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def build_torch_module(name: str, options: LoadOptions) -> tuple[Any, Any, str | None, str | None]:
    """The float-simulated network in eval mode: (module, provenance, sha256, weights path)."""
    import torch

    import models

    if name not in models.list_models():
        raise ValueError(f"unknown model {name!r}; registered: {models.list_models()}")
    _set_torch_threads(options.threads)
    ckpt = options.weights_dir / f"{name}.pt"
    overrides = dict(options.overrides.get(name, {}))
    provenance: Any = "random-init" + (f" {overrides}" if overrides else "")
    sha: str | None = None
    path: str | None = None
    state: Any = None
    if ckpt.exists():
        # A training checkpoint: {"model", "overrides", "state_dict"}, read without unpickling code.
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            overrides = {**dict(checkpoint.get("overrides") or {}), **overrides}
            state = checkpoint["state_dict"]
        else:
            state = checkpoint
        provenance = _manifest_entry(name, options).get("provenance", f"checkpoint {ckpt.name}")
        sha, path = file_sha256(ckpt), str(ckpt)
    torch.manual_seed(options.seed)
    module = models.build(name, **overrides)
    if state is not None:
        module.load_state_dict(state)
    module.eval()
    return module, provenance, sha, path


def _torch_infer(module: Any) -> InferFn:
    import torch

    def infer(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"expected the network to return a tensor, got {type(out).__name__}")
        return out.float().numpy()

    return infer


def _profile(module: Any) -> dict[str, Any]:
    try:
        from models.complexity import profile

        return dict(profile(module).to_dict())
    except Exception:
        logger.exception("models.complexity.profile failed; complexity will be empty")
        return {}


@register_backend("torch")
def load_torch(name: str, options: LoadOptions) -> LoadedModel:
    module, provenance, sha, path = build_torch_module(name, options)
    entry = _manifest_entry(name, options) if path else {}
    return LoadedModel(
        name=name,
        backend="torch",
        spec=module.spec,
        infer=_torch_infer(module),
        complexity=_profile(module),
        sha256=sha,
        provenance=provenance,
        metrics=dict(entry.get("metrics", {})),
        weights_path=path,
    )


# -- onnx ----------------------------------------------------------------------------------------------------------


def _onnx_infer(session: Any) -> InferFn:
    first = session.get_inputs()[0]
    input_name = first.name
    dim0 = first.shape[0] if first.shape else None
    dynamic_batch = not isinstance(dim0, int)

    def infer(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if dynamic_batch:
            return np.asarray(session.run(None, {input_name: x})[0], np.float32)
        # A graph exported with a fixed batch of 1: run the items one by one.
        return np.concatenate([np.asarray(session.run(None, {input_name: x[i : i + 1]})[0]) for i in range(len(x))])

    return infer


@register_backend("onnx")
def load_onnx(name: str, options: LoadOptions) -> LoadedModel:
    import onnxruntime as ort

    module, provenance, sha, path = build_torch_module(name, options)
    onnx_path = options.weights_dir / f"{name}.onnx"
    if onnx_path.exists():
        provenance = _manifest_entry(name, options).get("provenance", f"onnx file {onnx_path.name}")
    else:
        if not onnx_export_available():
            raise RuntimeError(
                f"backend onnx needs {onnx_path} or engine.onnx.export_onnx (engine issue), and neither exists; "
                "use backend torch meanwhile"
            )
        from engine.onnx import export_onnx

        cache = options.cache_dir or Path(tempfile.mkdtemp(prefix="binpose-onnx-"))
        cache.mkdir(parents=True, exist_ok=True)
        onnx_path = cache / f"{name}.onnx"
        export_onnx(module, onnx_path)
        provenance = {"exported_from": provenance} if isinstance(provenance, str) else provenance
    so = ort.SessionOptions()
    if module.spec.binary:
        # ORT_ENABLE_ALL's layout transforms (NCHWc convolutions) change float rounding enough to flip sign bits,
        # which cascade through binary layers: on a real crop sbpn-r18's heatmaps moved by 3.5 against torch, while
        # EXTENDED (fusions without the layout change) stays within 2e-6. Float networks keep every optimization.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if options.threads > 0:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=["CPUExecutionProvider"])
    return LoadedModel(
        name=name,
        backend="onnx",
        spec=module.spec,
        infer=_onnx_infer(session),
        complexity=_profile(module),
        sha256=file_sha256(onnx_path) if path is None else sha,
        provenance=provenance,
        metrics=dict(_manifest_entry(name, options).get("metrics", {})),
        weights_path=str(onnx_path),
    )


# -- packed --------------------------------------------------------------------------------------------------------


@register_backend("packed")
def load_packed(name: str, options: LoadOptions) -> LoadedModel:
    path = options.weights_dir / f"{name}.bnn"
    if not engine_available():
        raise RuntimeError("backend packed needs engine.load (engine issue), which is not available; use torch")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; make it with `binpose pack --model {name} ... --out {path}`")
    import engine

    _set_torch_threads(options.threads)
    packed = engine.load(str(path), packed_threads(options))
    entry = _manifest_entry(name, options)
    spec = packed.spec if isinstance(packed.spec, ModelSpec) else ModelSpec.from_dict(dict(packed.spec))
    return LoadedModel(
        name=name,
        backend="packed",
        spec=spec,
        infer=_torch_infer(packed),
        complexity=dict(getattr(packed, "complexity", None) or {}),
        sha256=getattr(packed, "sha256", None) or file_sha256(path),
        provenance=getattr(packed, "provenance", None) or entry.get("provenance", "unknown"),
        metrics=dict(entry.get("metrics", {})),
        weights_path=str(path),
        # The runtime gains nothing from batching (it runs a batch in chunks of <= 4 images at 128x96, 1 at 256x192),
        # and full batches of 4 may follow one another into the network's pipe, so its process never waits between
        # them (batching.py): sbpn-r18 128x96, 32 clients, 2 CPUs: 422 req/s against 376 with batches of 16.
        batch_size=4,
    )
