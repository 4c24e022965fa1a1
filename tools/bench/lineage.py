"""The course's detection lineage on the single-WBC set, one table.

    tools/benchmark.py lineage [--budget-min N] [--output DIR] [--json FILE]
    tools/benchmark.py bccd_wbc1/patch4 bccd_wbc1/rcnn ...      (one method at a time)

Methods (``configs/bccd_wbc1/``): ``patch4`` / ``patch16`` (2 x 2 / 4 x 4 grid patches),
``patch_anchors`` (square, tall and wide patches), ``rcnn`` (selective search + fine-tuned CNN
+ SVM + box regression), ``fast_rcnn`` (GeneralizedRCNN on precomputed selective-search
proposals, ROIPool 7x7), ``faster_rcnn`` (RPN + FPN), ``yolov3``, ``ssd300``. Same split
(bccd_wbc1_train -> bccd_wbc1_test), every trained network from scratch through the shared
``train_within_budget`` (same ``--budget-min`` each; R-CNN's SVM stage runs after its
fine-tuning and is added to its training minutes), then evaluated in this process by the
evaluators of the dataset (COCO + best-box IoU).

Rows per method ``bccd_wbc1/<method>`` = mean IoU of each test image's best box with its WBC,
``/iou50_rate`` (share of images with IoU >= 0.5), ``/AP50`` (COCO, fraction), ``/latency_ms``
(one 640x480 test image, batch 1, median of 3 after a warm-up; for rcnn / fast_rcnn the
selective search of that image is added — it is part of their inference), ``/train_min``.

R-CNN is the slow one, as in 2014: every proposal goes through the CNN. Its own flags keep it
inside a CPU run: ``--lineage-rcnn-proposals`` (150 per image, the paper used ~2000) and
``--lineage-svm-images`` (the first 96 training images feed the SVM stage).

Selective search runs once per image (``tools/proposals.py``, cached under ``$D2EXT_CACHE``) and
its proposal file is shared by rcnn and fast_rcnn; its one-time cost is not in any budget.
"""
import logging
import os
import statistics
import time
from pathlib import Path

from tools.bench.common import Result, coco_ap, latency_ms, row_output, train_within_budget

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "bccd_wbc1"
METHODS = {
    "patch4": "patch4_R18.yaml",
    "patch16": "patch16_R18.yaml",
    "patch_anchors": "patch_anchors_R18.yaml",
    "rcnn": "rcnn_R18.yaml",
    "fast_rcnn": "fast_rcnn_R18_C4.yaml",
    "faster_rcnn": "faster_rcnn_R34_FPN.yaml",
    "yolov3": "yolov3.yaml",
    "ssd300": "ssd300.yaml",
}
PROPOSAL_METHODS = ("rcnn", "fast_rcnn")
SPLITS = ("bccd_wbc1_train", "bccd_wbc1_val", "bccd_wbc1_test")


def add_arguments(parser):
    parser.add_argument("--lineage-rcnn-proposals", type=int, default=150,
                        help="lineage rcnn: proposals per image warped through the CNN (paper: 2000)")
    parser.add_argument("--lineage-svm-images", type=int, default=96,
                        help="lineage rcnn: training images whose proposals feed the SVM stage")


def _ensure_datasets():
    from detectron2.data import DatasetCatalog

    from converters.builtin import register_builtin_datasets

    register_builtin_datasets()
    missing = [n for n in SPLITS if n not in DatasetCatalog.list()]
    if missing:
        raise SystemExit(f"datasets {missing} not found (set D2EXT_SHARED_DATA to the folder holding bccd/)")


def _proposal_file(args) -> str:
    """The shared selective-search proposal file of the three splits (per-image cache first)."""
    from detectron2.data import DatasetCatalog

    from tools.proposals import write_proposal_file

    path = os.path.join(row_output(args, "bccd_wbc1/proposals"), "bccd_wbc1_ss.pkl")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        records = [r for name in SPLITS for r in DatasetCatalog.get(name)]
        write_proposal_file(records, path, max_proposals=300, mode="fast", max_side=320, log_every=50)
        logger.info("selective search for %d images: %.0f s (cached per image)", len(records),
                    time.perf_counter() - t0)
    return path


