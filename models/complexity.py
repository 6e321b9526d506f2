"""Complexity of a network counted from its modules: params, BOPs, FLOPs, OPs and packed size.

Convention (Bi-Real Net / He et al. 2023): BOPs = multiply-accumulates of binary convolutions; FLOPs =
multiply-accumulates of float convolutions and linear layers (BatchNorm, activations, pooling and adds are not counted);
OPs = BOPs / 64 + FLOPs. Counted by forward hooks on one image at the model's input size, so any topology is covered.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .binarizers import Binarizer
from .layers import BinaryConv2d


@dataclass(frozen=True)
class Complexity:
    params_binary: int
    params_float: int
    bops: int
    flops: int
    packed_bytes: int

    @property
    def ops(self) -> float:
        return self.bops / 64 + self.flops

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = self.ops
        return d


def _conv_macs(module: nn.Conv2d, output: Tensor) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return int(output[0].numel()) * per_output


def _estimator_params(model: nn.Module) -> set[int]:
    """Parameters of learned binarizers: they shape training only and are not part of the deployed network."""
    return {id(p) for m in model.modules() if isinstance(m, Binarizer) for p in m.parameters()}


def profile(model: nn.Module, input_size: tuple[int, int] | None = None, in_chans: int | None = None) -> Complexity:
    """Count params, BOPs, FLOPs and packed bytes of ``model`` for one image (batch 1)."""
    spec = getattr(model, "spec", None)
    hw = input_size or (spec.input_size if spec is not None else None)
    if hw is None:
        raise ValueError("profile: pass input_size for a model without a .spec")
    chans = in_chans or (spec.in_chans if spec is not None else 3)
    counts = {"bops": 0, "flops": 0}

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        if isinstance(module, BinaryConv2d):
            counts["bops"] += _conv_macs(module, output)
        elif isinstance(module, nn.Conv2d):
            counts["flops"] += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            counts["flops"] += module.in_features * int(output[0].numel())

    skip = {id(m) for b in model.modules() if isinstance(b, Binarizer) for m in b.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in skip]  # fmt: skip
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, chans, *hw, dtype=param.dtype, device=param.device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    binary_ids = {id(m.weight) for m in model.modules() if isinstance(m, BinaryConv2d)}
    estimator_ids = _estimator_params(model)
    params_binary = sum(p.numel() for p in model.parameters() if id(p) in binary_ids)
    params_float = sum(p.numel() for p in model.parameters() if id(p) not in binary_ids | estimator_ids)
    params_float += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    packed = math.ceil(params_binary / 8) + 4 * params_float
    return Complexity(params_binary, params_float, counts["bops"], counts["flops"], packed)
