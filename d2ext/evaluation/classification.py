"""Image-classification metrics: top-1/top-5 accuracy, per-class precision/recall, confusion.

For K classes and the confusion matrix ``M`` (rows = true class, columns = predicted class):

    top-k accuracy = #(true class among the k highest scores) / N
    precision_c    = M[c, c] / sum_i M[i, c]      (NaN when class c is never predicted)
    recall_c       = M[c, c] / sum_j M[c, j]      (NaN when class c never occurs)

Means skip NaN classes. Numbers are percentages, as Detectron2's COCO AP. The evaluator writes
``confusion_matrix.txt`` (matrix and per-class table), ``confusion_matrix.png`` and
``metrics.json`` into its output folder.
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..core import atomic_path
from .build import EVALUATOR_REGISTRY

__all__ = ["ClassificationEvaluator", "classification_metrics"]

logger = logging.getLogger(__name__)

# Above this many classes, per-class numbers go to the files only (not the logged results).
MAX_PER_CLASS_RESULTS = 50


def classification_metrics(labels: np.ndarray, topk: np.ndarray, num_classes: int) -> Dict:
    """Metrics of ``N`` predictions.

    Args:
        labels: ``(N,)`` true class indices.
        topk: ``(N, k)`` predicted classes, best first (column 0 is the prediction).
    Returns:
        ``{"top1", "top5" (k >= 5 only), "precision", "recall" ((K,) arrays, %),
        "mean_precision", "mean_recall", "confusion" ((K, K) int64)}``.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    topk = np.asarray(topk, dtype=np.int64).reshape(len(labels), -1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"label {labels.max() if labels.max() >= num_classes else labels.min()} "
                         f"outside [0, {num_classes})")
    pred = topk[:, 0]
    confusion = np.bincount(labels * num_classes + pred, minlength=num_classes ** 2).reshape(
        num_classes, num_classes
    )
    tp = np.diag(confusion).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = 100.0 * tp / confusion.sum(axis=0)
        recall = 100.0 * tp / confusion.sum(axis=1)
    n = max(len(labels), 1)
    out = {
        "top1": 100.0 * float((pred == labels).sum()) / n,
        "precision": precision,
        "recall": recall,
        "mean_precision": float(np.nanmean(precision)) if np.isfinite(precision).any() else float("nan"),
        "mean_recall": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "confusion": confusion,
    }
    if topk.shape[1] >= 5:
        out["top5"] = 100.0 * float((topk[:, :5] == labels[:, None]).any(axis=1).sum()) / n
    return out


def _atomic_write(path: str, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def confusion_text(confusion: np.ndarray, class_names: Sequence[str], precision, recall) -> str:
    """The confusion matrix (rows true, columns predicted) and the per-class table, as text."""
    from tabulate import tabulate

    names = [str(c) for c in class_names]
    matrix = tabulate(
        [[f"true {n}", *row] for n, row in zip(names, confusion.tolist())],
        headers=["", *[f"pred {n}" for n in names]],
    )
    per_class = tabulate(
        [[n, int(confusion[i].sum()), int(confusion[:, i].sum()), p, r]
         for i, (n, p, r) in enumerate(zip(names, precision, recall))],
        headers=["class", "#true", "#predicted", "precision %", "recall %"], floatfmt=".2f",
    )
    return f"Confusion matrix (rows: true class, columns: predicted class)\n{matrix}\n\n{per_class}\n"


def plot_confusion(confusion: np.ndarray, class_names: Sequence[str], path: str) -> None:
    """Row-normalised confusion matrix as a PNG (counts written in the cells up to 20 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=np.float64), where=rows > 0)
    side = min(max(4.0, 0.45 * k + 2), 20)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 50:
        ax.set_xticks(range(k), [str(c) for c in class_names], rotation=90)
        ax.set_yticks(range(k), [str(c) for c in class_names])
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (colour: fraction of the true class)")
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1/top-5 accuracy, per-class precision/recall and the confusion matrix.

    Reads ``input["label"]`` and ``output["scores"]`` (``(K,)`` class scores, e.g. the
    ImageClassifier's softmax). Results: ``{"classification": {"top1", "top5", "mean_precision",
    "mean_recall", "precision-<class>", "recall-<class>"}}`` (per-class keys for at most 50
    classes; the files always have them).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, distributed: bool = True,
                 class_names: Optional[Sequence[str]] = None):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        if class_names is None:
            class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
            if class_names is None:
                raise KeyError(f"dataset {dataset_name!r} has no thing_classes in MetadataCatalog")
        self._class_names = list(class_names)
        self.reset()

    def reset(self):
        self._labels: List[int] = []
        self._topk: List[np.ndarray] = []

    def process(self, inputs, outputs):
        k = min(5, len(self._class_names))
        for inp, out in zip(inputs, outputs):
            if "label" not in inp:
                raise KeyError(f"{inp.get('file_name', '?')}: no 'label' to evaluate against")
            scores = out["scores"]
            if scores.shape[-1] != len(self._class_names):
                raise ValueError(
                    f"model gives {scores.shape[-1]} class scores, dataset {self._dataset_name!r} has "
                    f"{len(self._class_names)} classes"
                )
            self._labels.append(int(inp["label"]))
            self._topk.append(torch.topk(scores.detach().float().cpu(), k).indices.numpy())

    def evaluate(self):
        labels, topk = self._labels, self._topk
        if self._distributed:
            comm.synchronize()
            labels = sum(comm.gather(labels, dst=0), [])
            topk = sum(comm.gather(topk, dst=0), [])
            if not comm.is_main_process():
                return {}
        if not labels:
            logger.warning(f"[ClassificationEvaluator] no predictions for {self._dataset_name}")
            return {}
        m = classification_metrics(np.array(labels), np.stack(topk), len(self._class_names))
        results = OrderedDict(top1=m["top1"])
        if "top5" in m:
            results["top5"] = m["top5"]
        results["mean_precision"] = m["mean_precision"]
        results["mean_recall"] = m["mean_recall"]
        if len(self._class_names) <= MAX_PER_CLASS_RESULTS:
            for name, p, r in zip(self._class_names, m["precision"], m["recall"]):
                results[f"precision-{name}"] = float(p)
                results[f"recall-{name}"] = float(r)
        text = confusion_text(m["confusion"], self._class_names, m["precision"], m["recall"])
        logger.info(f"[ClassificationEvaluator] {self._dataset_name}: {len(labels)} images, "
                    f"top-1 {m['top1']:.2f}%\n" + (text if len(self._class_names) <= 20 else ""))
        if self._output_dir:
            def write_text(tmp, s):
                with open(tmp, "w") as f:
                    f.write(s)

            _atomic_write(os.path.join(self._output_dir, "confusion_matrix.txt"), lambda t: write_text(t, text))
            plot_confusion(m["confusion"], self._class_names, os.path.join(self._output_dir, "confusion_matrix.png"))
            summary = dict(results, num_images=len(labels), dataset=self._dataset_name,
                           confusion=m["confusion"].tolist(), class_names=self._class_names)
            _atomic_write(os.path.join(self._output_dir, "metrics.json"),
                          lambda t: write_text(t, json.dumps(summary, indent=1, allow_nan=True)))
        return {"classification": results}


@EVALUATOR_REGISTRY.register()
def classification(cfg, dataset_name, output_folder):
    """Builder of ``evaluator_type: "classification"``."""
    return ClassificationEvaluator(dataset_name, output_dir=output_folder)
