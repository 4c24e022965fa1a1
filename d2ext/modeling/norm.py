"""Normalization layers by name: Detectron2's :func:`detectron2.layers.get_norm` plus group
counts that fit narrow layers.

Detectron2's ``"GN"`` is always 32 groups, so a 16-channel layer (a U-Net at 1/4 width) cannot
use it. Added names:

- ``"GN<k>"``: ``nn.GroupNorm(k, channels)`` (``"GN8"``: 8 groups; ``channels`` must divide);
- ``"IN"``: one group per channel (instance normalization with affine weights, as
  ``nn.GroupNorm(channels, channels)``; it works at any batch size, in training and at test).

Used by every d2ext backbone and the U-Net head; the DeepLab head keeps Detectron2's names, as
Detectron2's ``ASPP`` builds its norm layers itself.

Group / instance normalization uses each image's own statistics at test time as in training,
where BatchNorm uses running averages of the training batches: a segmenter meant for another
microscope's colours and magnification adapts per image (README, "WBC segmentation recipe").
"""
import re

from detectron2.layers import get_norm as _detectron2_get_norm
from torch import nn

__all__ = ["get_norm"]

_GN = re.compile(r"GN(\d+)")


def get_norm(norm, out_channels: int):
    """The layer for ``norm`` (a name above, any Detectron2 name, a callable, or ""/None = none)."""
    if isinstance(norm, str):
        m = _GN.fullmatch(norm)
        if m:
            groups = int(m.group(1))
            if groups < 1 or out_channels % groups:
                raise ValueError(f"norm {norm!r}: {out_channels} channels do not split into {groups} groups")
            return nn.GroupNorm(groups, out_channels)
        if norm == "IN":
            return nn.GroupNorm(out_channels, out_channels)
    return _detectron2_get_norm(norm, out_channels)
