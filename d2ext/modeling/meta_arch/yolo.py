"""YOLOv1, YOLOv2 and YOLOv3 as Detectron2 dense detectors, built like Detectron2's RetinaNet
and d2ext's SSD: ``@configurable`` heads and meta-architectures, ``label_anchors()`` (targets,
no gradients) then ``losses()`` (numbers).

Inputs follow Detectron2 (``batched_inputs`` from ``DatasetMapper``; boxes XYXY in input pixels);
outputs are ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``. Box coding and target
assignment live in :mod:`.yolo_utils`.

- :class:`YOLOV3` (Redmon & Farhadi 2018): Darknet-53, three scales (strides 8/16/32) with three
  anchors each, sigmoid objectness and independent (multi-label) sigmoid class scores trained
  with binary cross-entropy, predicted boxes with IoU > ``ignore_thresh`` (0.5) to any object
  excluded from the no-object loss. ``MODEL.YOLO.HEAD_NAME: YOLOV3TinyHead`` gives the
  yolov3-tiny layout (two scales).
- :class:`YOLOV2` (Redmon & Farhadi 2017): Darknet-19 + passthrough (reorg) layer, one 13x13 map
  at 416 with five anchors, softmax class scores.
- :class:`YOLOV1` (Redmon et al. 2016): a 7x7 grid, two boxes per cell, one class distribution per
  cell (7x7x30 for 20 classes), direct regression of (x, y, sqrt w, sqrt h) and a sum-squared
  loss with lambda_coord = 5, lambda_noobj = 0.5. The paper's two fully connected layers are
  :class:`YOLOV1Head`; :class:`YOLOV1ConvHead` gives the same output from shared convolutions
  (``configs/bccd/yolov1.yaml`` explains and measures the departure).

Heads are found by name in :data:`YOLO_HEAD_REGISTRY`; each reads only ``MODEL.YOLO.*`` keys.
Every head also lists its convolutions in Darknet's cfg order (``darknet_layers()``), which
:mod:`d2ext.modeling.darknet_weights` uses to read and write Darknet ``.weights`` files.
"""
import logging
import math
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.structures.boxes import matched_pairwise_iou
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry

from ..backbone.darknet import ConvBNLeaky, reorg
from .yolo_utils import (
    YoloBoxTransform,
    YoloV1BoxTransform,
    assign_anchor_targets,
    assign_grid_cells,
    filter_degenerate_boxes,
    greedy_slot_assignment,
)

__all__ = [
    "YOLO_HEAD_REGISTRY", "build_yolo_head", "YOLOV3Head", "YOLOV3TinyHead", "YOLOV2Head",
    "YOLOV1Head", "YOLOV1ConvHead", "AnchorTargets", "GridTargets", "YOLOV3", "YOLOV2", "YOLOV1",
]

logger = logging.getLogger(__name__)

YOLO_HEAD_REGISTRY = Registry("YOLO_HEAD")
YOLO_HEAD_REGISTRY.__doc__ = """YOLO heads: ``head(cfg, input_shapes)`` -> ``nn.Module`` taking the
list of ``MODEL.YOLO.IN_FEATURES`` features, finest first."""


def build_yolo_head(cfg, input_shape: List[ShapeSpec], default: str) -> nn.Module:
    """``MODEL.YOLO.HEAD_NAME`` (or ``default`` when empty) from :data:`YOLO_HEAD_REGISTRY`."""
    name = cfg.MODEL.YOLO.HEAD_NAME or default
    return YOLO_HEAD_REGISTRY.get(name)(cfg, input_shape)


def _backbone_and_head(cfg, default_head: str) -> dict:
    """The ``backbone``, ``head`` and ``head_in_features`` arguments every YOLO's ``from_config``
    shares: the backbone from ``MODEL.BACKBONE``, the head on its ``MODEL.YOLO.IN_FEATURES``."""
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    in_features = list(cfg.MODEL.YOLO.IN_FEATURES)
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(f"MODEL.YOLO.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})")
    return {"backbone": backbone, "head": build_yolo_head(cfg, [shapes[f] for f in in_features], default_head),
            "head_in_features": in_features}


