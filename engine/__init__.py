"""Packed-binary inference: sign-bit packing, XNOR-popcount kernels, .bnn files and their runtime.

``engine.load(path)`` loads a .bnn file into a :class:`engine.runtime.PackedModel` (imported lazily, so that
``import engine`` stays cheap and does not import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.runtime import PackedModel

__all__ = ["load"]


def load(path: Any, num_threads: int | None = None, torch_threads: int = 1) -> PackedModel:
    """Load a .bnn file: see :func:`engine.runtime.load`."""
    from engine.runtime import load as _load

    return _load(path, num_threads, torch_threads)
