"""VGG-11/13/16/19 (Simonyan & Zisserman, ICLR 2015), with or without BatchNorm.

Input ``(N, 3, H, W)``, H and W multiples of 32 (RGB, ImageNet mean/std for torchvision weights).

==========  ===================================================  ========  ======
stage       layers (VGG-16)                                       channels  stride
==========  ===================================================  ========  ======
``vgg1``    conv1_1, conv1_2 (3x3, [BN], ReLU)                    64        1
``vgg2``    pool1, conv2_1, conv2_2                               128       2
``vgg3``    pool2, conv3_1 .. conv3_3                             256       4
``vgg4``    pool3, conv4_1 .. conv4_3  (``vgg4`` = conv4_3, SSD)  512       8
``vgg5``    pool4, conv5_1 .. conv5_3                             512       16
``pool5``   pool5                                                 512       32
==========  ===================================================  ========  ======

Every stage output is taken after its last ReLU and before the next pool (the U-Net and SSD
convention). Layers are named as in the paper (``vgg4.conv4_3``, ``vgg4.bn4_3``). The classifier
(POOL_SIZE 7, HIDDEN_DIMS [4096, 4096], DROPOUT 0.5) gives torchvision's ``vgg16``: 138,357,544
parameters (``vgg16_bn``: 138,365,992).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Tuple

from torch import nn
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

from ..norm import get_norm
from ..weight_import import register_weight_converter
from .blocks import StagedBackbone, rename_state_dict

__all__ = ["VGG", "build_vgg_backbone", "VGG_CONVS_PER_STAGE"]

VGG_CHANNELS = (64, 128, 256, 512, 512)
# 3x3 convolutions in each of the five stages (configurations A, B, D, E of the paper).
VGG_CONVS_PER_STAGE = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


def _layer_names(depth: int, with_norm: bool) -> List[Tuple[str, str]]:
    """``(stage, layer)`` of every module of torchvision's ``features``, in order."""
    names = []
    for k, n in enumerate(VGG_CONVS_PER_STAGE[depth], start=1):
        stage = f"vgg{k}"
        if k > 1:
            names.append((stage, f"pool{k - 1}"))
        for j in range(1, n + 1):
            names.append((stage, f"conv{k}_{j}"))
            if with_norm:
                names.append((stage, f"bn{k}_{j}"))
            names.append((stage, f"relu{k}_{j}"))
    names.append(("pool5", "pool5"))
    return names


class VGG(StagedBackbone):
    """VGG's convolutional part: stages ``vgg1`` .. ``vgg5`` and ``pool5`` (see module docstring).

    Args:
        depth: 11, 13, 16 or 19.
        norm: "" (as published) or a Detectron2 norm name ("BN", "SyncBN", "FrozenBN", "GN").
        ceil_mode: ceil-mode max pooling (SSD300 uses it so that 75 -> 38 at pool3).
        vgg5_dilation: 1 (as published) or 2: pool4 becomes a 3x3 stride-1 pool and conv5_x
            dilated convolutions, so ``vgg5`` comes out at stride 8 instead of 16 (``pool5`` 16)
            with the same weights — DeepLab's atrous VGG-16 (Chen et al., ICLR 2015) for output
            stride 8; output stride 16 just reads ``vgg5`` undilated.
    """

    def __init__(self, depth: int = 16, in_channels: int = 3, norm: str = "", ceil_mode: bool = False,
                 out_features=("pool5",), freeze_at: int = 0, vgg5_dilation: int = 1):
        if depth not in VGG_CONVS_PER_STAGE:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONVS_PER_STAGE)}, got {depth}")
        if vgg5_dilation not in (1, 2):
            raise ValueError(f"VGG vgg5_dilation must be 1 or 2, got {vgg5_dilation}")
        layers: Dict[str, "OrderedDict[str, nn.Module]"] = OrderedDict()
        channels = in_channels
        for stage, name in _layer_names(depth, bool(norm)):
            k = int(stage[-1]) if stage != "pool5" else 5
            if name == "pool4" and vgg5_dilation == 2:
                module = nn.MaxPool2d(3, 1, padding=1, ceil_mode=ceil_mode)
            elif name.startswith("pool"):
                module = nn.MaxPool2d(2, 2, ceil_mode=ceil_mode)
            elif name.startswith("conv"):
                d = vgg5_dilation if stage == "vgg5" else 1
                module = nn.Conv2d(channels, VGG_CHANNELS[k - 1], 3, padding=d, dilation=d)
                channels = VGG_CHANNELS[k - 1]
            elif name.startswith("bn"):
                module = get_norm(norm, channels)
            else:
                module = nn.ReLU(inplace=True)
            layers.setdefault(stage, OrderedDict())[name] = module
        strides = [2 ** i for i in range(len(layers))]
        if vgg5_dilation == 2:
            strides[4:] = [8, 16]
        stages = [
            (stage, nn.Sequential(mods), VGG_CHANNELS[min(i, 4)], strides[i])
            for i, (stage, mods) in enumerate(layers.items())
        ]
        # The 2x2 pools halve exactly when H, W are multiples of the deepest output's stride.
        names = [s[0] for s in stages]
        deepest = max((names.index(f) for f in (list(out_features) or names[-1:]) if f in names), default=0)
        super().__init__(stages, out_features, freeze_at=freeze_at, size_divisibility=strides[deepest])


