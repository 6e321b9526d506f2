"""`binpose serve` (and the `binpose score` entry point, implemented by the operations issue)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="binpose serve",
        description="Start the HTTP service (the same as `uvicorn --factory service.app:create_app`). Every flag has a "
        "BINPOSE_ environment variable (e.g. BINPOSE_MODELS, BINPOSE_BACKEND); flags win.",
    )
    p.add_argument("--host", help="bind address (BINPOSE_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (BINPOSE_PORT, default 8000)")
    p.add_argument("--models", nargs="+", help="model names, space- or comma-separated (BINPOSE_MODELS)")
    p.add_argument("--backend", choices=["auto", "packed", "torch", "onnx"], help="BINPOSE_BACKEND (default auto)")
    p.add_argument("--pose-model", help="default pose model (BINPOSE_POSE_MODEL)")
    p.add_argument("--classify-model", help="default classification model (BINPOSE_CLASSIFY_MODEL)")
    p.add_argument("--weights-dir", help="folder of NAME.bnn / NAME.pt / NAME.onnx (BINPOSE_WEIGHTS_DIR)")
    p.add_argument("--max-batch-size", type=int, help="BINPOSE_MAX_BATCH_SIZE")
    p.add_argument("--max-wait-ms", type=float, help="BINPOSE_MAX_WAIT_MS")
    p.add_argument("--queue-size", type=int, help="BINPOSE_QUEUE_SIZE")
    p.add_argument("--request-timeout-s", type=float, help="BINPOSE_REQUEST_TIMEOUT_S")
    p.add_argument("--threads", type=int, help="intra-op threads of the backends (BINPOSE_THREADS)")
    p.add_argument("--log-level", help="BINPOSE_LOG_LEVEL (default info)")
    return p


def serve_main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    from service.app import app_kwargs, create_app
    from service.settings import Settings

    ns = serve_parser().parse_args(list(argv) if argv is not None else None)
    overrides: dict[str, Any] = {k: v for k, v in vars(ns).items() if v is not None}
    if "models" in overrides:
        overrides["models"] = [n.strip() for item in overrides["models"] for n in item.split(",") if n.strip()]
    settings = Settings(**overrides)
    import models

    unknown = [name for name in settings.models if name not in models.list_models()]
    if unknown:
        logger.error("unknown model(s) %s; registered: %s", unknown, ", ".join(models.list_models()))
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    logger.info("serving %s on %s:%d (backend %s)", settings.models, settings.host, settings.port, settings.backend)
    uvicorn.run(create_app(settings), **app_kwargs(settings))
    return 0