def _init_prediction(conv: nn.Conv2d, num_anchors: int, num_outputs: int, objectness_prior: float):
    """Small weights; objectness bias at ``logit(prior)`` so the ~10k negatives do not swamp the
    first iterations (the prior trick of RetinaNet, Lin et al. 2017)."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    with torch.no_grad():
        conv.bias.view(num_anchors, num_outputs)[:, 4] = math.log(objectness_prior / (1 - objectness_prior))


def _anchor_head_config(cfg, input_shape: List[ShapeSpec]) -> Dict:
    """Keyword arguments shared by the anchor-based heads, from ``MODEL.YOLO`` only."""
    y = cfg.MODEL.YOLO
    return {
        "in_channels": [s.channels for s in input_shape],
        "num_anchors": [len(a) for a in y.ANCHORS],
        "num_classes": y.NUM_CLASSES,
        "norm": y.HEAD_NORM,
        "objectness_prior": y.OBJECTNESS_PRIOR,
    }


@YOLO_HEAD_REGISTRY.register()
class YOLOV3Head(nn.Module):
    """YOLOv3's neck + output convolutions (Darknet ``yolov3.cfg``).

    Deepest level first, each level runs 1x1 (C/2), 3x3 (C), 1x1, 3x3, 1x1 convs, then a 3x3 (C)
    conv and a 1x1 prediction conv; a 1x1 (C/4) conv upsampled x2 is concatenated (upsampled
    map first, as the cfg's ``route -1, 61``) to the next shallower level.

    Args:
        in_channels: channels of the input features, finest first (256, 512, 1024 for Darknet-53).
        num_anchors: anchors per level, finest first.
        num_classes: K.
        norm: norm after each conv ("BN" as Darknet).
        objectness_prior: initial objectness probability (sets the prediction biases).

    Forward: features ``[(N, C_l, H_l, W_l)]`` finest first -> ``[(N, A_l * (5 + K), H_l, W_l)]``
    in the same order; per anchor the channels are ``tx, ty, tw, th, objectness, K class logits``.
    """

    @configurable
    def __init__(self, *, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 norm: str = "BN", objectness_prior: float = 0.01):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"YOLOV3Head: {len(in_channels)} input features but {len(num_anchors)} anchor levels")
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

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return _anchor_head_config(cfg, input_shape)

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

    def darknet_layers(self) -> List[nn.Module]:
        """Convolutions in ``yolov3.cfg`` order: per level (deepest first) the five block convs,
        the 3x3, the prediction, then the lateral 1x1."""
        out: List[nn.Module] = []
        for i in range(len(self.blocks)):
            out += list(self.blocks[i]) + list(self.heads[i])
            if i < len(self.laterals):
                out.append(self.laterals[i])
        return out


@YOLO_HEAD_REGISTRY.register()
class YOLOV3TinyHead(nn.Module):
    """yolov3-tiny's detection layers (Darknet ``yolov3-tiny.cfg``), any number of levels.

    Deepest level: 1x1 (C/4) conv, then 3x3 (C/2) and the 1x1 prediction. Each shallower level:
    a 1x1 conv halving the previous level's 1x1 output, upsampled x2 and concatenated (upsampled
    first) to the input feature, then 3x3 (C_l) and the prediction. For ``in_channels`` =
    (256, 1024): 256 -> 512 -> pred at stride 32; 128, upsample, cat 256 -> 256 -> pred at 16.

    Args: as :class:`YOLOV3Head`. Forward: as :class:`YOLOV3Head`.
    """

    @configurable
    def __init__(self, *, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int,
                 norm: str = "BN", objectness_prior: float = 0.01):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"YOLOV3TinyHead: {len(in_channels)} input features but {len(num_anchors)} anchor levels")
        self.num_classes = num_classes
        rev_c = list(reversed(list(in_channels)))
        rev_a = list(reversed(list(num_anchors)))
        top = rev_c[0] // 4
        self.reduce = ConvBNLeaky(rev_c[0], top, 1, norm=norm)
        self.heads, self.laterals = nn.ModuleList(), nn.ModuleList()
        prev = top
        for i, (c, a) in enumerate(zip(rev_c, rev_a)):
            if i == 0:
                c_in, width = top, rev_c[0] // 2
            else:
                self.laterals.append(ConvBNLeaky(prev, prev // 2, 1, norm=norm))
                prev //= 2
                c_in, width = prev + c, c
            pred = nn.Conv2d(width, a * (5 + num_classes), 1)
            _init_prediction(pred, a, 5 + num_classes, objectness_prior)
            self.heads.append(nn.Sequential(ConvBNLeaky(c_in, width, 3, norm=norm), pred))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return _anchor_head_config(cfg, input_shape)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        feats = list(reversed(features))
        x = self.reduce(feats[0])
        outputs = [self.heads[0](x)]
        for i, f in enumerate(feats[1:], start=1):
            x = F.interpolate(self.laterals[i - 1](x), size=f.shape[-2:], mode="nearest")
            outputs.append(self.heads[i](torch.cat([x, f], dim=1)))
        return outputs[::-1]

    def darknet_layers(self) -> List[nn.Module]:
        """``yolov3-tiny.cfg`` order: the 1x1 reduce, 3x3 + prediction of the deepest level,
        then per shallower level its lateral 1x1, 3x3 and prediction."""
        out: List[nn.Module] = [self.reduce] + list(self.heads[0])
        for i in range(1, len(self.heads)):
            out += [self.laterals[i - 1]] + list(self.heads[i])
        return out


@YOLO_HEAD_REGISTRY.register()
class YOLOV2Head(nn.Module):
    """YOLOv2's detection layers (Darknet ``yolov2-voc.cfg``): on the stride-32 map two 3x3 (C5)
    convs; the stride-16 map goes through a 1x1 (C4/8 = 64) conv and the passthrough (Darknet's
    reorg, x2 space-to-depth, 256 ch); both are concatenated (reorg first, ``route -1, -4``), then a
    3x3 (C5) conv and the 1x1 prediction.

    Args:
        in_channels: ``(C4, C5)`` of the passthrough source and the main map.
        num_anchors: anchors of the single output level (an int, or a one-element list).
        num_classes, norm, objectness_prior: as :class:`YOLOV3Head`.

    Forward: ``[dark4 (N, C4, 2H, 2W), dark5 (N, C5, H, W)]`` -> ``[(N, A * (5 + K), H, W)]``
    (13x13 at 416).
    """

    @configurable
    def __init__(self, *, in_channels: Sequence[int], num_anchors, num_classes: int,
                 norm: str = "BN", objectness_prior: float = 0.01):
        super().__init__()
        if len(in_channels) != 2:
            raise ValueError(f"YOLOV2Head needs 2 input features (passthrough, main), got {len(in_channels)}")
        if not isinstance(num_anchors, int):
            if len(num_anchors) != 1:
                raise ValueError(f"YOLOV2Head: one anchor level expected, got {len(num_anchors)}")
            num_anchors = num_anchors[0]
        c4, c5 = in_channels
        pt = max(8, c4 // 8)
        self.num_classes = num_classes
        self.conv5 = nn.Sequential(ConvBNLeaky(c5, c5, 3, norm=norm), ConvBNLeaky(c5, c5, 3, norm=norm))
        self.passthrough = ConvBNLeaky(c4, pt, 1, norm=norm)
        self.fuse = ConvBNLeaky(c5 + 4 * pt, c5, 3, norm=norm)
        self.pred = nn.Conv2d(c5, num_anchors * (5 + num_classes), 1)
        _init_prediction(self.pred, num_anchors, 5 + num_classes, objectness_prior)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return _anchor_head_config(cfg, input_shape)

    def forward(self, features: List[Tensor]) -> List[Tensor]:
        f4, f5 = features
        x = torch.cat([reorg(self.passthrough(f4), 2), self.conv5(f5)], dim=1)
        return [self.pred(self.fuse(x))]

    def darknet_layers(self) -> List[nn.Module]:
        """``yolov2-voc.cfg`` order: two 3x3, passthrough 1x1, fuse 3x3, prediction."""
        return list(self.conv5) + [self.passthrough, self.fuse, self.pred]


@YOLO_HEAD_REGISTRY.register()
class YOLOV1Head(nn.Module):
    """YOLOv1's two fully connected layers (Redmon et al. 2016, Sec. 2.1): the stride-64 map is
    pooled to ``S x S`` (identity at 448 input, where it is already 7x7), flattened, then
    FC(fc_dim) + LeakyReLU + dropout + FC(S*S*(5B + K)).

    Args:
        in_channels: channels of the single input feature.
        grid_size: S (7).
        boxes_per_cell: B (2).
        num_classes: K (20 for VOC).
        fc_dim: hidden width (4096 in the paper).
        dropout: after the first FC (0.5 in the paper).

    Forward: ``[(N, C, h, w)]`` -> ``(N, S, S, 5B + K)``; per cell ``B`` groups of
    (x, y, sqrt w, sqrt h, confidence), then ``K`` class probabilities (linear outputs).
    """

    @configurable
    def __init__(self, *, in_channels: int, grid_size: int = 7, boxes_per_cell: int = 2,
                 num_classes: int = 20, fc_dim: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.grid_size, self.boxes_per_cell, self.num_classes = grid_size, boxes_per_cell, num_classes
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.fc1 = nn.Linear(in_channels * grid_size * grid_size, fc_dim)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc_dim, grid_size * grid_size * (5 * boxes_per_cell + num_classes))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        v1 = cfg.MODEL.YOLO.V1
        return {
            "in_channels": input_shape[-1].channels, "grid_size": v1.GRID_SIZE,
            "boxes_per_cell": v1.BOXES_PER_CELL, "num_classes": cfg.MODEL.YOLO.NUM_CLASSES,
            "fc_dim": v1.FC_DIM, "dropout": v1.DROPOUT,
        }

    def forward(self, features: List[Tensor]) -> Tensor:
        x = self.pool(features[-1]).flatten(1)
        x = self.fc2(self.dropout(self.act(self.fc1(x))))
        s = self.grid_size
        return x.view(x.shape[0], s, s, 5 * self.boxes_per_cell + self.num_classes)


@YOLO_HEAD_REGISTRY.register()
class YOLOV1ConvHead(YOLOV1Head):
    """YOLOv1's output tensor from convolutions instead of the two fully connected layers: the
    map pooled to ``S x S``, a 3x3 conv (``fc_dim`` channels) + LeakyReLU + dropout, then a 1x1
    conv to ``5B + K`` per cell. Same output and loss as :class:`YOLOV1Head`; the weights are
    shared across cells, so the within-cell (x, y) offsets are learnt from every cell at once
    (a departure from the paper, measured in configs/bccd/yolov1.yaml; YOLOv2 likewise dropped
    the fully connected layers).

    Args: as :class:`YOLOV1Head`. Forward: ``[(N, C, h, w)]`` -> ``(N, S, S, 5B + K)``.
    """

    @configurable
    def __init__(self, *, in_channels: int, grid_size: int = 7, boxes_per_cell: int = 2,
                 num_classes: int = 20, fc_dim: int = 4096, dropout: float = 0.5):
        nn.Module.__init__(self)
        self.grid_size, self.boxes_per_cell, self.num_classes = grid_size, boxes_per_cell, num_classes
        self.pool = nn.AdaptiveAvgPool2d(grid_size)
        self.conv1 = nn.Conv2d(in_channels, fc_dim, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.dropout = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(fc_dim, 5 * boxes_per_cell + num_classes, 1)

    def forward(self, features: List[Tensor]) -> Tensor:
        x = self.conv2(self.dropout(self.act(self.conv1(self.pool(features[-1])))))
        return x.permute(0, 2, 3, 1).contiguous()


def _put_scalar(name: str, value: float) -> None:
    try:
        get_event_storage().put_scalar(name, value)
    except AssertionError:  # no EventStorage outside a Trainer
        pass


def _nms_postprocess(boxes, scores, image_size, score_thresh, topk, nms_thresh, max_det) -> Instances:
    """boxes (M, 4), scores (M, K) -> thresholded, top-k, per-class NMS ``Instances``."""
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


@dataclass
class AnchorTargets:
    """Training targets of a batch for YOLOv2/v3, from :meth:`_AnchorYOLO.label_anchors`.

    ``image`` / ``slot`` (P,): image index and flat prediction slot of each positive;
    ``deltas`` (P, 4): :class:`YoloBoxTransform` targets (xy offsets in [0, 1], log-scales);
    ``classes`` (P,); ``box_weight`` (P,): ``2 - w*h/(W*H)``; ``negatives`` (N, M): slots that
    get the no-object loss (not positive, best IoU with every object <= ``ignore_thresh``).
    """

    image: Tensor
    slot: Tensor
    deltas: Tensor
    classes: Tensor
    box_weight: Tensor
    negatives: Tensor


class _AnchorYOLO(DenseDetector):
    """Shared construction, training and inference of YOLOv2 and YOLOv3 (both use
    :class:`YoloBoxTransform`); subclasses set ``default_head``, ``class_activation`` and
    :meth:`output_strides`.

    Loss (Darknet ``region``/``yolo`` layers; sums over the batch divided by the batch size), per
    positive slot with box weight ``s = 2 - w*h/(W*H)`` (favours small boxes):
    xy: ``s * BCE(sigmoid(t_xy), offset)`` (Darknet's gradient ``scale * (t - sigmoid(x))`` is
    exactly BCE's), wh: ``s * 0.5 * (t_wh - log(b_wh / anchor_wh))^2``; objectness:
    ``BCE(sigmoid(t_o), 1)`` on positives, ``BCE(sigmoid(t_o), 0)`` on negatives (predictions
    overlapping an object by more than ``ignore_thresh`` are neither); classes: BCE per class
    (v3, multi-label) or softmax cross-entropy (v2).

    Args:
        backbone: a Detectron2 ``Backbone``.
        head: features -> per-level ``(N, A_l * (5 + K), H_l, W_l)`` (see :class:`YOLOV3Head`).
        head_in_features: backbone outputs fed to the head, finest first.
        anchors: per output level, ``A_l`` anchors ``(w, h)`` in input pixels, finest first.
        num_classes: K.
        ignore_thresh: IoU above which a predicted box is excluded from the no-object loss.
        score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference filtering.
        pixel_mean, pixel_std, input_format: normalisation of the 0-255 input (Darknet: RGB / 255).
    """

    class_activation = "sigmoid"
    default_head = ""

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, head_in_features: Sequence[str],
                 anchors: Sequence[Sequence[Sequence[float]]], num_classes: int,
                 ignore_thresh: float = 0.5, score_thresh: float = 0.01, nms_thresh: float = 0.45,
                 topk_candidates: int = 1000, max_detections_per_image: int = 100,
                 pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
                 pixel_std: Sequence[float] = (255.0, 255.0, 255.0), input_format: str = "RGB"):
        super().__init__(backbone, head, list(head_in_features), pixel_mean=pixel_mean, pixel_std=pixel_std)
        strides = self.output_strides(backbone.output_shape(), list(head_in_features))
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

    @classmethod
    def from_config(cls, cfg):
        y = cfg.MODEL.YOLO
        return {
            **_backbone_and_head(cfg, cls.default_head),
            "anchors": [[list(wh) for wh in level] for level in y.ANCHORS],
            "num_classes": y.NUM_CLASSES,
            "ignore_thresh": y.IGNORE_THRESH,
            "score_thresh": y.SCORE_THRESH_TEST,
            "nms_thresh": y.NMS_THRESH_TEST,
            "topk_candidates": y.TOPK_CANDIDATES_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    @staticmethod
    def output_strides(shapes: Dict[str, ShapeSpec], in_features: List[str]) -> List[int]:
        """Stride of each output level of the head."""
        raise NotImplementedError

    @property
    def anchors(self) -> List[Tensor]:
        return [getattr(self, f"anchors_{i}") for i in range(self.num_levels)]

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
    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        pred, cells, strides, anchors, sizes = self._flatten(predictions)
        with torch.no_grad():
            pred_boxes = self._decode(pred.detach(), cells, strides, anchors)
        targets = self.label_anchors(pred_boxes, cells, strides, anchors, sizes, gt_instances,
                                     tuple(images.tensor.shape[-2:]))
        return self.losses(pred, targets)

    @torch.no_grad()
    def label_anchors(self, pred_boxes: Tensor, cells: Tensor, strides: Tensor, anchors: Tensor,
                      grid_sizes: List[Tuple[int, int]], gt_instances: List[Instances],
                      image_hw: Tuple[int, int]) -> AnchorTargets:
        """Assign every object to one prediction slot (:func:`assign_anchor_targets`: the cell of
        its centre, its best anchor by shape IoU, the next best when taken) and mark the
        no-object slots.

        Args:
            pred_boxes: (N, M, 4) decoded XYXY predictions (for the ignore threshold).
            cells, strides, anchors: (M, 2), (M,), (M, 2) per slot, from ``_flatten``.
            grid_sizes: per level (H_l, W_l).
            gt_instances: per image, ``gt_boxes`` XYXY and ``gt_classes``.
            image_hw: (H, W) of the padded input tensor (for the box weight).
        """
        n_img, m = pred_boxes.shape[:2]
        device = pred_boxes.device
        negatives = torch.ones(n_img, m, dtype=torch.bool, device=device)
        image, slot, deltas, classes, weight = [], [], [], [], []
        for n, inst in enumerate(gt_instances):
            gt_boxes, gt_classes, _ = filter_degenerate_boxes(
                inst.gt_boxes.tensor, inst.gt_classes, where=type(self).__name__)
            if not len(gt_boxes):
                continue
            best = pairwise_iou(Boxes(pred_boxes[n]), Boxes(gt_boxes)).max(dim=1).values
            negatives[n] &= best <= self.ignore_thresh
            assign = assign_anchor_targets(gt_boxes, self.anchors, self.strides, grid_sizes)
            self.num_unplaced_objects += assign.num_unplaced
            if assign.num_unplaced:
                logger.warning("%s: %d object(s) found no free anchor slot in their cell",
                               type(self).__name__, assign.num_unplaced)
            s, g = assign.slot, assign.gt_index
            negatives[n, s] = False
            boxes = gt_boxes[g]
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            image.append(torch.full_like(s, n))
            slot.append(s)
            deltas.append(YoloBoxTransform.get_deltas(boxes, assign.cell.to(boxes.dtype), strides[s], anchors[s]))
            classes.append(gt_classes[g])
            weight.append(2.0 - area / float(image_hw[0] * image_hw[1]))
        if not slot:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return AnchorTargets(empty, empty, pred_boxes.new_zeros(0, 4), empty, pred_boxes.new_zeros(0), negatives)
        return AnchorTargets(torch.cat(image), torch.cat(slot), torch.cat(deltas), torch.cat(classes),
                             torch.cat(weight), negatives)

    def losses(self, pred: Tensor, targets: AnchorTargets) -> Dict[str, Tensor]:
        """The five loss terms (see the class docstring) from ``pred`` (N, M, 5 + K) raw outputs
        and :meth:`label_anchors`' targets; each a sum over the batch divided by N."""
        n_img = pred.shape[0]
        p = pred[targets.image, targets.slot]  # (P, 5 + K)
        t, s = targets.deltas, targets.box_weight
        loss_xy = (F.binary_cross_entropy_with_logits(p[:, :2], t[:, :2], reduction="none").sum(1) * s).sum()
        loss_wh = (0.5 * ((p[:, 2:4] - t[:, 2:4]) ** 2).sum(1) * s).sum()
        loss_obj = F.binary_cross_entropy_with_logits(p[:, 4], torch.ones_like(p[:, 4]), reduction="sum")
        if self.class_activation == "sigmoid":
            onehot = F.one_hot(targets.classes, self.num_classes).to(p.dtype)
            loss_cls = F.binary_cross_entropy_with_logits(p[:, 5:], onehot, reduction="sum")
        else:
            loss_cls = F.cross_entropy(p[:, 5:], targets.classes, reduction="sum")
        neg = pred[..., 4][targets.negatives]
        loss_noobj = F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")
        _put_scalar("num_positive_anchors", len(targets.slot) / n_img)
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
            _nms_postprocess(boxes[n], scores[n], images.image_sizes[n], self.score_thresh,
                             self.topk_candidates, self.nms_thresh, self.max_detections_per_image)
            for n in range(pred.shape[0])
        ]


