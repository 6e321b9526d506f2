"""The .bnn file: a trained binary network packed into bits, folded float parameters and JSON metadata.

A .bnn is a safetensors file (no pickle, ever):

- tensors: packed weight sign bits (``uint32`` words, OHWI, packed along input channels: the kernels' layout, so
  loading is zero-copy), folded per-channel float32 scale/shift (alpha x BatchNorm), activation thresholds,
  PReLU/RPReLU parameters, and the float layers' weights (BN folded into conv weights and biases);
- metadata (strings): ``format`` (``binpose-bnn``), ``format_version``, ``graph`` (the fused op list as JSON, see
  ``engine.graph``), ``spec`` (``ModelSpec.to_dict()``), ``complexity`` (``models.complexity.profile``), ``provenance``
  (model name, overrides, source checkpoint, its metrics and config) and ``payload_sha256``: the sha256 of every
  tensor (name, dtype, shape, bytes, sorted by name) and of every other metadata entry, so that a tampered tensor or
  graph is detected at load time.

Reading needs only numpy and safetensors; packing imports ``models`` and ``engine.graph``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

FORMAT_NAME = "binpose-bnn"
FORMAT_VERSION = 1
_HASH_KEY = "payload_sha256"
_JSON_KEYS = ("graph", "spec", "complexity", "provenance")
_MAX_HEADER = 100 * 1024 * 1024

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "BnnFile",
    "BnnFormatError",
    "pack_model",
    "pack_checkpoint",
    "read_bnn",
    "write_bnn",
]


class BnnFormatError(ValueError):
    """A .bnn file that cannot be trusted: truncated, tampered with, not a .bnn, or of an unknown version."""


@dataclass(frozen=True)
class BnnFile:
    """A parsed, verified .bnn: its tensors and metadata."""

    tensors: dict[str, np.ndarray]
    graph: dict[str, Any]
    spec: dict[str, Any]
    complexity: dict[str, Any]
    provenance: dict[str, Any]
    format_version: int
    payload_sha256: str
    sha256: str  # of the whole file
    file_bytes: int


def payload_digest(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """sha256 over the tensors (sorted by name: name, dtype, shape, bytes) and the metadata except the digest."""
    h = hashlib.sha256()
    for key in sorted(k for k in metadata if k != _HASH_KEY):
        h.update(f"meta:{key}={len(metadata[key])}:".encode())
        h.update(metadata[key].encode())
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"tensor:{name}:{a.dtype.str}:{list(a.shape)}:".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def write_bnn(
    path: str | os.PathLike[str],
    tensors: dict[str, np.ndarray],
    graph: dict[str, Any],
    spec: dict[str, Any],
    complexity: dict[str, Any],
    provenance: dict[str, Any],
) -> Path:
    """Write a .bnn (atomically: a temporary file, then a rename)."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    metadata.update({"graph": _json(graph), "spec": _json(spec), "complexity": _json(complexity),
                     "provenance": _json(provenance)})  # fmt: skip
    metadata[_HASH_KEY] = payload_digest(arrays, metadata)
    data = save(arrays, metadata=metadata)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    logger.info("wrote %s (%d bytes, %d tensors)", out, len(data), len(arrays))
    return out


def _header(data: bytes, where: str) -> dict[str, Any]:
    if len(data) < 8:
        raise BnnFormatError(f"{where}: {len(data)} bytes is too short to be a .bnn file (truncated or empty)")
    n = int.from_bytes(data[:8], "little")
    if n > _MAX_HEADER or n == 0:
        raise BnnFormatError(f"{where}: header length {n} is implausible: not a .bnn (safetensors) file")
    if 8 + n > len(data):
        raise BnnFormatError(f"{where}: file is truncated ({len(data)} bytes, the header alone needs {8 + n})")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BnnFormatError(f"{where}: the header is not valid JSON ({e}): the file is corrupted") from e
    if not isinstance(header, dict):
        raise BnnFormatError(f"{where}: the header is not a JSON object: the file is corrupted")
    # every tensor must lie inside the file: catches truncation before safetensors sees it
    payload = len(data) - 8 - n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise BnnFormatError(f"{where}: tensor {name!r} has no valid data offsets: the file is corrupted") from e
    if end > payload:
        raise BnnFormatError(f"{where}: file is truncated (tensor data needs {end} bytes, {payload} present)")
    if end != payload:
        raise BnnFormatError(f"{where}: {payload - end} unexpected bytes after the tensor data: the file is corrupted")
    return header


