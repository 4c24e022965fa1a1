"""Semantic-segmentation metrics: per-class Dice and IoU, mean Dice, mIoU, pixel accuracy.

Everything is computed from one confusion matrix accumulated over the whole dataset (as
Detectron2's ``SemSegEvaluator`` and the COCO-stuff protocol do), so per-class scores are
dataset-level, not averages of per-image scores:

    IoU_c  = TP_c / (TP_c + FP_c + FN_c)
    Dice_c = 2 TP_c / (2 TP_c + FP_c + FN_c)         (Dice 1945; = F1 of the class)
    pixel accuracy = sum_c TP_c / #(non-ignored pixels)

Pixels whose ground truth equals ``ignore_label`` count nowhere. A class that never occurs in
the ground truth has undefined (NaN) IoU/Dice and is left out of the means — the rule of
``SemSegEvaluator``, so mIoU and pixel accuracy agree with it exactly. ``fgDice``/``fgIoU`` average
over the classes other than class 0 (background); for a binary task they are the object's Dice/IoU.
"""
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..core import atomic_save_image
from .build import register_evaluator

__all__ = [
    "confusion_matrix",
    "metrics_from_confusion",
    "SegmentationMetricsEvaluator",
    "overlay_panel",
]

logger = logging.getLogger(__name__)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """``(K, K)`` int64 counts, rows = ground truth class, columns = predicted class.

    ``pred`` and ``gt`` are ``(H, W)`` integer label maps of the same shape; ground-truth pixels
    equal to ``ignore_label`` are skipped. Raises if a label is outside ``[0, K)``.
    """
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    gt = np.asarray(gt).astype(np.int64).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
    keep = gt != ignore_label
    pred, gt = pred[keep], gt[keep]
    for what, arr in (("ground truth", gt), ("prediction", pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{what} holds label {int(arr.min() if arr.min() < 0 else arr.max())} outside "
                f"[0, {num_classes}) (ignore label is {ignore_label})"
            )
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(conf: np.ndarray, class_names: Optional[Sequence[str]] = None) -> "OrderedDict[str, float]":
    """Dice/IoU per class, means and pixel accuracy (all in percent, as Detectron2 reports).

    ``conf[g, p]`` counts pixels of true class g predicted as p. Keys: ``mIoU``, ``mDice``,
    ``fgIoU``, ``fgDice``, ``pACC``, ``IoU-<name>``, ``Dice-<name>``. Undefined values are NaN.
    """
    conf = np.asarray(conf, dtype=np.float64)
    k = conf.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    valid = pos_gt > 0  # class present in the ground truth (SemSegEvaluator's rule)
    iou = np.full(k, np.nan)
    dice = np.full(k, np.nan)
    iou[valid] = tp[valid] / (pos_gt + pos_pred - tp)[valid]
    dice[valid] = 2 * tp[valid] / (pos_gt + pos_pred)[valid]
    fg = valid.copy()
    fg[0] = False

    def mean(x, m):
        return float(np.mean(x[m])) * 100 if m.any() else float("nan")

    res = OrderedDict()
    res["mIoU"] = mean(iou, valid)
    res["mDice"] = mean(dice, valid)
    res["fgIoU"] = mean(iou, fg)
    res["fgDice"] = mean(dice, fg)
    res["pACC"] = float(tp.sum() / pos_gt.sum() * 100) if pos_gt.sum() > 0 else float("nan")
    for i, name in enumerate(names):
        res[f"IoU-{name}"] = float(iou[i] * 100)
        res[f"Dice-{name}"] = float(dice[i] * 100)
    return res


def _palette(num_classes: int) -> np.ndarray:
    base = np.array(
        [[0, 0, 0], [255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 0], [200, 80, 255]], np.uint8
    )
    if num_classes <= len(base):
        return base[:num_classes]
    rng = np.random.default_rng(0)
    return np.concatenate([base, rng.integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)])


def overlay_panel(image_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, num_classes: int,
                  ignore_label: int = 255, alpha: float = 0.5) -> np.ndarray:
    """``(H, 3W, 3)`` uint8 panel: image | truth over image | prediction over image.

    Class 0 is drawn transparent, ignored pixels grey.
    """
    pal = _palette(num_classes)

    def blend(labels):
        out = image_rgb.astype(np.float32).copy()
        for c in range(1, num_classes):
            m = labels == c
            out[m] = (1 - alpha) * out[m] + alpha * pal[c]
        out[labels == ignore_label] = 128
        return out.clip(0, 255).astype(np.uint8)

    return np.concatenate([image_rgb, blend(gt), blend(pred)], axis=1)


