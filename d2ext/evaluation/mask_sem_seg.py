"""Score an instance-segmentation model (Mask R-CNN) as a semantic segmenter.

To rank Mask R-CNN beside U-Net / DeepLab on the same Dice, its predicted instance masks are
painted into one label map per image and scored with :class:`SegmentationMetricsEvaluator`
against the label maps of a sem-seg dataset holding the same images (looked up by
``file_name``), e.g. ``wbc_inst_test`` against ``wbc_seg_binary_test``.

Painting: label 0 everywhere; instances with score >= ``score_thresh`` are painted in increasing
score order (the most confident wins where masks overlap) with label ``thing class + 1``, so the
sem-seg dataset's ``stuff_classes`` must be background followed by the thing classes.

In ``tools/train_net.py``: ``TEST.MASK_SEM_SEG_DATASETS`` lists one sem-seg dataset per
``DATASETS.TEST`` entry; :func:`build_evaluator` adds this evaluator beside COCO's. Results
appear under ``"mask_sem_seg"`` (``fgDice``, ``mIoU``, ``pACC``, ... in percent).
"""
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog

from .segmentation import SegmentationMetricsEvaluator

__all__ = ["instances_to_label_map", "MaskToSemSegEvaluator", "build_mask_sem_seg_evaluator"]


def instances_to_label_map(instances, score_thresh: float = 0.5) -> np.ndarray:
    """``(H, W)`` int64 labels from Detectron2 ``Instances`` with ``pred_masks`` ``(N, H, W)``,
    ``scores`` and ``pred_classes`` (see module docstring for the painting rule)."""
    h, w = instances.image_size
    labels = np.zeros((h, w), np.int64)
    if len(instances) == 0:
        return labels
    masks = instances.pred_masks.detach().to("cpu")
    scores = instances.scores.detach().to("cpu")
    classes = instances.pred_classes.detach().to("cpu")
    for i in torch.argsort(scores).tolist():  # ascending: the best instance is painted last
        if float(scores[i]) >= score_thresh:
            labels[(masks[i] > 0.5 if masks.dtype.is_floating_point else masks[i]).numpy()] = int(classes[i]) + 1
    return labels


class MaskToSemSegEvaluator(SegmentationMetricsEvaluator):
    """Dice / IoU / pixel accuracy of painted instance masks (see module docstring).

    ``process(inputs, outputs)`` takes the instance model's outputs ``{"instances": Instances}``;
    inputs must be images of ``sem_seg_dataset_name`` (same ``file_name``).
    """

    def __init__(self, sem_seg_dataset_name: str, output_dir: Optional[str] = None, *,
                 score_thresh: float = 0.5, distributed: bool = True, num_vis: int = 4,
                 instance_dataset_name: Optional[str] = None):
        super().__init__(sem_seg_dataset_name, output_dir, distributed=distributed, num_vis=num_vis)
        self._score_thresh = score_thresh
        if instance_dataset_name is not None:
            things = list(getattr(MetadataCatalog.get(instance_dataset_name), "thing_classes", []))
            if things and len(things) + 1 != self._num_classes:
                raise ValueError(
                    f"{instance_dataset_name!r} has thing classes {things} but {sem_seg_dataset_name!r} "
                    f"has stuff classes {self._class_names}: expected background + the thing classes"
                )

    def process(self, inputs: List[Dict], outputs: List):
        painted = [{"sem_seg": instances_to_label_map(o["instances"], self._score_thresh)} for o in outputs]
        super().process(inputs, painted)

    def evaluate(self):
        res = super().evaluate()
        if not res:
            return res
        return OrderedDict({"mask_sem_seg": res["sem_seg"]})


def build_mask_sem_seg_evaluator(cfg, dataset_name: str, output_folder: str):
    """The :class:`MaskToSemSegEvaluator` that ``cfg.TEST.MASK_SEM_SEG_DATASETS`` pairs with
    ``dataset_name`` (a ``DATASETS.TEST`` entry), or None."""
    pairs = list(getattr(cfg.TEST, "MASK_SEM_SEG_DATASETS", []))
    if not pairs:
        return None
    tests = list(cfg.DATASETS.TEST)
    if len(pairs) != len(tests):
        raise ValueError(f"TEST.MASK_SEM_SEG_DATASETS {pairs} needs one entry per DATASETS.TEST {tests}")
    if dataset_name not in tests or not pairs[tests.index(dataset_name)]:
        return None
    return MaskToSemSegEvaluator(
        pairs[tests.index(dataset_name)], output_folder, score_thresh=cfg.TEST.MASK_SEM_SEG_SCORE_THRESH,
        num_vis=cfg.TEST.NUM_VIS_IMAGES, instance_dataset_name=dataset_name,
    )
