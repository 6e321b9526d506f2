"""`binpose train classify|pose --config FILE.yaml [--set key=value ...]`.

Run under torchrun for several processes or GPUs; the trainer reads RANK/WORLD_SIZE/LOCAL_RANK itself:

    torchrun --nproc_per_node 8 -m models.train.cli classify --config models/train/configs/imagenet_resnet18.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULTS, load_config

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binpose train",
        description="Train a binary (or float twin) network. Configs: " + ", ".join(
            sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))) + f" (in {CONFIG_DIR}).",
    )  # fmt: skip
    parser.add_argument("task", choices=sorted(DEFAULTS), help="classify (logits) or pose (COCO-17 heatmaps)")
    parser.add_argument("--config", "-c", help="YAML config file; a bare name looks in models/train/configs/")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry, e.g. --set optim.lr=1e-3 "
                             "--set model.overrides.weight_binarizer=ede (repeatable)")  # fmt: skip
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    return parser


def resolve_config_path(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / value, CONFIG_DIR / f"{value}.yaml"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"config {value!r} not found; available in {CONFIG_DIR}: "
                            + ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    config = load_config(args.task, resolve_config_path(args.config), args.overrides)
    if args.print_config:
        sys.stdout.write(json.dumps(config, indent=2) + "\n")
        return 0
    from .loop import train  # torch and the models import only when training

    metrics = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        logger.info("final metrics: %s", json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
