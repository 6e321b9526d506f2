"""The `binpose` command: a thin dispatcher. Each subcommand lives with the part of the product it belongs to and is
imported only when called, so `binpose serve` never imports training code and `binpose --help` starts instantly."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

# name -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("models.cli:main", "list the registered models with params, BOPs, FLOPs, OPs and packed size"),
    "train": ("models.train.cli:main", "train a model: `binpose train classify|pose --config FILE`"),
    "pack": ("engine.cli:pack_main", "pack a checkpoint (or a random-init model) into a .bnn file"),
    "export-onnx": ("engine.cli:export_onnx_main", "export the float-simulated network as ONNX"),
    "bench": ("engine.cli:bench_main", "benchmark the packed kernels and models against float baselines"),
    "serve": ("service.cli:serve_main", "start the HTTP service on the bundled default weights"),
    "score": ("service.score:main", "score a folder or COCO file offline"),
}


def _resolve(target: str):  # type: ignore[no-untyped-def]
    module_name, func_name = target.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="binpose",
        description="Binary neural networks: train, pack into bits, serve on CPUs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command", help="one of the commands below")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see binpose COMMAND --help)")
    if not argv:
        parser.print_help()
        return 2
    ns = parser.parse_args(argv[:1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = _resolve(COMMANDS[ns.command][0])
    result = func(argv[1:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
