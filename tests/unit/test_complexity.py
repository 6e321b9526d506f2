"""Complexity figures reproduce the paper's convention (OPs = BOPs / 64 + FLOPs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.binarizers import get_binarizer
from models.complexity import profile
from models.layers import BinaryConv2d


@pytest.mark.parametrize(
    ("name", "bops", "flops", "ops"),
    [("resnet18", 1.676e9, 1.378e8, 1.640e8), ("resnet34", 3.526e9, None, 1.929e8)],
)
def test_paper_figures(name: str, bops: float, flops: float | None, ops: float) -> None:
    c = profile(models.build(name))
    assert c.bops == pytest.approx(bops, rel=0.01)
    if flops is not None:
        assert c.flops == pytest.approx(flops, rel=0.03)
    assert c.ops == pytest.approx(ops, rel=0.03)


def test_counts_by_hand_on_a_small_network() -> None:
    """One float 3x3 conv (3->8, 10x10 out), one binary 3x3 conv (8->16, stride 2 -> 5x5), a linear 16->4."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.b = BinaryConv2d(8, 16, 3, 2, 1, weight_binarizer=get_binarizer("mlp"),
                                  act_binarizer=get_binarizer("ste"), threshold=False)  # fmt: skip
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.b(self.a(x)).mean(dim=(2, 3)))

    c = profile(Net(), input_size=(10, 10), in_chans=3)
    assert c.flops == 10 * 10 * 8 * 3 * 9 + 16 * 4
    assert c.bops == 5 * 5 * 16 * 8 * 9
    assert c.params_binary == 16 * 8 * 9
    assert c.params_float == 8 * 3 * 9 + 16 * 4 + 4  # the MLP estimator is not part of the deployed network
    assert c.packed_bytes == (16 * 8 * 9) // 8 + 4 * c.params_float
    assert c.ops == c.bops / 64 + c.flops


def test_packed_resnet18_is_over_ten_times_smaller_than_fp32() -> None:
    binary = profile(models.build("resnet18"))
    twin = profile(models.build("resnet18", binary=False))
    assert twin.packed_bytes / binary.packed_bytes > 10
