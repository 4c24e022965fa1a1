"""U-Net decoder (Ronneberger et al. 2015) as a Detectron2 semantic-segmentation head.

The head is only the expanding path: it takes any backbone's multi-scale features by name
(``MODEL.SEM_SEG_HEAD.IN_FEATURES``), so U-Net on the classic encoder
(``build_unet_encoder_backbone``: ``enc1..enc5``, strides 1..16), on Detectron2's ResNet-34
(``res2..res5``, strides 4..32) or on VGG-16 is a config change (the encoder/decoder split of
segmentation_models_pytorch).

Decoding starts from the deepest feature. Each decoder block upsamples x(stride ratio) — a
transposed convolution with kernel = stride = ratio (the paper's "up-conv"), or bilinear
interpolation + 1x1 conv — pads/crops the result to the skip feature's size, concatenates the
skip and applies two 3x3 convs. When the finest feature has stride ``s > 1`` (ResNet: 4), the
head adds ``log2(s)`` more x2 blocks without skip. A 1x1 conv gives per-pixel class logits
``(N, K, H', W')`` at stride 1, where ``H' >= H`` for encoders whose strided layers round up
(padded convs, ceil-mode pooling) or pad the input to their ``size_divisibility``. Logits larger
than the targets are cropped at the bottom/right (Detectron2's ``sem_seg_postprocess`` does the
same at inference); smaller ones (encoders that round down) are resized bilinearly.

Used through Detectron2's ``SemanticSegmentor``, which pads images to
``backbone.size_divisibility`` and targets with ``ignore_value`` (255), calls
``head(features, targets)`` and crops the returned logits back to each image's size.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..backbone.unet_encoder import DoubleConv

__all__ = ["UNetHead", "soft_dice_loss", "fit_to_size"]


SEG_LOSS_TYPES = ("ce", "dice", "ce+dice")


def check_seg_loss_type(head: str, loss_type: str) -> None:
    """Raise a clear error unless ``loss_type`` is one :func:`semantic_seg_losses` computes."""
    if loss_type not in SEG_LOSS_TYPES:
        raise ValueError(f"{head}: loss_type must be 'ce', 'dice' or 'ce+dice', got {loss_type!r}")


def fit_to_size(x: torch.Tensor, size: Tuple[int, int], mode: str = "pad") -> torch.Tensor:
    """Crop ``(N, C, H, W)`` at the bottom/right to ``size``; where it is smaller, zero-pad
    (``mode="pad"``) or resize bilinearly (``mode="resize"``)."""
    h, w = size
    x = x[..., :h, :w]
    if x.shape[-2:] == (h, w):
        return x
    if mode == "resize":
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2]))


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255,
                   smooth: float = 1.0) -> torch.Tensor:
    """Multi-class soft Dice loss (Milletari et al. 2016), averaged over classes.

    ``logits`` ``(N, K, H, W)``, ``targets`` ``(N, H, W)`` class ids; pixels equal to
    ``ignore_value`` are left out. Per class c over the whole batch:
    ``1 - (2 sum p_c g_c + smooth) / (sum p_c + sum g_c + smooth)`` with ``p = softmax(logits)``.
    """
    k = logits.shape[1]
    valid = (targets != ignore_value).unsqueeze(1).to(logits.dtype)
    probs = F.softmax(logits.float(), dim=1) * valid
    onehot = F.one_hot(torch.where(targets == ignore_value, 0, targets), k).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return (1.0 - (2 * inter + smooth) / (denom + smooth)).mean()


class _UpBlock(nn.Module):
    """x``scale`` upsampling to ``out`` channels, optional skip concat, then DoubleConv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, scale: int,
                 upsample: str, norm: str):
        super().__init__()
        if upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=scale, stride=scale)
        elif upsample == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                Conv2d(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"UNetHead: upsample must be 'transposed' or 'bilinear', got {upsample!r}")
        self.conv = DoubleConv(out_channels + skip_channels, out_channels, norm)

    def forward(self, x, skip: Optional[torch.Tensor] = None):
        x = self.up(x)
        if skip is not None:
            x = torch.cat([fit_to_size(x, skip.shape[-2:]), skip], dim=1)
        return self.conv(x)


