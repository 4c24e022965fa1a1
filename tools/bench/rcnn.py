"""Detectron2's R-CNN family and RetinaNet on BCCD, beside the YOLO / SSD rows (the WBC DeepLabv3
and Mask R-CNN rows are in tools/bench/wbc_seg.py, with the other WBC segmenters).

    tools/benchmark.py bccd/faster_rcnn bccd/retinanet [--budget-min N] [--output DIR]

Every row trains its config from scratch with the shared ``train_within_budget`` rule
(``tools/train_net.py`` in a subprocess, so its peak RSS is its own; the config's learning-rate
steps rescaled to the run's length), then loads ``model_final.pth`` here and evaluates it with
the d2ext ``Trainer.test`` — the evaluator the dataset's ``evaluator_type`` selects, as for
every other row — and times inference on one test image (batch 1, median of 5 after a warm-up,
data mapping excluded).

``bccd/faster_rcnn``, ``bccd/retinanet``: ``configs/bccd/{faster_rcnn,retinanet}_R34_FPN.yaml``,
bccd_train -> bccd_test (the split of the ``bccd/yolov3`` and ``bccd/ssd300`` rows), COCOEvaluator:
rows ``<name>`` = AP (fraction), ``/AP50``, ``/AP50/<class>`` (from pycocotools' precision
array at IoU 0.5, area "all", 100 detections), ``/latency_ms`` (one 640x480 image resized to the
test size), ``/peak_train_mem`` (MiB).
"""
import logging
import os
import statistics
from pathlib import Path

from tools.bench.common import Result, dataset_opts, time_call, train_detector_rows

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def _ensure_datasets(*names):
    try:
        from converters.builtin import register_builtin_datasets
    except ImportError:
        raise SystemExit("these rows need the converters package (real dataset registration)")
    register_builtin_datasets()
    from detectron2.data import DatasetCatalog

    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise SystemExit(f"datasets {missing} not found (set D2EXT_SHARED_DATA to the folder holding "
                         f"bccd/ and wbc_seg/)")


def _latency_ms(cfg, model) -> float:
    """Median ms of the model's forward on the first test image (batch 1, mapped once)."""
    import torch
    from detectron2.data import DatasetCatalog

    from d2ext.data import build_dataset_mapper

    inputs = [build_dataset_mapper(cfg, False)(DatasetCatalog.get(cfg.DATASETS.TEST[0])[0])]
    model.eval()
    with torch.no_grad():
        times = time_call(lambda: model(inputs), repeat=5, warmup=1)
    return 1000 * statistics.median(times)


def _threads_note():
    return f"OMP threads {os.environ.get('OMP_NUM_THREADS', 'default')}"


def _run_bccd(row: str, config_name: str, args):
    if not dataset_opts(args):
        _ensure_datasets("bccd_train", "bccd_test")
    config = REPO / "configs" / "bccd" / config_name
    run, model, rows = train_detector_rows(args, row, config, opts=["MODEL.DEVICE", "cpu"])
    return rows + [
        Result(f"{row}/latency_ms", _latency_ms(run.cfg, model), "ms",
               notes=f"one test image at test size {run.cfg.INPUT.MIN_SIZE_TEST}, batch 1, CPU, {_threads_note()}")]


def run_bccd_faster_rcnn(args):
    """Faster R-CNN R34-FPN on BCCD: AP, AP50, per-class AP50, latency, peak memory."""
    return _run_bccd("bccd/faster_rcnn", "faster_rcnn_R34_FPN.yaml", args)


def run_bccd_retinanet(args):
    """RetinaNet R34-FPN (focal loss 0.25 / 2) on BCCD: AP, AP50, per-class AP50, latency, memory."""
    return _run_bccd("bccd/retinanet", "retinanet_R34_FPN.yaml", args)


ROWS = {
    "bccd/faster_rcnn": run_bccd_faster_rcnn,
    "bccd/retinanet": run_bccd_retinanet,
}
