"""YOLOv1, YOLOv2 and YOLOv3 as Detectron2 dense detectors.

Inputs follow Detectron2 (``batched_inputs`` from ``DatasetMapper``; boxes XYXY in input pixels);
outputs are ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``. Box coding and target
assignment live in :mod:`.yolo_utils`.

- :class:`YOLOV3` (Redmon & Farhadi 2018): Darknet-53, three scales (strides 8/16/32) with three
  anchors each, sigmoid objectness and independent (multi-label) sigmoid class scores trained
  with binary cross-entropy, predicted boxes with IoU > ``ignore_thresh`` (0.5) to any object
  excluded from the no-object loss.
- :class:`YOLOV2` (Redmon & Farhadi 2017): Darknet-19 + passthrough (reorg) layer, one 13x13 map
  at 416 with five anchors, softmax class scores.
- :class:`YOLOV1` (Redmon et al. 2016): a 7x7 grid, two boxes per cell, one class distribution per
  cell (7x7x30 for 20 classes), direct regression of (x, y, sqrt w, sqrt h) and a sum-squared
  loss with lambda_coord = 5, lambda_noobj = 0.5.
"""
import logging
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage

from ..backbone.darknet import ConvBNLeaky, reorg
from .yolo_utils import (
    YoloBoxTransform,
    YoloV1BoxTransform,
    assign_anchor_targets,
    assign_grid_cells,
    filter_degenerate_boxes,
    greedy_slot_assignment,
)

__all__ = ["YOLOV3Head", "YOLOV2Head", "YOLOV1Head", "YOLOV3", "YOLOV2", "YOLOV1"]

logger = logging.getLogger(__name__)


