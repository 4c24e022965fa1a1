"""The VGG-16 backbone of SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016).

It differs from the classification VGG-16 (``vgg.py``) in the ways the SSD paper prescribes
(Sec. 3, Fig. 2) and that torchvision's ``ssd300_vgg16`` reproduces:

- ``pool3`` uses ceil mode, so a 300x300 input gives a 38x38 ``conv4_3`` map (not 37x37);
- ``pool5`` is 3x3 stride 1 (pad 1) instead of 2x2 stride 2;
- ``fc6`` / ``fc7`` become convolutions: 3x3 with dilation 6 ("atrous") and 1x1, 1024 channels;
- ``conv4_3`` is L2-normalised per location and rescaled by a learned per-channel scale, initial
  value 20 (Liu et al. 2016, Sec. 3.1 citing ParseNet);
- extra layers ``conv8_2`` ... ``conv11_2`` (``conv12_2`` for SSD512) add coarser maps.

Outputs (input ``(N, 3, S, S)``), each a ReLU feature map ``(N, C, H, W)``:

============  ========  =========  =======================  =======================
name          channels  stride     SSD300 (S=300) size      SSD512 (S=512) size
============  ========  =========  =======================  =======================
``conv4_3``   512       8          38                       64
``fc7``       1024      16         19                       32
``conv8_2``   512       32         10                       16
``conv9_2``   256       64         5                        8
``conv10_2``  256       128        3                        4
``conv11_2``  256       256        1                        2
``conv12_2``  256       512        -                        1
============  ========  =========  =======================  =======================

Strides are nominal (the default boxes use ``MODEL.SSD.STEPS``: 100 and 300 on SSD300's last
maps). ``conv4_3`` is returned after L2 normalisation. Channel counts scale with ``width_mult``
(a small-CPU option; 1.0 is the paper's network and the one torchvision weights load into).
"""
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..norm import get_norm

__all__ = ["L2Norm", "SSDVGG", "build_ssd_vgg16_backbone", "SSD_EXTRA_LAYERS"]

# VGG-16 configuration "D" (Simonyan & Zisserman 2015) up to conv5_3: (name, out_channels) or pool.
_VGG16_LAYERS: Tuple[Tuple[str, int], ...] = (
    ("conv1_1", 64), ("conv1_2", 64), ("pool1", 0),
    ("conv2_1", 128), ("conv2_2", 128), ("pool2", 0),
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), ("pool3", 0),
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), ("pool4", 0),
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)

_VGG16_LAYERS_INDEX = {name: i for i, (name, _) in enumerate(_VGG16_LAYERS)}

# Extra layers: (name, out_channels, kernel, stride, padding); each "_1" is a 1x1 bottleneck.
# SSD300 follows the paper's Fig. 2 (and torchvision); SSD512 follows the authors' Caffe
# prototxt (all stride-2 3x3, then a 4x4 conv12_2 with padding 1 -> 1x1).
SSD_EXTRA_LAYERS: Dict[str, Tuple[Tuple[str, int, int, int, int], ...]] = {
    "ssd300": (
        ("conv8_1", 256, 1, 1, 0), ("conv8_2", 512, 3, 2, 1),
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),
        ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 3, 1, 0),
        ("conv11_1", 128, 1, 1, 0), ("conv11_2", 256, 3, 1, 0),
    ),
    "ssd512": (
        ("conv8_1", 256, 1, 1, 0), ("conv8_2", 512, 3, 2, 1),
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),
        ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 3, 2, 1),
        ("conv11_1", 128, 1, 1, 0), ("conv11_2", 256, 3, 2, 1),
        ("conv12_1", 128, 1, 1, 0), ("conv12_2", 256, 4, 1, 1),
    ),
}

_NOMINAL_STRIDES = {
    "conv4_3": 8, "fc7": 16, "conv8_2": 32, "conv9_2": 64,
    "conv10_2": 128, "conv11_2": 256, "conv12_2": 512,
}


