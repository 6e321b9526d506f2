"""Every registered model: forward and backward at its input size, output shapes, a float twin of the same shapes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import models
from models.binarizers import binarizer_parameters, latent_weight_parameters, mlp_slope_at_zero
from models.layers import BinaryConv2d
from models.spec import COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, ModelSpec

ALL = models.list_models()


def _expected_output_shape(spec: ModelSpec, batch: int) -> tuple[int, ...]:
    if spec.task == "classification":
        return (batch, spec.num_classes)
    assert spec.heatmap_size is not None
    return (batch, spec.num_keypoints, *spec.heatmap_size)


def test_registry_holds_the_product_zoo() -> None:
    assert {"resnet18", "resnet34", "resnet18-small", "sbpn-r18", "sbpn-r34", "bhrnet-w18", "bhrnet-w32"} <= set(ALL)
    with pytest.raises(ValueError, match="registered models"):
        models.build("resnet19")


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_and_float_twin(name: str) -> None:
    torch.manual_seed(0)
    # The default weight estimator (the 100-unit MLP) is exercised in test_binarizers and the small test below;
    # a cheap estimator keeps full-size backward passes fast here. The topology is what this test is about.
    model = models.build(name, weight_binarizer="ste")
    spec = model.spec
    assert spec.binary and spec.name == name
    x = torch.randn(2, spec.in_chans, *spec.input_size)
    y = model(x)
    assert y.shape == _expected_output_shape(spec, 2)
    y.square().mean().backward()
    binary_convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert binary_convs, "a binary network has binary convolutions"
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in binary_convs)

    twin = models.build(name, binary=False)
    assert not twin.spec.binary
    assert not any(isinstance(m, BinaryConv2d) for m in twin.modules())
    with torch.no_grad():
        assert twin(x).shape == y.shape

    if spec.task == "pose":
        assert spec.input_size == (256, 192) and spec.heatmap_size == (64, 48)
        assert spec.keypoint_names == COCO_KEYPOINT_NAMES and spec.flip_pairs == COCO_FLIP_PAIRS
    else:
        assert len(spec.class_names) == spec.num_classes
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_default_binarizers_are_the_papers() -> None:
    model = models.build("resnet18-small", width=8, num_classes=10, in_chans=1, input_size=28)
    assert model.spec.extra["weight_binarizer"] == "mlp" and model.spec.extra["act_binarizer"] == "approxsign"
    estimator = binarizer_parameters(model)
    assert [tuple(p.shape) for p in estimator] == [(100, 1), (2, 100)]  # one MLP shared by the whole network
    assert len(latent_weight_parameters(model)) == 16
    slope = mlp_slope_at_zero(model)
    assert slope is not None and slope > 0
    y = model(torch.randn(3, 1, 28, 28))
    assert y.shape == (3, 10)
    y.sum().backward()
    assert all(p.grad is not None for p in estimator)


def test_overrides_are_checked() -> None:
    with pytest.raises(TypeError, match="unknown overrides"):
        models.build("sbpn-r18", colour="red")
    with pytest.raises(ValueError, match="multiple of 32"):
        models.build("bhrnet-w18", input_size=(250, 190))
    model = models.build("resnet18", num_classes=7, class_names=list("abcdefg"))
    assert model.spec.class_names == tuple("abcdefg")


def test_models_cli_json() -> None:
    out = subprocess.run([sys.executable, "-m", "binpose.cli", "models", "--json"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(ALL)
    for r in rows.values():
        assert {"name", "task", "input_size", "params_binary", "params_float", "bops", "flops", "ops",
                "packed_bytes"} <= set(r)  # fmt: skip
        assert r["ops"] == pytest.approx(r["bops"] / 64 + r["flops"])
    assert rows["resnet18"]["bops"] == pytest.approx(1.676e9, rel=0.01)
