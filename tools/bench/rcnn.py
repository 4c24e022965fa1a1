"""Detectron2's R-CNN family and RetinaNet, and d2ext's DeepLabv3, beside the YOLO / SSD / U-Net rows.

    tools/benchmark.py bccd/faster_rcnn bccd/retinanet [--budget-min N] [--output DIR]
    tools/benchmark.py wbc_seg/deeplabv3/binary wbc_seg/deeplabv3/3class wbc_seg/mask_rcnn/binary

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

``wbc_seg/deeplabv3/<mode>``: ``configs/wbc_seg/deeplabv3_R34_<mode>.yaml`` on
``wbc_seg_<mode>_train`` -> ``_test`` (converters.builtin, the seeded 80/20 split that the
``wbc_seg`` U-Net rows use by default), SegmentationMetricsEvaluator at 300x300: ``<name>`` =
foreground Dice, ``/mIoU``, ``/pixel_acc`` (fractions), ``/latency_ms``, ``/peak_train_mem``.

``wbc_seg/mask_rcnn/binary``: ``configs/wbc_seg/mask_rcnn_R34_FPN.yaml`` on ``wbc_inst_train`` ->
``wbc_inst_test``; COCO segm AP (``/segm_AP``) and, through ``TEST.MASK_SEM_SEG_DATASETS``, the
same Dice / mIoU / pixel accuracy against ``wbc_seg_binary_test``'s label maps.
"""
import logging
import os
import statistics
from pathlib import Path

from tools.bench.common import (Result, coco_ap, coco_ap_per_class, coco_eval_files, row_output, time_call,
                                train_within_budget)

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


def _train(config: Path, row: str, args):
    """Train ``config`` within ``--budget-min`` (the shared rule), then evaluate it here:
    ``(BudgetRun, model, results)``."""
    run = train_within_budget(str(config), row_output(args, row), args.budget_min, opts=["MODEL.DEVICE", "cpu"])
    model, res = run.evaluate()
    return run, model, res


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
    _ensure_datasets("bccd_train", "bccd_test")
    config = REPO / "configs" / "bccd" / config_name
    run, model, res = _train(config, row, args)
    cfg, max_iter, minutes, mem = run.cfg, run.max_iter, run.train_minutes, run.peak_mib
    eval_dir = Path(cfg.OUTPUT_DIR) / "inference" / cfg.DATASETS.TEST[0]
    _, _, per_class = coco_ap_per_class(*coco_eval_files(eval_dir, cfg.DATASETS.TEST[0]))
    note = (f"from scratch, {max_iter} iters x {cfg.SOLVER.IMS_PER_BATCH} imgs, {minutes:.1f} min train "
            f"(CPU, budget {args.budget_min:g} min); {config.relative_to(REPO)}")
    rows = [Result(row, coco_ap(res, "bbox"), "AP", notes=note), Result(f"{row}/AP50", coco_ap(res, "bbox", "AP50"), "AP50")]
    rows += [Result(f"{row}/AP50/{c}", v, "AP50") for c, v in per_class.items()]
    rows.append(Result(f"{row}/latency_ms", _latency_ms(cfg, model), "ms",
                       notes=f"one 640x480 image at test size {cfg.INPUT.MIN_SIZE_TEST}, batch 1, CPU, {_threads_note()}"))
    rows.append(Result(f"{row}/peak_train_mem", mem, "MiB", notes="peak RSS of the training process"))
    return rows


def run_bccd_faster_rcnn(args):
    """Faster R-CNN R34-FPN on BCCD: AP, AP50, per-class AP50, latency, peak memory."""
    return _run_bccd("bccd/faster_rcnn", "faster_rcnn_R34_FPN.yaml", args)


def run_bccd_retinanet(args):
    """RetinaNet R34-FPN (focal loss 0.25 / 2) on BCCD: AP, AP50, per-class AP50, latency, memory."""
    return _run_bccd("bccd/retinanet", "retinanet_R34_FPN.yaml", args)


def _seg_rows(row, scores, note):
    return [Result(row, scores["fgDice"] / 100, "Dice", notes=note),
            Result(f"{row}/mIoU", scores["mIoU"] / 100, "IoU"),
            Result(f"{row}/pixel_acc", scores["pACC"] / 100, "acc")]


def _run_deeplab(mode: str, args):
    _ensure_datasets(f"wbc_seg_{mode}_train", f"wbc_seg_{mode}_test")
    row = f"wbc_seg/deeplabv3/{mode}"
    config = REPO / "configs" / "wbc_seg" / f"deeplabv3_R34_{mode}.yaml"
    run, model, res = _train(config, row, args)
    cfg, max_iter, minutes, mem = run.cfg, run.max_iter, run.train_minutes, run.peak_mib
    note = (f"DeepLabv3 dilated R34 OS16, from scratch, {max_iter} iters in {minutes:.1f} min CPU "
            f"(budget {args.budget_min:g} min), short side {cfg.INPUT.MIN_SIZE_TEST}")
    return _seg_rows(row, res["sem_seg"], note) + [
        Result(f"{row}/latency_ms", _latency_ms(cfg, model), "ms",
               notes=f"one 300x300 image, batch 1, CPU, {_threads_note()}"),
        Result(f"{row}/peak_train_mem", mem, "MiB", notes="peak RSS of the training process"),
    ]


def run_deeplab_binary(args):
    """DeepLabv3 R34 on WBC, binary: foreground Dice, mIoU, pixel accuracy, latency, memory."""
    return _run_deeplab("binary", args)


def run_deeplab_3class(args):
    """DeepLabv3 R34 on WBC, 3 classes: foreground Dice, mIoU, pixel accuracy, latency, memory."""
    return _run_deeplab("3class", args)


def run_mask_rcnn_binary(args):
    """Mask R-CNN R34-FPN on the WBC instance view: Dice vs the U-Net masks, segm AP, latency."""
    _ensure_datasets("wbc_inst_train", "wbc_inst_test", "wbc_seg_binary_test")
    row = "wbc_seg/mask_rcnn/binary"
    config = REPO / "configs" / "wbc_seg" / "mask_rcnn_R34_FPN.yaml"
    run, model, res = _train(config, row, args)
    cfg, max_iter, minutes, mem = run.cfg, run.max_iter, run.train_minutes, run.peak_mib
    note = (f"instance masks painted (score >= {cfg.TEST.MASK_SEM_SEG_SCORE_THRESH}) and scored on "
            f"wbc_seg_binary_test; from scratch, {max_iter} iters in {minutes:.1f} min CPU "
            f"(budget {args.budget_min:g} min)")
    return _seg_rows(row, res["mask_sem_seg"], note) + [
        Result(f"{row}/segm_AP", coco_ap(res, "segm"), "AP", notes="COCO mask AP on wbc_inst_test"),
        Result(f"{row}/box_AP", coco_ap(res, "bbox"), "AP"),
        Result(f"{row}/latency_ms", _latency_ms(cfg, model), "ms",
               notes=f"one 300x300 image, batch 1, CPU, {_threads_note()}"),
        Result(f"{row}/peak_train_mem", mem, "MiB", notes="peak RSS of the training process"),
    ]


ROWS = {
    "bccd/faster_rcnn": run_bccd_faster_rcnn,
    "bccd/retinanet": run_bccd_retinanet,
    "wbc_seg/deeplabv3/binary": run_deeplab_binary,
    "wbc_seg/deeplabv3/3class": run_deeplab_3class,
    "wbc_seg/mask_rcnn/binary": run_mask_rcnn_binary,
}
