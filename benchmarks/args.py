"""Argument parsing shared by the benchmark scripts."""

from __future__ import annotations


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``256x192``) -> (H, W), both positive; ValueError otherwise."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r} is not HxW, e.g. 256x192") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{text!r}: height and width must be positive")
    return h, w
