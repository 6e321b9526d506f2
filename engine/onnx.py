"""Export the float-simulated network (or its float twin) as ONNX, runnable by ONNX Runtime.

Binary convs are exported as what they compute in eval mode: ``Where(x + t >= 0, 1, -1)`` on the activations and a
constant weight ``alpha * B(w - mean(w))`` (the binarized weight is computed once here, so learned weight binarizers
such as ``mlp-classifier`` need no graph of their own). Export runs in eval mode under ``torch.no_grad`` so no custom
autograd function appears; opset 17, dynamic batch.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

OPSET = 17

__all__ = ["OPSET", "export_onnx", "frozen_module"]


class _FrozenBinaryConv2d(nn.Module):
    """conv2d(sgn(x + t), W_b) with W_b = alpha * B(w_c) precomputed: the eval-mode BinaryConv2d, ONNX-friendly."""

    def __init__(self, conv: Any) -> None:
        super().__init__()
        with torch.no_grad():
            self.weight = nn.Parameter(conv.binary_weight().detach().clone(), requires_grad=False)
        t = conv.threshold
        self.threshold = nn.Parameter(t.bias.detach().clone(), requires_grad=False) if t is not None else None
        self.stride: tuple[int, int] = tuple(conv.stride)
        self.padding: tuple[int, int] = tuple(conv.padding)
        self.dilation: tuple[int, int] = tuple(conv.dilation)
        self.groups = int(conv.groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.threshold is not None:
            x = x + self.threshold
        s = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
        return F.conv2d(s, self.weight, None, self.stride, self.padding, self.dilation, self.groups)


def frozen_module(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` whose binary convs are frozen into ONNX-exportable modules."""
    from models.layers import BinaryConv2d

    frozen = copy.deepcopy(model).eval()
    for name, m in list(frozen.named_modules()):
        if isinstance(m, BinaryConv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = frozen.get_submodule(parent_name) if parent_name else frozen
            setattr(parent, attr, _FrozenBinaryConv2d(m))
    return frozen


def export_onnx(model: nn.Module, out: str | os.PathLike[str], batch: int = 1) -> Path:
    """Export ``model`` (a registered network, binary or its float twin) to ``out``; the batch dimension is dynamic."""
    spec: Any = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("export_onnx needs a registered model with a .spec (models.build(name))")
    h, w = spec.input_size
    net = frozen_module(model)
    x = torch.zeros(batch, spec.in_chans, h, w)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, which binpose does not depend on
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=OPSET,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    logger.info("exported %s to %s (opset %d)", spec.name, path, OPSET)
    return path
