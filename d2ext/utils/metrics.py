"""Detection metrics: COCO AP from pycocotools, and the plain textbook IoU / AP beside it.

:func:`coco_evaluate` is what ``tools/evaluate.py`` runs: pycocotools' ``COCOeval`` (the reference
implementation every paper's COCO AP comes from) on a ground-truth COCO file and a results file,
returning AP, AP50, AP75, per-class AP / AP50 and per-class precision/recall curves. It needs
numpy and pycocotools only (no torch), so the tool starts fast.

The plain functions show what those numbers are, for teaching and for checking:

- :func:`box_iou`: intersection over union of two sets of XYXY boxes (Detectron2's
  ``pairwise_iou``; torch is imported only when it is called);
- :func:`match_detections`: greedy matching, highest score first, each detection to the unmatched
  ground-truth box it overlaps most (IoU >= threshold), as COCO and PASCAL VOC do;
- :func:`average_precision`: area under the precision envelope, sampled at 101 recall points
  (COCO) or exactly (all points, PASCAL VOC 2010+);
- :func:`plain_average_precision`: the three together for one class over a dataset.

On crowd-free data without per-image detection caps these give pycocotools' AP at that IoU
threshold exactly (``tests/test_evaluate.py`` checks it).
"""
import contextlib
import io
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["box_iou", "match_detections", "average_precision", "plain_average_precision",
           "coco_evaluate", "CocoResultsError"]


class CocoResultsError(ValueError):
    """A results file that does not fit its ground truth (unknown image or category ids)."""


# --------------------------------------------------------------------------------------------
# plain IoU and AP
# --------------------------------------------------------------------------------------------
def box_iou(boxes1, boxes2) -> np.ndarray:
    """``(N, M)`` IoU of XYXY boxes ``(N, 4)`` and ``(M, 4)``: Detectron2's ``pairwise_iou``
    (intersection area / union area, 0 for disjoint boxes; no +1 pixel convention, as COCO), in
    float32 like every Detectron2 ``Boxes``."""
    import torch
    from detectron2.structures import Boxes, pairwise_iou

    a = Boxes(torch.as_tensor(np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)))
    b = Boxes(torch.as_tensor(np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)))
    return pairwise_iou(a, b).numpy()


def match_detections(gt_boxes, det_boxes, det_scores, iou_threshold: float = 0.5) -> np.ndarray:
    """For detections sorted by descending score (stable), a bool array: True where the detection
    takes a ground-truth box not taken before, the one it overlaps most with IoU >= threshold."""
    det_boxes = np.asarray(det_boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="mergesort")
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    tp = np.zeros(len(order), dtype=bool)
    if len(gt_boxes) == 0 or len(order) == 0:
        return tp
    ious = box_iou(det_boxes[order], gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in range(len(order)):
        candidates = np.where(~taken & (ious[i] >= iou_threshold))[0]
        if len(candidates):
            j = candidates[np.argmax(ious[i, candidates])]
            taken[j] = tp[i] = True
    return tp


def average_precision(recall, precision, points: Optional[int] = 101) -> float:
    """AP from a precision/recall curve in detection order: precision is replaced by its envelope
    (the best precision at any higher recall), then averaged over ``points`` recall thresholds
    ``0, 1/(points-1), ..., 1`` (COCO: 101; a threshold above the curve's last recall counts 0),
    or, with ``points=None``, integrated exactly over recall (PASCAL VOC 2010+)."""
    recall = np.asarray(recall, dtype=np.float64)
    envelope = np.maximum.accumulate(np.asarray(precision, dtype=np.float64)[::-1])[::-1]
    if points is None:
        steps = np.diff(np.concatenate([[0.0], recall]))
        return float(np.sum(steps * envelope))
    thresholds = np.linspace(0.0, 1.0, points)
    idx = np.searchsorted(recall, thresholds, side="left")
    sampled = np.where(idx < len(recall), envelope[np.minimum(idx, len(recall) - 1)], 0.0) \
        if len(recall) else np.zeros(points)
    return float(np.mean(sampled))


def plain_average_precision(gt: Mapping, detections: Sequence[Tuple], iou_threshold: float = 0.5,
                            points: Optional[int] = 101) -> float:
    """AP of one class: ``gt`` maps image id -> ``(G, 4)`` XYXY boxes; ``detections`` are
    ``(image_id, XYXY box, score)``. Detections are matched per image (:func:`match_detections`),
    then ranked by score over the whole dataset. NaN when there is no ground truth."""
    num_gt = sum(len(np.asarray(b).reshape(-1, 4)) for b in gt.values())
    if num_gt == 0:
        return float("nan")
    scores, flags = [], []
    for image_id in dict.fromkeys(d[0] for d in detections):
        dets = [d for d in detections if d[0] == image_id]
        s = np.array([d[2] for d in dets], dtype=np.float64)
        tp = match_detections(gt.get(image_id, np.zeros((0, 4))), [d[1] for d in dets], s, iou_threshold)
        scores.append(s[np.argsort(-s, kind="mergesort")])  # the order match_detections used
        flags.append(tp)
    if not scores:
        return 0.0
    scores, flags = np.concatenate(scores), np.concatenate(flags)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(flags[order])
    recall = tp / num_gt
    precision = tp / np.arange(1, len(tp) + 1)
    return average_precision(recall, precision, points)


# --------------------------------------------------------------------------------------------
# COCO AP (pycocotools)
# --------------------------------------------------------------------------------------------
_STAT_NAMES = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"],
}
_STAT_NAMES["segm"] = _STAT_NAMES["bbox"]


