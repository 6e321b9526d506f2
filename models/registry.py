"""The model registry: one ``register`` decorator, one ``build(name, **overrides)``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from .spec import ModelSpec

logger = logging.getLogger(__name__)

Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder ``f(**overrides) -> nn.Module`` (the module carries ``.spec``) under ``name``."""

    def decorator(builder: Builder) -> Builder:
        if name in _BUILDERS:
            logger.warning("model %r registered again; the later builder wins", name)
        _BUILDERS[name] = builder
        return builder

    return decorator


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model (float-simulated, trainable). Overrides that are None are dropped.

    Common overrides: ``binary=False`` (the float twin), ``num_classes``, ``in_chans``, ``input_size``, ``width``,
    ``weight_binarizer``, ``act_binarizer``, ``binarizer`` (sets the weight binarizer).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if "binarizer" in kwargs:
        kwargs["weight_binarizer"] = kwargs.pop("binarizer")
    model = _BUILDERS[name](**kwargs)
    if not isinstance(getattr(model, "spec", None), ModelSpec):
        raise TypeError(f"builder of {name!r} returned a module without a ModelSpec .spec")
    return model


def get_spec(name: str, **overrides: Any) -> ModelSpec:
    spec: ModelSpec = build(name, **overrides).spec  # type: ignore[assignment]
    return spec