def _load_label(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im, dtype=np.int64)


class SegmentationMetricsEvaluator(DatasetEvaluator):
    """Dice, IoU and pixel accuracy for a sem-seg dataset (see module docstring).

    Ground truth is read at full resolution from each dataset dict's ``sem_seg_file_name``
    (looked up by ``file_name``), like ``SemSegEvaluator``. ``process`` accepts model outputs
    ``{"sem_seg": (K, H, W) logits}`` or ``{"sem_seg": (H, W) integer labels}`` (the classical
    baselines), as tensors or arrays. The first ``num_vis`` images get an overlay PNG
    (image | truth | prediction) in ``output_dir/overlays/``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        distributed: bool = True,
        num_vis: int = 4,
    ):
        meta = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = getattr(meta, "ignore_label", 255)
        self._gt_files = {d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(dataset_name)}
        self._output_dir = output_dir
        self._distributed = distributed
        self._num_vis = num_vis if output_dir else 0
        self.reset()

    def reset(self):
        self._conf = np.zeros((self._num_classes, self._num_classes), np.int64)
        self._num_images = 0
        self._num_drawn = 0

    def _to_labels(self, output) -> np.ndarray:
        if isinstance(output, dict):
            output = output["sem_seg"]
        if isinstance(output, torch.Tensor):
            output = output.detach().to("cpu")
            if output.dim() == 3:
                output = output.argmax(dim=0)
            return output.numpy().astype(np.int64)
        output = np.asarray(output)
        return (output.argmax(axis=0) if output.ndim == 3 else output).astype(np.int64)

    def process(self, inputs: List[Dict], outputs: List):
        for inp, out in zip(inputs, outputs):
            pred = self._to_labels(out)
            gt_file = self._gt_files.get(inp["file_name"])
            if gt_file is None:
                raise KeyError(f"{inp['file_name']} is not an image of dataset {self._dataset_name!r}")
            gt = _load_label(gt_file)
            if gt.ndim == 3:
                gt = gt[..., 0]
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{gt_file}: ground truth is {gt.shape[0]}x{gt.shape[1]} but the prediction for "
                    f"{inp['file_name']} is {pred.shape[0]}x{pred.shape[1]}"
                )
            self._conf += confusion_matrix(pred, gt, self._num_classes, self._ignore_label)
            self._num_images += 1
            if self._num_drawn < self._num_vis and comm.is_main_process():
                self._draw(inp["file_name"], gt, pred)
                self._num_drawn += 1

    def _draw(self, file_name: str, gt: np.ndarray, pred: np.ndarray) -> None:
        from PIL import Image

        with Image.open(file_name) as im:
            image = np.asarray(im.convert("RGB"))
        panel = overlay_panel(image, gt, pred, self._num_classes, self._ignore_label)
        stem = os.path.splitext(os.path.basename(file_name))[0]
        atomic_save_image(os.path.join(self._output_dir, "overlays", f"{stem}.png"), panel)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def confusion(self) -> np.ndarray:
        """The ``(K, K)`` confusion matrix accumulated so far (rows truth, columns prediction)."""
        return self._conf.copy()

    def evaluate(self):
        conf = self._conf
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            parts = comm.all_gather((self._conf, self._num_images))
            if not comm.is_main_process():
                return None
            conf = sum(p[0] for p in parts)
            self._num_images = sum(p[1] for p in parts)
        if self._num_images == 0:
            logger.warning("SegmentationMetricsEvaluator on %s got no predictions", self._dataset_name)
            return OrderedDict()
        res = metrics_from_confusion(conf, self._class_names)
        logger.info(
            "%s: %d images, mIoU %.2f, mDice %.2f, fgDice %.2f, pACC %.2f",
            self._dataset_name, self._num_images, res["mIoU"], res["mDice"], res["fgDice"], res["pACC"],
        )
        return OrderedDict({"sem_seg": res})


@register_evaluator("sem_seg")
def _build_sem_seg(cfg, dataset_name, output_folder):
    return SegmentationMetricsEvaluator(dataset_name, output_dir=output_folder, num_vis=cfg.TEST.NUM_VIS_IMAGES)