def parse_bnn(data: bytes, where: str = "<bytes>") -> BnnFile:
    """Parse and verify .bnn bytes. Raises :class:`BnnFormatError` saying what is wrong."""
    header = _header(data, where)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise BnnFormatError(f"{where}: the metadata is not a JSON object: the file is corrupted")
    if meta.get("format") != FORMAT_NAME:
        raise BnnFormatError(
            f"{where}: not a binpose .bnn file (format {meta.get('format')!r}, expected {FORMAT_NAME!r}); "
            "make one with `binpose pack`"
        )
    try:
        version = int(meta.get("format_version", ""))
    except ValueError as e:
        raise BnnFormatError(f"{where}: format_version {meta.get('format_version')!r} is not an integer") from e
    if version != FORMAT_VERSION:
        raise BnnFormatError(
            f"{where}: .bnn format version {version} is not supported by this binpose (it reads version "
            f"{FORMAT_VERSION}); re-pack the model with `binpose pack` from this version"
        )
    missing = [k for k in (*_JSON_KEYS, _HASH_KEY) if k not in meta]
    if missing:
        raise BnnFormatError(f"{where}: metadata lacks {missing}: the file is incomplete or corrupted")
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as e:
        raise BnnFormatError(f"{where}: the tensor data cannot be read ({e}): the file is corrupted") from e
    digest = payload_digest(tensors, meta)
    if digest != meta[_HASH_KEY]:
        raise BnnFormatError(
            f"{where}: payload sha256 mismatch (recorded {meta[_HASH_KEY][:16]}..., computed {digest[:16]}...): "
            "the file was modified or corrupted after packing; re-pack it"
        )
    parsed: dict[str, Any] = {}
    for key in _JSON_KEYS:
        try:
            parsed[key] = json.loads(meta[key])
        except json.JSONDecodeError as e:  # pragma: no cover - the digest covers the metadata
            raise BnnFormatError(f"{where}: metadata {key!r} is not valid JSON") from e
    return BnnFile(
        tensors=tensors, graph=parsed["graph"], spec=parsed["spec"], complexity=parsed["complexity"],
        provenance=parsed["provenance"], format_version=version, payload_sha256=digest,
        sha256=hashlib.sha256(data).hexdigest(), file_bytes=len(data),
    )  # fmt: skip


def read_bnn(path: str | os.PathLike[str]) -> BnnFile:
    """Read and verify a .bnn file. Raises :class:`BnnFormatError` (a ValueError) if it is not a valid one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no .bnn file at {p}; make one with `binpose pack --model NAME --random-init --out {p}`")
    return parse_bnn(p.read_bytes(), str(p))


# ----------------------------------------------------------------------------------------------------- packing


def pack_model(model: nn.Module, out: str | os.PathLike[str], provenance: dict[str, Any] | None = None) -> Path:
    """Pack a float-simulated binary network (any registered model) into a .bnn file at ``out``."""
    import torch

    from engine.graph import build_plan
    from models.complexity import profile

    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("pack_model needs a registered model with a .spec (models.build(name))")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            plan = build_plan(model)
            complexity = profile(model).to_dict()
    finally:
        model.train(was_training)
    prov = {"packed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, **(provenance or {})}  # fmt: skip
    return write_bnn(out, plan.tensors, plan.graph, spec.to_dict(), complexity, prov)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``: tensors and plain containers, no arbitrary code)."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path} with weights_only=True: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: a checkpoint must be a dict with 'model', 'overrides' and 'state_dict'")
    return ckpt


def pack_checkpoint(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> Path:
    """Pack a training checkpoint (keys model, overrides, state_dict; metrics/config kept as provenance)."""
    import models

    ckpt = load_checkpoint(checkpoint)
    kwargs = {**dict(ckpt.get("overrides") or {}), **(overrides or {})}
    model = models.build(str(ckpt["model"]), **kwargs)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    prov = {"model": str(ckpt["model"]), "overrides": kwargs, "source": "checkpoint",
            "checkpoint": str(checkpoint), "metrics": ckpt.get("metrics"), "config": ckpt.get("config")}  # fmt: skip
    return pack_model(model, out, prov)
