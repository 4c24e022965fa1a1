"""PatchDetector: the course's naive detector — classify crops of the image, return the best one.

Crops ("patches") come from a grid (2 x 2 = the course's 4 patches, 4 x 4 = 16), from anchor
shapes on a stride (square, tall, wide) or from precomputed proposals (selective search); each is
warped to ``crop_size`` x ``crop_size`` with ``roi_align`` (bilinear, ``aligned=True``), classified
by any registered backbone + :class:`ClassificationHead` into ``num_classes + 1`` scores (the last
is background, Detectron2's convention), and the best-scoring crops per class are the boxes.
Geometry and the training-label rule are :mod:`d2ext.data.patches` (shared with the patch CSV).

Inputs: Detectron2's detection format (``DatasetMapper``): ``"image"`` ``(C, H, W)`` in
``INPUT.FORMAT`` 0-255, ``"instances"`` (training), ``"height"``/``"width"`` (output size),
``"proposals"`` (``PATCHES "proposals"``; ``MODEL.LOAD_PROPOSALS``). Outputs: Detectron2's
``[{"instances": Instances(pred_boxes, scores, pred_classes)}]`` in the original image size, so
COCOEvaluator and the best-box IoU evaluator read it like any detector.

Training: per image, crops labelled by IoU (>= ``iou_threshold`` or an object's best crop) with
Detectron2's ``Matcher``; ``batch_size_per_image`` of them sampled with ``positive_fraction``
positives (``subsample_labels``), as R-CNN's fine-tuning (Girshick et al. 2014: 32 positives and
96 background per 128). With proposals, the ground-truth boxes join them (as Detectron2's ROI
heads do), so every image has a positive. Loss: cross entropy ``loss_cls``.
"""
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou

from ...data.patches import anchor_patches, grid_patches
from .classifier import ClassificationHead

__all__ = ["PatchDetector"]

PATCH_SOURCES = ("grid", "anchors", "proposals")


