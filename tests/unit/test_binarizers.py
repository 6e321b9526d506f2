"""Binarizers: exact +-1 forward with sgn(0) = +1, and each backward against an independent formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.binarizers import (
    BinarizerFactory,
    binarize_weight,
    binarizer_parameters,
    get_binarizer,
    list_binarizers,
    set_binarizer_progress,
)
from models.layers import BinaryConv2d

GRID = torch.linspace(-2.5, 2.5, 501, dtype=torch.float64).float()  # includes 0 and +-1 exactly


def _grad_of(binarizer: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    y = binarizer(x)
    (grad,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(x) if g is None else g)
    return grad


@pytest.mark.parametrize("name", list_binarizers())
def test_forward_is_sign_with_zero_positive(name: str) -> None:
    b = get_binarizer(name)
    x = torch.tensor([-3.0, -1e-7, 0.0, 1e-7, 2.0])
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            y = b(x.clone().requires_grad_(grad_mode))
        assert set(y.detach().unique().tolist()) <= {-1.0, 1.0}
        assert y[2].item() == 1.0
        if name != "mlp-classifier":  # the classifier's forward is argmax of its MLP, not sgn(x)
            assert y.detach().tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]


def test_ste_backward() -> None:
    expected = ((GRID >= -1) & (GRID <= 1)).float()
    assert torch.equal(_grad_of(get_binarizer("ste"), GRID), expected)


def test_approxsign_backward() -> None:
    x = GRID.double()
    expected = torch.where((x >= -1) & (x < 0), 2 + 2 * x, torch.where((x >= 0) & (x < 1), 2 - 2 * x, 0 * x))
    assert torch.allclose(_grad_of(get_binarizer("approxsign"), GRID).double(), expected, atol=1e-6)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_ede_backward_follows_schedule(progress: float) -> None:
    b = get_binarizer("ede")
    set_binarizer_progress(nn.Sequential(b), progress)
    t = 0.1 * (10.0 / 0.1) ** progress
    k = max(1 / t, 1.0)
    x = GRID.double()
    expected = k * t / torch.cosh(t * x) ** 2  # d/dx k tanh(tx)
    assert torch.allclose(_grad_of(b, GRID).double(), expected, rtol=1e-4, atol=1e-6)


def _reference_learned_grad(weights: list[torch.Tensor], x: torch.Tensor, margin: bool = False) -> torch.Tensor:
    """d/dx sum_k hardtanh(o_k(x)) written out by hand: o = W2 tanh(W1 x) (or o = W x for one layer)."""
    x = x.double()
    if len(weights) == 1:
        w = weights[0].double().reshape(2)
        o = x[:, None] * w[None, :]
        do = w[None, :].expand_as(o)
    else:
        w1, w2 = weights[0].double().reshape(-1), weights[1].double()  # [H], [2, H]
        h = torch.tanh(x[:, None] * w1[None, :])  # [E, H]
        o = h @ w2.T
        do = ((1 - h**2) * w1[None, :]) @ w2.T  # [E, 2]
    if margin:  # the classifier: s = hardtanh(o_1 - o_0)
        o, do = o[:, 1:] - o[:, :1], do[:, 1:] - do[:, :1]
    mask = (o.abs() < 1).double()
    return (mask * do).sum(dim=1)


@pytest.mark.parametrize("name", ["linear", "mlp", "mlp-classifier"])
def test_learned_estimator_backward(name: str) -> None:
    torch.manual_seed(0)
    b = get_binarizer(name)
    with torch.no_grad():  # make the gates |o_k| < 1 bite inside the grid
        params = list(b.parameters())
        for p in params:
            p.mul_(3.0)
        params[-1].mul_(4.0)
    weights = [p.detach() for p in b.parameters()]
    expected = _reference_learned_grad(weights, GRID, margin=name == "mlp-classifier")
    assert torch.allclose(_grad_of(b, GRID).double(), expected, atol=1e-5)
    assert (expected == 0).any() and (expected != 0).any()


def test_mlp_classifier_forward_is_argmax() -> None:
    torch.manual_seed(1)
    b = get_binarizer("mlp-classifier")
    w1, w2 = (p.detach() for p in b.parameters())
    o = torch.tanh(GRID[:, None] * w1.reshape(1, -1)) @ w2.T
    expected = torch.where(o[:, 1] >= o[:, 0], 1.0, -1.0)
    assert torch.equal(b(GRID), expected)


def test_mlp_starts_with_positive_slope_and_is_shared() -> None:
    for seed in range(8):
        torch.manual_seed(seed)
        make = BinarizerFactory("mlp")
        first, second = make(), make()
        assert first is not None and second is not None
        assert first.estimator is second.estimator
        assert first.slope_at_zero() > 0  # type: ignore[attr-defined]
        classifier = BinarizerFactory("mlp-classifier")()
        assert classifier is not None and classifier.slope_at_zero() > 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["linear", "mlp", "mlp-classifier"])
def test_learned_parameters_get_gradients_and_change(name: str) -> None:
    torch.manual_seed(0)
    make = BinarizerFactory(name)
    conv = BinaryConv2d(4, 8, 3, padding=1, weight_binarizer=make(), act_binarizer=get_binarizer("approxsign"))
    params = binarizer_parameters(conv)
    assert params, "a learned estimator exposes parameters"
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss = (conv(torch.randn(2, 4, 6, 6)) - torch.randn(2, 8, 6, 6)).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, params, strict=True))


def test_weight_binarization_centers_and_scales() -> None:
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    wb = binarize_weight(w, get_binarizer("ste"))
    centered = w - w.mean(dim=(1, 2, 3), keepdim=True)
    alpha = centered.abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = alpha * torch.where(centered >= 0, 1.0, -1.0)
    assert torch.allclose(wb, expected)


def test_unknown_binarizer_lists_choices() -> None:
    with pytest.raises(ValueError, match="approxsign"):
        get_binarizer("nope")
    with pytest.raises(ValueError, match="pass None"):
        get_binarizer(3.5)  # type: ignore[arg-type]


class _TinyBinaryNet(nn.Module):
    def __init__(self, binarizer: str) -> None:
        super().__init__()
        make_w = BinarizerFactory(binarizer)
        self.conv = BinaryConv2d(1, 16, 3, padding=1, weight_binarizer=make_w(), act_binarizer=get_binarizer("ste"))
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["ste", "approxsign", "ede", "linear", "mlp", "mlp-classifier"])
def test_tiny_binary_network_learns(name: str) -> None:
    """Two classes of 6x6 images: a bright left half or a bright right half. The loss must fall clearly."""
    torch.manual_seed(0)
    n = 128
    labels = torch.randint(0, 2, (n,))
    x = torch.randn(n, 1, 6, 6) * 0.3
    x[labels == 0, :, :, :3] += 1.0
    x[labels == 1, :, :, 3:] += 1.0
    net = _TinyBinaryNet(name)
    estimator = binarizer_parameters(net)  # the paper's recipe: the estimator has its own group and learning rate
    rest = [p for p in net.parameters() if all(p is not q for q in estimator)]
    opt = torch.optim.Adam([{"params": rest}, {"params": estimator, "lr": 1e-3}], lr=0.02)
    losses = []
    steps = 60
    for step in range(steps):
        set_binarizer_progress(net, step / steps)
        loss = nn.functional.cross_entropy(net(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(2) * 0.8
    assert min(losses[-10:]) < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("name", ["linear", "mlp", "mlp-classifier"])
def test_grid_backward_matches_elementwise_backward(name: str) -> None:
    """Above GRID_THRESHOLD elements the learned estimators' backward runs on a grid; compare with the exact per-element
    gradient written out by hand (as in test_learned_estimator_backward)."""
    from models import binarizers

    torch.manual_seed(0)
    b = get_binarizer(name)
    with torch.no_grad():
        params = list(b.parameters())
        for p in params:
            p.mul_(3.0)
    x = torch.randn(binarizers.GRID_THRESHOLD * 4) * 0.7
    g = torch.randn_like(x)
    weights = [p.detach() for p in params]
    expected_x = _reference_learned_grad(weights, x, margin=name == "mlp-classifier") * g.double()
    got_x = _grad_of(b, x, g).double()
    close = (got_x - expected_x).abs() <= 1e-3 * (1 + expected_x.abs())
    assert close.float().mean() > 0.995  # only elements next to a gate |o_k| = 1 may differ
    # Parameter gradients: exact per-element reference through plain autograd (float64). Inputs and incoming gradients
    # of one sign, so the sum is not dominated by cancellation (with mixed signs the exact sum is ~sqrt(n) while each
    # element next to a gate may be off by its own size, and no relative tolerance would be meaningful).
    g, x = g.abs(), x.abs()
    x64 = x.double()
    layers = [w.double().requires_grad_(True) for w in weights]
    if len(layers) == 1:
        o = x64[:, None] * layers[0].reshape(1, 2)
    else:
        o = torch.tanh(x64[:, None] * layers[0].reshape(1, -1)) @ layers[1].T
    s = F_hardtanh(o[:, 1] - o[:, 0]) if name == "mlp-classifier" else F_hardtanh(o).sum(dim=1)
    expected_p = torch.autograd.grad((s * g.double()).sum(), layers)
    for p in params:
        p.grad = None
    x_req = x.clone().requires_grad_(True)
    (b(x_req) * g).sum().backward()
    for p, e in zip(params, expected_p, strict=True):
        assert p.grad is not None
        assert torch.allclose(p.grad.double(), e, rtol=2e-2, atol=1e-2 * float(e.abs().max())), name


def F_hardtanh(t: torch.Tensor) -> torch.Tensor:
    return t.clamp(-1.0, 1.0)
