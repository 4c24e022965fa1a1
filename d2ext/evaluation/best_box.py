"""The course's single-object score: IoU of each image's best predicted box with its object.

For every image: the highest-scoring predicted box (any class), its IoU with the ground-truth
box (Detectron2's ``pairwise_iou``; the best over ground-truth boxes when there are several, 0 when
the model predicts nothing). Reported: ``mean_iou`` and ``iou50_rate`` (share of images with IoU
>= 0.5, i.e. the course's "correct detection"), as fractions, and ``num_images``.

Builder ``best_box_iou`` (``evaluator_type`` of the ``bccd_wbc1_*`` datasets, beside ``"coco"``).
"""
import itertools
import logging
from collections import OrderedDict
from typing import Dict, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils import comm

from .build import EVALUATOR_REGISTRY

__all__ = ["BestBoxIoUEvaluator", "image_best_box_iou"]

logger = logging.getLogger(__name__)


def image_best_box_iou(pred_boxes: np.ndarray, pred_scores: np.ndarray, gt_boxes: np.ndarray) -> float:
    """IoU of the top-scoring XYXY ``pred_boxes`` row with the closest ``gt_boxes`` row (0 if
    either is empty)."""
    pred_boxes = np.asarray(pred_boxes, np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    if len(pred_boxes) == 0 or len(gt_boxes) == 0:
        return 0.0
    best = pred_boxes[int(np.argmax(np.asarray(pred_scores).reshape(-1)))][None]
    iou = pairwise_iou(Boxes(torch.from_numpy(best)), Boxes(torch.from_numpy(gt_boxes)))
    return float(iou.max())


class BestBoxIoUEvaluator(DatasetEvaluator):
    """Mean IoU of the best box and the IoU >= 0.5 rate over a dataset's images."""

    def __init__(self, dataset_name: str, iou_threshold: float = 0.5):
        self.dataset_name = dataset_name
        self.iou_threshold = float(iou_threshold)
        self._gt: Dict = {}
        self._ious = []

    def reset(self):
        self._ious = []
        if not self._gt:
            for rec in DatasetCatalog.get(self.dataset_name):
                boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                         for a in rec.get("annotations", ()) if not a.get("iscrowd", 0)]
                self._gt[rec["image_id"]] = np.asarray(boxes, np.float32).reshape(-1, 4)

    def process(self, inputs: Sequence[dict], outputs: Sequence[dict]):
        for x, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            self._ious.append(image_best_box_iou(inst.pred_boxes.tensor.numpy(), inst.scores.numpy(),
                                           self._gt.get(x["image_id"], np.zeros((0, 4)))))

    def evaluate(self):
        ious = list(itertools.chain(*comm.gather(self._ious, dst=0)))
        if not comm.is_main_process():
            return {}
        ious = np.asarray(ious, np.float64)
        if ious.size == 0:
            logger.warning("best_box_iou: no images evaluated")
            return {}
        res = {"mean_iou": float(ious.mean()),
               "iou50_rate": float((ious >= self.iou_threshold).mean()),
               "num_images": int(ious.size)}
        logger.info("best_box_iou on %s: %s", self.dataset_name, res)
        return OrderedDict(best_box_iou=res)


@EVALUATOR_REGISTRY.register()
def best_box_iou(cfg, dataset_name, output_folder):
    """Builder of ``evaluator_type: "best_box_iou"``."""
    return BestBoxIoUEvaluator(dataset_name)
