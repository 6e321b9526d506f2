"""Binarizers: forward sgn(x) in {-1, +1} (sgn(0) = +1), each with its own backward (gradient estimator).

A registry keyed by name, resolved by :func:`get_binarizer`. Every binarizer is a small ``nn.Module`` so that learned
estimators (``linear``, ``mlp``, ``mlp-classifier``) carry parameters, and annealed ones (``ede``) carry a schedule that
the training loop drives through :func:`set_binarizer_progress`.

Weights and activations are binarized differently (He et al. 2023, following their released code):

- weights: ``w_c = w - mean_c(w)`` per output channel, ``alpha_c = mean|w_c|`` (no gradient), ``W_b = alpha * B(w_c)``
  (:func:`binarize_weight`);
- activations: ``B(x + b_c)`` with an optional learnable per-channel threshold ``b_c`` (``layers.LearnableBias``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

BINARIZERS: dict[str, type[Binarizer]] = {}


def sgn(x: Tensor) -> Tensor:
    """sgn(x) = +1 if x >= 0 else -1 (unlike torch.sign, sgn(0) = +1)."""
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


def register_binarizer(name: str) -> Callable[[type[Binarizer]], type[Binarizer]]:
    def decorator(cls: type[Binarizer]) -> type[Binarizer]:
        if name in BINARIZERS:
            raise ValueError(f"binarizer {name!r} is already registered by {BINARIZERS[name].__name__}")
        BINARIZERS[name] = cls
        cls.name = name
        return cls

    return decorator


def list_binarizers() -> list[str]:
    return sorted(BINARIZERS)


class Binarizer(nn.Module):
    """Base class: ``forward(x)`` returns a tensor of exactly +-1 of x's shape, differentiable through the estimator."""

    name: str = ""

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1]; annealed binarizers override this."""

    def extra_repr(self) -> str:
        return self.name


class _ScaledSurrogate(torch.autograd.Function):
    """Forward sgn(x); backward g * d(x), with d given as a function of x."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, derivative: Callable[[Tensor], Tensor]) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.derivative = derivative
        return sgn(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * ctx.derivative(x), None


class _FormulaBinarizer(Binarizer):
    """A binarizer whose backward is g * derivative(x) for a fixed (or scheduled) formula."""

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return sgn(x)
        return _ScaledSurrogate.apply(x, self.derivative)


@register_binarizer("ste")
class STE(_FormulaBinarizer):
    r"""Clipped straight-through estimator (Hubara et al. 2016, "Binarized Neural Networks", arXiv:1602.02830;
    Bengio et al. 2013).

    Forward: :math:`y = \mathrm{sgn}(x)`. Backward: :math:`\partial L/\partial x = g \cdot 1\{|x| \le 1\}`.
    """

    def derivative(self, x: Tensor) -> Tensor:
        return (x.abs() <= 1).to(x.dtype)



@register_binarizer("approxsign")
class ApproxSign(_FormulaBinarizer):
    r"""Bi-Real Net's ApproxSign (Liu et al. 2018, "Bi-Real Net", arXiv:1808.00278).

    Forward: :math:`y = \mathrm{sgn}(x)`. Backward: :math:`g \cdot (2 + 2x)` on :math:`[-1, 0)`,
    :math:`g \cdot (2 - 2x)` on :math:`[0, 1)`, 0 elsewhere, i.e. :math:`g \cdot \max(0, 2 - 2|x|)`.
    """

    def derivative(self, x: Tensor) -> Tensor:
        return torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)



@register_binarizer("ede")
class EDE(_FormulaBinarizer):
    r"""IR-Net's Error Decay Estimator (Qin et al. 2020, "Forward and Backward Information Retention", arXiv:1909.10788).

    Forward: :math:`y = \mathrm{sgn}(x)`. Backward: :math:`g \cdot k t (1 - \tanh^2(t x))`, the derivative of
    :math:`k \tanh(t x)`, with :math:`t = T_{min} 10^{p \log_{10}(T_{max}/T_{min})}` annealed from :math:`T_{min}=0.1`
    to :math:`T_{max}=10` as training progress :math:`p` goes 0 -> 1, and :math:`k = \max(1/t, 1)`.
    The training loop drives p through :func:`set_binarizer_progress`.
    """

    def __init__(self, t_min: float = 0.1, t_max: float = 10.0) -> None:
        super().__init__()
        self.t_min, self.t_max = t_min, t_max
        self.t = t_min
        self.k = max(1.0 / self.t, 1.0)

    def set_progress(self, progress: float) -> None:
        p = min(max(progress, 0.0), 1.0)
        self.t = self.t_min * 10 ** (p * math.log10(self.t_max / self.t_min))
        self.k = max(1.0 / self.t, 1.0)

    def derivative(self, x: Tensor) -> Tensor:
        return self.k * self.t * (1.0 - torch.tanh(self.t * x) ** 2)


    def extra_repr(self) -> str:
        return f"t={self.t:.4g}, k={self.k:.4g}"


