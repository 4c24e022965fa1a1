"""WIDER Face evaluation inside Detectron2: :class:`WiderFaceEvaluator` (``evaluator_type:
"widerface"``) and ground truth from dataset dicts (:func:`widerface_gt_from_dicts`).

The protocol itself (the .mat ground truth, prediction folders, matching, AP) is the torch-free
:mod:`d2ext.evaluation.widerface_protocol`; its names are re-exported here for convenience.
"""
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

from ..core import atomic_write_json
from .build import EVALUATOR_REGISTRY
from .widerface_protocol import (IOU_THRESH, WIDERFACE_SETTINGS, PredictionFileError,  # noqa: F401
                                 PredictionReadReport, WiderFaceGT, evaluate_widerface,
                                 load_widerface_gt, normalize_scores, plot_widerface_pr,
                                 read_prediction_file, read_widerface_predictions, voc_ap,
                                 write_widerface_predictions)

__all__ = [
    "WIDERFACE_SETTINGS", "WiderFaceGT", "PredictionReadReport", "PredictionFileError",
    "load_widerface_gt", "widerface_gt_from_dicts", "read_prediction_file",
    "read_widerface_predictions", "write_widerface_predictions", "normalize_scores",
    "evaluate_widerface", "voc_ap", "plot_widerface_pr", "WiderFaceEvaluator",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Ground truth from dataset dicts
# ---------------------------------------------------------------------------------------------
def _record_event_name(record: Mapping) -> Tuple[str, str]:
    p = Path(record["file_name"])
    return str(record.get("event") or p.parent.name), p.stem


def widerface_gt_from_dicts(dataset_dicts: Sequence[Mapping],
                            settings: Sequence[str] = WIDERFACE_SETTINGS) -> WiderFaceGT:
    """Ground truth from Detectron2 dataset dicts of a WIDER-style dataset.

    Expected per record: ``file_name`` ending in ``<event>/<image>.jpg`` (the image name is the
    file stem; ``record["event"]`` overrides the folder name) and ``annotations`` with ``bbox`` in
    ``bbox_mode`` (any absolute ``BoxMode``; default XYWH_ABS). Every annotation is a ground-truth
    face, ``iscrowd`` 1 (invalid faces) included. Setting membership, first found wins:

    - per annotation ``anno["widerface_subsets"]``: the setting names the face belongs to (e.g.
      ``["medium", "hard"]``) or a dict ``{setting: bool}``;
    - per record ``record["widerface_subsets"]``: ``{setting: [0-based annotation indices]}``.

    Settings no record mentions are left out; if none is mentioned at all, the single setting
    ``"all"`` keeps every face with ``iscrowd`` 0 (the official easy/medium/hard need the .mat
    files: set the dataset metadata's ``widerface_gt_dir`` or let the converter attach them).
    """
    events, names, boxes, counts = [], [], [], []
    keep_lists: Dict[str, List[np.ndarray]] = {s: [] for s in settings}
    seen = {s: False for s in settings}
    valid = []
    for record in dataset_dicts:
        event, name = _record_event_name(record)
        annos = record.get("annotations", []) or []
        b = np.zeros((len(annos), 4), dtype=np.float64)
        for k, anno in enumerate(annos):
            mode = anno.get("bbox_mode", BoxMode.XYWH_ABS)
            b[k] = BoxMode.convert(list(map(float, anno["bbox"])), mode, BoxMode.XYWH_ABS)
        valid.append(np.array([not anno.get("iscrowd", 0) for anno in annos], dtype=bool))
        rec_subsets = record.get("widerface_subsets")
        for s in settings:
            m = np.zeros(len(annos), dtype=bool)
            for k, anno in enumerate(annos):
                flags = anno.get("widerface_subsets")
                if flags is None:
                    continue
                seen[s] = True
                m[k] = bool(flags.get(s, False)) if isinstance(flags, Mapping) else s in flags
            if rec_subsets is not None and s in rec_subsets:
                seen[s] = True
                idx = np.asarray(rec_subsets[s], dtype=np.int64).ravel()
                if idx.size and (idx.min() < 0 or idx.max() >= len(annos)):
                    raise ValueError(f"{record['file_name']}: widerface_subsets[{s!r}] index out of "
                                     f"range 0..{len(annos) - 1}")
                m[idx] = True
            keep_lists[s].append(m)
        events.append(event)
        names.append(name)
        boxes.append(b)
        counts.append(len(annos))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    cat = lambda ms: np.concatenate(ms) if ms else np.zeros(0, bool)  # noqa: E731
    keep = {s: cat(keep_lists[s]) for s in settings if seen[s]}
    if not keep:
        keep = {"all": cat(valid)}
    return WiderFaceGT(events=events, names=names, boxes=all_boxes, offsets=offsets, keep=keep)


# ---------------------------------------------------------------------------------------------
# Detectron2 evaluator
# ---------------------------------------------------------------------------------------------
class WiderFaceEvaluator(DatasetEvaluator):
    """WIDER Face easy / medium / hard AP of any Detectron2 detector on a WIDER-style dataset.

    Predictions: ``output["instances"]`` with ``pred_boxes`` (XYXY, input-image pixels) and
    ``scores``; every instance counts (face datasets have one class). They are turned into the
    toolkit's ``x y w h`` with ``w = x2 - x1``. Images are named by the stem of
    ``input["file_name"]``.

    Ground truth: the official .mat files in ``gt_dir`` (default: the dataset metadata's
    ``widerface_gt_dir``), restricted to the dataset's images, else the dataset dicts (see
    :func:`widerface_gt_from_dicts` for the expected fields).

    Writes to ``output_dir`` (if given): ``widerface_predictions/<event>/<image>.txt`` (official
    layout, for the published tools), ``widerface_results.json`` and ``widerface_pr.png``.
    Returns ``{"widerface": {"AP_easy": ..., "AP_medium": ..., "AP_hard": ...}}`` in percent, as
    Detectron2's COCO numbers are.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None, *,
                 gt_dir: Optional[str] = None, iou_thresh: float = IOU_THRESH,
                 distributed: bool = True, write_predictions: bool = True, plot: bool = True):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        meta = MetadataCatalog.get(dataset_name)
        self._gt_dir = gt_dir if gt_dir is not None else getattr(meta, "widerface_gt_dir", None)
        self._iou_thresh = iou_thresh
        self._distributed = distributed
        self._write_predictions = write_predictions
        self._plot = plot
        self._predictions: Dict[str, np.ndarray] = {}
        self._events: Dict[str, str] = {}

    def reset(self):
        self._predictions = {}
        self._events = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            event, name = _record_event_name(inp)
            inst = out["instances"].to("cpu")
            xyxy = inst.pred_boxes.tensor.numpy().astype(np.float64)
            scores = inst.scores.numpy().astype(np.float64)
            rows = np.zeros((len(xyxy), 5), dtype=np.float64)
            rows[:, :2] = xyxy[:, :2]
            rows[:, 2:4] = xyxy[:, 2:4] - xyxy[:, :2]
            rows[:, 4] = scores
            self._predictions[name] = rows
            self._events[name] = event

    def _ground_truth(self) -> WiderFaceGT:
        dicts = DatasetCatalog.get(self._dataset_name)
        if not self._gt_dir:
            return widerface_gt_from_dicts(dicts)
        full = load_widerface_gt(self._gt_dir)
        names = [_record_event_name(r)[1] for r in dicts]
        unknown = [n for n in names if n not in full]
        if unknown:
            logger.warning("%s: %d images are not in the ground truth of %s and are skipped "
                           "(first: %s)", self._dataset_name, len(unknown), self._gt_dir, unknown[0])
        return full.select([n for n in names if n in full])

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            parts = comm.gather((self._predictions, self._events), dst=0)
            if not comm.is_main_process():
                return {}
            predictions, events = {}, {}
            for p, e in parts:
                predictions.update(p)
                events.update(e)
        else:
            predictions, events = self._predictions, self._events
        if not predictions:
            logger.warning("[WiderFaceEvaluator] did not receive valid predictions")
            return {}
        gt = self._ground_truth()
        missing = [n for n in gt.names if n not in predictions]
        if missing:
            logger.warning("%s: %d of %d images have no predictions (counted as no detections)",
                           self._dataset_name, len(missing), gt.num_images)
        results = evaluate_widerface(predictions, gt, iou_thresh=self._iou_thresh)
        if self._output_dir:
            if self._write_predictions:
                write_widerface_predictions(
                    os.path.join(self._output_dir, "widerface_predictions"), predictions, events)
            atomic_write_json(
                os.path.join(self._output_dir, "widerface_results.json"),
                {s: {"ap": r["ap"], "num_faces": r["num_faces"],
                     "precision": r["precision"].tolist(), "recall": r["recall"].tolist()}
                 for s, r in results.items()})
            if self._plot:
                plot_widerface_pr(results, os.path.join(self._output_dir, "widerface_pr.png"),
                                  title=self._dataset_name)
        metrics = OrderedDict((f"AP_{s}", 100.0 * r["ap"]) for s, r in results.items())
        logger.info("WIDER Face AP on %s: %s", self._dataset_name,
                    ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        return OrderedDict(widerface=metrics)


@EVALUATOR_REGISTRY.register()
def widerface(cfg, dataset_name, output_folder):
    """Builder of ``evaluator_type: "widerface"`` (registry name = evaluator type)."""
    return WiderFaceEvaluator(dataset_name, output_dir=output_folder)
