"""binpose models: binarizers, binary layers, the registered networks and their complexity."""

from . import bhrnet, resnet, sbpn  # noqa: F401  (register the networks)
from .registry import build, get_spec, list_models, register
from .spec import ModelSpec

__all__ = ["ModelSpec", "build", "get_spec", "list_models", "register"]