def _init_prediction(conv: nn.Conv2d, num_anchors: int, num_outputs: int, objectness_prior: float):
    """Small weights; objectness bias at ``logit(prior)`` so the ~10k negatives do not swamp the
    first iterations (the prior trick of RetinaNet, Lin et al. 2017)."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    with torch.no_grad():
        conv.bias.view(num_anchors, num_outputs)[:, 4] = math.log(objectness_prior / (1 - objectness_prior))


class YOLOV3Head(nn.Module):
    """YOLOv3's neck + output convolutions (Darknet ``yolov3.cfg``).

    Input: features of increasing stride (dark3, dark4, dark5) with ``in_channels`` (256, 512,
    1024). Deepest first, each level runs 1x1 (C/2), 3x3 (C), 1x1, 3x3, 1x1 convs, then a 3x3 (C)
    conv and a 1x1 prediction conv; a 1x1 (C/4) conv upsampled x2 is concatenated to the next
    shallower level. Output: per level ``(N, A_l * (5 + K), H_l, W_l)`` in the input order.
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 norm: str = "BN", objectness_prior: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.blocks, self.heads, self.laterals = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        extra = 0
        rev = list(reversed(list(in_channels)))
        for i, c in enumerate(rev):
            mid = c // 2
            self.blocks.append(nn.Sequential(
                ConvBNLeaky(c + extra, mid, 1, norm=norm), ConvBNLeaky(mid, c, 3, norm=norm),
                ConvBNLeaky(c, mid, 1, norm=norm), ConvBNLeaky(mid, c, 3, norm=norm),
                ConvBNLeaky(c, mid, 1, norm=norm),
            ))
            a = list(reversed(list(num_anchors)))[i]
            pred = nn.Conv2d(c, a * (5 + num_classes), 1)
            _init_prediction(pred, a, 5 + num_classes, objectness_prior)
            self.heads.append(nn.Sequential(ConvBNLeaky(mid, c, 3, norm=norm), pred))
            if i + 1 < len(rev):
                self.laterals.append(ConvBNLeaky(mid, mid // 2, 1, norm=norm))
                extra = mid // 2

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        outputs = []
        x = None
        for i, f in enumerate(reversed(features)):
            if x is not None:
                x = F.interpolate(self.laterals[i - 1](x), size=f.shape[-2:], mode="nearest")
                f = torch.cat([x, f], dim=1)
            x = self.blocks[i](f)
            outputs.append(self.heads[i](x))
        return outputs[::-1]


class YOLOV2Head(nn.Module):
    """YOLOv2's detection layers (Darknet ``yolov2-voc.cfg``): on the stride-32 map two 3x3 (C5)
    convs; the stride-16 map goes through a 1x1 (C4/8 = 64) conv and the passthrough (reorg,
    x2 space-to-depth, 256 ch), is concatenated, then a 3x3 (C5) conv and the 1x1 prediction.

    Input ``[dark4 (N, C4, 2H, 2W), dark5 (N, C5, H, W)]``; output ``[(N, A * (5 + K), H, W)]``
    (13x13 at 416).
    """

    def __init__(self, in_channels: Sequence[int], num_anchors: int, num_classes: int,
                 norm: str = "BN", objectness_prior: float = 0.01):
        super().__init__()
        c4, c5 = in_channels
        pt = max(8, c4 // 8)
        self.conv5 = nn.Sequential(ConvBNLeaky(c5, c5, 3, norm=norm), ConvBNLeaky(c5, c5, 3, norm=norm))
        self.passthrough = ConvBNLeaky(c4, pt, 1, norm=norm)
        self.fuse = ConvBNLeaky(c5 + 4 * pt, c5, 3, norm=norm)
        self.pred = nn.Conv2d(c5, num_anchors * (5 + num_classes), 1)
        _init_prediction(self.pred, num_anchors, 5 + num_classes, objectness_prior)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        f4, f5 = features
        x = torch.cat([reorg(self.passthrough(f4), 2), self.conv5(f5)], dim=1)
        return [self.pred(self.fuse(x))]


class YOLOV1Head(nn.Module):
    """YOLOv1's two fully connected layers (Redmon et al. 2016, Sec. 2.1): the stride-64 map is
    pooled to ``S x S`` (identity at 448 input, where it is already 7x7), flattened, then
    FC(fc_dim) + LeakyReLU + dropout(0.5) + FC(S*S*(5B + K)).

    Input ``[(N, C, h, w)]``; output ``(N, S, S, 5B + K)``; per cell ``B`` groups of
    (x, y, sqrt w, sqrt h, confidence), then ``K`` class probabilities (linear outputs).
    """

    def __init__(self, in_channels: int, grid_size: int = 7, boxes_per_cell: int = 2,
                 num_classes: int = 20, fc_dim: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.grid_size, self.boxes_per_cell, self.num_classes = grid_size, boxes_per_cell, num_classes
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.fc1 = nn.Linear(in_channels * grid_size * grid_size, fc_dim)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_dim, grid_size * grid_size * (5 * boxes_per_cell + num_classes))

    def forward(self, features: List[Tensor]) -> Tensor:
        x = self.pool(features[-1]).flatten(1)
        x = self.fc2(self.dropout(self.act(self.fc1(x))))
        s = self.grid_size
        return x.view(x.shape[0], s, s, 5 * self.boxes_per_cell + self.num_classes)


class _AnchorYOLO(DenseDetector):
    """Shared training and inference of YOLOv2 and YOLOv3 (both use :class:`YoloBoxTransform`).

    Loss (Darknet ``region``/``yolo`` layers; sums over the batch divided by the batch size):
    xy: BCE between sigmoid(tx, ty) and the centre's offset in its cell (Darknet's gradient
    ``scale * (t - sigmoid(x))`` is exactly BCE's), wh: 0.5 * squared error of the log-scales,
    both weighted by ``2 - w*h/(W*H)`` to favour small boxes; objectness: BCE, 1 on the assigned
    slot, 0 elsewhere except predictions overlapping any object by more than ``ignore_thresh``;
    classes: BCE per class (v3, multi-label) or softmax cross-entropy (v2).
    """

    class_activation = "sigmoid"

    def __init__(self, *, backbone: Backbone, head: nn.Module, head_in_features: List[str],
                 anchors: Sequence[Sequence[Sequence[float]]], strides: Sequence[int],
                 num_classes: int, ignore_thresh: float = 0.5, score_thresh: float = 0.01,
                 nms_thresh: float = 0.45, topk_candidates: int = 1000,
                 max_detections_per_image: int = 100, pixel_mean=(0.0, 0.0, 0.0),
                 pixel_std=(255.0, 255.0, 255.0), input_format: str = "RGB"):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if len(anchors) != len(strides):
            raise ValueError(f"{type(self).__name__}: {len(anchors)} anchor levels for "
                             f"{len(strides)} output strides {list(strides)}")
        self.num_classes = num_classes
        self.strides = list(strides)
        self.num_levels = len(strides)
        for i, a in enumerate(anchors):
            self.register_buffer(f"anchors_{i}", torch.tensor(a, dtype=torch.float32).view(-1, 2), False)
        self.ignore_thresh = ignore_thresh
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.topk_candidates = topk_candidates
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.num_unplaced_objects = 0  # objects with no free anchor slot so far (see yolo_utils)

    @property
    def anchors(self) -> List[Tensor]:
        return [getattr(self, f"anchors_{i}") for i in range(self.num_levels)]

    @classmethod
    def _common_config(cls, cfg) -> Dict:
        y = cfg.MODEL.YOLO
        return dict(
            num_classes=y.NUM_CLASSES, ignore_thresh=y.IGNORE_THRESH,
            score_thresh=y.SCORE_THRESH_TEST, nms_thresh=y.NMS_THRESH_TEST,
            topk_candidates=y.TOPK_CANDIDATES_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD,
            input_format=cfg.INPUT.FORMAT,
        )

    # ----- dense layout -------------------------------------------------------------------
    def _flatten(self, predictions: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor, Tensor, List]:
        """Per-level ``(N, A*(5+K), H, W)`` -> predictions (N, M, 5+K) and per-slot cells (M, 2),
        strides (M,), anchors (M, 2), grid sizes [(H, W)]."""
        k = 5 + self.num_classes
        flat, cells, strides, anchors, sizes = [], [], [], [], []
        for x, s, a in zip(predictions, self.strides, self.anchors):
            h, w = x.shape[-2:]
            flat.append(permute_to_N_HWA_K(x, k))
            gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                                    indexing="ij")
            c = torch.stack([gx, gy], dim=-1)[:, :, None, :].expand(h, w, len(a), 2).reshape(-1, 2)
            cells.append(c.to(x.dtype))
            strides.append(torch.full((c.shape[0],), float(s), device=x.device))
            anchors.append(a[None, None].expand(h, w, len(a), 2).reshape(-1, 2))
            sizes.append((h, w))
        return torch.cat(flat, 1), torch.cat(cells), torch.cat(strides), torch.cat(anchors), sizes

    @staticmethod
    def _decode(pred: Tensor, cells: Tensor, strides: Tensor, anchors: Tensor) -> Tensor:
        """(..., M, 5+K) raw outputs -> (..., M, 4) XYXY boxes."""
        deltas = torch.cat([pred[..., :2].sigmoid(), pred[..., 2:4]], dim=-1)
        return YoloBoxTransform.apply_deltas(deltas, cells, strides, anchors)

    def _class_scores(self, logits: Tensor) -> Tensor:
        return logits.sigmoid() if self.class_activation == "sigmoid" else logits.softmax(-1)

    # ----- training -----------------------------------------------------------------------
    def forward_training(self, images, features, predictions, gt_instances):
        pred, cells, strides, anchors, sizes = self._flatten(predictions)
        n_img = pred.shape[0]
        h_in, w_in = images.tensor.shape[-2:]
        with torch.no_grad():
            pred_boxes = self._decode(pred.detach(), cells, strides, anchors)
        zero = pred.sum() * 0
        loss_xy, loss_wh, loss_obj, loss_noobj, loss_cls = zero, zero, zero, zero, zero
        num_pos = 0
        for n, inst in enumerate(gt_instances):
            gt_boxes, gt_classes, _ = filter_degenerate_boxes(
                inst.gt_boxes.tensor, inst.gt_classes, where=type(self).__name__)
            noobj = torch.ones(pred.shape[1], dtype=torch.bool, device=pred.device)
            if len(gt_boxes):
                best = pairwise_iou(Boxes(pred_boxes[n]), Boxes(gt_boxes)).max(dim=1).values
                noobj &= best <= self.ignore_thresh
                assign = assign_anchor_targets(gt_boxes, self.anchors, self.strides, sizes)
                self.num_unplaced_objects += assign.num_unplaced
                if assign.num_unplaced:
                    logger.warning("%s: %d object(s) found no free anchor slot in their cell",
                                   type(self).__name__, assign.num_unplaced)
                s, g = assign.slot, assign.gt_index
                noobj[s] = False
                boxes = gt_boxes[g]
                target = YoloBoxTransform.get_deltas(boxes, assign.cell.to(boxes.dtype), strides[s], anchors[s])
                p = pred[n, s]
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                scale = 2.0 - area / float(h_in * w_in)
                loss_xy = loss_xy + (F.binary_cross_entropy_with_logits(
                    p[:, :2], target[:, :2], reduction="none").sum(1) * scale).sum()
                loss_wh = loss_wh + (0.5 * ((p[:, 2:4] - target[:, 2:4]) ** 2).sum(1) * scale).sum()
                loss_obj = loss_obj + F.binary_cross_entropy_with_logits(
                    p[:, 4], torch.ones_like(p[:, 4]), reduction="sum")
                cls = gt_classes[g]
                if self.class_activation == "sigmoid":
                    onehot = F.one_hot(cls, self.num_classes).to(p.dtype)
                    loss_cls = loss_cls + F.binary_cross_entropy_with_logits(p[:, 5:], onehot, reduction="sum")
                else:
                    loss_cls = loss_cls + F.cross_entropy(p[:, 5:], cls, reduction="sum")
                num_pos += len(s)
            obj_neg = pred[n, noobj, 4]
            loss_noobj = loss_noobj + F.binary_cross_entropy_with_logits(
                obj_neg, torch.zeros_like(obj_neg), reduction="sum")
        try:
            get_event_storage().put_scalar("num_positive_anchors", num_pos / n_img)
        except AssertionError:  # no EventStorage outside a Trainer
            pass
        return {
            "loss_box_xy": loss_xy / n_img,
            "loss_box_wh": loss_wh / n_img,
            "loss_obj": loss_obj / n_img,
            "loss_noobj": loss_noobj / n_img,
            "loss_cls": loss_cls / n_img,
        }

    # ----- inference ----------------------------------------------------------------------
    def forward_inference(self, images, features, predictions):
        pred, cells, strides, anchors, _ = self._flatten(predictions)
        boxes = self._decode(pred, cells, strides, anchors)
        scores = pred[..., 4:5].sigmoid() * self._class_scores(pred[..., 5:])
        return [
            self._postprocess_one(boxes[n], scores[n], images.image_sizes[n])
            for n in range(pred.shape[0])
        ]

    def _postprocess_one(self, boxes: Tensor, scores: Tensor, image_size) -> Instances:
        """boxes (M, 4), scores (M, K) -> thresholded, top-k, per-class NMS ``Instances``."""
        return _nms_postprocess(boxes, scores, image_size, self.score_thresh, self.topk_candidates,
                                self.nms_thresh, self.max_detections_per_image)


def _nms_postprocess(boxes, scores, image_size, score_thresh, topk, nms_thresh, max_det) -> Instances:
    flat = scores.flatten()
    keep = torch.nonzero(flat > score_thresh).squeeze(1)
    vals = flat[keep]
    if vals.numel() > topk:
        vals, idx = vals.topk(topk)
        keep = keep[idx]
    k = scores.shape[1]
    box_idx, cls_idx = keep // k, keep % k
    b = Boxes(boxes[box_idx])
    b.clip(image_size)
    kept = batched_nms(b.tensor, vals, cls_idx, nms_thresh)[:max_det]
    return Instances(image_size, pred_boxes=b[kept], scores=vals[kept], pred_classes=cls_idx[kept])


@META_ARCH_REGISTRY.register()
class YOLOV3(_AnchorYOLO):
    """YOLOv3 (Redmon & Farhadi 2018): three output levels, one per backbone feature in
    ``head_in_features`` (strides 8/16/32 for Darknet-53), ``anchors[l]`` in input pixels.
    Images: ``pixel_mean``/``pixel_std`` default to Darknet's RGB / 255."""

    class_activation = "sigmoid"

    @configurable
    def __init__(self, *, backbone, head, head_in_features, anchors, **kwargs):
        shapes = backbone.output_shape()
        strides = [shapes[f].stride for f in head_in_features]
        super().__init__(backbone=backbone, head=head, head_in_features=head_in_features,
                         anchors=anchors, strides=strides, **kwargs)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
        anchors = [list(map(list, a)) for a in cfg.MODEL.YOLO.ANCHORS]
        head = YOLOV3Head([shapes[f].channels for f in in_features], [len(a) for a in anchors],
                          cfg.MODEL.YOLO.NUM_CLASSES, norm=cfg.MODEL.DARKNET.NORM,
                          objectness_prior=cfg.MODEL.YOLO.OBJECTNESS_PRIOR)
        return dict(backbone=backbone, head=head, head_in_features=in_features, anchors=anchors,
                    **cls._common_config(cfg))


@META_ARCH_REGISTRY.register()
class YOLOV2(_AnchorYOLO):
    """YOLOv2 (Redmon & Farhadi 2017): ``head_in_features`` = [passthrough source (stride 16),
    main map (stride 32)]; one output level at the main map's stride; ``anchors`` holds one level
    (five anchors in the paper) in input pixels; softmax class scores."""

    class_activation = "softmax"

    @configurable
    def __init__(self, *, backbone, head, head_in_features, anchors, **kwargs):
        if len(head_in_features) != 2:
            raise ValueError(f"YOLOV2 needs 2 input features (passthrough, main), got {head_in_features}")
        strides = [backbone.output_shape()[head_in_features[-1]].stride]
        super().__init__(backbone=backbone, head=head, head_in_features=head_in_features,
                         anchors=anchors, strides=strides, **kwargs)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
        anchors = [list(map(list, a)) for a in cfg.MODEL.YOLO.ANCHORS]
        if len(anchors) != 1:
            raise ValueError(f"YOLOV2: MODEL.YOLO.ANCHORS must hold one level, got {len(anchors)}")
        head = YOLOV2Head([shapes[f].channels for f in in_features], len(anchors[0]),
                          cfg.MODEL.YOLO.NUM_CLASSES, norm=cfg.MODEL.DARKNET.NORM,
                          objectness_prior=cfg.MODEL.YOLO.OBJECTNESS_PRIOR)
        return dict(backbone=backbone, head=head, head_in_features=in_features, anchors=anchors,
                    **cls._common_config(cfg))


@META_ARCH_REGISTRY.register()
class YOLOV1(DenseDetector):
    """YOLOv1 (Redmon et al. 2016). The ``S x S`` grid covers the (padded) input tensor; each cell
    predicts ``B`` boxes with confidences and one class distribution (``(N, S, S, 5B + K)``).

    Loss (Eq. 3 of the paper, sums over the batch divided by the batch size): for each object the
    predictor of its cell with the highest IoU is "responsible" (a second object in the same cell
    takes the next predictor; objects beyond ``B`` per cell are counted in
    ``num_unplaced_objects``): ``lambda_coord * [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 +
    (sqrt h - sqrt h^)^2] + (C - IoU)^2``; other predictors ``lambda_noobj * C^2``; cells holding
    objects ``sum_c (p_c - p^_c)^2`` with the target the mean one-hot of the cell's objects.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, head: YOLOV1Head, head_in_features: List[str],
                 num_classes: int, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, topk_candidates: int = 1000,
                 max_detections_per_image: int = 100, pixel_mean=(0.0, 0.0, 0.0),
                 pixel_std=(255.0, 255.0, 255.0), input_format: str = "RGB"):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.num_classes = num_classes
        self.grid_size, self.boxes_per_cell = head.grid_size, head.boxes_per_cell
        self.lambda_coord, self.lambda_noobj = lambda_coord, lambda_noobj
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.topk_candidates = topk_candidates
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format
        self.num_unplaced_objects = 0

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
        v1 = cfg.MODEL.YOLO.V1
        head = YOLOV1Head(backbone.output_shape()[in_features[-1]].channels, v1.GRID_SIZE,
                          v1.BOXES_PER_CELL, cfg.MODEL.YOLO.NUM_CLASSES, v1.FC_DIM, v1.DROPOUT)
        y = cfg.MODEL.YOLO
        return dict(
            backbone=backbone, head=head, head_in_features=in_features, num_classes=y.NUM_CLASSES,
            lambda_coord=v1.LAMBDA_COORD, lambda_noobj=v1.LAMBDA_NOOBJ,
            score_thresh=y.SCORE_THRESH_TEST, nms_thresh=y.NMS_THRESH_TEST,
            topk_candidates=y.TOPK_CANDIDATES_TEST,
            max_detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            pixel_mean=cfg.MODEL.PIXEL_MEAN, pixel_std=cfg.MODEL.PIXEL_STD, input_format=cfg.INPUT.FORMAT,
        )

    def _split(self, pred: Tensor, image_hw: Tuple[int, int]):
        """(N, S, S, 5B+K) -> raw box outputs (N, S*S*B, 5), class outputs (N, S*S, K),
        decoded boxes (N, S*S*B, 4), cells (S*S*B, 2), cell size (cw, ch)."""
        n, s, b = pred.shape[0], self.grid_size, self.boxes_per_cell
        box = pred[..., : 5 * b].reshape(n, s * s * b, 5)
        cls = pred[..., 5 * b:].reshape(n, s * s, self.num_classes)
        gy, gx = torch.meshgrid(torch.arange(s, device=pred.device), torch.arange(s, device=pred.device),
                                indexing="ij")
        cells = torch.stack([gx, gy], -1)[:, :, None, :].expand(s, s, b, 2).reshape(-1, 2).to(pred.dtype)
        h, w = image_hw
        cell_size = (w / s, h / s)
        decoded = YoloV1BoxTransform.apply_deltas(box[..., :4], cells, cell_size, (h, w))
        return box, cls, decoded, cells, cell_size

    def forward_training(self, images, features, predictions, gt_instances):
        h, w = images.tensor.shape[-2:]
        s, b = self.grid_size, self.boxes_per_cell
        box, cls, decoded, _, cell_size = self._split(predictions, (h, w))
        n_img = box.shape[0]
        zero = predictions.sum() * 0
        loss_xy, loss_wh, loss_conf, loss_noobj, loss_cls = zero, zero, zero, zero, zero
        for n, inst in enumerate(gt_instances):
            gt_boxes, gt_classes, _ = filter_degenerate_boxes(
                inst.gt_boxes.tensor, inst.gt_classes, where="YOLOV1")
            responsible = torch.zeros(s * s * b, dtype=torch.bool, device=box.device)
            if len(gt_boxes):
                cells = assign_grid_cells(gt_boxes, (s, s), (h, w))  # (G, 2)
                cell_idx = cells[:, 1] * s + cells[:, 0]
                slots = cell_idx[:, None] * b + torch.arange(b, device=box.device)[None]  # (G, B)
                g = len(gt_boxes)
                ious = matched_pairwise_iou(
                    Boxes(decoded[n].detach()[slots.reshape(-1)]),
                    Boxes(gt_boxes[:, None].expand(g, b, 4).reshape(-1, 4)),
                ).view(g, b)
                scores, order = ious.sort(dim=1, descending=True, stable=True)
                chosen = greedy_slot_assignment(slots.gather(1, order), scores)
                placed = chosen >= 0
                unplaced = int((~placed).sum())
                if unplaced:
                    self.num_unplaced_objects += unplaced
                    logger.warning("YOLOV1: %d object(s) share a cell with %d others; only %d "
                                   "boxes per cell can be predicted", unplaced, b, b)
                sl, gb = chosen[placed], gt_boxes[placed]
                responsible[sl] = True
                target = YoloV1BoxTransform.get_deltas(gb, cells[placed].to(gb.dtype), cell_size, (h, w))
                p = box[n, sl]
                loss_xy = loss_xy + self.lambda_coord * ((p[:, :2] - target[:, :2]) ** 2).sum()
                loss_wh = loss_wh + self.lambda_coord * ((p[:, 2:4] - target[:, 2:4]) ** 2).sum()
                iou_t = matched_pairwise_iou(Boxes(decoded[n, sl].detach()), Boxes(gb))
                loss_conf = loss_conf + ((p[:, 4] - iou_t) ** 2).sum()
                # Class target per cell: mean one-hot over every object centred in it.
                onehot = F.one_hot(gt_classes, self.num_classes).to(cls.dtype)
                cls_t = torch.zeros(s * s, self.num_classes, dtype=cls.dtype, device=cls.device)
                cls_t.index_add_(0, cell_idx, onehot)
                count = cls_t.sum(1)
                occupied = count > 0
                cls_t = cls_t[occupied] / count[occupied, None]
                loss_cls = loss_cls + ((cls[n, occupied] - cls_t) ** 2).sum()
            loss_noobj = loss_noobj + self.lambda_noobj * (box[n, ~responsible, 4] ** 2).sum()
        return {
            "loss_box_xy": loss_xy / n_img,
            "loss_box_wh": loss_wh / n_img,
            "loss_conf": loss_conf / n_img,
            "loss_noobj": loss_noobj / n_img,
            "loss_cls": loss_cls / n_img,
        }

    def forward_inference(self, images, features, predictions):
        h, w = images.tensor.shape[-2:]
        box, cls, decoded, _, _ = self._split(predictions, (h, w))
        b = self.boxes_per_cell
        # Class-specific confidence Pr(class | object) * confidence (paper Eq. 1); the outputs are
        # linear, so negative values are clamped.
        conf = box[..., 4].clamp(min=0)  # (N, S*S*B)
        probs = cls.clamp(min=0).repeat_interleave(b, dim=1)  # (N, S*S*B, K)
        scores = conf[..., None] * probs
        return [
            _nms_postprocess(decoded[n], scores[n], images.image_sizes[n], self.score_thresh,
                             self.topk_candidates, self.nms_thresh, self.max_detections_per_image)
            for n in range(box.shape[0])
        ]