@META_ARCH_REGISTRY.register()
class PatchDetector(nn.Module):
    """Crop classifier as a detector (the course's patch baselines; R-CNN's region classifier).

    Args:
        backbone, head: the classifier of warped crops; ``head`` maps the backbone's
            ``in_feature`` ``(N, C, h, w)`` to ``(N, num_classes + 1)`` logits.
        patches: "grid", "anchors" or "proposals".
        grid: cells per side for "grid"; anchor_sizes / anchor_aspect_ratios / anchor_stride for
            "anchors" (input pixels; ratio = height / width).
        crop_size: warped crop side, pixels.
        detections_per_image: boxes returned per image (1: the course's best patch).
    """

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, in_feature: str,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], num_classes: int = 1,
                 patches: str = "grid", grid: int = 2, anchor_sizes: Sequence[float] = (160, 224),
                 anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), anchor_stride: float = 96,
                 crop_size: int = 64, iou_threshold: float = 0.5, batch_size_per_image: int = 16,
                 positive_fraction: float = 0.25, proposals_per_image: int = 300,
                 detections_per_image: int = 1, nms_thresh: float = 0.3):
        super().__init__()
        if patches not in PATCH_SOURCES:
            raise ValueError(f"patches must be one of {PATCH_SOURCES}, got {patches!r}")
        self.backbone = backbone
        self.head = head
        self.in_feature = in_feature
        self.num_classes = int(num_classes)
        self.patches = patches
        self.grid = int(grid)
        self.anchor_sizes = [float(s) for s in anchor_sizes]
        self.anchor_aspect_ratios = [float(r) for r in anchor_aspect_ratios]
        self.anchor_stride = float(anchor_stride)
        self.crop_size = int(crop_size)
        self.matcher = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=True)
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        self.proposals_per_image = int(proposals_per_image)
        self.detections_per_image = int(detections_per_image)
        self.nms_thresh = float(nms_thresh)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        c, p = cfg.MODEL.CLASSIFIER, cfg.MODEL.PATCH_DETECTOR
        shapes = backbone.output_shape()
        if c.IN_FEATURE not in shapes:
            raise ValueError(f"MODEL.CLASSIFIER.IN_FEATURE {c.IN_FEATURE!r} is not an output of "
                             f"{cfg.MODEL.BACKBONE.NAME} ({sorted(shapes)})")
        head = ClassificationHead(shapes[c.IN_FEATURE].channels, p.NUM_CLASSES + 1,
                                  pool_size=c.POOL_SIZE, hidden_dims=c.HIDDEN_DIMS,
                                  activation=c.ACTIVATION, dropout=c.DROPOUT,
                                  dropout_first=c.DROPOUT_FIRST)
        return {
            "backbone": backbone, "head": head, "in_feature": c.IN_FEATURE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
            "num_classes": p.NUM_CLASSES, "patches": p.PATCHES, "grid": p.GRID,
            "anchor_sizes": p.ANCHOR_SIZES, "anchor_aspect_ratios": p.ANCHOR_ASPECT_RATIOS,
            "anchor_stride": p.ANCHOR_STRIDE, "crop_size": p.CROP_SIZE,
            "iou_threshold": p.IOU_THRESHOLD, "batch_size_per_image": p.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": p.POSITIVE_FRACTION, "proposals_per_image": p.PROPOSALS_PER_IMAGE,
            "detections_per_image": p.DETECTIONS_PER_IMAGE, "nms_thresh": p.NMS_THRESH,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---------------------------------------------------------------------------------------
    def candidate_boxes(self, x: Dict, image_size) -> torch.Tensor:
        """``(P, 4)`` XYXY crops of one input, in the coordinates of its ``image`` tensor."""
        h, w = image_size
        if self.patches == "proposals":
            if "proposals" not in x:
                raise KeyError("PatchDetector with PATCHES 'proposals' needs 'proposals' in every "
                               "input: set MODEL.LOAD_PROPOSALS True and DATASETS.PROPOSAL_FILES_*")
            boxes = x["proposals"].proposal_boxes.tensor[: self.proposals_per_image]
            return boxes.to(self.device, torch.float32)
        # grid / anchors are defined on the original image; scaled to the (resized) input tensor
        oh, ow = x.get("height", h), x.get("width", w)
        if self.patches == "grid":
            boxes = grid_patches(ow, oh, self.grid)
        else:
            boxes = anchor_patches(ow, oh, self.anchor_sizes, self.anchor_aspect_ratios,
                                   self.anchor_stride)
        scale = np.array([w / ow, h / oh, w / ow, h / oh])
        return torch.as_tensor(boxes * scale, dtype=torch.float32, device=self.device)

    def crop_logits_and_features(self, images: ImageList, boxes: List[torch.Tensor]):
        """Warp each box of each image to ``crop_size``; return (logits ``(N, K+1)``, features
        ``(N, D)`` = the head's input to ``cls_score``)."""
        crops = roi_align(images.tensor, [b.to(images.tensor.dtype) for b in boxes],
                          output_size=self.crop_size, spatial_scale=1.0, sampling_ratio=2,
                          aligned=True)
        x = self.backbone(crops)[self.in_feature]
        if x.shape[-2:] != (self.head.pool_size, self.head.pool_size):
            x = F.adaptive_avg_pool2d(x, self.head.pool_size)
        x = torch.flatten(x, 1)
        features = x
        for name, module in self.head.named_children():
            x = module(x)
            if name != "cls_score":
                features = x
        return x, features

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, 0)

    def label_and_sample(self, boxes: torch.Tensor, gt: Instances):
        """(sampled boxes, class labels; ``num_classes`` = background) of one image."""
        gt_boxes = gt.gt_boxes.tensor.to(boxes.device)
        if self.patches == "proposals":
            boxes = torch.cat([boxes, gt_boxes])
        if len(gt_boxes) == 0:
            labels = torch.full((len(boxes),), self.num_classes, dtype=torch.int64, device=boxes.device)
        else:
            iou = pairwise_iou(Boxes(gt_boxes), Boxes(boxes))
            idx, match = self.matcher(iou)
            labels = gt.gt_classes.to(boxes.device)[idx]
            labels[match == 0] = self.num_classes
        pos, neg = subsample_labels(labels, self.batch_size_per_image, self.positive_fraction,
                                    self.num_classes)
        keep = torch.cat([pos, neg])
        return boxes[keep], labels[keep]

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_image(batched_inputs)
        boxes = [self.candidate_boxes(x, s) for x, s in zip(batched_inputs, images.image_sizes)]
        if self.training:
            if any("instances" not in x for x in batched_inputs):
                raise KeyError("PatchDetector training needs 'instances' in every input dict")
            sampled = [self.label_and_sample(b, x["instances"]) for b, x in zip(boxes, batched_inputs)]
            logits, _ = self.crop_logits_and_features(images, [b for b, _ in sampled])
            labels = torch.cat([lab for _, lab in sampled])
            return {"loss_cls": F.cross_entropy(logits, labels)}
        logits, _ = self.crop_logits_and_features(images, boxes)
        scores = F.softmax(logits, dim=1)[:, : self.num_classes]
        return self.postprocess(batched_inputs, images, boxes, scores.split([len(b) for b in boxes]))

    def postprocess(self, batched_inputs, images, boxes, scores, class_boxes=None):
        """Per image: every (box, class) pair, class-wise NMS, the ``detections_per_image`` best,
        rescaled to the input's ``height`` x ``width``. ``class_boxes[i]`` ``(P, K, 4)`` replaces
        the shared boxes when given (class-specific regression)."""
        results = []
        for i, (x, size) in enumerate(zip(batched_inputs, images.image_sizes)):
            s = scores[i]
            k = self.num_classes
            if class_boxes is not None:
                b = class_boxes[i].reshape(-1, 4)
            else:
                b = boxes[i].unsqueeze(1).expand(-1, k, 4).reshape(-1, 4)
            cls = torch.arange(k, device=s.device).repeat(len(s))
            s = s.reshape(-1)
            b = Boxes(b)
            b.clip(size)
            b = b.tensor
            keep = batched_nms(b, s, cls, self.nms_thresh)[: self.detections_per_image]
            inst = Instances(size)
            inst.pred_boxes = Boxes(b[keep])
            inst.scores = s[keep]
            inst.pred_classes = cls[keep]
            results.append({"instances": detector_postprocess(inst, x.get("height", size[0]),
                                                              x.get("width", size[1]))})
        return results