class L2Norm(nn.Module):
    """``weight[c] * x / ||x||_2`` over channels at every location (ParseNet; SSD Sec. 3.1).

    ``(N, C, H, W) -> (N, C, H, W)``; ``weight`` is initialised to ``scale`` (20 in SSD).
    """

    def __init__(self, channels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.view(1, -1, 1, 1) * F.normalize(x, dim=1)


def _conv(in_ch, out_ch, kernel, stride=1, padding=0, dilation=1, norm=""):
    return Conv2d(
        in_ch, out_ch, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
        bias=not norm, norm=get_norm(norm, out_ch) if norm else None,
        activation=nn.ReLU(inplace=True),
    )


class SSDVGG(Backbone):
    """SSD's VGG-16 with L2-normalised ``conv4_3``, dilated ``fc6``/``fc7`` and extra layers.

    Args:
        out_features: names to return (see the module docstring); layers after the last one
            are not built, so a small input can use fewer maps.
        extra_layers: ``"ssd300"`` or ``"ssd512"`` (key of :data:`SSD_EXTRA_LAYERS`).
        width_mult: multiply every channel count (1.0 = the paper's network).
        norm: "" (the paper: no normalisation, conv bias) or a Detectron2 norm name ("BN", "GN",
            ...) applied after every conv (a from-scratch option; not in the paper).
        l2norm_scale: initial ``conv4_3`` L2Norm scale (20 in the paper).
    """

    def __init__(
        self,
        out_features: Sequence[str] = ("conv4_3", "fc7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"),
        extra_layers: str = "ssd300",
        width_mult: float = 1.0,
        norm: str = "",
        l2norm_scale: float = 20.0,
        in_channels: int = 3,
    ):
        super().__init__()
        if extra_layers not in SSD_EXTRA_LAYERS:
            raise ValueError(f"extra_layers must be one of {sorted(SSD_EXTRA_LAYERS)}, got {extra_layers!r}")
        order = ["conv4_3", "fc7"] + [n for n, *_ in SSD_EXTRA_LAYERS[extra_layers] if n.endswith("_2")]
        unknown = [f for f in out_features if f not in order]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a non-empty subset of {order}")
        self._out_features = sorted(out_features, key=order.index)
        last = order.index(self._out_features[-1])

        def ch(c):
            return max(1, int(round(c * width_mult)))

        vgg = OrderedDict()
        c_in = in_channels
        for name, c in _VGG16_LAYERS:
            if name.startswith("pool"):
                # ceil mode on pool3: 75 -> 38 on SSD300, as in the paper's Caffe model
                vgg[name] = nn.MaxPool2d(2, 2, ceil_mode=(name == "pool3"))
            else:
                vgg[name] = _conv(c_in, ch(c), 3, padding=1, norm=norm)
                c_in = ch(c)
        self.conv4_3_norm = L2Norm(ch(512), l2norm_scale)
        self._out_feature_channels = {"conv4_3": ch(512)}
        if last >= 1:
            vgg["pool5"] = nn.MaxPool2d(3, stride=1, padding=1)
            vgg["fc6"] = _conv(c_in, ch(1024), 3, padding=6, dilation=6, norm=norm)  # atrous fc6
            vgg["fc7"] = _conv(ch(1024), ch(1024), 1, norm=norm)
            c_in = ch(1024)
            self._out_feature_channels["fc7"] = c_in
        else:  # stop right after conv4_3
            stop = _VGG16_LAYERS_INDEX["conv4_3"]
            vgg = OrderedDict((k, v) for k, v in vgg.items() if _VGG16_LAYERS_INDEX[k] <= stop)
        self.vgg = nn.Sequential(vgg)

        extras = OrderedDict()
        for name, c, k, s, p in SSD_EXTRA_LAYERS[extra_layers]:
            if last < 2 or order.index(name[:-2] + "_2") > last:
                break
            extras[name] = _conv(c_in, ch(c), k, stride=s, padding=p, norm=norm)
            c_in = ch(c)
            if name.endswith("_2"):
                self._out_feature_channels[name] = c_in
        self.extras = nn.Sequential(extras)
        self._out_feature_strides = {f: _NOMINAL_STRIDES[f] for f in self._out_feature_channels}
        self._init_weights()

    def _init_weights(self):
        # torchvision's VGG init for the VGG convs, Xavier for fc6/fc7 and the extras
        # (Liu et al. 2016 use Xavier for the new layers).
        for name, m in self.vgg.named_children():
            if isinstance(m, Conv2d):
                if name.startswith("fc"):
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.extras.children():
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def size_divisibility(self) -> int:
        return 0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``(N, 3, S, S)`` normalised images -> ``{name: (N, C, H, W)}`` for ``out_features``."""
        outputs = {}
        wanted = self._out_features
        for name, layer in self.vgg.named_children():
            x = layer(x)
            if name == "conv4_3":
                if "conv4_3" in wanted:
                    outputs["conv4_3"] = self.conv4_3_norm(x)
                if len(outputs) == len(wanted):
                    return outputs
            elif name == "fc7" and "fc7" in wanted:
                outputs["fc7"] = x
        for name, layer in self.extras.named_children():
            x = layer(x)
            if name in wanted:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
            for f in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_ssd_vgg16_backbone(cfg, input_shape: ShapeSpec) -> SSDVGG:
    """SSD's VGG-16 from ``cfg.MODEL.SSD.VGG`` (extras, width, norm, L2Norm scale) and
    ``cfg.MODEL.SSD.IN_FEATURES`` (the maps to build and return)."""
    v = cfg.MODEL.SSD.VGG
    return SSDVGG(
        out_features=cfg.MODEL.SSD.IN_FEATURES,
        extra_layers=v.EXTRA_LAYERS,
        width_mult=v.WIDTH_MULT,
        norm=v.NORM,
        l2norm_scale=v.L2NORM_SCALE,
        in_channels=input_shape.channels,
    )
