"""torchvision -> d2ext weight import: one converter per architecture name.

Each converter maps a torchvision ``state_dict`` onto the key names of the d2ext model that a
``configs/...`` YAML builds (model-level keys, e.g. ``backbone.features.0.weight``), so the result
can be saved as a Detectron2 checkpoint (``{"model": state_dict}``) and loaded via MODEL.WEIGHTS.
``tools/convert_weights.py --arch NAME`` looks converters up here. No weights are downloaded:
the user supplies the torchvision file. Darknet ``.cfg`` + ``.weights`` files are not state
dicts and go through :mod:`d2ext.modeling.darknet_weights` instead (``--arch darknet``).
"""
from typing import List

from detectron2.utils.registry import Registry

__all__ = ["WEIGHT_CONVERTER_REGISTRY", "register_weight_converter", "get_weight_converter",
           "list_weight_converters"]

WEIGHT_CONVERTER_REGISTRY = Registry("WEIGHT_CONVERTER")
WEIGHT_CONVERTER_REGISTRY.__doc__ = """``fn(torchvision_state_dict) -> d2ext model state_dict``, by
architecture name (``resnet34``, ``ssd300_vgg16``, ...)."""


def register_weight_converter(arch: str):
    """Decorator: register ``fn`` under ``arch`` (not its function name, which is what
    ``Registry.register`` would use; a second registration of a name raises, as Registry does)."""

    def deco(fn):
        WEIGHT_CONVERTER_REGISTRY._do_register(arch, fn)
        return fn

    return deco


def get_weight_converter(arch: str):
    """The converter registered as ``arch``; ``KeyError`` listing the known names otherwise."""
    if arch not in WEIGHT_CONVERTER_REGISTRY:
        raise KeyError(f"no weight converter for {arch!r}; known: {list_weight_converters()}")
    return WEIGHT_CONVERTER_REGISTRY.get(arch)


def list_weight_converters() -> List[str]:
    return sorted(name for name, _ in WEIGHT_CONVERTER_REGISTRY)
