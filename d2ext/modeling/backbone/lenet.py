"""LeNet-5 (LeCun et al., "Gradient-based learning applied to document recognition", 1998).

Input ``(N, C, 32, 32)`` (C = 1 for the classic network). Valid (unpadded) 5x5 convolutions, so
a 32x32 image gives a 5x5 map at ``s4``; the strides below are nominal (output = input / stride
minus the border lost to the convolutions).

================  ==========================================  ========  ======
stage             layers                                      channels  stride
================  ==========================================  ========  ======
``s2``            C1 conv 6@5x5, activation, S2 2x2 pooling   6         2
``s4``            C3 conv 16@5x5, activation, S4 2x2 pooling  16        4
================  ==========================================  ========  ======

C5 (120), F6 (84) and the 10-way output are the classifier head (``MODEL.CLASSIFIER.HIDDEN_DIMS:
[120, 84]``, ``POOL_SIZE: 5``): the classic network then has 61,706 parameters. C3 here connects
every S2 map (as modern re-implementations do), not the paper's sparse table; the S2/S4 layers
are plain pooling (the paper's had a trainable scale and bias per map).
"""
from collections import OrderedDict

from torch import nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from .blocks import StagedBackbone, activation_layer

__all__ = ["LeNet5", "build_lenet_backbone"]


def _pool(kind: str) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(2, 2)
    if kind == "avg":
        return nn.AvgPool2d(2, 2)
    raise ValueError(f"MODEL.LENET.POOL must be 'max' or 'avg', got {kind!r}")


class LeNet5(StagedBackbone):
    """LeNet-5's feature extractor: stages ``s2`` (6 ch, stride 2) and ``s4`` (16 ch, stride 4)."""

    def __init__(self, in_channels: int = 1, activation: str = "relu", pool: str = "max",
                 out_features=("s4",), freeze_at: int = 0):
        stages = [
            ("s2", nn.Sequential(OrderedDict(
                c1=nn.Conv2d(in_channels, 6, 5), act1=activation_layer(activation), s2=_pool(pool),
            )), 6, 2),
            ("s4", nn.Sequential(OrderedDict(
                c3=nn.Conv2d(6, 16, 5), act3=activation_layer(activation), s4=_pool(pool),
            )), 16, 4),
        ]
        # Valid convolutions: padding the input would change every output, so no divisibility.
        super().__init__(stages, out_features, freeze_at=freeze_at, size_divisibility=0)


@BACKBONE_REGISTRY.register()
def build_lenet_backbone(cfg, input_shape: ShapeSpec) -> LeNet5:
    """LeNet-5 from ``MODEL.LENET.*``; input channels = ``len(MODEL.PIXEL_MEAN)``."""
    return LeNet5(
        in_channels=input_shape.channels,
        activation=cfg.MODEL.LENET.ACTIVATION,
        pool=cfg.MODEL.LENET.POOL,
        out_features=cfg.MODEL.LENET.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
