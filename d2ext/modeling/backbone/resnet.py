"""ResNet-18/34/50/101/152 (He et al. 2016) in torchvision's layout, on Detectron2's own ResNet.

Nothing is re-implemented: :func:`build_torchvision_resnet_backbone` only sets the two
``MODEL.RESNETS`` keys on which torchvision's networks differ from Detectron2's defaults, then
calls Detectron2's ``build_resnet_backbone``:

- ``RES2_OUT_CHANNELS`` = 64 for the BasicBlock depths 18/34 (Detectron2 asserts it), 256 else;
- ``STRIDE_IN_1X1`` = False: torchvision strides in the 3x3 conv of a bottleneck (the MSRA
  weights Detectron2 defaults to stride in the 1x1).

Outputs are Detectron2's: ``stem`` (64 ch, stride 4), ``res2`` .. ``res5`` (ResNet-34: 64, 128,
256, 512 channels; strides 4, 8, 16, 32). ``MODEL.BACKBONE.FREEZE_AT`` and
``MODEL.RESNETS.NORM`` ("BN" to train, "FrozenBN" to fine-tune) work as in Detectron2. With a
global-average-pool + linear classifier: torchvision's ``resnet34``, 21,797,672 parameters.

Detectron2's ResNet has no fixed input convention: torchvision's weights expect RGB with
ImageNet mean/std, so their configs set ``INPUT.FORMAT: "RGB"``, ``PIXEL_MEAN: [123.675,
116.28, 103.53]``, ``PIXEL_STD: [58.395, 57.12, 57.375]`` (0-255 scale).
"""
import re

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..weight_import import register_weight_converter
from .blocks import rename_state_dict

__all__ = ["build_torchvision_resnet_backbone", "convert_torchvision_resnet"]

_BASIC_BLOCK_DEPTHS = (18, 34)


@BACKBONE_REGISTRY.register()
def build_torchvision_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ``ResNet`` of ``MODEL.RESNETS.DEPTH`` with torchvision's layout (see module)."""
    cfg = cfg.clone()
    cfg.defrost()
    depth = cfg.MODEL.RESNETS.DEPTH
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in _BASIC_BLOCK_DEPTHS else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    return build_resnet_backbone(cfg, input_shape)


def convert_torchvision_resnet(state_dict, arch: str = "resnet"):
    """torchvision ``resnet*`` -> Detectron2 names under ``backbone.``; ``fc`` -> ``head.cls_score``.

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer{i}.{j}.conv{k}``/``bn{k}`` ->
    ``res{i+1}.{j}.conv{k}``/``.norm``; ``downsample.0``/``.1`` -> ``shortcut``/``shortcut.norm``.
    """

    def rename(key):
        if key.startswith("conv1."):
            return "backbone.stem." + key
        if key.startswith("bn1."):
            return "backbone.stem.conv1.norm." + key[len("bn1."):]
        m = re.fullmatch(r"fc\.(weight|bias)", key)
        if m:
            return f"head.cls_score.{m.group(1)}"
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key)
        if m:
            stage, block, kind, k, param = m.groups()
            norm = ".norm" if kind == "bn" else ""
            return f"backbone.res{int(stage) + 1}.{block}.conv{k}{norm}.{param}"
        m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", key)
        if m:
            stage, block, idx, param = m.groups()
            norm = ".norm" if idx == "1" else ""
            return f"backbone.res{int(stage) + 1}.{block}.shortcut{norm}.{param}"
        return None

    return rename_state_dict(state_dict, rename, arch)


def _make_converter(arch: str):
    def convert(state_dict):
        return convert_torchvision_resnet(state_dict, arch)

    convert.__name__ = f"convert_{arch}"
    convert.__doc__ = f"torchvision ``{arch}`` -> Detectron2 ResNet keys (``backbone.res2.0.conv1.weight``, ...)."
    return register_weight_converter(arch)(convert)


for _depth in (18, 34, 50, 101, 152):
    _make_converter(f"resnet{_depth}")
