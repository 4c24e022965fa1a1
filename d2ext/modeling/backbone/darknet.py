"""Darknet backbones of the YOLO family: Darknet-53 (YOLOv3), Darknet-19 (YOLOv2), the
yolov3-tiny backbone and the
24-convolution YOLOv1 network (plus its 9-convolution "Fast YOLO" variant).

Every convolution is Conv (no bias) + BatchNorm + LeakyReLU(0.1), as in Darknet's ``[convolutional]
batch_normalize=1 activation=leaky`` layers. YOLOv1 (Redmon et al. 2016) had no BatchNorm; it was
added in YOLOv2 (Redmon & Farhadi 2017) and is used here for every variant so all three train from
scratch with the same recipe.

Outputs (input ``(N, 3, H, W)``; feature ``darkK`` has stride ``2**K``):

============  ==========================================  =============================
builder       features                                    channels (WIDTH_MULT = 1)
============  ==========================================  =============================
Darknet-53    dark3 (s8), dark4 (s16), dark5 (s32)        256, 512, 1024
Darknet-19    dark4 (s16, passthrough source), dark5 (s32)  512, 1024
tiny (v3)     dark4 (s16), dark5 (s32)                    256, 1024
YOLOv1 net    dark6 (s64; 7x7 at 448)                     1024
============  ==========================================  =============================
"""
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from ..norm import get_norm

__all__ = [
    "ConvBNLeaky",
    "DarknetResidual",
    "Darknet53",
    "Darknet19",
    "DarknetTiny",
    "YOLOv1Net",
    "build_darknet53_backbone",
    "build_darknet19_backbone",
    "build_darknet_tiny_backbone",
    "build_yolov1_backbone",
    "reorg",
]


def _ch(c: int, width_mult: float) -> int:
    """Scaled channel count, at least 8."""
    return max(8, int(round(c * width_mult)))