_CHUNK = 1 << 18  # elements per estimator evaluation: bounds the hidden activations to ~100 MB for the 100-unit MLP


def _estimator_outputs(estimator: nn.Module, x: Tensor) -> Tensor:
    """o = f(x) elementwise, [*x.shape, 2], evaluated chunk by chunk without building a graph."""
    flat = x.detach().reshape(-1, 1)
    with torch.no_grad():
        parts = [estimator(flat[i : i + _CHUNK]) for i in range(0, flat.shape[0], _CHUNK)]
    return torch.cat(parts).reshape(*x.shape, 2)


class _EstimatorGradient(torch.autograd.Function):
    """Value 0 (it stands for s(x) - sg(s(x))); backward gives the gradient of s(x) = sum_k hardtanh(o_k(x)) to x and
    to the estimator's parameters. The hidden activations are recomputed chunk by chunk in backward instead of being
    stored: the MLP has 100 hidden units per element, and a network has millions of weights."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, estimator: nn.Module, surrogate: Callable[[Tensor], Tensor], *params: Tensor
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.estimator = estimator
        ctx.surrogate = surrogate
        return torch.zeros_like(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        params = list(ctx.estimator.parameters())
        if x.numel() > GRID_THRESHOLD and float(x.max() - x.min()) > 0:
            grad_x, grad_params = _grid_backward(ctx.estimator, ctx.surrogate, x.detach(), grad, params)
            return (grad_x, None, None, *grad_params)
        flat_x, flat_g = x.detach().reshape(-1, 1), grad.reshape(-1, 1)
        grad_x = torch.empty_like(flat_x)
        grad_params = [torch.zeros_like(p) for p in params]
        for i in range(0, flat_x.shape[0], _CHUNK):
            xc = flat_x[i : i + _CHUNK].requires_grad_(True)
            with torch.enable_grad():
                s = ctx.surrogate(ctx.estimator(xc))
                grads = torch.autograd.grad(s, [xc, *params], grad_outputs=flat_g[i : i + _CHUNK])
            grad_x[i : i + _CHUNK] = grads[0]
            for acc, g in zip(grad_params, grads[1:], strict=True):
                acc += g
        return (grad_x.reshape(x.shape), None, None, *grad_params)


GRID_THRESHOLD = 1 << 14  # above this many elements the backward goes through a grid (see _grid_backward)
GRID_POINTS = 8193


def _grid_backward(
    estimator: nn.Module, surrogate: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor, params: list[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """The backward of s for millions of elements at the cost of one pass over them.

    s is a scalar function of a scalar, so it is evaluated on a uniform grid t_0..t_{G-1} spanning [min x, max x] and
    replaced by its piecewise-linear interpolant s~(x) = sum_j phi_j(x) s(t_j) (hat functions phi_j). The estimator's
    parameter gradient of sum_i g_i s~(x_i) is exactly sum_j (sum_i g_i phi_j(x_i)) ds(t_j)/dtheta: the incoming
    gradients are scattered onto the grid with the interpolation weights, then one backward runs over G points instead
    of over every element. The input gradient interpolates s'(t_j) the same way. With G = 8193 points the grid step is
    below 1/4000 of the weights' range; only elements within one step of a gate |o_k| = 1 see a smoothed gate.
    """
    flat_x, flat_g = x.reshape(-1), grad.reshape(-1)
    lo, hi = flat_x.min(), flat_x.max()
    step = (hi - lo) / (GRID_POINTS - 1)
    pos = ((flat_x - lo) / step).clamp_(0, GRID_POINTS - 1)
    left = pos.floor().clamp_(max=GRID_POINTS - 2)
    w_right = pos - left
    index = left.long()
    scattered = torch.zeros(GRID_POINTS, dtype=flat_g.dtype, device=flat_g.device)
    scattered.index_add_(0, index, flat_g * (1 - w_right))
    scattered.index_add_(0, index + 1, flat_g * w_right)
    grid = (lo + step * torch.arange(GRID_POINTS, dtype=x.dtype, device=x.device)).reshape(-1, 1).requires_grad_(True)
    with torch.enable_grad():
        s = surrogate(estimator(grid))
        grad_params = torch.autograd.grad(s, params, grad_outputs=scattered.reshape(-1, 1), retain_graph=True)
        (slope,) = torch.autograd.grad(s.sum(), grid)
    slope = slope.reshape(-1)
    grad_x = flat_g * (slope[index] * (1 - w_right) + slope[index + 1] * w_right)
    return grad_x.reshape(x.shape), list(grad_params)


class _LearnedEstimator(Binarizer):
    r"""The paper's learned estimator (He et al. 2023, "Binarizing by Classification: Is soft function really
    necessary?", arXiv:2205.07433): a small network :math:`f: \mathbb{R} \to \mathbb{R}^2` applied elementwise.

    Forward: :math:`y = \mathrm{sgn}(x)`. Backward: with :math:`o = f(x)` and :math:`s(x) = \sum_k
    \mathrm{hardtanh}(o_k(x))`, :math:`y = \mathrm{sgn}(x) + s(x) - \mathrm{sg}(s(x))`, so
    :math:`\partial L/\partial x = g \sum_k 1\{|o_k| < 1\} \, \partial o_k / \partial x` and the estimator's own
    parameters get :math:`g \sum_k 1\{|o_k| < 1\} \, \partial o_k / \partial \theta` from the task loss.
    The estimator module is shared: pass the same ``estimator`` to every layer of a network.
    """

    def __init__(self, estimator: nn.Module | None = None) -> None:
        super().__init__()
        self.estimator = estimator if estimator is not None else self.make_estimator()

    @staticmethod
    def make_estimator() -> nn.Module:
        raise NotImplementedError

    def hard(self, x: Tensor) -> Tensor:
        """The forward value, in {-1, +1}."""
        return sgn(x)

    @staticmethod
    def surrogate(o: Tensor) -> Tensor:
        """s from the estimator's outputs o [E, 2] -> [E, 1]; its gradient is the backward."""
        return F.hardtanh(o).sum(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        hard = self.hard(x).detach()
        params = list(self.estimator.parameters())
        if not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params))):
            return hard
        return hard + _EstimatorGradient.apply(x, self.estimator, self.surrogate, *params)

    def slope_at_zero(self) -> float:
        """d s / dx at x = 0 (the estimator's gradient scale for small inputs)."""
        x = torch.zeros(1, 1, requires_grad=True)
        p = next(self.estimator.parameters())
        with torch.enable_grad():
            o = self.estimator(x.to(p.dtype).to(p.device))
            (grad,) = torch.autograd.grad(self.surrogate(o).sum(), x)
        return float(grad)


