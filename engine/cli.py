"""`binpose pack`, `binpose export-onnx` and `binpose bench`: each ``f(argv) -> int``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["bench_main", "export_onnx_main", "pack_main", "parse_overrides"]


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (``width=16``, ``input_size=[64,64]``), else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r} (e.g. --set width=16 --set input_size=[64,64])")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _source_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="training checkpoint (.pt with model, overrides, state_dict)")
    src.add_argument("--model", help="registered model name (see `binpose models`); needs --random-init")
    p.add_argument("--random-init", action="store_true", help="with --model: use freshly initialized weights")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="build override, repeatable")
    p.add_argument("--out", required=True, help=out_help)
    return p


def _model_from_args(args: argparse.Namespace, p: argparse.ArgumentParser) -> tuple[Any, dict[str, Any]]:
    import models
    from engine.pack import load_checkpoint

    overrides = parse_overrides(args.set)
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        kwargs = {**dict(ckpt.get("overrides") or {}), **overrides}
        model = models.build(str(ckpt["model"]), **kwargs)
        model.load_state_dict(ckpt["state_dict"], strict=True)
        prov = {"model": str(ckpt["model"]), "overrides": kwargs, "source": "checkpoint", "checkpoint": args.checkpoint,
                "metrics": ckpt.get("metrics"), "config": ckpt.get("config")}  # fmt: skip
        return model, prov
    if not args.random_init:
        p.error("--model needs --random-init (or pass --checkpoint)")
    model = models.build(args.model, **overrides)
    return model, {"model": args.model, "overrides": overrides, "source": "random-init"}


def pack_main(argv: Sequence[str]) -> int:
    """binpose pack (--checkpoint PATH | --model NAME --random-init) --out PATH.bnn [--set key=val ...]"""
    p = _source_parser("binpose pack", "Pack a binary network into a .bnn file (bits + folded params + graph).",
                       "output .bnn path")  # fmt: skip
    args = p.parse_args(list(argv))
    from engine.pack import pack_model, read_bnn

    try:
        model, prov = _model_from_args(args, p)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        logger.error("cannot build the model: %s", e)
        return 2
    path = pack_model(model, args.out, prov)
    bnn = read_bnn(path)
    logger.info("%s: %s, %d ops, %d bytes, sha256 %s", path, bnn.spec.get("name"), len(bnn.graph["ops"]),
                bnn.file_bytes, bnn.sha256)  # fmt: skip
    return 0


def export_onnx_main(argv: Sequence[str]) -> int:
    """binpose export-onnx (--checkpoint PATH | --model NAME --random-init) --out PATH.onnx [--float-twin]"""
    p = _source_parser("binpose export-onnx", "Export the float-simulated network as ONNX (opset 17, dynamic batch).",
                       "output .onnx path")  # fmt: skip
    p.add_argument("--float-twin", action="store_true", help="export the float twin (binary=False) instead")
    args = p.parse_args(list(argv))
    from engine.onnx import export_onnx

    if args.float_twin:
        args.set = [*args.set, "binary=false"]
    try:
        model, _ = _model_from_args(args, p)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        logger.error("cannot build the model: %s", e)
        return 2
    export_onnx(model, args.out)
    return 0


def bench_main(argv: Sequence[str]) -> int:
    """binpose bench [models|layers] [ARGS...]: the model benchmark (benchmarks.bench_models) by default."""
    import importlib

    args = list(argv)
    which = args.pop(0) if args and args[0] in ("models", "layers", "kernels") else "models"
    module = {"models": "benchmarks.bench_models", "layers": "benchmarks.bench_layers",
              "kernels": "benchmarks.bench_layers"}[which]  # fmt: skip
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        logger.error("%s is not available (%s); run from the repository root", module, e)
        return 2
    return int(mod.main(args) or 0)
