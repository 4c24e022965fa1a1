"""Test-time augmentation of semantic segmenters.

Detectron2 ships TTA for ``GeneralizedRCNN`` only (``GeneralizedRCNNWithTTA``: box and mask
merging); a sem-seg model's outputs are per-pixel class scores at the original image size, so
their merge is an average. :class:`SemSegTTA` wraps any model that returns
``{"sem_seg": C x H x W scores}`` (``SemanticSegmentor`` with the U-Net or DeepLab heads) and
averages the softmax over every scale factor x flip of each input image. Scale factors are
relative to the image the mapper made (``INPUT.AUG.BASE_SCALE`` of its own size), so ``(0.5, 1,
2)`` looks at the cells at half, the same and twice their training size.

Config (``d2ext.config``): ``TEST.AUG.ENABLED`` (Detectron2's) turns it on; ``TEST.AUG.FLIP``
(Detectron2's) adds the horizontal flip, ``TEST.AUG.VFLIP`` the vertical one (and both
together); ``TEST.AUG.SCALE_FACTORS`` lists the factors.
"""
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

__all__ = ["SemSegTTA", "uses_test_time_augmentation", "with_test_time_augmentation"]


class SemSegTTA(nn.Module):
    """Softmax of a sem-seg model averaged over scale factors x flips (see the module docstring)."""

    @configurable
    def __init__(self, model: nn.Module, *, scale_factors: Sequence[float] = (1.0,),
                 flips: Sequence[Tuple[bool, bool]] = ((False, False),)):
        """
        Args:
            model: returns ``[{"sem_seg": C x H x W}]`` for a list of Detectron2 input dicts, at
                each dict's ``height`` x ``width`` (defaults to the image tensor's size).
            scale_factors: resize factors of the input image (bilinear), each > 0.
            flips: ``(horizontal, vertical)`` pairs; ``(False, False)`` is the image as it is.
        """
        super().__init__()
        if not scale_factors or any(f <= 0 for f in scale_factors):
            raise ValueError(f"scale_factors must be positive, got {list(scale_factors)}")
        if not flips:
            raise ValueError("flips needs at least one (horizontal, vertical) pair")
        self.model = model
        self.scale_factors = [float(f) for f in scale_factors]
        self.flips = [(bool(h), bool(v)) for h, v in flips]
        self.train(model.training)

    @classmethod
    def from_config(cls, cfg, model):
        flips = [(False, False)]
        if cfg.TEST.AUG.FLIP:
            flips.append((True, False))
        if cfg.TEST.AUG.VFLIP:
            flips.append((False, True))
            if cfg.TEST.AUG.FLIP:
                flips.append((True, True))
        return {"model": model, "scale_factors": tuple(cfg.TEST.AUG.SCALE_FACTORS), "flips": flips}

    @staticmethod
    def _flip(x: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
        dims = [d for d, on in ((-1, horizontal), (-2, vertical)) if on]
        return torch.flip(x, dims) if dims else x

    def _variants(self, inp: Dict) -> List[Tuple[Dict, bool, bool]]:
        image = inp["image"]
        h, w = image.shape[-2:]
        out = []
        for f in self.scale_factors:
            if f == 1.0:
                scaled = image
            else:
                size = (max(1, int(round(h * f))), max(1, int(round(w * f))))
                scaled = F.interpolate(image[None].float(), size=size, mode="bilinear",
                                       align_corners=False)[0]
                if image.dtype == torch.uint8:
                    scaled = scaled.round().clamp(0, 255).to(torch.uint8)
            for hf, vf in self.flips:
                variant = dict(inp)
                # labels a test mapper attached belong to the untransformed image (the U-Net
                # head would fit its logits to them): not passed on
                variant.pop("sem_seg", None)
                variant["image"] = self._flip(scaled, hf, vf)
                variant["height"], variant["width"] = inp.get("height", h), inp.get("width", w)
                out.append((variant, hf, vf))
        return out

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        if self.training:
            raise RuntimeError("SemSegTTA is for inference; train the wrapped model")
        results = []
        for inp in batched_inputs:
            total = None
            variants = self._variants(inp)
            for variant, hf, vf in variants:  # one at a time: each scale has its own size
                scores = self.model([variant])[0]["sem_seg"]
                probs = self._flip(scores.softmax(dim=0), hf, vf)
                total = probs if total is None else total + probs
            results.append({"sem_seg": total / len(variants)})
        return results


def uses_test_time_augmentation(cfg) -> bool:
    """Whether :func:`with_test_time_augmentation` wraps a model built from ``cfg``:
    ``TEST.AUG.ENABLED`` and a ``SemanticSegmentor`` (R-CNN TTA is Detectron2's
    ``GeneralizedRCNNWithTTA``, not applied here)."""
    return bool(cfg.TEST.AUG.ENABLED) and cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"


def with_test_time_augmentation(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in :class:`SemSegTTA` when :func:`uses_test_time_augmentation`,
    otherwise ``model`` itself."""
    return SemSegTTA(cfg, model) if uses_test_time_augmentation(cfg) else model
