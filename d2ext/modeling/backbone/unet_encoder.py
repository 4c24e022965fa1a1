"""The classic U-Net contracting path (Ronneberger et al. 2015) as a Detectron2 backbone.

Each level is two 3x3 convolutions (+ optional norm) + ReLU; levels after the first start with a
2x2 max-pool. Unlike the paper the convolutions are padded, so level ``i`` (0-based) of an
``(N, C, H, W)`` input is ``(N, channels[i], ceil(H / 2**i), ceil(W / 2**i))``; the pooling uses
``ceil_mode`` so odd sizes lose no border pixels. Outputs are named ``enc1 .. encL`` with strides
``1, 2, 4, ..., 2**(L-1)``. The classic widths are 64, 128, 256, 512, 1024 (L = 5, stride 16).
"""
from typing import Dict, List, Sequence

from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn import functional as F

from ..norm import get_norm

__all__ = ["DoubleConv", "UNetEncoder", "build_unet_encoder_backbone"]


class DoubleConv(nn.Sequential):
    """(3x3 conv, norm, ReLU) x 2, padding 1: ``(N, in, H, W) -> (N, out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN"):
        layers = []
        for i in range(2):
            layers.append(
                Conv2d(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, out_channels),
                    activation=nn.ReLU(inplace=True),
                )
            )
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class UNetEncoder(Backbone):
    """U-Net encoder: ``L`` levels of :class:`DoubleConv`, 2x2 max-pool between levels.

    Args:
        in_channels: image channels (3).
        channels: output channels per level, e.g. ``(64, 128, 256, 512, 1024)``.
        norm: "" (paper) or a Detectron2 norm name ("BN", "GN", ...).
        out_features: which of ``enc1 .. encL`` to return (default: all).
    """

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 128, 256, 512, 1024),
                 norm: str = "BN", out_features: Sequence[str] = ()):
        super().__init__()
        if len(channels) < 1:
            raise ValueError("UNetEncoder needs at least one level")
        self.names = [f"enc{i + 1}" for i in range(len(channels))]
        self._out_features = list(out_features) or list(self.names)
        unknown = set(self._out_features) - set(self.names)
        if unknown:
            raise ValueError(f"UNetEncoder: unknown out_features {sorted(unknown)}; has {self.names}")
        self.levels = nn.ModuleList()
        prev = in_channels
        for c in channels:
            self.levels.append(DoubleConv(prev, c, norm))
            prev = c
        self._out_feature_channels = {n: c for n, c in zip(self.names, channels)}
        self._out_feature_strides = {n: 2**i for i, n in enumerate(self.names)}

    @property
    def size_divisibility(self) -> int:
        # Padding to the deepest stride keeps every level an exact 2x of the next one.
        return 2 ** (len(self.levels) - 1)

    def forward(self, x) -> Dict[str, "torch.Tensor"]:  # noqa: F821
        """``(N, C, H, W)`` -> ``{"enc{i+1}": (N, channels[i], ceil(H/2**i), ceil(W/2**i))}``."""
        outputs = {}
        deepest = max(self.names.index(n) for n in self._out_features)
        for i, level in enumerate(self.levels[: deepest + 1]):
            if i > 0:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = level(x)
            if self.names[i] in self._out_features:
                outputs[self.names[i]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
            for n in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_unet_encoder_backbone(cfg, input_shape: ShapeSpec) -> UNetEncoder:
    """Backbone from ``MODEL.UNET.ENCODER_CHANNELS`` / ``ENCODER_NORM``; outputs are the
    ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` it has (all levels when none match)."""
    channels: List[int] = list(cfg.MODEL.UNET.ENCODER_CHANNELS)
    names = [f"enc{i + 1}" for i in range(len(channels))]
    wanted = [f for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES if f in names]
    return UNetEncoder(input_shape.channels, channels, cfg.MODEL.UNET.ENCODER_NORM, wanted)