@META_ARCH_REGISTRY.register()
class YOLOV3(_AnchorYOLO):
    """YOLOv3 (Redmon & Farhadi 2018): one output level per backbone feature in
    ``head_in_features`` (strides 8/16/32 for Darknet-53), independent sigmoid class scores.
    Args: see :class:`_AnchorYOLO`."""

    class_activation = "sigmoid"
    default_head = "YOLOV3Head"

    @staticmethod
    def output_strides(shapes, in_features):
        return [shapes[f].stride for f in in_features]


@META_ARCH_REGISTRY.register()
class YOLOV2(_AnchorYOLO):
    """YOLOv2 (Redmon & Farhadi 2017): ``head_in_features`` = [passthrough source (stride 16),
    main map (stride 32)]; one output level at the main map's stride (``anchors`` holds one level,
    five anchors in the paper); softmax class scores. Args: see :class:`_AnchorYOLO`."""

    class_activation = "softmax"
    default_head = "YOLOV2Head"

    @staticmethod
    def output_strides(shapes, in_features):
        if len(in_features) != 2:
            raise ValueError(f"YOLOV2 needs 2 input features (passthrough, main), got {in_features}")
        return [shapes[in_features[-1]].stride]


@dataclass
class GridTargets:
    """Training targets of a batch for YOLOv1, from :meth:`YOLOV1.label_grid`.

    ``image`` / ``slot`` (P,): image and flat predictor index (``(cell_y * S + cell_x) * B + b``)
    of each responsible predictor; ``deltas`` (P, 4): :class:`YoloV1BoxTransform` targets;
    ``iou`` (P,): IoU of the predicted box with its object (the confidence target);
    ``responsible`` (N, S*S*B); ``class_targets`` (N, S*S, K): mean one-hot of the objects centred
    in each cell; ``occupied`` (N, S*S): cells holding an object centre.
    """

    image: Tensor
    slot: Tensor
    deltas: Tensor
    iou: Tensor
    responsible: Tensor
    class_targets: Tensor
    occupied: Tensor


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

    Args:
        backbone: a Detectron2 ``Backbone`` (e.g. :class:`YOLOv1Net`).
        head: :class:`YOLOV1Head` (or any module with ``grid_size`` and ``boxes_per_cell``
            returning ``(N, S, S, 5B + K)``).
        head_in_features: the backbone output fed to the head (one name).
        num_classes: K.
        lambda_coord, lambda_noobj: loss weights (5 and 0.5, paper Sec. 2.2).
        score_thresh, topk_candidates, nms_thresh, max_detections_per_image: inference filtering.
        pixel_mean, pixel_std, input_format: normalisation of the 0-255 input.
    """

    @configurable
    def __init__(self, *, backbone: Backbone, head: nn.Module, head_in_features: Sequence[str],
                 num_classes: int, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
                 score_thresh: float = 0.01, nms_thresh: float = 0.45, topk_candidates: int = 1000,
                 max_detections_per_image: int = 100, pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
                 pixel_std: Sequence[float] = (255.0, 255.0, 255.0), input_format: str = "RGB"):
        super().__init__(backbone, head, list(head_in_features), pixel_mean=pixel_mean, pixel_std=pixel_std)
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
        y = cfg.MODEL.YOLO
        return {
            **_backbone_and_head(cfg, "YOLOV1Head"),
            "num_classes": y.NUM_CLASSES,
            "lambda_coord": y.V1.LAMBDA_COORD,
            "lambda_noobj": y.V1.LAMBDA_NOOBJ,
            "score_thresh": y.SCORE_THRESH_TEST,
            "nms_thresh": y.NMS_THRESH_TEST,
            "topk_candidates": y.TOPK_CANDIDATES_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def _split(self, pred: Tensor, image_hw: Tuple[int, int]):
        """(N, S, S, 5B+K) -> raw box outputs (N, S*S*B, 5), class outputs (N, S*S, K),
        decoded boxes (N, S*S*B, 4), cell size (cw, ch)."""
        n, s, b = pred.shape[0], self.grid_size, self.boxes_per_cell
        box = pred[..., : 5 * b].reshape(n, s * s * b, 5)
        cls = pred[..., 5 * b:].reshape(n, s * s, self.num_classes)
        gy, gx = torch.meshgrid(torch.arange(s, device=pred.device), torch.arange(s, device=pred.device),
                                indexing="ij")
        cells = torch.stack([gx, gy], -1)[:, :, None, :].expand(s, s, b, 2).reshape(-1, 2).to(pred.dtype)
        h, w = image_hw
        cell_size = (w / s, h / s)
        decoded = YoloV1BoxTransform.apply_deltas(box[..., :4], cells, cell_size, (h, w))
        return box, cls, decoded, cell_size

    def forward_training(self, images: ImageList, features, predictions, gt_instances):
        image_hw = tuple(images.tensor.shape[-2:])
        box, cls, decoded, cell_size = self._split(predictions, image_hw)
        targets = self.label_grid(decoded.detach(), gt_instances, image_hw)
        return self.losses(box, cls, targets)

    @torch.no_grad()
    def label_grid(self, decoded: Tensor, gt_instances: List[Instances],
                   image_hw: Tuple[int, int]) -> GridTargets:
        """Pick the responsible predictor of every object (paper Sec. 2.2: the one of its cell
        with the highest current IoU; see :func:`greedy_slot_assignment` for shared cells).

        Args:
            decoded: (N, S*S*B, 4) XYXY boxes decoded from the predictions.
            gt_instances: per image, ``gt_boxes`` XYXY and ``gt_classes``.
            image_hw: (H, W) of the padded input tensor, which the grid covers.
        """
        s, b, k = self.grid_size, self.boxes_per_cell, self.num_classes
        n_img, device, dtype = decoded.shape[0], decoded.device, decoded.dtype
        h, w = image_hw
        cell_size = (w / s, h / s)
        responsible = torch.zeros(n_img, s * s * b, dtype=torch.bool, device=device)
        class_t = torch.zeros(n_img, s * s, k, dtype=dtype, device=device)
        image, slot, deltas, iou = [], [], [], []
        for n, inst in enumerate(gt_instances):
            gt_boxes, gt_classes, _ = filter_degenerate_boxes(inst.gt_boxes.tensor, inst.gt_classes, where="YOLOV1")
            g = len(gt_boxes)
            if not g:
                continue
            cells = assign_grid_cells(gt_boxes, (s, s), (h, w))  # (G, 2)
            cell_idx = cells[:, 1] * s + cells[:, 0]
            slots = cell_idx[:, None] * b + torch.arange(b, device=device)[None]  # (G, B)
            ious = matched_pairwise_iou(
                Boxes(decoded[n][slots.reshape(-1)]), Boxes(gt_boxes[:, None].expand(g, b, 4).reshape(-1, 4)),
            ).view(g, b)
            scores, order = ious.sort(dim=1, descending=True, stable=True)
            chosen = greedy_slot_assignment(slots.gather(1, order), scores)
            placed = chosen >= 0
            unplaced = int((~placed).sum())
            if unplaced:
                self.num_unplaced_objects += unplaced
                logger.warning("YOLOV1: %d object(s) share a cell with %d others; only %d boxes per "
                               "cell can be predicted", unplaced, b, b)
            sl, gb = chosen[placed], gt_boxes[placed]
            responsible[n, sl] = True
            image.append(torch.full_like(sl, n))
            slot.append(sl)
            deltas.append(YoloV1BoxTransform.get_deltas(gb, cells[placed].to(gb.dtype), cell_size, (h, w)))
            iou.append(matched_pairwise_iou(Boxes(decoded[n, sl]), Boxes(gb)))
            class_t[n].index_add_(0, cell_idx, F.one_hot(gt_classes, k).to(dtype))
        count = class_t.sum(2)
        occupied = count > 0
        class_t = class_t / count.clamp(min=1)[..., None]
        if not slot:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return GridTargets(empty, empty, decoded.new_zeros(0, 4), decoded.new_zeros(0), responsible,
                               class_t, occupied)
        return GridTargets(torch.cat(image), torch.cat(slot), torch.cat(deltas), torch.cat(iou),
                           responsible, class_t, occupied)

    def losses(self, box: Tensor, cls: Tensor, targets: GridTargets) -> Dict[str, Tensor]:
        """Paper Eq. 3 from ``box`` (N, S*S*B, 5) and ``cls`` (N, S*S, K) raw outputs; each term
        a sum over the batch divided by N."""
        n_img = box.shape[0]
        p = box[targets.image, targets.slot]  # (P, 5)
        t = targets.deltas
        loss_xy = self.lambda_coord * ((p[:, :2] - t[:, :2]) ** 2).sum()
        loss_wh = self.lambda_coord * ((p[:, 2:4] - t[:, 2:4]) ** 2).sum()
        loss_conf = ((p[:, 4] - targets.iou) ** 2).sum()
        loss_noobj = self.lambda_noobj * (box[..., 4][~targets.responsible] ** 2).sum()
        loss_cls = ((cls - targets.class_targets)[targets.occupied] ** 2).sum()
        _put_scalar("num_responsible", len(targets.slot) / n_img)
        return {
            "loss_box_xy": loss_xy / n_img,
            "loss_box_wh": loss_wh / n_img,
            "loss_conf": loss_conf / n_img,
            "loss_noobj": loss_noobj / n_img,
            "loss_cls": loss_cls / n_img,
        }

    def forward_inference(self, images, features, predictions):
        box, cls, decoded, _ = self._split(predictions, tuple(images.tensor.shape[-2:]))
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