class ConvBNLeaky(nn.Sequential):
    """``k x k`` conv (stride ``s``, "same" padding, no bias) + norm + LeakyReLU.

    (N, in_ch, H, W) -> (N, out_ch, H / s, W / s).
    """

    def __init__(self, in_ch: int, out_ch: int, k: int = 3, s: int = 1, norm: str = "BN",
                 negative_slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, k, s, padding=k // 2, bias=not norm)
        if norm:
            self.norm = get_norm(norm, out_ch)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.out_channels = out_ch


class DarknetResidual(nn.Module):
    """Darknet-53 residual block: 1x1 (C/2) + 3x3 (C) + identity; shape preserved (N, C, H, W)."""

    def __init__(self, channels: int, norm: str = "BN", negative_slope: float = 0.1):
        super().__init__()
        self.conv1 = ConvBNLeaky(channels, channels // 2, 1, norm=norm, negative_slope=negative_slope)
        self.conv2 = ConvBNLeaky(channels // 2, channels, 3, norm=norm, negative_slope=negative_slope)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class _DarknetBase(Backbone):
    """Common parts: staged forward, ``output_shape()``, freezing.

    Subclasses fill ``self.stages`` (an ``nn.ModuleDict`` in forward order; its first entry is
    the stem) and ``self._out_feature_channels`` / ``self._out_feature_strides``.
    """

    def __init__(self, out_features: Sequence[str], size_divisibility: int):
        super().__init__()
        self._out_features = list(out_features)
        self._size_divisibility = size_divisibility

    def _check_out_features(self):
        unknown = [f for f in self._out_features if f not in self.stages]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown OUT_FEATURES {unknown}; "
                f"choose from {list(self.stages)}"
            )

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, 3, H, W) -> {name: (N, C_name, H / stride, W / stride)} for ``out_features``."""
        outputs = {}
        last = self._out_features and max(list(self.stages).index(f) for f in self._out_features)
        for i, (name, stage) in enumerate(self.stages.items()):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
            if i >= last:
                break
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def darknet_layers(self) -> List[nn.Module]:
        """Every convolution in Darknet's cfg order (which is the order they are built in)."""
        return [m for m in self.stages.modules() if isinstance(m, ConvBNLeaky)]

    def freeze(self, freeze_at: int = 0):
        """Freeze the stem (``freeze_at >= 1``) and the first ``freeze_at - 1`` stages after it,
        as Detectron2's ResNet does: no gradients, BatchNorm turned into FrozenBatchNorm."""
        for i, stage in enumerate(self.stages.values()):
            if i >= freeze_at:
                break
            for p in stage.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(stage)
        return self

    def _build_plain_stages(self, spec, width_mult: float, **conv_kw) -> None:
        """Stages of plain conv / max-pool layers from ``spec`` = ``[(stage name, items)]``, stage
        ``i`` at stride ``2**i``. An item is ``"M"`` (2x2/2 max-pool), ``"S"`` (Darknet's 2x2/1
        max-pool), ``(out_channels, kernel)`` or ``out_channels`` (a 3x3 conv), each conv a
        :class:`ConvBNLeaky` with ``out_channels * width_mult`` channels."""
        stages, c = {}, 3
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for i, (name, items) in enumerate(spec):
            layers: List[nn.Module] = []
            for item in items:
                if item == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                elif item == "S":
                    layers.append(_MaxPoolSame())
                else:
                    out, k = item if isinstance(item, tuple) else (item, 3)
                    out = _ch(out, width_mult)
                    layers.append(ConvBNLeaky(c, out, k, **conv_kw))
                    c = out
            stages[name] = nn.Sequential(*layers)
            self._out_feature_channels[name] = c
            self._out_feature_strides[name] = 2**i
        self.stages = nn.ModuleDict(stages)
        self._check_out_features()


class Darknet53(_DarknetBase):
    """Darknet-53 (Redmon & Farhadi 2018, Table 1): a 3x3/32 stem, then five stages, each a
    stride-2 3x3 conv and ``stage_blocks[i]`` residual blocks ([1, 2, 8, 8, 4] in the paper).

    Stages ``dark1`` ... ``dark5`` have strides 2 ... 32 and 64 ... 1024 channels (x width_mult).
    """

    def __init__(self, out_features=("dark3", "dark4", "dark5"), stage_blocks=(1, 2, 8, 8, 4),
                 width_mult: float = 1.0, norm: str = "BN", negative_slope: float = 0.1):
        super().__init__(out_features, size_divisibility=32)
        kw = dict(norm=norm, negative_slope=negative_slope)
        c = _ch(32, width_mult)
        stages = {"stem": ConvBNLeaky(3, c, 3, **kw)}
        self._out_feature_channels = {"stem": c}
        self._out_feature_strides = {"stem": 1}
        for i, n in enumerate(stage_blocks):
            out = _ch(64 * 2**i, width_mult)
            layers = [ConvBNLeaky(c, out, 3, 2, **kw)] + [DarknetResidual(out, **kw) for _ in range(n)]
            name = f"dark{i + 1}"
            stages[name] = nn.Sequential(*layers)
            self._out_feature_channels[name] = out
            self._out_feature_strides[name] = 2 ** (i + 1)
            c = out
        self.stages = nn.ModuleDict(stages)
        self._check_out_features()


class Darknet19(_DarknetBase):
    """Darknet-19 (Redmon & Farhadi 2017, Table 6) without its classifier: 19 convs, 5 max-pools.

    ``dark4`` (stride 16, 512 ch; 26x26 at 416) is the input of YOLOv2's passthrough layer,
    ``dark5`` (stride 32, 1024 ch; 13x13 at 416) the main detection input.
    """

    # (stage, [(out_channels, kernel)]); a 2x2/2 max-pool ("M") opens every stage after "stem".
    _SPEC = [
        ("stem", [(32, 3)]),
        ("dark1", ["M", (64, 3)]),
        ("dark2", ["M", (128, 3), (64, 1), (128, 3)]),
        ("dark3", ["M", (256, 3), (128, 1), (256, 3)]),
        ("dark4", ["M", (512, 3), (256, 1), (512, 3), (256, 1), (512, 3)]),
        ("dark5", ["M", (1024, 3), (512, 1), (1024, 3), (512, 1), (1024, 3)]),
    ]

    def __init__(self, out_features=("dark4", "dark5"), width_mult: float = 1.0, norm: str = "BN",
                 negative_slope: float = 0.1):
        super().__init__(out_features, size_divisibility=32)
        self._build_plain_stages(self._SPEC, width_mult, norm=norm, negative_slope=negative_slope)


class _MaxPoolSame(nn.Module):
    """Darknet's ``[maxpool] size=2 stride=1``: the window reaches one pixel past the right and
    bottom border (ignored), so (N, C, H, W) keeps its size. Replicate padding gives the same
    maximum as skipping the outside pixels."""

    def forward(self, x):
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)