def _make_mlp(hidden: int = 100, positive_slope: bool = True) -> nn.Sequential:
    first, last = nn.Linear(1, hidden, bias=False), nn.Linear(hidden, 2, bias=False)
    if positive_slope:
        # At default init the slope at 0 is negative for about half of the seeds (reference.md): flip the output layer
        # so every run starts as a straight-through estimator with a positive scale. tanh'(0) = 1.
        with torch.no_grad():
            if (last.weight @ first.weight).sum() < 0:
                last.weight.neg_()
    return nn.Sequential(first, nn.Tanh(), last)


@register_binarizer("linear")
class LinearEstimator(_LearnedEstimator):
    __doc__ = (_LearnedEstimator.__doc__ or "") + r"""
    ``linear``: :math:`f(x) = W x` with :math:`W \in \mathbb{R}^{2 \times 1}` (no bias): a straight-through
    estimator with a learned scale :math:`\sum_k W_k 1\{|W_k x| < 1\}`. Initialized to :math:`W_k = 0.5`
    (slope 1 at 0, the clipped STE of width 2).
    """

    @staticmethod
    def make_estimator() -> nn.Module:
        layer = nn.Linear(1, 2, bias=False)
        nn.init.constant_(layer.weight, 0.5)
        return layer


@register_binarizer("mlp")
class MLPEstimator(_LearnedEstimator):
    __doc__ = (_LearnedEstimator.__doc__ or "") + r"""
    ``mlp``: :math:`f = \mathrm{Linear}(100 \to 2) \circ \tanh \circ \mathrm{Linear}(1 \to 100)`, no biases, as in the
    authors' released code; the output layer is sign-flipped at init if needed so the slope at 0 is positive.
    """

    @staticmethod
    def make_estimator() -> nn.Module:
        return _make_mlp()


