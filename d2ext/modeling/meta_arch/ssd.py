"""SSD: Single Shot MultiBox Detector (Liu et al., ECCV 2016) as a Detectron2 meta-architecture.

The model mirrors torchvision's ``ssd300_vgg16`` operation for operation, so torchvision weights
converted with :func:`convert_torchvision_ssd300_vgg16` give the same detections (see
``tests/test_ssd.py``):

- images are normalised with ``PIXEL_MEAN``/``PIXEL_STD`` and then warped (bilinear, aspect ratio
  not kept) to ``IMAGE_SIZE x IMAGE_SIZE`` inside the model, as torchvision's
  ``GeneralizedRCNNTransform(fixed_size=(300, 300))`` does; detections are mapped back to the
  requested output size by Detectron2's ``detector_postprocess``;
- default boxes: :class:`SSDDefaultBoxGenerator` (paper Sec. 2.2 "Choosing scales and aspect
  ratios", with the scales and steps of the authors' COCO model);
- matching: IoU >= 0.5 (Detectron2 ``Matcher``) plus "each ground truth's best default box is
  positive" (paper Sec. 2.2 "Matching strategy");
- loss: smooth-L1 on the (10, 10, 5, 5)-weighted R-CNN deltas (SSD's 0.1 / 0.2 "variances") plus
  softmax cross-entropy with 3:1 hard-negative mining, both divided by the number of positives
  (paper Eq. 1-3, Sec. 2.2 "Hard negative mining");
- inference: softmax, per-class top-k (400) above a score threshold (0.01), per-class NMS (0.45)
  via ``batched_nms``, at most ``TEST.DETECTIONS_PER_IMAGE`` (200) boxes.

Classes: ``num_classes`` foreground classes; the classifier has ``num_classes + 1`` outputs with
the background at index 0 (as torchvision), so ``pred_classes`` are ``0 .. num_classes - 1``.
"""
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.box_regression import Box2BoxTransform, _dense_box_regression_loss
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from torch import Tensor, nn

from ..weight_import import register_weight_converter

__all__ = ["SSD", "SSDHead", "SSDDefaultBoxGenerator", "convert_torchvision_ssd300_vgg16"]

logger = logging.getLogger(__name__)


