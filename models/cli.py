"""`binpose models [--json]`: the model zoo with its complexity figures."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .complexity import profile
from .registry import build, list_models
from .spec import ModelSpec


def model_rows() -> list[dict[str, Any]]:
    rows = []
    for name in list_models():
        model = build(name)
        spec: ModelSpec = model.spec  # type: ignore[assignment]
        c = profile(model)
        twin = profile(build(name, binary=False))
        rows.append({
            "name": name, "task": spec.task, "input_size": list(spec.input_size),
            "params_binary": c.params_binary, "params_float": c.params_float,
            "bops": c.bops, "flops": c.flops, "ops": c.ops, "packed_bytes": c.packed_bytes,
            "float_twin": {"flops": twin.flops, "params": twin.params_float, "fp32_bytes": twin.packed_bytes},
        })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'name':<16}{'task':<16}{'input':>9}{'bin params':>12}{'fp params':>11}{'BOPs':>11}{'FLOPs':>11}" \
           f"{'OPs':>11}{'packed MB':>11}{'fp32 MB':>9}"  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<16}{r['task']:<16}{'x'.join(map(str, r['input_size'])):>9}{r['params_binary'] / 1e6:>11.2f}M"
            f"{r['params_float'] / 1e6:>10.2f}M{r['bops']:>11.3e}{r['flops']:>11.3e}{r['ops']:>11.3e}"
            f"{r['packed_bytes'] / 1e6:>11.2f}{r['float_twin']['fp32_bytes'] / 1e6:>9.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="binpose models", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)
    rows = model_rows()
    sys.stdout.write((json.dumps(rows, indent=2) if args.json else format_table(rows)) + "\n")
    return 0
