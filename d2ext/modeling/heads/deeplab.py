"""DeepLabv3 (Chen et al. 2017) and DeepLabv3+ (Chen et al. 2018) as a Detectron2 sem-seg head.

Used through Detectron2's ``SemanticSegmentor`` with ``MODEL.SEM_SEG_HEAD.NAME "DeepLabV3Head"``
on any backbone; DeepLab proper runs on a dilated backbone (``build_dilated_resnet_backbone``,
output stride 16 or 8) so that the deepest feature stays fine.

- **ASPP** on the deepest feature (``SEM_SEG_HEAD.IN_FEATURES[-1]``, stride ``s``): Detectron2's
  ``ASPP`` layer, i.e. a 1x1 conv, three 3x3 atrous convs (rates 6, 12, 18 at output stride 16;
  doubled at output stride 8 — DeepLabv3 Sec. 3.3), and image pooling (global average pool +
  1x1 conv, broadcast back), concatenated and projected by a 1x1 conv to ``ASPP_CHANNELS`` (256 in
  the paper), with dropout 0.1 as in the official implementation.
- **DeepLabv3** (``MODEL.DEEPLAB.LOW_LEVEL_FEATURE ""``): a 1x1 classifier on the ASPP output.
- **DeepLabv3+** (``LOW_LEVEL_FEATURE "res2"``, a stride-4 feature): the low-level feature is
  reduced to 48 channels by a 1x1 conv (Chen et al. 2018, Sec. 4.1), the ASPP output is
  upsampled bilinearly to its size and concatenated, two 3x3 convs (256 channels) refine it, then
  the 1x1 classifier.

Logits ``(N, K, h, w)`` at the decoder's stride ``r`` are upsampled bilinearly by exactly ``r``;
since every strided layer rounds up, ``r * h >= H`` for an input of height ``H``. In training the
logits are fitted to the targets' size (crop bottom/right, resize if smaller); at inference
``SemanticSegmentor`` crops them to each image's size, so odd input sizes give logits of exactly
the input size. Loss: cross-entropy with ``ignore_value`` (255) pixels left out, optionally plus
the soft Dice loss of :mod:`d2ext.modeling.heads.unet` (``LOSS_TYPE "ce+dice"``).
"""
from typing import Dict, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import ASPP, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from .unet import check_seg_loss_type, seg_head_outputs, semantic_seg_losses