class SSDDefaultBoxGenerator(nn.Module):
    """SSD default boxes (Liu et al. 2016, Sec. 2.2), in XYXY input pixels.

    On map ``k`` (``H_k x W_k``) each location ``(i, j)`` gets boxes centred at
    ``((j + 0.5) * step_k, (i + 0.5) * step_k)`` with, in this order: ``(s_k, s_k)``,
    ``(s'_k, s'_k)`` with ``s'_k = sqrt(s_k * s_{k+1})``, then ``(s_k sqrt(a), s_k / sqrt(a))`` and
    its transpose for every aspect ratio ``a`` of map ``k``. Scales are fractions of the image side;
    widths/heights are clipped to [0, 1] when ``clip``. Boxes of one map are ordered
    (row, column, box), matching Detectron2's ``(N, H*W*A, K)`` prediction layout. Numerically
    identical to torchvision's ``DefaultBoxGenerator`` (same operations in the same order).

    Args:
        aspect_ratios: per map, the ratios besides 1 (e.g. ``[[2], [2, 3], ...]``).
        scales: ``len(aspect_ratios) + 1`` scales (the last only enters ``s'`` of the last map).
        steps: per map, the pixel distance between box centres (``None``: image side / map size).
        clip: clip box widths/heights to the image side.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[Sequence[float]],
        scales: Sequence[float],
        steps: Optional[Sequence[float]] = None,
        clip: bool = True,
    ):
        super().__init__()
        if len(scales) != len(aspect_ratios) + 1:
            raise ValueError(
                f"need {len(aspect_ratios) + 1} scales for {len(aspect_ratios)} maps, got {len(scales)}"
            )
        if steps is not None and len(steps) != len(aspect_ratios):
            raise ValueError(f"need one step per map ({len(aspect_ratios)}), got {len(steps)}")
        self.aspect_ratios = [list(a) for a in aspect_ratios]
        self.scales = list(scales)
        self.steps = list(steps) if steps is not None else None
        self.clip = clip
        self._cache: Dict[Tuple, List[Tensor]] = {}
        wh = []
        for k, ratios in enumerate(self.aspect_ratios):
            s_k = self.scales[k]
            s_prime = math.sqrt(self.scales[k] * self.scales[k + 1])
            pairs = [[s_k, s_k], [s_prime, s_prime]]
            for ar in ratios:
                r = math.sqrt(ar)
                pairs.extend([[s_k * r, s_k / r], [s_k / r, s_k * r]])
            wh.append(torch.as_tensor(pairs, dtype=torch.float32))
        self._wh_pairs = wh

    @property
    def num_anchors(self) -> List[int]:
        """Default boxes per location on each map: ``2 + 2 * len(aspect_ratios[k])``."""
        return [2 + 2 * len(r) for r in self.aspect_ratios]

    def _grid(self, grid_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int]) -> List[Tensor]:
        boxes = []
        x_y_size = torch.tensor([image_size[1], image_size[0]])
        for k, (h, w) in enumerate(grid_sizes):
            if self.steps is not None:
                x_f_k = image_size[1] / self.steps[k]
                y_f_k = image_size[0] / self.steps[k]
            else:
                y_f_k, x_f_k = h, w
            shifts_x = (torch.arange(0, w) + 0.5) / x_f_k
            shifts_y = (torch.arange(0, h) + 0.5) / y_f_k
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            num_wh = len(self._wh_pairs[k])
            shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)) * num_wh, dim=-1).reshape(-1, 2)
            wh = self._wh_pairs[k].clamp(min=0, max=1) if self.clip else self._wh_pairs[k]
            wh = wh.repeat(h * w, 1)
            boxes.append(torch.cat([(shifts - 0.5 * wh) * x_y_size, (shifts + 0.5 * wh) * x_y_size], dim=1))
        return boxes

    def forward(self, image_size: Tuple[int, int], features: List[Tensor]) -> List[Boxes]:
        """``image_size`` (H, W) of the network input and the per-map features ``(N, C, H_k, W_k)``
        -> one :class:`Boxes` ``(H_k * W_k * A_k, 4)`` per map (same for every image)."""
        if len(features) != len(self.aspect_ratios):
            raise ValueError(f"{len(features)} feature maps but {len(self.aspect_ratios)} aspect-ratio lists")
        grid_sizes = tuple(tuple(int(s) for s in f.shape[-2:]) for f in features)
        key = (tuple(int(s) for s in image_size), grid_sizes)
        if key not in self._cache:
            self._cache[key] = self._grid(grid_sizes, key[0])
        device, dtype = features[0].device, features[0].dtype
        return [Boxes(b.to(device=device, dtype=dtype)) for b in self._cache[key]]


class SSDHead(nn.Module):
    """One 3x3 conv per map for class logits and one for box deltas (Liu et al. 2016, Fig. 2).

    Input: per-map features ``(N, C_k, H_k, W_k)``. Output: ``(logits, deltas)``, lists with
    ``(N, A_k * (num_classes + 1), H_k, W_k)`` and ``(N, A_k * 4, H_k, W_k)`` per map.
    """

    @configurable
    def __init__(self, *, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int):
        super().__init__()
        if len(in_channels) != len(num_anchors):
            raise ValueError(f"{len(in_channels)} feature maps but {len(num_anchors)} anchor counts")
        self.cls_score = nn.ModuleList(
            nn.Conv2d(c, a * (num_classes + 1), kernel_size=3, padding=1)
            for c, a in zip(in_channels, num_anchors)
        )
        self.bbox_pred = nn.ModuleList(
            nn.Conv2d(c, a * 4, kernel_size=3, padding=1) for c, a in zip(in_channels, num_anchors)
        )
        for m in self.modules():  # Xavier, as the SSD authors and torchvision
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {
            "in_channels": [s.channels for s in input_shape],
            "num_anchors": [2 + 2 * len(r) for r in cfg.MODEL.SSD.ASPECT_RATIOS],
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
        }

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        logits = [m(x) for m, x in zip(self.cls_score, features)]
        deltas = [m(x) for m, x in zip(self.bbox_pred, features)]
        return logits, deltas


@META_ARCH_REGISTRY.register()
class SSD(DenseDetector):
    """SSD300 / SSD512 (Liu et al. 2016). Input dicts hold ``image`` ``(C, H, W)`` in
    ``input_format`` (0-255) and, in training, ``instances`` with XYXY ``gt_boxes`` in that image's
    pixels; outputs are XYXY boxes in ``height`` x ``width`` (default: the input image size).

    Args:
        backbone: a Detectron2 ``Backbone`` (e.g. ``build_ssd_vgg16_backbone``).
        head: ``features -> (logits, deltas)``, see :class:`SSDHead`.
        head_in_features: backbone outputs to use, finest first.
        anchor_generator: :class:`SSDDefaultBoxGenerator`.
        box2box_transform: ``Box2BoxTransform((10, 10, 5, 5))`` encodes SSD's variances 0.1 / 0.2.
        anchor_matcher: ``Matcher([iou_threshold], [0, 1])``; each gt's best box is added on top.
        num_classes: foreground classes.
        image_size: side of the square network input (300 or 512).
        neg_pos_ratio: hard negatives per positive (3, paper Sec. 2.2).
        smooth_l1_beta: smooth-L1 transition point (1.0, as Fast R-CNN and the paper).
        test_score_thresh, test_topk_candidates, test_nms_thresh, max_detections_per_image:
            inference filtering (0.01, 400 per class, 0.45, 200 in the SSD configs).
        pixel_mean, pixel_std, input_format: normalisation of the 0-255 input image.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: SSDDefaultBoxGenerator,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        image_size: int = 300,
        neg_pos_ratio: float = 3.0,
        smooth_l1_beta: float = 1.0,
        test_score_thresh: float = 0.01,
        test_topk_candidates: int = 400,
        test_nms_thresh: float = 0.45,
        max_detections_per_image: int = 200,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
    ):
        super().__init__(backbone, head, list(head_in_features), pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.num_classes = num_classes
        self.image_size = (int(image_size), int(image_size))
        self.neg_pos_ratio = neg_pos_ratio
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(cfg.MODEL.SSD.IN_FEATURES)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})"
            )
        s = cfg.MODEL.SSD
        if len(s.ASPECT_RATIOS) != len(in_features):
            raise ValueError(
                f"MODEL.SSD.ASPECT_RATIOS has {len(s.ASPECT_RATIOS)} entries for "
                f"{len(in_features)} IN_FEATURES"
            )
        return {
            "backbone": backbone,
            "head": SSDHead(cfg, [shapes[f] for f in in_features]),
            "head_in_features": in_features,
            "anchor_generator": SSDDefaultBoxGenerator(
                s.ASPECT_RATIOS, s.SCALES, list(s.STEPS) or None, s.CLIP_DEFAULT_BOXES
            ),
            "box2box_transform": Box2BoxTransform(weights=tuple(s.BBOX_REG_WEIGHTS)),
            "anchor_matcher": Matcher([s.IOU_THRESHOLD], [0, 1], allow_low_quality_matches=False),
            "num_classes": s.NUM_CLASSES,
            "image_size": s.IMAGE_SIZE,
            "neg_pos_ratio": s.NEG_POS_RATIO,
            "smooth_l1_beta": s.SMOOTH_L1_BETA,
            "test_score_thresh": s.SCORE_THRESH_TEST,
            "test_topk_candidates": s.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": s.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    # ------------------------------------------------------------------ input / output
    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        """Normalise, then warp every image to ``image_size`` (bilinear, as torchvision's SSD)."""
        images = []
        for x in batched_inputs:
            img = (self._move_to_current_device(x["image"]) - self.pixel_mean) / self.pixel_std
            if tuple(img.shape[-2:]) != self.image_size:
                img = F.interpolate(img[None], size=self.image_size, mode="bilinear", align_corners=False)[0]
            images.append(img)
        return ImageList(torch.stack(images), [self.image_size] * len(images))

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        """Training: ``{"loss_cls", "loss_box_reg"}``. Inference: ``[{"instances": Instances}]``
        with ``pred_boxes`` (XYXY in ``height`` x ``width``), ``scores``, ``pred_classes``."""
        input_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        predictions = self.head(features)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError("SSD training needs 'instances' in every input dict")
            gt_instances = [
                self._resize_gt(x["instances"].to(self.device), size)
                for x, size in zip(batched_inputs, input_sizes)
            ]
            return self.forward_training(images, features, predictions, gt_instances)

        results = self.forward_inference(images, features, predictions)
        processed = []
        for res, x, (h, w) in zip(results, batched_inputs, input_sizes):
            processed.append({"instances": detector_postprocess(res, x.get("height", h), x.get("width", w))})
        return processed

    def _resize_gt(self, instances: Instances, input_size: Tuple[int, int]) -> Instances:
        """Scale ``gt_boxes`` from the input image to the warped ``image_size`` (new object)."""
        out = Instances(self.image_size, **instances.get_fields())
        if tuple(input_size) != self.image_size:
            # float32 ratios computed as torchvision's resize_boxes does
            new = torch.tensor(self.image_size, dtype=torch.float32)
            old = torch.tensor(tuple(input_size), dtype=torch.float32)
            ratio_h, ratio_w = new[0] / old[0], new[1] / old[1]
            ratios = torch.stack([ratio_w, ratio_h, ratio_w, ratio_h]).to(self.device)
            out.gt_boxes = Boxes(instances.gt_boxes.tensor * ratios)
        return out

    # ------------------------------------------------------------------ training
    def forward_training(self, images, features, predictions, gt_instances):
        pred_logits, pred_deltas = self._transpose_dense_predictions(predictions, [self.num_classes + 1, 4])
        anchors = self.anchor_generator(images.tensor.shape[-2:], features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes)

    @staticmethod
    def filter_degenerate(boxes: Tensor, classes: Tensor, what: str = "") -> Tuple[Tensor, Tensor]:
        """Drop boxes with ``x2 <= x1``, ``y2 <= y1`` or non-finite coordinates, with a warning
        (their regression targets would be ``log(0)``: the loss would turn NaN)."""
        ok = torch.isfinite(boxes).all(dim=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(ok.all()):
            bad = boxes[~ok]
            logger.warning(
                "SSD: ignoring %d degenerate ground-truth box(es)%s, e.g. %s",
                len(bad), f" in {what}" if what else "", [round(v, 2) for v in bad[0].tolist()],
            )
            boxes, classes = boxes[ok], classes[ok]
        return boxes, classes

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """Match default boxes to ground truth (paper Sec. 2.2, "Matching strategy").

        A default box is positive when its best IoU with any ground-truth box is >= the matcher's
        threshold; in addition, every ground-truth box's highest-IoU default box is made positive
        for it (so a box smaller than every default box still trains). All ground-truth boxes are
        used (no cap on their number).

        Returns, per image: class targets ``(R,)`` (0 = background, ``c + 1`` = class ``c``) and
        matched ground-truth boxes ``(R, 4)`` (the default box itself for negatives).
        """
        anchors = Boxes.cat(anchors)
        gt_labels, matched_boxes = [], []
        for i, inst in enumerate(gt_instances):
            boxes, classes = self.filter_degenerate(
                inst.gt_boxes.tensor, inst.gt_classes, f"image {i} of the batch"
            )
            if len(boxes) == 0:
                gt_labels.append(torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device))
                matched_boxes.append(anchors.tensor.clone())
                continue
            iou = pairwise_iou(Boxes(boxes), anchors)  # (G, R)
            matched_idxs, match_labels = self.anchor_matcher(iou)
            # every gt keeps its best default box, even below the threshold (torchvision SSDMatcher)
            best_anchor_per_gt = iou.max(dim=1).indices
            matched_idxs[best_anchor_per_gt] = torch.arange(len(boxes), device=iou.device)
            match_labels[best_anchor_per_gt] = 1
            labels = classes[matched_idxs].to(torch.int64) + 1
            labels[match_labels == 0] = 0
            gt_labels.append(labels)
            matched_boxes.append(boxes[matched_idxs])
        return gt_labels, matched_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_deltas, gt_boxes) -> Dict[str, Tensor]:
        """SSD loss (paper Eq. 1): ``(L_conf + L_loc) / num_positives``.

        ``pred_logits``: per map ``(N, R_k, K + 1)``; ``pred_deltas``: per map ``(N, R_k, 4)``;
        ``gt_labels`` / ``gt_boxes``: per image ``(R,)`` / ``(R, 4)`` from :meth:`label_anchors`.
        Cross-entropy uses every positive and the ``neg_pos_ratio`` x (positives of the image)
        negatives with the highest loss (hard-negative mining, per image).
        """
        gt_labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = gt_labels > 0
        num_pos = int(pos_mask.sum())
        normalizer = max(1, num_pos)

        loss_box_reg = _dense_box_regression_loss(
            anchors, self.box2box_transform, pred_deltas, gt_boxes, pos_mask,
            box_reg_loss_type="smooth_l1", smooth_l1_beta=self.smooth_l1_beta,
        )

        logits = cat(pred_logits, dim=1)  # (N, R, K + 1)
        cls_loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), gt_labels.reshape(-1), reduction="none"
        ).view(gt_labels.shape)
        with torch.no_grad():
            num_neg = self.neg_pos_ratio * pos_mask.sum(1, keepdim=True)
            neg_loss = cls_loss.clone()
            neg_loss[pos_mask] = -float("inf")  # positives rank last
            _, order = neg_loss.sort(1, descending=True)
            neg_mask = order.sort(1)[1] < num_neg
        loss_cls = cls_loss[pos_mask].sum() + cls_loss[neg_mask].sum()
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    # ------------------------------------------------------------------ inference
    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        pred_logits, pred_deltas = self._transpose_dense_predictions(predictions, [self.num_classes + 1, 4])
        anchors = Boxes.cat(self.anchor_generator(images.tensor.shape[-2:], features))
        logits = cat(pred_logits, dim=1)
        deltas = cat(pred_deltas, dim=1)
        return [
            self.inference_single_image(anchors, logits[i], deltas[i], images.image_sizes[i])
            for i in range(len(images))
        ]

    def inference_single_image(self, anchors: Boxes, logits: Tensor, deltas: Tensor, image_size) -> Instances:
        """``logits`` ``(R, K + 1)``, ``deltas`` ``(R, 4)`` -> Instances in network-input pixels."""
        scores = F.softmax(logits, dim=-1)[:, 1:]  # (R, K) foreground probabilities
        boxes = Boxes(self.box2box_transform.apply_deltas(deltas, anchors.tensor))
        boxes.clip(image_size)
        # per-class top-k, class-major order (as torchvision's loop over classes)
        k = min(self.test_topk_candidates, scores.shape[0])
        top_scores, top_idxs = scores.topk(k, dim=0)  # (k, K), sorted per class
        top_scores, top_idxs = top_scores.t(), top_idxs.t()
        keep = top_scores > self.test_score_thresh
        classes = torch.arange(scores.shape[1], device=scores.device)[:, None].expand_as(top_idxs)[keep]
        anchor_idxs = top_idxs[keep]
        cand_scores = top_scores[keep]
        cand_boxes = boxes.tensor[anchor_idxs]
        kept = batched_nms(cand_boxes, cand_scores, classes, self.test_nms_thresh)
        kept = kept[: self.max_detections_per_image]
        return Instances(
            image_size, pred_boxes=Boxes(cand_boxes[kept]), scores=cand_scores[kept],
            pred_classes=classes[kept],
        )