def _selective_search_ms(file_name: str, repeat: int = 3) -> float:
    import cv2

    from tools.proposals import selective_search

    image = cv2.imread(file_name)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        selective_search(image, "fast", 320)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _first_test_input(cfg):
    from detectron2.data import DatasetCatalog, get_detection_dataset_dicts

    from d2ext.data import build_dataset_mapper

    name = cfg.DATASETS.TEST[0]
    if cfg.MODEL.LOAD_PROPOSALS:
        rec = get_detection_dataset_dicts([name], filter_empty=False,
                                          proposal_files=list(cfg.DATASETS.PROPOSAL_FILES_TEST))[0]
    else:
        rec = DatasetCatalog.get(name)[0]
    return rec, build_dataset_mapper(cfg, False)(rec)


def _evaluate(cfg, weights):
    from d2ext.checkpoint import SafeCheckpointer

    from d2ext.engine import Trainer

    model = Trainer.build_model(cfg)
    SafeCheckpointer(model).load(weights)
    model.eval()
    return model, Trainer.test(cfg, model)


def run_method(method: str, args):
    import d2ext.engine  # noqa: F401  (registers every d2ext component)

    _ensure_datasets()
    row = f"bccd_wbc1/{method}"
    opts = ["MODEL.DEVICE", "cpu"]
    if method == "rcnn":
        opts += ["MODEL.PATCH_DETECTOR.PROPOSALS_PER_IMAGE", str(args.lineage_rcnn_proposals)]
    if method in PROPOSAL_METHODS:
        props = _proposal_file(args)
        opts += ["DATASETS.PROPOSAL_FILES_TRAIN", f"('{props}',)",
                 "DATASETS.PROPOSAL_FILES_TEST", f"('{props}',)"]
    out_dir = row_output(args, row)
    run = train_within_budget(str(CONFIGS / METHODS[method]), out_dir, args.budget_min, opts=opts)
    cfg, train_min, notes = run.cfg, run.train_minutes, run.note()
    weights = os.path.join(out_dir, "model_final.pth")
    if method == "rcnn":
        import torch

        from d2ext.core import atomic_path
        from d2ext.checkpoint import SafeCheckpointer

        from d2ext.engine import Trainer
        from tools.train_rcnn_svm import fit_svm_stage

        model = Trainer.build_model(cfg)
        SafeCheckpointer(model).load(weights)
        model.eval()
        t0 = time.perf_counter()
        counts = fit_svm_stage(cfg, model, max_images=args.lineage_svm_images)
        svm_min = (time.perf_counter() - t0) / 60.0
        train_min += svm_min
        weights = os.path.join(out_dir, "model_svm.pth")
        with atomic_path(weights) as tmp:
            torch.save({"model": model.state_dict()}, tmp)
        notes += (f"; + SVM/box-regression stage {svm_min:.1f} min on {args.lineage_svm_images} "
                  f"train images ({counts[0]}); {args.lineage_rcnn_proposals} proposals/image")
    model, res = _evaluate(cfg, weights)
    rec, inputs = _first_test_input(cfg)
    lat = latency_ms(model, [inputs], repeat=3)
    lat_note = "forward + postprocess"
    if method in PROPOSAL_METHODS:
        ss = _selective_search_ms(rec["file_name"])
        lat += ss
        lat_note += f" + selective search {ss:.0f} ms"
    box = res.get("best_box_iou", {})
    return [
        Result(row, box.get("mean_iou", float("nan")), "mean IoU", notes=notes),
        Result(f"{row}/iou50_rate", box.get("iou50_rate", float("nan")), "fraction",
               notes=f"{box.get('num_images', 0)} test images"),
        Result(f"{row}/AP50", coco_ap(res, "bbox", "AP50"), "fraction", notes="COCO AP50, WBC"),
        Result(f"{row}/latency_ms", lat, "ms", notes=f"{lat_note}; batch 1, CPU, shared machine"),
        Result(f"{row}/train_min", train_min, "min", notes=f"budget {args.budget_min} min"),
    ]


def run_lineage(args):
    """All eight methods on bccd_wbc1 (train -> test): mean IoU, IoU>=0.5 rate, AP50, latency, train min."""
    results = []
    for method in METHODS:
        try:
            results += run_method(method, args)
        except Exception as e:  # keep the other methods' rows; this one is reported as failed
            logger.exception("lineage: %s failed", method)
            results.append(Result(f"bccd_wbc1/{method}", float("nan"), "failed",
                                  notes=f"{type(e).__name__}: {e}"[:300]))
    return results


def _method_row(method):
    def fn(args):
        return run_method(method, args)

    fn.__doc__ = f"bccd_wbc1 lineage, one method: {method} ({METHODS[method]})"
    return fn


ROWS = {"lineage": run_lineage, **{f"bccd_wbc1/{m}": _method_row(m) for m in METHODS}}
