"""DenseNet-121/161/169/201 (Huang et al., "Densely connected convolutional networks", CVPR 2017).

DenseNet-BC: bottleneck dense layers (BN-ReLU-1x1 conv of ``bn_size * growth_rate`` channels,
BN-ReLU-3x3 conv of ``growth_rate``) and transitions that keep ``compression`` (0.5) of the
channels. Input ``(N, 3, H, W)``, H and W multiples of 32. Channels below are DenseNet-121's.

==========  ===========================================  ========  ======
stage       layers                                       channels  stride
==========  ===========================================  ========  ======
``stem``    conv0 7x7/2, norm0, relu0                    64        2
``dense1``  pool0 3x3/2, denseblock1 (6 layers)          256       4
``dense2``  transition1, denseblock2 (12 layers)         512       8
``dense3``  transition2, denseblock3 (24 layers)         1024      16
``dense4``  transition3, denseblock4 (16 layers),        1024      32
            norm5, ReLU
==========  ===========================================  ========  ======

Layer names follow torchvision (``dense3.denseblock3.denselayer7.conv2``), so its checkpoints
map one to one. With a global-average-pool + linear classifier: torchvision's ``densenet121``,
7,978,856 parameters.
"""
import re
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ..weight_import import register_weight_converter
from .blocks import StagedBackbone, rename_state_dict

__all__ = ["DenseNet", "build_densenet_backbone", "DENSENET_BLOCKS"]

# Dense layers per block (Huang et al. 2017, Table 1; 161 from the authors' release).
DENSENET_BLOCKS = {121: (6, 12, 24, 16), 161: (6, 12, 36, 24), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


class _DenseLayer(nn.Module):
    """``[(N, C_i, H, W)]`` (all earlier features) -> ``(N, growth_rate, H, W)``."""

    def __init__(self, in_channels, growth_rate, bn_size, drop_rate, memory_efficient):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def _bottleneck(self, *features):
        return self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))

    def forward(self, features):
        if self.memory_efficient and any(f.requires_grad for f in features):
            # Recompute the concatenation in backward instead of keeping it (Pleiss et al. 2017).
            out = cp.checkpoint(self._bottleneck, *features, use_reentrant=False)
        else:
            out = self._bottleneck(*features)
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; ``(N, C, H, W) -> (N, C + num_layers * growth_rate, H, W)``."""

    def __init__(self, num_layers, in_channels, growth_rate, bn_size, drop_rate, memory_efficient):
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"denselayer{i + 1}",
                _DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate, memory_efficient),
            )

    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-1x1 conv-2x2 average pool: ``(N, C_in, H, W) -> (N, C_out, H/2, W/2)``."""

    def __init__(self, in_channels, out_channels):
        super().__init__(OrderedDict(
            norm=nn.BatchNorm2d(in_channels),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_channels, out_channels, 1, bias=False),
            pool=nn.AvgPool2d(2, 2),
        ))


class DenseNet(StagedBackbone):
    """DenseNet's convolutional part; stages ``stem``, ``dense1`` .. ``dense4`` (module docstring)."""

    def __init__(
        self,
        block_config: Sequence[int] = DENSENET_BLOCKS[121],
        growth_rate: int = 32,
        num_init_features: int = 64,
        bn_size: int = 4,
        compression: float = 0.5,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
        in_channels: int = 3,
        out_features=("dense4",),
        freeze_at: int = 0,
    ):
        if not 0 < compression <= 1:
            raise ValueError(f"DenseNet compression must be in (0, 1], got {compression}")
        stages = [("stem", nn.Sequential(OrderedDict(
            conv0=nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(inplace=True),
        )), num_init_features, 2)]
        channels = num_init_features
        for i, num_layers in enumerate(block_config, start=1):
            layers = OrderedDict()
            if i == 1:
                layers["pool0"] = nn.MaxPool2d(3, stride=2, padding=1)
            else:
                out = int(channels * compression)
                layers[f"transition{i - 1}"] = _Transition(channels, out)
                channels = out
            layers[f"denseblock{i}"] = _DenseBlock(
                num_layers, channels, growth_rate, bn_size, drop_rate, memory_efficient
            )
            channels += num_layers * growth_rate
            if i == len(block_config):
                layers["norm5"] = nn.BatchNorm2d(channels)
                layers["relu5"] = nn.ReLU(inplace=True)  # torchvision applies it before pooling
            stages.append((f"dense{i}", nn.Sequential(layers), channels, 2 ** (i + 1)))
        super().__init__(stages, out_features, freeze_at=freeze_at, size_divisibility=32)


@BACKBONE_REGISTRY.register()
def build_densenet_backbone(cfg, input_shape: ShapeSpec) -> DenseNet:
    """DenseNet from ``MODEL.DENSENET.*`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    c = cfg.MODEL.DENSENET
    if c.DEPTH not in DENSENET_BLOCKS:
        raise ValueError(f"MODEL.DENSENET.DEPTH must be one of {sorted(DENSENET_BLOCKS)}, got {c.DEPTH}")
    return DenseNet(
        block_config=DENSENET_BLOCKS[c.DEPTH],
        growth_rate=c.GROWTH_RATE,
        num_init_features=c.NUM_INIT_FEATURES,
        bn_size=c.BN_SIZE,
        compression=c.COMPRESSION,
        drop_rate=c.DROP_RATE,
        memory_efficient=c.MEMORY_EFFICIENT,
        in_channels=input_shape.channels,
        out_features=c.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )


def _convert_densenet(state_dict, arch: str):
    def rename(key):
        # Checkpoints from torchvision's first releases spell "norm.1" for "norm1".
        key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", key)
        m = re.fullmatch(r"features\.(\w+?)\.(.+)", key)
        if m:
            layer, rest = m.groups()
            if layer in ("conv0", "norm0"):
                return f"backbone.stem.{layer}.{rest}"
            if layer == "norm5":
                return f"backbone.dense{num_blocks}.norm5.{rest}"
            b = re.fullmatch(r"(denseblock|transition)(\d+)", layer)
            if b:
                stage = int(b.group(2)) + (b.group(1) == "transition")
                return f"backbone.dense{stage}.{layer}.{rest}"
            return None
        m = re.fullmatch(r"classifier\.(weight|bias)", key)
        return f"head.cls_score.{m.group(1)}" if m else None

    # norm5 belongs to the last stage: dense4 for every published depth.
    blocks = [int(m.group(1)) for m in (re.match(r"features\.denseblock(\d+)\.", k) for k in state_dict) if m]
    num_blocks = max(blocks, default=4)
    return rename_state_dict(state_dict, rename, arch)


def _make_converter(arch: str):
    def convert(state_dict):
        return _convert_densenet(state_dict, arch)

    convert.__name__ = f"convert_{arch}"
    convert.__doc__ = f"torchvision ``{arch}`` -> ImageClassifier keys (``backbone.dense3.denseblock3...``)."
    return register_weight_converter(arch)(convert)


for _depth in DENSENET_BLOCKS:
    _make_converter(f"densenet{_depth}")
