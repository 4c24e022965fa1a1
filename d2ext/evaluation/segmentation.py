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

Per image (a pooled score hides a subset that fails: one image size, one stain), the evaluator
also scores each image alone, :func:`image_dice`: the mean Dice of the foreground classes present
in that image's truth or prediction; 1 when neither holds any foreground, undefined (left out)
when every pixel is ignored. It reports ``imgDice`` (their mean, %) and ``imgBelow50`` (% of
images under 0.5) beside the pooled numbers, logs the 5 worst images by file name, writes
``per_image_dice.json`` (mean, fraction below 0.5, worst 5, every image) and draws the overlays
of the worst images.
"""
import heapq
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..core import atomic_save_image, atomic_write_json
from .build import EVALUATOR_REGISTRY

__all__ = [
    "confusion_matrix",
    "metrics_from_confusion",
    "image_dice",
    "per_image_summary",
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


def image_dice(conf: np.ndarray) -> float:
    """Dice of one image from its ``(K, K)`` confusion matrix: the mean over the foreground
    classes (ids >= 1) present in its truth or prediction of ``2 TP / (#truth + #predicted)``;
    1.0 when no foreground is in either (nothing to find, nothing found); NaN when the image has
    no scored pixel."""
    conf = np.asarray(conf, dtype=np.float64)
    if conf.sum() == 0:
        return float("nan")
    tp = np.diag(conf)[1:]
    size = conf.sum(axis=1)[1:] + conf.sum(axis=0)[1:]
    present = size > 0
    if not present.any():
        return 1.0
    return float(np.mean(2 * tp[present] / size[present]))


def per_image_summary(per_image: Sequence, worst: int = 5, below: float = 0.5) -> "OrderedDict[str, object]":
    """``per_image`` = ``[(file_name, dice), ...]`` (dice a fraction, NaN = undefined) ->
    ``{"num_images", "mean_dice", "fraction_below", "threshold", "worst": [[file_name, dice], ...]}``
    over the images with a defined Dice; ``worst`` lowest first (ties by file name)."""
    defined = [(f, float(d)) for f, d in per_image if not math.isnan(d)]
    out = OrderedDict(num_images=len(defined), threshold=below)
    if not defined:
        out.update(mean_dice=float("nan"), fraction_below=float("nan"), worst=[])
        return out
    values = np.array([d for _, d in defined])
    out["mean_dice"] = float(values.mean())
    out["fraction_below"] = float((values < below).mean())
    out["worst"] = [[f, d] for f, d in sorted(defined, key=lambda x: (x[1], x[0]))[:worst]]
    return out


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
    baselines), as tensors or arrays. The ``num_vis`` images with the lowest per-image Dice get
    an overlay PNG (image | truth | prediction) in ``output_dir/overlays/``; per-image figures go
    to the results (``imgDice``, ``imgBelow50``), the log and ``output_dir/per_image_dice.json``.
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
        self._per_image = []  # (file_name, Dice fraction or NaN), in processing order
        self._worst = []  # heap of (-dice, order, file_name, gt, pred): the num_vis worst so far

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
            conf = confusion_matrix(pred, gt, self._num_classes, self._ignore_label)
            self._conf += conf
            self._num_images += 1
            dice = image_dice(conf)
            self._per_image.append((inp["file_name"], dice))
            if self._num_vis:
                # undefined Dice ranks after every defined one (drawn only if room is left)
                key = (-(2.0 if math.isnan(dice) else dice), -len(self._per_image))
                item = (*key, inp["file_name"], gt, pred)
                if len(self._worst) < self._num_vis:
                    heapq.heappush(self._worst, item)
                elif key > self._worst[0][:2]:
                    heapq.heapreplace(self._worst, item)

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

    def per_image_report(self, worst: int = 5) -> "OrderedDict[str, object]":
        """Per-image Dice of the images processed so far (this process): see
        :func:`per_image_summary` (fractions; ``worst`` = the lowest ``worst`` with file names)."""
        return per_image_summary(self._per_image, worst=worst)

    def evaluate(self):
        conf, per_image, worst = self._conf, self._per_image, self._worst
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            parts = comm.all_gather((self._conf, self._num_images, self._per_image, self._worst))
            if not comm.is_main_process():
                return None
            conf = sum(p[0] for p in parts)
            self._num_images = sum(p[1] for p in parts)
            per_image = [x for p in parts for x in p[2]]
            worst = heapq.nlargest(self._num_vis, [x for p in parts for x in p[3]], key=lambda x: x[:2])
        if self._num_images == 0:
            logger.warning("SegmentationMetricsEvaluator on %s got no predictions", self._dataset_name)
            return OrderedDict()
        res = metrics_from_confusion(conf, self._class_names)
        report = per_image_summary(per_image)
        res["imgDice"] = report["mean_dice"] * 100
        res["imgBelow50"] = report["fraction_below"] * 100
        logger.info(
            "%s: %d images, mIoU %.2f, mDice %.2f, fgDice %.2f, pACC %.2f; per image: mean Dice %.2f, "
            "%.1f%% below 0.5, worst %s",
            self._dataset_name, self._num_images, res["mIoU"], res["mDice"], res["fgDice"], res["pACC"],
            res["imgDice"], res["imgBelow50"],
            ", ".join(f"{os.path.basename(f)} {d:.3f}" for f, d in report["worst"]) or "-",
        )
        if self._output_dir and comm.is_main_process():
            full = OrderedDict(report)
            full["images"] = [[f, None if math.isnan(d) else d] for f, d in per_image]
            full["mean_dice"] = None if math.isnan(full["mean_dice"]) else full["mean_dice"]
            full["fraction_below"] = None if math.isnan(full["fraction_below"]) else full["fraction_below"]
            atomic_write_json(os.path.join(self._output_dir, "per_image_dice.json"), full, indent=1)
            for item in sorted(worst, key=lambda x: x[:2], reverse=True):  # worst first
                self._draw(item[2], item[3], item[4])
        return OrderedDict({"sem_seg": res})


@EVALUATOR_REGISTRY.register()
def sem_seg(cfg, dataset_name, output_folder):
    """Builder of ``evaluator_type: "sem_seg"``."""
    return SegmentationMetricsEvaluator(dataset_name, output_dir=output_folder, num_vis=cfg.TEST.NUM_VIS_IMAGES)
