"""GoogLeNet / Inception v1 (Szegedy et al., "Going deeper with convolutions", CVPR 2015).

torchvision's layout: every convolution is followed by BatchNorm (eps 0.001) and ReLU, and the
"5x5" branch of each Inception module uses a 3x3 kernel (as torchvision's ported weights do;
kept so that its checkpoints load). Input ``(N, 3, H, W)``, H and W multiples of 32.

===============  =============================================  ========  ======
stage            layers                                         channels  stride
===============  =============================================  ========  ======
``conv1``        conv1 7x7/2                                     64        2
``conv3``        maxpool1, conv2 1x1, conv3 3x3                  192       4
``inception3b``  maxpool2, inception3a, inception3b              480       8
``inception4a``  maxpool3, inception4a  (auxiliary head 1)       512       16
``inception4d``  inception4b, 4c, 4d    (auxiliary head 2)       528       16
``inception4e``  inception4e                                    832       16
``inception5b``  maxpool4, inception5a, inception5b             1024       32
===============  =============================================  ========  ======

The classifier (global average pooling, DROPOUT 0.2) gives torchvision's ``googlenet``: 6,624,904
parameters; with the two :class:`InceptionAux` heads (``AUX_IN_FEATURES: [inception4a,
inception4d]``) 13,004,888. Pretrained torchvision weights expect ``transform_input=True``, i.e.
RGB scaled to [-1, 1]: ``PIXEL_MEAN = PIXEL_STD = [127.5] * 3`` does exactly that.
"""
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ..weight_import import register_weight_converter
from .blocks import StagedBackbone, rename_state_dict

__all__ = ["BasicConv2d", "Inception", "InceptionAux", "GoogLeNet", "build_googlenet_backbone"]


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001) -> ReLU; ``(N, C_in, H, W) -> (N, C_out, H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Inception module: 1x1 | 1x1->3x3 | 1x1->3x3 | 3x3 max-pool->1x1, concatenated."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, kernel_size=1),
            BasicConv2d(ch3x3red, ch3x3, kernel_size=3, padding=1),
        )
        self.branch3 = nn.Sequential(  # the paper's 5x5; 3x3 in torchvision's weights
            BasicConv2d(in_channels, ch5x5red, kernel_size=1),
            BasicConv2d(ch5x5red, ch5x5, kernel_size=3, padding=1),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv 128, FC 1024, dropout, FC num_classes.

    ``(N, C, H, W) -> (N, num_classes)`` logits. The paper pools 5x5/3; torchvision (and we) pool
    adaptively to 4x4, which is the same at 224x224 inputs. Dropout 0.7 (Szegedy et al. 2015).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(x, (4, 4))
        x = torch.flatten(self.conv(x), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


# Inception module widths from Table 1 of the paper: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
_INCEPTION = OrderedDict(
    inception3a=(192, 64, 96, 128, 16, 32, 32),
    inception3b=(256, 128, 128, 192, 32, 96, 64),
    inception4a=(480, 192, 96, 208, 16, 48, 64),
    inception4b=(512, 160, 112, 224, 24, 64, 64),
    inception4c=(512, 128, 128, 256, 24, 64, 64),
    inception4d=(512, 112, 144, 288, 32, 64, 64),
    inception4e=(528, 256, 160, 320, 32, 128, 128),
    inception5a=(832, 256, 160, 320, 32, 128, 128),
    inception5b=(832, 384, 192, 384, 48, 128, 128),
)
# stage -> (layers in torchvision's names, output channels, stride)
_STAGES = OrderedDict(
    conv1=(["conv1"], 64, 2),
    conv3=(["maxpool1", "conv2", "conv3"], 192, 4),
    inception3b=(["maxpool2", "inception3a", "inception3b"], 480, 8),
    inception4a=(["maxpool3", "inception4a"], 512, 16),
    inception4d=(["inception4b", "inception4c", "inception4d"], 528, 16),
    inception4e=(["inception4e"], 832, 16),
    inception5b=(["maxpool4", "inception5a", "inception5b"], 1024, 32),
)
_LAYER_TO_STAGE = {layer: stage for stage, (layers, _, _) in _STAGES.items() for layer in layers}


def _layer(name: str, in_channels: int) -> nn.Module:
    if name == "conv1":
        return BasicConv2d(in_channels, 64, kernel_size=7, stride=2, padding=3)
    if name == "conv2":
        return BasicConv2d(64, 64, kernel_size=1)
    if name == "conv3":
        return BasicConv2d(64, 192, kernel_size=3, padding=1)
    if name == "maxpool4":
        return nn.MaxPool2d(2, stride=2, ceil_mode=True)
    if name.startswith("maxpool"):
        return nn.MaxPool2d(3, stride=2, ceil_mode=True)
    return Inception(*_INCEPTION[name])


class GoogLeNet(StagedBackbone):
    """GoogLeNet's convolutional part; stages as in the module docstring."""

    def __init__(self, in_channels: int = 3, out_features=("inception5b",), freeze_at: int = 0):
        stages = [
            (stage, nn.Sequential(OrderedDict((n, _layer(n, in_channels)) for n in layers)), ch, stride)
            for stage, (layers, ch, stride) in _STAGES.items()
        ]
        # Ceil-mode pools: only multiples of 32 keep the strides exact.
        super().__init__(stages, out_features, freeze_at=freeze_at, size_divisibility=32)


@BACKBONE_REGISTRY.register()
def build_googlenet_backbone(cfg, input_shape: ShapeSpec) -> GoogLeNet:
    """GoogLeNet from ``MODEL.GOOGLENET.OUT_FEATURES`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    return GoogLeNet(
        in_channels=input_shape.channels,
        out_features=cfg.MODEL.GOOGLENET.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


@register_weight_converter("googlenet")
def convert_googlenet(state_dict):
    """torchvision ``googlenet`` -> ImageClassifier keys.

    ``inception4b.*`` -> ``backbone.inception4d.inception4b.*``; ``aux1``/``aux2`` ->
    ``aux_heads.aux1``/``aux2`` (the classifier's heads for AUX_IN_FEATURES[0]/[1]);
    ``fc`` -> ``head.cls_score``.
    """

    def rename(key):
        m = re.fullmatch(r"(\w+?)\.(.+)", key)
        if not m:
            return None
        layer, rest = m.groups()
        if layer in _LAYER_TO_STAGE:
            return f"backbone.{_LAYER_TO_STAGE[layer]}.{layer}.{rest}"
        if layer in ("aux1", "aux2"):
            return f"aux_heads.{layer}.{rest}"
        if layer == "fc" and rest in ("weight", "bias"):
            return f"head.cls_score.{rest}"
        return None

    return rename_state_dict(state_dict, rename, "googlenet")