class DarknetTiny(_DarknetBase):
    """The yolov3-tiny backbone (Darknet ``yolov3-tiny.cfg``): 3x3 convs of 16 ... 1024 channels,
    each of the first five followed by a 2x2/2 max-pool, then 512, a 2x2/1 max-pool and 1024.

    ``dark4`` (stride 16, 256 ch) feeds the second detection level; ``dark5`` (stride 32, 1024 ch;
    13x13 at 416) the first.
    """

    _SPEC = [("stem", [16]), ("dark1", ["M", 32]), ("dark2", ["M", 64]), ("dark3", ["M", 128]),
             ("dark4", ["M", 256]), ("dark5", ["M", 512, "S", 1024])]

    def __init__(self, out_features=("dark4", "dark5"), width_mult: float = 1.0, norm: str = "BN",
                 negative_slope: float = 0.1):
        super().__init__(out_features, size_divisibility=32)
        self._build_plain_stages(self._SPEC, width_mult, norm=norm, negative_slope=negative_slope)


class YOLOv1Net(_DarknetBase):
    """The YOLOv1 convolutional network (Redmon et al. 2016, Figure 3), output ``dark6``:
    stride 64, 1024 channels (7x7 at 448).

    ``variant="full"``: the paper's 24 conv layers (20 "pretraining" convs + 4 detection convs).
    ``variant="fast"``: a 9-conv net for Fast YOLO ("9 instead of 24 convolutional layers and
    fewer filters", same paper; layer widths follow Darknet's tiny-yolo v1: 16 ... 1024).
    """

    # Each stage is a list of (out_channels, kernel, stride) or "M" (2x2/2 max-pool).
    _FULL = [
        ("stem", [(64, 7, 2)]),
        ("dark2", ["M", (192, 3, 1)]),
        ("dark3", ["M", (128, 1, 1), (256, 3, 1), (256, 1, 1), (512, 3, 1)]),
        ("dark4", ["M"] + [(256, 1, 1), (512, 3, 1)] * 4 + [(512, 1, 1), (1024, 3, 1)]),
        ("dark5", ["M"] + [(512, 1, 1), (1024, 3, 1)] * 2 + [(1024, 3, 1)]),
        ("dark6", [(1024, 3, 2), (1024, 3, 1), (1024, 3, 1)]),
    ]
    _FAST = [
        ("stem", [(16, 3, 1)]),
        ("dark1", ["M", (32, 3, 1)]),
        ("dark2", ["M", (64, 3, 1)]),
        ("dark3", ["M", (128, 3, 1)]),
        ("dark4", ["M", (256, 3, 1)]),
        ("dark5", ["M", (512, 3, 1)]),
        ("dark6", ["M", (1024, 3, 1), (1024, 3, 1), (1024, 3, 1)]),
    ]

    def __init__(self, out_features=("dark6",), variant: str = "full", width_mult: float = 1.0,
                 norm: str = "BN", negative_slope: float = 0.1):
        super().__init__(out_features, size_divisibility=64)
        if variant not in ("full", "fast"):
            raise ValueError(f"YOLOv1Net: variant must be 'full' or 'fast', got {variant!r}")
        spec = self._FULL if variant == "full" else self._FAST
        kw = dict(norm=norm, negative_slope=negative_slope)
        stages, c, stride = {}, 3, 1
        self._out_feature_channels, self._out_feature_strides = {}, {}
        for name, layers_spec in spec:
            layers: List[nn.Module] = []
            for item in layers_spec:
                if item == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                    stride *= 2
                    continue
                out, k, s = item
                out = _ch(out, width_mult)
                layers.append(ConvBNLeaky(c, out, k, s, **kw))
                c, stride = out, stride * s
            stages[name] = nn.Sequential(*layers)
            self._out_feature_channels[name] = c
            self._out_feature_strides[name] = stride
        self.stages = nn.ModuleDict(stages)
        self.num_convs = sum(isinstance(m, nn.Conv2d) for m in self.modules())
        self._check_out_features()