@register_binarizer("mlp-classifier")
class MLPClassifier(MLPEstimator):
    r"""The paper's classifier variant (He et al. 2023, arXiv:2205.07433), for weights.

    Forward: :math:`y = 2 \arg\max_k o_k(x) - 1` with :math:`o = \mathrm{MLP}(x)`; ties (e.g. x = 0 for the bias-free
    MLP) give +1. Backward: through the classifier's margin, :math:`s(x) = \mathrm{hardtanh}(o_1(x) - o_0(x))`, so the
    gradient moves x across the learned decision boundary (and trains the MLP) only where the margin is below 1.
    Initialized so the margin increases at 0, i.e. the classifier starts as sgn(x) near 0.
    """

    @staticmethod
    def make_estimator() -> nn.Module:
        mlp = _make_mlp(positive_slope=False)
        first, last = mlp[0], mlp[2]
        assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
        with torch.no_grad():
            if ((last.weight[1] - last.weight[0]) * first.weight[:, 0]).sum() < 0:
                last.weight.copy_(last.weight.flip(0))
        return mlp

    @staticmethod
    def surrogate(o: Tensor) -> Tensor:
        return F.hardtanh(o[:, 1:2] - o[:, 0:1])

    def hard(self, x: Tensor) -> Tensor:
        o = _estimator_outputs(self.estimator, x)
        return sgn(o[..., 1] - o[..., 0])


def get_binarizer(identifier: str | dict[str, Any] | Binarizer | None, **kwargs: Any) -> Binarizer | None:
    """Resolve a binarizer from None, a registered name, a config dict {"name": ..., **kwargs} or an instance."""
    if identifier is None or isinstance(identifier, Binarizer):
        return identifier
    if isinstance(identifier, dict):
        cfg = dict(identifier)
        name = cfg.pop("name")
        return get_binarizer(name, **cfg, **kwargs)
    if isinstance(identifier, str):
        if identifier not in BINARIZERS:
            raise ValueError(f"unknown binarizer {identifier!r}; choose one of {list_binarizers()}")
        return BINARIZERS[identifier](**kwargs)
    raise ValueError(
        f"cannot make a binarizer from {identifier!r}: pass None, a name from {list_binarizers()}, "
        "a dict {'name': ..., **kwargs} or a Binarizer instance"
    )


class BinarizerFactory:
    """Makes the binarizers of one network. Learned estimators share one estimator module across the network."""

    def __init__(self, identifier: str | dict[str, Any] | None) -> None:
        self.identifier = identifier
        self._shared: nn.Module | None = None

    def __call__(self) -> Binarizer | None:
        name = self.identifier["name"] if isinstance(self.identifier, dict) else self.identifier
        if name is not None and issubclass(BINARIZERS.get(name, Binarizer), _LearnedEstimator):
            binarizer = get_binarizer(self.identifier, estimator=self._shared)
            assert isinstance(binarizer, _LearnedEstimator)
            self._shared = binarizer.estimator
            return binarizer
        return get_binarizer(self.identifier)


def binarize_weight(weight: Tensor, binarizer: Binarizer) -> Tensor:
    """alpha * B(w - mean(w)) per output channel (dim 0); alpha = mean|w - mean(w)| carries no gradient."""
    dims = tuple(range(1, weight.dim()))
    centered = weight - weight.mean(dim=dims, keepdim=True)
    alpha = centered.abs().mean(dim=dims, keepdim=True).detach()
    return alpha * binarizer(centered)


def _binarizers(model: nn.Module) -> Iterator[Binarizer]:
    for module in model.modules():
        if isinstance(module, Binarizer):
            yield module


def binarizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the learned estimators (each shared estimator once): their own optimizer group."""
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for binarizer in _binarizers(model):
        for p in binarizer.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def latent_weight_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Latent float weights of the binary layers (weight decay 0 in the paper's recipe)."""
    from .layers import BinaryConv2d  # local: layers imports this module

    return [m.weight for m in model.modules() if isinstance(m, BinaryConv2d) and isinstance(m.weight, nn.Parameter)]


def set_binarizer_progress(model: nn.Module, progress: float) -> None:
    """Tell every binarizer how far training is (0 -> 1); drives EDE's annealing."""
    for binarizer in _binarizers(model):
        binarizer.set_progress(progress)


def mlp_slope_at_zero(model: nn.Module) -> float | None:
    """Slope at 0 of the network's (first) learned estimator, or None if it has none."""
    for binarizer in _binarizers(model):
        if isinstance(binarizer, _LearnedEstimator):
            return binarizer.slope_at_zero()
    return None