# ---------------------------------------------------------------------- torchvision weights
# torchvision vgg16 ``features`` indices of the convs up to conv4_3, then SSD's ``extra.0``.
_TV_VGG_TO_OURS = {
    "backbone.features.0": "conv1_1", "backbone.features.2": "conv1_2",
    "backbone.features.5": "conv2_1", "backbone.features.7": "conv2_2",
    "backbone.features.10": "conv3_1", "backbone.features.12": "conv3_2", "backbone.features.14": "conv3_3",
    "backbone.features.17": "conv4_1", "backbone.features.19": "conv4_2", "backbone.features.21": "conv4_3",
    "backbone.extra.0.1": "conv5_1", "backbone.extra.0.3": "conv5_2", "backbone.extra.0.5": "conv5_3",
    "backbone.extra.0.7.1": "fc6", "backbone.extra.0.7.3": "fc7",
}


@register_weight_converter("ssd300_vgg16")
def convert_torchvision_ssd300_vgg16(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """torchvision ``ssd300_vgg16`` state_dict -> the state_dict of ``SSD`` built by
    ``configs/coco/ssd300_vgg16_torchvision.yaml`` (any class count; ``NUM_CLASSES`` = torchvision
    ``num_classes - 1``). Raises ``KeyError`` naming any key it cannot place."""
    prefixes = dict(_TV_VGG_TO_OURS)
    for i in range(1, 5):  # extra.i.0 / extra.i.2 -> conv{7+i}_1 / conv{7+i}_2
        prefixes[f"backbone.extra.{i}.0"] = f"conv{7 + i}_1"
        prefixes[f"backbone.extra.{i}.2"] = f"conv{7 + i}_2"
    out, unknown = {}, []
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if key == "backbone.scale_weight":
            out["backbone.conv4_3_norm.weight"] = value
        elif module in prefixes:
            part = "vgg" if module in _TV_VGG_TO_OURS else "extras"
            out[f"backbone.{part}.{prefixes[module]}.{param}"] = value
        elif key.startswith("head.classification_head.module_list."):
            out["head.cls_score." + key[len("head.classification_head.module_list."):]] = value
        elif key.startswith("head.regression_head.module_list."):
            out["head.bbox_pred." + key[len("head.regression_head.module_list."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(
            f"ssd300_vgg16 converter: unexpected torchvision keys {unknown[:8]} ({len(unknown)} in all)"
        )
    return out