__all__ = ["DeepLabV3Head"]


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3Head(nn.Module):
    """ASPP + optional DeepLabv3+ decoder over named backbone features (see module docstring).

    ``forward(features, targets=None)``: ``features`` maps names to ``(N, C_i, H_i, W_i)``;
    ``targets`` is ``(N, H, W)`` long with ``ignore_value`` padding. Returns ``(logits, losses)``:
    logits ``(N, K, H', W')`` — the targets' size when given, else ``r * (H_r, W_r)`` for the
    decoder's stride ``r`` — and losses ``{}`` at inference.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        aspp_channels: int = 256,
        aspp_dilations: Sequence[int] = (6, 12, 18),
        aspp_dropout: float = 0.1,
        low_level_feature: str = "",
        low_level_channels: int = 48,
        decoder_channels: int = 256,
        norm: str = "BN",
        loss_type: str = "ce",
        loss_weight: float = 1.0,
        dice_smooth: float = 1.0,
        ignore_value: int = 255,
    ):
        """
        Args:
            input_shape: name -> ShapeSpec(channels, stride) of the backbone's outputs.
            in_feature: the feature ASPP reads (the deepest, stride 8 or 16 for DeepLab).
            num_classes: K, including background.
            aspp_channels: output channels of every ASPP branch and of its projection.
            aspp_dilations: rates of the three 3x3 atrous branches.
            aspp_dropout: dropout after the ASPP projection (training only).
            low_level_feature: "" = DeepLabv3; a finer feature name (e.g. "res2") = DeepLabv3+.
            low_level_channels: the 1x1 reduction of the low-level feature (48 in the paper).
            decoder_channels: the two 3x3 refinement convs of the v3+ decoder (256).
            norm: Detectron2 norm name for every conv except the image-pooling branch.
            loss_type: "ce", "dice" or "ce+dice".
            loss_weight: multiplies each loss.
            dice_smooth: smoothing of the soft Dice ratio.
            ignore_value: target label excluded from the losses.
        """
        super().__init__()
        if in_feature not in input_shape:
            raise ValueError(f"DeepLabV3Head: feature {in_feature!r} not among {sorted(input_shape)}")
        check_seg_loss_type("DeepLabV3Head", loss_type)
        if len(aspp_dilations) != 3:
            raise ValueError(f"DeepLabV3Head: ASPP needs 3 dilations, got {list(aspp_dilations)}")
        self.in_feature = in_feature
        self.low_level_feature = low_level_feature
        self.num_classes = num_classes
        self.loss_type = loss_type
        self.loss_weight = loss_weight
        self.dice_smooth = dice_smooth
        self.ignore_value = ignore_value

        main = input_shape[in_feature]
        self.aspp = ASPP(main.channels, aspp_channels, list(aspp_dilations), norm=norm,
                         activation=nn.ReLU(inplace=True), dropout=aspp_dropout)
        use_bias = norm == ""
        if low_level_feature:
            if low_level_feature not in input_shape:
                raise ValueError(f"DeepLabV3Head: low-level feature {low_level_feature!r} not among "
                                 f"{sorted(input_shape)}")
            low = input_shape[low_level_feature]
            if low.stride >= main.stride:
                raise ValueError(f"DeepLabV3Head: low-level feature {low_level_feature!r} (stride "
                                 f"{low.stride}) must be finer than {in_feature!r} (stride {main.stride})")
            self.low_level_proj = Conv2d(low.channels, low_level_channels, kernel_size=1, bias=use_bias,
                                         norm=get_norm(norm, low_level_channels), activation=F.relu)
            self.decoder = nn.Sequential(
                Conv2d(aspp_channels + low_level_channels, decoder_channels, kernel_size=3, padding=1,
                       bias=use_bias, norm=get_norm(norm, decoder_channels), activation=F.relu),
                Conv2d(decoder_channels, decoder_channels, kernel_size=3, padding=1, bias=use_bias,
                       norm=get_norm(norm, decoder_channels), activation=F.relu),
            )
            for m in [self.low_level_proj, *self.decoder]:
                weight_init.c2_xavier_fill(m)
            self.output_stride = low.stride
            predictor_in = decoder_channels
        else:
            self.low_level_proj = None
            self.decoder = None
            self.output_stride = main.stride
            predictor_in = aspp_channels
        self.predictor = nn.Conv2d(predictor_in, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        names = list(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        low = cfg.MODEL.DEEPLAB.LOW_LEVEL_FEATURE
        missing = [n for n in names + ([low] if low else []) if n not in input_shape]
        if missing:
            raise ValueError(
                f"DeepLabV3Head: features {missing} (MODEL.SEM_SEG_HEAD.IN_FEATURES / "
                f"MODEL.DEEPLAB.LOW_LEVEL_FEATURE) are not outputs of backbone "
                f"{cfg.MODEL.BACKBONE.NAME!r}, which gives {sorted(input_shape)}"
            )
        if not names:
            raise ValueError("DeepLabV3Head: MODEL.SEM_SEG_HEAD.IN_FEATURES is empty")
        d = cfg.MODEL.DEEPLAB
        return {
            "input_shape": dict(input_shape),
            "in_feature": names[-1],
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "aspp_channels": d.ASPP_CHANNELS,
            "aspp_dilations": list(d.ASPP_DILATIONS),
            "aspp_dropout": d.ASPP_DROPOUT,
            "low_level_feature": low,
            "low_level_channels": d.LOW_LEVEL_CHANNELS,
            "decoder_channels": d.DECODER_CHANNELS,
            "norm": cfg.MODEL.SEM_SEG_HEAD.NORM,
            "loss_type": d.LOSS_TYPE,
            "loss_weight": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT,
            "dice_smooth": d.DICE_SMOOTH,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(N, K, h, w)`` at ``self.output_stride`` (not yet upsampled)."""
        x = self.aspp(features[self.in_feature])
        if self.decoder is not None:
            low = self.low_level_proj(features[self.low_level_feature])
            x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder(torch.cat([x, low], dim=1))
        return self.predictor(x)

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        logits = self.layers(features)
        if self.output_stride > 1:
            logits = F.interpolate(logits, scale_factor=self.output_stride, mode="bilinear", align_corners=False)
        return seg_head_outputs(self, logits, targets)

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        return semantic_seg_losses(logits, targets, self.loss_type, self.ignore_value,
                                   self.loss_weight, self.dice_smooth)
