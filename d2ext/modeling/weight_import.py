"""torchvision -> d2ext weight import: one converter per architecture name.

Each converter maps a torchvision ``state_dict`` onto the key names of the d2ext model that a
``configs/...`` YAML builds (model-level keys, e.g. ``backbone.features.0.weight``), so the result
can be saved as a Detectron2 checkpoint (``{"model": state_dict}``) and loaded via MODEL.WEIGHTS.
``tools/convert_weights.py --arch NAME`` looks converters up here. No weights are downloaded:
the user supplies the torchvision file.
"""
from typing import Callable, Dict

import torch

__all__ = ["register_weight_converter", "get_weight_converter", "WEIGHT_CONVERTERS"]

WEIGHT_CONVERTERS: Dict[str, Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = {}


def register_weight_converter(arch: str):
    """Decorator: ``fn(torchvision_state_dict) -> d2ext model state_dict`` for ``arch``."""

    def deco(fn):
        if arch in WEIGHT_CONVERTERS and WEIGHT_CONVERTERS[arch] is not fn:
            raise KeyError(f"weight converter {arch!r} is already registered")
        WEIGHT_CONVERTERS[arch] = fn
        return fn

    return deco


def get_weight_converter(arch: str):
    if arch not in WEIGHT_CONVERTERS:
        raise KeyError(f"no weight converter for {arch!r}; known: {sorted(WEIGHT_CONVERTERS)}")
    return WEIGHT_CONVERTERS[arch]