@SEM_SEG_HEADS_REGISTRY.register()
class UNetHead(nn.Module):
    """U-Net expanding path over named backbone features (see module docstring).

    ``forward(features, targets=None)``: ``features`` maps names to ``(N, C_i, H_i, W_i)``;
    ``targets`` is ``(N, H, W)`` long with ``ignore_value`` padding. Returns ``(logits, losses)``:
    logits ``(N, K, H, W)`` (cropped to ``targets`` when given), losses ``{}`` at inference.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        decoder_channels: Sequence[int],
        upsample: str = "transposed",
        norm: str = "BN",
        loss_type: str = "ce",
        loss_weight: float = 1.0,
        dice_smooth: float = 1.0,
        ignore_value: int = 255,
    ):
        """
        Args:
            input_shape: the features to use, name -> ShapeSpec(channels, stride); strides must be
                distinct powers of two.
            num_classes: K, including background.
            decoder_channels: output channels of each decoder block, coarse to fine; its length
                must be ``len(input_shape) - 1 + log2(finest stride)``.
            upsample: "transposed" or "bilinear".
            norm: Detectron2 norm name for the decoder convs ("" = none).
            loss_type: "ce", "dice" or "ce+dice".
            loss_weight: multiplies the total loss.
            dice_smooth: smoothing of the soft Dice ratio.
            ignore_value: target label excluded from the losses.
        """
        super().__init__()
        if not input_shape:
            raise ValueError("UNetHead(input_shape=) is empty: check MODEL.SEM_SEG_HEAD.IN_FEATURES")
        check_seg_loss_type("UNetHead", loss_type)
        shapes = sorted(input_shape.items(), key=lambda kv: -kv[1].stride)  # deepest first
        strides = [s.stride for _, s in shapes]
        for st in strides:
            if st < 1 or st & (st - 1):
                raise ValueError(f"UNetHead: feature strides must be powers of two, got {strides}")
        if len(set(strides)) != len(strides):
            raise ValueError(f"UNetHead: two input features share a stride: {dict((k, s.stride) for k, s in shapes)}")
        self.in_features = [k for k, _ in shapes]
        finest = strides[-1]
        n_extra = int(math.log2(finest))
        expected = len(shapes) - 1 + n_extra
        if len(decoder_channels) != expected:
            raise ValueError(
                f"UNetHead: features {self.in_features} (strides {strides}) need {expected} decoder "
                f"blocks ({len(shapes) - 1} with skips + {n_extra} x2 steps to stride 1), but "
                f"decoder_channels has {len(decoder_channels)}: {list(decoder_channels)}"
            )
        self.ignore_value = ignore_value
        self.loss_type = loss_type
        self.loss_weight = loss_weight
        self.dice_smooth = dice_smooth
        self.num_classes = num_classes

        blocks: List[nn.Module] = []
        prev_c, prev_s = shapes[0][1].channels, strides[0]
        out_iter = iter(decoder_channels)
        for _, spec in shapes[1:]:
            c = next(out_iter)
            blocks.append(_UpBlock(prev_c, spec.channels, c, prev_s // spec.stride, upsample, norm))
            prev_c, prev_s = c, spec.stride
        for _ in range(n_extra):
            c = next(out_iter)
            blocks.append(_UpBlock(prev_c, 0, c, 2, upsample, norm))
            prev_c = c
        self.decoder = nn.ModuleList(blocks)
        self.num_skip_blocks = len(shapes) - 1
        self.predictor = nn.Conv2d(prev_c, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        names = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        missing = [n for n in names if n not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not outputs of backbone "
                f"{cfg.MODEL.BACKBONE.NAME!r}, which gives {sorted(input_shape)}"
            )
        return {
            "input_shape": {k: input_shape[k] for k in names},
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "decoder_channels": list(cfg.MODEL.UNET.DECODER_CHANNELS),
            "upsample": cfg.MODEL.UNET.UPSAMPLE,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "loss_type": cfg.MODEL.UNET.LOSS_TYPE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "dice_smooth": cfg.MODEL.UNET.DICE_SMOOTH,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, K, s*H_f, s*W_f)`` from the finest feature's size ``H_f`` and stride ``s``."""
        x = features[self.in_features[0]]
        for i, block in enumerate(self.decoder):
            skip = features[self.in_features[i + 1]] if i < self.num_skip_blocks else None
            x = block(x, skip)
        return self.predictor(x)

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        return seg_head_outputs(self, self.layers(features), targets)

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        return semantic_seg_losses(logits, targets, self.loss_type, self.ignore_value,
                                   self.loss_weight, self.dice_smooth)


def seg_head_outputs(head: nn.Module, logits: torch.Tensor, targets: Optional[torch.Tensor]):
    """The ``(logits, losses)`` a sem-seg head returns to ``SemanticSegmentor``: logits fitted to
    the targets' (H, W) when given; losses only in training (which needs targets)."""
    if targets is not None:
        logits = fit_to_size(logits, targets.shape[-2:], mode="resize")
    if head.training:
        if targets is None:
            raise ValueError(f"{type(head).__name__}: training needs targets (N, H, W)")
        return logits, head.losses(logits, targets)
    return logits, {}


def semantic_seg_losses(logits: torch.Tensor, targets: torch.Tensor, loss_type: str, ignore_value: int,
                        loss_weight: float = 1.0, dice_smooth: float = 1.0) -> Dict[str, torch.Tensor]:
    """``loss_type`` "ce", "dice" or "ce+dice" on (N, K, H, W) logits and (N, H, W) int64 targets;
    pixels equal to ``ignore_value`` count in neither loss."""
    logits = logits.float()
    parts = loss_type.split("+")
    losses = {}
    if "ce" in parts:
        if (targets != ignore_value).any():
            ce = F.cross_entropy(logits, targets, reduction="mean", ignore_index=ignore_value)
        else:  # all pixels ignored: PyTorch's mean would be 0/0
            ce = logits.sum() * 0.0
        losses["loss_sem_seg"] = loss_weight * ce
    if "dice" in parts:
        losses["loss_dice"] = loss_weight * soft_dice_loss(logits, targets, ignore_value, dice_smooth)
    return losses
