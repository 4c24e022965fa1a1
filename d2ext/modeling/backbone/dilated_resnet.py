"""Dilated ("atrous") ResNet for dense prediction (Yu & Koltun 2016; DeepLab, Chen et al. 2017).

DeepLabv3 keeps the last stages at a finer resolution by replacing their stride with dilation:

====================  ===============  ===============  ===================
output stride         res4             res5             ``RES4/RES5_DILATION``
====================  ===============  ===============  ===================
32 (plain ResNet)     stride 16        stride 32        1 / 1
16 (DeepLabv3 train)  stride 16        stride 16        1 / 2
8  (DeepLabv3 eval)   stride 8         stride 8         2 / 4
====================  ===============  ===============  ===================

Detectron2's ``build_resnet_backbone`` only dilates res5 (``MODEL.RESNETS.RES5_DILATION`` in
{1, 2}) and refuses any dilation for ResNet-18/34, because its ``BasicBlock`` has no ``dilation``
argument. :func:`build_dilated_resnet_backbone` therefore builds the same network from
Detectron2's pieces (``BasicStem``, ``BottleneckBlock`` which does take ``dilation``, ``ResNet``)
and adds :class:`DilatedBasicBlock`, a ``BasicBlock`` whose 3x3 convs take a dilation. Parameter
names are Detectron2's (``res4.0.conv1.weight``, ``res4.0.shortcut.norm.running_mean``, ...), so
ResNet weights converted for ``build_resnet_backbone`` load unchanged.

As in torchvision's ``replace_stride_with_dilation``, the first block of a dilated stage keeps
the previous stage's dilation (it is the block that would have strided), the others use the
stage's dilation. Outputs: ``stem`` (stride 4), ``res2`` (4), ``res3`` (8), ``res4`` (16, or 8
when dilated), ``res5`` (32, 16 or 8); channels as in Detectron2 (ResNet-34: 64, 128, 256, 512).
Multi-grid rates inside res5 (DeepLabv3 Sec. 3.2) are not implemented.
"""
import functools
from typing import List

import fvcore.nn.weight_init as weight_init
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from torch.nn import functional as F

from ..norm import get_norm

__all__ = ["DilatedBasicBlock", "make_dilated_stage", "build_dilated_resnet_backbone"]

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class DilatedBasicBlock(CNNBlockBase):
    """Detectron2's ``BasicBlock`` (two 3x3 convs + projection shortcut when the width changes)
    with a ``dilation`` for both 3x3 convs (padding = dilation keeps the size).

    ``(N, C_in, H, W) -> (N, C_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels, out_channels, *, stride=1, dilation=1, first_dilation=None, norm="BN"):
        """
        Args:
            stride: of the first conv (1 inside a dilated stage).
            dilation: of the second conv; also of the first unless ``first_dilation`` is given.
            first_dilation: dilation of the first conv (the previous stage's, for a stage's first
                block, as torchvision does).
        """
        super().__init__(in_channels, out_channels, stride)
        d1 = dilation if first_dilation is None else first_dilation
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=d1,
                            dilation=d1, bias=False, norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=dilation,
                            dilation=dilation, bias=False, norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out + shortcut)


def make_dilated_stage(depth: int, num_blocks: int, in_channels: int, out_channels: int, *, stride: int,
                       dilation: int, prev_dilation: int, norm: str, bottleneck_channels: int = 0,
                       num_groups: int = 1, stride_in_1x1: bool = True) -> List[CNNBlockBase]:
    """The blocks of one stage: the first strides (``stride``) or, when dilated, keeps
    ``prev_dilation``; the rest use ``dilation``."""
    blocks = []
    for i in range(num_blocks):
        first = i == 0
        s = stride if first else 1
        if depth in (18, 34):
            blocks.append(DilatedBasicBlock(in_channels, out_channels, stride=s, dilation=dilation,
                                            first_dilation=prev_dilation if first else dilation, norm=norm))
        else:
            # Detectron2's bottleneck has one 3x3 conv: give it the stage's first/other dilation.
            blocks.append(BottleneckBlock(in_channels, out_channels, bottleneck_channels=bottleneck_channels,
                                          stride=s, num_groups=num_groups, norm=norm,
                                          stride_in_1x1=stride_in_1x1,
                                          dilation=prev_dilation if first else dilation))
        in_channels = out_channels
    return blocks


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2's ResNet of ``MODEL.RESNETS.DEPTH`` with res4 / res5 dilated by
    ``MODEL.RESNETS.RES4_DILATION`` (1 or 2) and ``RES5_DILATION`` (1, 2 or 4); see the module.

    The other ``MODEL.RESNETS`` keys (``NORM``, ``OUT_FEATURES``, ``STEM_OUT_CHANNELS``,
    ``RES2_OUT_CHANNELS``, ``NUM_GROUPS``, ``WIDTH_PER_GROUP``, ``STRIDE_IN_1X1``) and
    ``MODEL.BACKBONE.FREEZE_AT`` mean what they mean for ``build_resnet_backbone``.
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}")
    d4, d5 = int(r.RES4_DILATION), int(r.RES5_DILATION)
    # A stage is dilated only where the previous one already is, or it would skip a scale.
    allowed = {(1, 1), (1, 2), (2, 4)}
    if (d4, d5) not in allowed:
        raise ValueError(
            f"MODEL.RESNETS.RES4_DILATION / RES5_DILATION = {d4} / {d5}: use 1/1 (output stride 32), "
            f"1/2 (stride 16) or 2/4 (stride 8)"
        )
    out_channels = r.RES2_OUT_CHANNELS
    if depth in (18, 34) and out_channels != 64:
        raise ValueError("MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for ResNet-18/34")
    if depth in (18, 34) and r.NUM_GROUPS != 1:
        raise ValueError("MODEL.RESNETS.NUM_GROUPS must be 1 for ResNet-18/34")
    # Detectron2's BasicStem / BottleneckBlock take a callable norm: through it they get d2ext's
    # names too ("GN8", "IN"; d2ext.modeling.norm)
    norm = functools.partial(get_norm, r.NORM) if r.NORM else r.NORM
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=norm)
    in_channels = r.STEM_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    dilations = {2: 1, 3: 1, 4: d4, 5: d5}
    stages = []
    prev_dilation = 1
    for idx, stage in enumerate(range(2, 6)):
        dilation = dilations[stage]
        stride = 1 if stage == 2 or dilation > 1 else 2
        stages.append(make_dilated_stage(
            depth, _BLOCKS_PER_STAGE[depth][idx], in_channels, out_channels, stride=stride, dilation=dilation,
            prev_dilation=prev_dilation, norm=norm, bottleneck_channels=bottleneck_channels,
            num_groups=r.NUM_GROUPS, stride_in_1x1=r.STRIDE_IN_1X1,
        ))
        prev_dilation = dilation
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
