"""AlexNet (Krizhevsky, Sutskever & Hinton 2012), in torchvision's single-GPU layout.

Input ``(N, 3, H, W)``, nominally 224x224 (RGB, ImageNet mean/std, as torchvision's weights).

==========  ==============================================  ========  ==============
stage       layers                                          channels  nominal stride
==========  ==============================================  ========  ==============
``conv1``   conv1 11x11/4 (pad 2), ReLU                     64        4  (224 -> 55)
``conv2``   pool1 3x3/2, conv2 5x5 (pad 2), ReLU            192       8  (27)
``conv5``   pool2 3x3/2, conv3, conv4, conv5 3x3, ReLUs     256       16 (13)
``pool5``   pool5 3x3/2                                     256       32 (6)
==========  ==============================================  ========  ==============

The strides are nominal (overlapping 3x3/2 pools, an 11x11/4 first conv), so the backbone asks
for no input padding (``size_divisibility`` 0). The classifier (``MODEL.CLASSIFIER``: POOL_SIZE 6,
HIDDEN_DIMS [4096, 4096], DROPOUT 0.5, DROPOUT_FIRST True) gives torchvision's ``alexnet``
exactly: 61,100,840 parameters.
"""
import re
from collections import OrderedDict

from torch import nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ..weight_import import register_weight_converter
from .blocks import StagedBackbone, rename_state_dict

__all__ = ["AlexNet", "build_alexnet_backbone", "convert_alexnet"]


class AlexNet(StagedBackbone):
    """AlexNet's convolutional part: stages ``conv1``, ``conv2``, ``conv5``, ``pool5``."""

    def __init__(self, in_channels: int = 3, out_features=("pool5",), freeze_at: int = 0):
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        stages = [
            ("conv1", nn.Sequential(OrderedDict(
                conv1=nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), relu1=relu(),
            )), 64, 4),
            ("conv2", nn.Sequential(OrderedDict(
                pool1=nn.MaxPool2d(3, 2), conv2=nn.Conv2d(64, 192, 5, padding=2), relu2=relu(),
            )), 192, 8),
            ("conv5", nn.Sequential(OrderedDict(
                pool2=nn.MaxPool2d(3, 2),
                conv3=nn.Conv2d(192, 384, 3, padding=1), relu3=relu(),
                conv4=nn.Conv2d(384, 256, 3, padding=1), relu4=relu(),
                conv5=nn.Conv2d(256, 256, 3, padding=1), relu5=relu(),
            )), 256, 16),
            ("pool5", nn.Sequential(OrderedDict(pool5=nn.MaxPool2d(3, 2))), 256, 32),
        ]
        super().__init__(stages, out_features, freeze_at=freeze_at, size_divisibility=0)


@BACKBONE_REGISTRY.register()
def build_alexnet_backbone(cfg, input_shape: ShapeSpec) -> AlexNet:
    """AlexNet from ``MODEL.ALEXNET.OUT_FEATURES`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    return AlexNet(
        in_channels=input_shape.channels,
        out_features=cfg.MODEL.ALEXNET.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


# torchvision ``features.<i>`` index -> our (stage, layer); ``classifier.<i>`` -> head layer.
_TV_FEATURES = {0: "conv1.conv1", 3: "conv2.conv2", 6: "conv5.conv3", 8: "conv5.conv4", 10: "conv5.conv5"}
_TV_CLASSIFIER = {1: "fc1", 4: "fc2", 6: "cls_score"}


@register_weight_converter("alexnet")
def convert_alexnet(state_dict):
    """torchvision ``alexnet`` -> ImageClassifier keys (``backbone.conv5.conv3.weight``, ...)."""

    def rename(key):
        m = re.fullmatch(r"(features|classifier)\.(\d+)\.(weight|bias)", key)
        if not m:
            return None
        table = _TV_FEATURES if m.group(1) == "features" else _TV_CLASSIFIER
        prefix = "backbone" if m.group(1) == "features" else "head"
        layer = table.get(int(m.group(2)))
        return f"{prefix}.{layer}.{m.group(3)}" if layer else None

    return rename_state_dict(state_dict, rename, "alexnet")