def _mean_valid(p: np.ndarray) -> Optional[float]:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else None


def _load_results(pred_file: str) -> List[dict]:
    with open(pred_file, "rb") as f:
        try:
            rows = json.loads(f.read())
        except ValueError as e:
            raise CocoResultsError(f"{pred_file}: not a JSON file ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CocoResultsError(f"{pred_file}: expected a list of COCO result rows "
                               "({\"image_id\", \"category_id\", \"bbox\", \"score\"})")
    return rows


def coco_evaluate(gt_file: str, pred_file: str, iou_type: str = "bbox",
                  kpt_oks_sigmas: Optional[Sequence[float]] = None) -> Dict:
    """COCO metrics of results file ``pred_file`` against ground truth ``gt_file``.

    Returns ``{"iou_type", "num_images", "num_predictions", "AP", "AP50", "AP75", ... (every
    COCOeval summary figure, 0..1, None when undefined), "per_class": {name: {"AP", "AP50",
    "num_gt"}}, "pr_curves": {name: {"recall": [101], "precision": [101]}}}`` (curves at IoU 0.5,
    all areas, the largest detection cap; precision 0 beyond the highest recall reached).
    Raises :class:`CocoResultsError` when a row names an image or category the ground truth lacks.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if iou_type not in _STAT_NAMES:
        raise ValueError(f"iou_type must be one of {sorted(_STAT_NAMES)}, not {iou_type!r}")
    rows = _load_results(pred_file)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.fspath(gt_file))
    image_ids, cat_ids = set(gt.getImgIds()), set(gt.getCatIds())
    key = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}[iou_type]
    for i, r in enumerate(rows):
        if r.get("image_id") not in image_ids:
            raise CocoResultsError(
                f"{pred_file}: row {i} has image_id {r.get('image_id')!r}, which {gt_file} does not have "
                f"(predict with --input {gt_file} to get its image_ids)")
        if r.get("category_id") not in cat_ids:
            raise CocoResultsError(f"{pred_file}: row {i} has category_id {r.get('category_id')!r}; "
                                   f"{gt_file} has {sorted(cat_ids)}")
        if key not in r:
            raise CocoResultsError(f"{pred_file}: row {i} has no {key!r} (needed by --iou-type {iou_type})")
    cats = gt.loadCats(sorted(cat_ids))
    names = [str(c.get("name", c["id"])) for c in cats]
    if iou_type == "keypoints" and kpt_oks_sigmas is None:
        num_kp = max((len(c.get("keypoints") or []) for c in cats), default=0)
        if num_kp != 17:  # COCOeval's default sigmas are the 17 COCO person keypoints'
            raise CocoResultsError(f"{gt_file}: {num_kp} keypoints per object; give their OKS sigmas "
                                   "(--kpt-oks-sigmas, one per keypoint)")
    out = {"iou_type": iou_type, "num_images": len(image_ids), "num_predictions": len(rows)}
    recall_points = np.linspace(0.0, 1.0, 101)
    if not rows:  # loadRes refuses an empty list; nothing predicted scores 0 wherever there is GT
        stats = [0.0] * len(_STAT_NAMES[iou_type])
        precision = np.zeros((10, 101, len(cats), 4, 3))
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(rows)
            ev = COCOeval(gt, dt, iou_type)
            if iou_type == "keypoints" and kpt_oks_sigmas is not None:
                ev.params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=np.float64)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats, precision = list(ev.stats), ev.eval["precision"]
        recall_points = ev.params.recThrs
    for name, value in zip(_STAT_NAMES[iou_type], stats):
        out[name] = float(value) if value > -1 else None
    per_class, curves = {}, {}
    for k, (cat, name) in enumerate(zip(cats, names)):
        num_gt = len(gt.getAnnIds(catIds=[cat["id"]], iscrowd=False))
        p = precision[:, :, k, 0, -1]
        ap, ap50 = (_mean_valid(p), _mean_valid(p[0])) if num_gt else (None, None)
        per_class[name] = {"AP": ap, "AP50": ap50, "num_gt": num_gt}
        curves[name] = {"recall": [round(float(r), 4) for r in recall_points],
                        "precision": [round(max(float(v), 0.0), 6) for v in p[0]]}
    out["per_class"] = per_class
    out["pr_curves"] = curves
    return out
