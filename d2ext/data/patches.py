"""Patches of an image for the course's naive detectors, their labels and the course's patch CSV.

Patch numbering (the course's): **1-based, row-major** — patch 1 is the top-left cell, numbers
grow left to right along a row, then down. With a 2 x 2 grid on a 640 x 480 image:

    patch 1: x 0-320,   y 0-240      patch 2: x 320-640, y 0-240
    patch 3: x 0-320,   y 240-480    patch 4: x 320-640, y 240-480

so the course's WBC at x 310-530, y 50-240 is in patch 2 (IoU 0.51; patch 1 only gets a 10 px
sliver, IoU 0.02). Patch coordinates are pixel edges (XYXY_ABS, as Detectron2's boxes).

Anchor-shaped patches ("square, tall, wide"): every ``(size, aspect_ratio)`` pair centred on a
grid of ``stride`` pixels, area ``size**2`` and ``height / width = aspect_ratio`` (Detectron2's
``DefaultAnchorGenerator`` convention), clipped to the image; numbered in the order size, ratio,
then row-major centre.

Labels (:func:`label_patches`): a patch shows the object when its IoU with a ground-truth box is
at least ``iou_threshold`` (0.5), **or** it is that box's best patch — Detectron2's ``Matcher``
with ``allow_low_quality_matches`` (the RPN rule of Ren et al. 2015), so every object labels at
least one patch even on a 4 x 4 grid where no cell reaches IoU 0.5 with a 220 x 190 px WBC.

The CSV (:func:`write_patch_csv`): ``filename,patch,xmin,xmax,ymin,ymax,WBC`` (the course's
column order, x range first), one row per patch, ``WBC`` 1 or 0.
"""
import csv
import io
import os
from typing import Iterable, List, Sequence

import numpy as np

from ..core import atomic_open

__all__ = ["grid_patches", "anchor_patches", "label_patches", "patch_table_rows",
           "write_patch_csv", "PATCH_CSV_HEADER"]

PATCH_CSV_HEADER = ["filename", "patch", "xmin", "xmax", "ymin", "ymax", "WBC"]


def grid_patches(width: float, height: float, n: int) -> np.ndarray:
    """``(n*n, 4)`` XYXY cells of an ``n`` x ``n`` grid, row-major (index 0 = patch 1)."""
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    xs = np.round(np.linspace(0.0, width, n + 1), 6)
    ys = np.round(np.linspace(0.0, height, n + 1), 6)
    return np.array([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(n) for c in range(n)],
                    dtype=np.float64)


def anchor_patches(width: float, height: float, sizes: Sequence[float],
                   aspect_ratios: Sequence[float], stride: float) -> np.ndarray:
    """``(len(sizes) * len(aspect_ratios) * centres, 4)`` XYXY boxes clipped to the image.

    Centres at ``stride / 2 + k * stride`` inside the image; a box keeps area ``size**2`` and
    ``h / w = ratio`` before clipping. Boxes that clip to the same rectangle are kept once (first
    occurrence), so no two patches are equal.
    """
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    cxs = np.arange(stride / 2.0, width, stride)
    cys = np.arange(stride / 2.0, height, stride)
    boxes = []
    for size in sizes:
        for ratio in aspect_ratios:
            w = float(size) / np.sqrt(ratio)
            h = float(size) * np.sqrt(ratio)
            for cy in cys:
                for cx in cxs:
                    boxes.append([max(0.0, cx - w / 2), max(0.0, cy - h / 2),
                                  min(float(width), cx + w / 2), min(float(height), cy + h / 2)])
    boxes = np.round(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 6)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)]


def label_patches(patches: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """``(P,)`` int array: 1 where a patch shows an object (IoU >= threshold or an object's best
    patch), 0 elsewhere. Detectron2's ``pairwise_iou`` and ``Matcher`` (the rule the
    PatchDetector trains with)."""
    import torch
    from detectron2.modeling.matcher import Matcher
    from detectron2.structures import Boxes, pairwise_iou

    patches = np.asarray(patches, dtype=np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    if len(gt_boxes) == 0:
        return np.zeros(len(patches), dtype=np.int64)
    iou = pairwise_iou(Boxes(torch.from_numpy(gt_boxes)), Boxes(torch.from_numpy(patches)))
    _, labels = Matcher([iou_threshold], [0, 1], allow_low_quality_matches=True)(iou)
    return labels.numpy().astype(np.int64)


def patch_table_rows(records: Iterable[dict], patch_fn, iou_threshold: float = 0.5) -> List[list]:
    """Rows ``[filename, patch, xmin, xmax, ymin, ymax, WBC]`` for every patch of every record.

    ``patch_fn(width, height) -> (P, 4)`` XYXY patches; boxes are the records' XYXY_ABS
    ``annotations`` (Detectron2 dataset dicts with ``height`` and ``width``)."""
    rows = []
    for rec in records:
        patches = patch_fn(rec["width"], rec["height"])
        gt = np.array([a["bbox"] for a in rec.get("annotations", ())], dtype=np.float64).reshape(-1, 4)
        labels = label_patches(patches, gt, iou_threshold)
        name = os.path.basename(rec["file_name"])
        for k, (box, lab) in enumerate(zip(patches, labels), start=1):
            x0, y0, x1, y1 = (_num(v) for v in box)
            rows.append([name, k, x0, x1, y0, y1, int(lab)])
    return rows


def _num(v):
    v = float(v)
    return int(v) if v.is_integer() else round(v, 2)


def write_patch_csv(rows: Sequence[Sequence], path) -> None:
    """The course's patch CSV (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PATCH_CSV_HEADER)
    w.writerows(rows)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
