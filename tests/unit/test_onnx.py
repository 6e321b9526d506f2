"""ONNX export: ONNX Runtime runs the float-simulated network with torch's outputs, for every registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import models
from binpose.cli import main as binpose_main
from engine.onnx import OPSET, export_onnx
from models.layers import LearnableBias

# small but architecture-preserving overrides: few pre-activations land within float noise of 0, where torch's and
# ONNX Runtime's different summation orders could legitimately binarize differently
SMALL: dict[str, dict[str, Any]] = {
    "resnet18": {"input_size": 64},
    "resnet34": {"input_size": 64, "num_classes": 100},
    "resnet18-small": {"width": 16, "weight_binarizer": "mlp-classifier"},
    "sbpn-r18": {"input_size": (64, 64), "head_width": 64},
    "sbpn-r34": {"input_size": (64, 32), "head_width": 128},
    "bhrnet-w18": {"input_size": (64, 64)},
    "bhrnet-w32": {"input_size": (64, 32), "modules": (1, 1, 1)},
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
            elif isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 - 0.1)
            elif isinstance(m, LearnableBias):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name", models.list_models())
def test_onnx_runtime_matches_torch(name: str, tmp_path: Path) -> None:
    model = _randomize(models.build(name, **SMALL.get(name, {})), seed=len(name))
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == OPSET
    assert not any(n.op_type.startswith("PythonOp") for n in proto.graph.node)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    h, w = model.spec.input_size
    for batch in (1, 3):  # exported with batch 1: the batch dimension is dynamic
        x = torch.randn(batch, model.spec.in_chans, h, w, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run(None, {"input": x.numpy()})[0]
        scale = float(np.abs(ref).mean()) + 1e-6
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * scale)


def test_export_cli_float_twin(tmp_path: Path) -> None:
    out = tmp_path / "twin.onnx"
    argv = ["export-onnx", "--model", "resnet18-small", "--random-init", "--float-twin", "--set", "width=16"]
    assert binpose_main([*argv, "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0]
    assert y.shape == (2, 10)
    assert not any(n.op_type == "Where" for n in onnx.load(str(out)).graph.node)