@BACKBONE_REGISTRY.register()
def build_vgg_backbone(cfg, input_shape: ShapeSpec) -> VGG:
    """VGG from ``MODEL.VGG.{DEPTH,NORM,CEIL_MODE,OUT_FEATURES,VGG5_DILATION}`` and
    ``MODEL.BACKBONE.FREEZE_AT``."""
    return VGG(
        depth=cfg.MODEL.VGG.DEPTH,
        in_channels=input_shape.channels,
        norm=cfg.MODEL.VGG.NORM,
        ceil_mode=cfg.MODEL.VGG.CEIL_MODE,
        out_features=cfg.MODEL.VGG.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        vgg5_dilation=cfg.MODEL.VGG.VGG5_DILATION,
    )


def vgg_features_rename(depth: int, with_norm: bool, prefix: str = "backbone."):
    """``"features.<i>.<param>"`` (torchvision) -> ``"<prefix><stage>.<layer>.<param>"`` or None.

    Shared with detectors built on VGG (e.g. SSD300), whose torchvision checkpoints keep VGG's
    ``features`` indices.
    """
    table = dict(enumerate(_layer_names(depth, with_norm)))

    def rename(key):
        m = re.fullmatch(r"features\.(\d+)\.(\w+)", key)
        if not m or int(m.group(1)) not in table:
            return None
        stage, layer = table[int(m.group(1))]
        if layer.startswith(("pool", "relu")):
            return None
        return f"{prefix}{stage}.{layer}.{m.group(2)}"

    return rename


def _make_converter(depth: int, with_norm: bool):
    arch = f"vgg{depth}{'_bn' if with_norm else ''}"
    features = vgg_features_rename(depth, with_norm)
    head = {0: "fc1", 3: "fc2", 6: "cls_score"}

    def convert(state_dict):
        def rename(key):
            m = re.fullmatch(r"classifier\.(\d+)\.(weight|bias)", key)
            if m:
                layer = head.get(int(m.group(1)))
                return f"head.{layer}.{m.group(2)}" if layer else None
            return features(key)

        return rename_state_dict(state_dict, rename, arch)

    convert.__name__ = f"convert_{arch}"
    convert.__doc__ = f"torchvision ``{arch}`` -> ImageClassifier keys (``backbone.vgg4.conv4_3.weight``, ...)."
    register_weight_converter(arch)(convert)
    return convert


for _depth in VGG_CONVS_PER_STAGE:
    for _bn in (False, True):
        _make_converter(_depth, _bn)