def _common(cfg):
    d = cfg.MODEL.DARKNET
    return dict(width_mult=d.WIDTH_MULT, norm=d.NORM, negative_slope=d.NEGATIVE_SLOPE)


@BACKBONE_REGISTRY.register()
def build_darknet53_backbone(cfg, input_shape: ShapeSpec):
    """Darknet-53 from ``cfg.MODEL.DARKNET.*``; ``MODEL.BACKBONE.FREEZE_AT`` freezes early stages."""
    if input_shape.channels != 3:
        raise ValueError(f"Darknet-53 expects 3 input channels, got {input_shape.channels}")
    net = Darknet53(cfg.MODEL.DARKNET.OUT_FEATURES, cfg.MODEL.DARKNET.STAGE_BLOCKS, **_common(cfg))
    return net.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_darknet19_backbone(cfg, input_shape: ShapeSpec):
    """Darknet-19 from ``cfg.MODEL.DARKNET.*`` (OUT_FEATURES normally ["dark4", "dark5"])."""
    if input_shape.channels != 3:
        raise ValueError(f"Darknet-19 expects 3 input channels, got {input_shape.channels}")
    net = Darknet19(cfg.MODEL.DARKNET.OUT_FEATURES, **_common(cfg))
    return net.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_darknet_tiny_backbone(cfg, input_shape: ShapeSpec):
    """The yolov3-tiny backbone from ``cfg.MODEL.DARKNET.*`` (OUT_FEATURES ["dark4", "dark5"])."""
    if input_shape.channels != 3:
        raise ValueError(f"Darknet-tiny expects 3 input channels, got {input_shape.channels}")
    net = DarknetTiny(cfg.MODEL.DARKNET.OUT_FEATURES, **_common(cfg))
    return net.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_yolov1_backbone(cfg, input_shape: ShapeSpec):
    """The YOLOv1 net; ``cfg.MODEL.DARKNET.V1_VARIANT`` is "full" (24 convs) or "fast" (9)."""
    if input_shape.channels != 3:
        raise ValueError(f"YOLOv1 net expects 3 input channels, got {input_shape.channels}")
    net = YOLOv1Net(cfg.MODEL.DARKNET.OUT_FEATURES, cfg.MODEL.DARKNET.V1_VARIANT, **_common(cfg))
    return net.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


def reorg(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """YOLOv2's passthrough layer exactly as Darknet's ``[reorg]`` (and OpenCV's reader) computes
    it: (N, C, H, W) -> (N, C*s*s, H/s, W/s), so Darknet ``.weights`` load unchanged.

    Darknet's ``reorg_cpu(..., forward=0)`` reads its input as if it were ``(C/s^2, H*s, W*s)``
    and writes ``out[k, j, i] = in'[k % (C/s^2), j*s + (k // (C/s^2)) // s, i*s + (k // (C/s^2)) % s]``
    into a ``(C, H, W)`` buffer that the next layer reads as ``(C*s*s, H/s, W/s)``: a
    space-to-depth with scrambled rows (a known quirk of that code). It holds the same
    information as ``pixel_unshuffle``; only the channel/pixel order differs. No library offers
    this ordering, hence the hand-written reshape.
    """
    n, c, h, w = x.shape
    if c % (stride * stride) or h % stride or w % stride:
        raise ValueError(f"reorg: (C, H, W) = {(c, h, w)} not divisible by stride {stride}")
    out_c = c // (stride * stride)
    y = x.reshape(n, out_c, h, stride, w, stride).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * stride * stride, h // stride, w // stride)
