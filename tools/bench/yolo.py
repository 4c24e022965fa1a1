"""YOLO rows: YOLOv3 latency / size, and BCCD training + COCO evaluation of YOLOv3 and YOLOv2.

    tools/benchmark.py yolov3_latency
    tools/benchmark.py bccd/yolov3 bccd/yolov2 bccd/yolov1 [--budget-min N] [--yolo-out DIR]

``yolov3_latency``: the paper's 80-class YOLOv3 (Darknet-53, 3 x 3 anchors), random weights,
CPU forward + decoding + NMS of one 416x416 image (batch 1, median of 5), and its parameter count
(peer: Darknet's yolov3.cfg, 61,949,149 parameters).

``bccd/<model>``: trains ``configs/bccd/<model>.yaml`` from scratch with ``tools/train_net.py``
(a subprocess) for as many iterations as fit in ``--budget-min`` minutes (measured on a few
training steps in this process, learning-rate steps at 80% / 93% of them), which ends with
Detectron2's ``COCOEvaluator`` on ``bccd_test``; the rows are then recomputed with pycocotools
from the evaluator's own files: AP, AP50, AP50 per class, and the peak RSS of the training
process.
"""
import argparse
import logging
import sys
import tempfile
from pathlib import Path

from tools.bench.common import Result, coco_ap_per_class, run_measured, seconds_per_train_step, time_call

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
DARKNET_YOLOV3_PARAMS = 61_949_149  # Darknet yolov3.cfg (80 classes)


def add_arguments(parser):
    for args, kw in [
        (("--budget-min",), dict(type=float, default=10.0, help="training budget in minutes per model")),
        (("--yolo-out",), dict(default=None, help="yolo: folder for the BCCD runs (default: a temp dir)")),
    ]:
        try:
            parser.add_argument(*args, **kw)
        except argparse.ArgumentError:
            pass


def run_yolov3_latency(args):
    """YOLOv3-416 (80 classes) CPU latency, batch 1, and parameter count."""
    import torch

    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg
    from detectron2.modeling import build_model

    cfg = setup_cfg("", ["MODEL.META_ARCHITECTURE", "YOLOV3", "MODEL.BACKBONE.NAME",
                         "build_darknet53_backbone", "MODEL.BACKBONE.FREEZE_AT", 0,
                         "MODEL.PIXEL_MEAN", [0.0, 0.0, 0.0], "MODEL.PIXEL_STD", [255.0, 255.0, 255.0],
                         "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    torch.manual_seed(0)
    inputs = [{"image": torch.randint(0, 256, (3, 416, 416), dtype=torch.uint8).float()}]
    with torch.no_grad():
        times = time_call(lambda: model(inputs), repeat=5, warmup=1)
    ms = 1000 * sorted(times)[len(times) // 2]
    threads = f"torch threads {torch.get_num_threads()}"
    return [
        Result("yolov3_latency", ms, "ms", notes=f"416x416, batch 1, CPU, random weights, {threads}"),
        Result("yolov3_latency/params", n_params / 1e6, "M", "darknet yolov3.cfg",
               DARKNET_YOLOV3_PARAMS / 1e6, notes="80 classes, 9 anchors"),
    ]


def _run_bccd(model_name, args):
    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg

    config = REPO / "configs" / "bccd" / f"{model_name}.yaml"
    out_root = Path(args.yolo_out) if getattr(args, "yolo_out", None) else Path(tempfile.mkdtemp(prefix="d2ext_yolo_"))
    out_dir = out_root / f"bccd_{model_name}"
    out_root.mkdir(parents=True, exist_ok=True)
    budget_s = 60.0 * args.budget_min
    probe = setup_cfg(str(config), ["MODEL.DEVICE", "cpu"])
    # Start-up and the final evaluation take about a minute; data loading and logging ~15% on top
    # of the compute timed here (more when the CPU is shared).
    usable_s = max(0.5 * budget_s, budget_s - 60.0)
    max_iter = max(20, int(0.85 * usable_s / seconds_per_train_step(probe)))
    opts = [
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.STEPS", f"({int(0.8 * max_iter)}, {int(0.93 * max_iter)})",
        "SOLVER.WARMUP_ITERS", str(min(100, max(1, max_iter // 10))),
        "SOLVER.CHECKPOINT_PERIOD", str(10**9),
        "OUTPUT_DIR", str(out_dir),
        "SEED", "0",
    ]
    logger.info("bccd/%s: %d iterations for a %.1f-minute budget", model_name, max_iter, args.budget_min)
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(config), *opts]
    log_path = out_root / f"bccd_{model_name}.log"
    returncode, wall_s, mem = run_measured(cmd, str(log_path), cwd=str(REPO))
    minutes = wall_s / 60
    if returncode != 0:
        raise RuntimeError(f"bccd/{model_name}: train_net.py exited {returncode}; see {log_path}")
    # train_net.py evaluated in its own process, so the ground truth was cached in its folder
    eval_dir = out_dir / "inference" / probe.DATASETS.TEST[0]
    ap, ap50, per_class = coco_ap_per_class(str(eval_dir / f"{probe.DATASETS.TEST[0]}_coco_format.json"),
                                            str(eval_dir / "coco_instances_results.json"))
    note = (f"from scratch, {max_iter} iters x {probe.SOLVER.IMS_PER_BATCH} imgs in {minutes:.1f} min "
            f"(train + eval, CPU, budget {args.budget_min:g} min); {config.relative_to(REPO)}")
    base = f"bccd/{model_name}"
    rows = [Result(base, ap, "AP", notes=note), Result(f"{base}/AP50", ap50, "AP50")]
    rows += [Result(f"{base}/AP50/{c}", v, "AP50") for c, v in per_class.items()]
    rows.append(Result(f"{base}/peak_train_mem", mem, "MiB", notes="peak RSS of the training process (data workers excluded)"))
    return rows


def _ensure_datasets():
    try:
        from converters.builtin import register_builtin_datasets
    except ImportError:
        raise SystemExit("bccd rows need the converters package (BCCD dataset registration)")
    names = register_builtin_datasets()
    if "bccd_test" not in names:
        from detectron2.data import DatasetCatalog

        if "bccd_test" not in DatasetCatalog.list():
            raise SystemExit("bccd rows: BCCD not found (set D2EXT_SHARED_DATA to the folder holding bccd/)")


def run_bccd_yolov3(args):
    """YOLOv3 (small Darknet-53) on BCCD: AP, AP50, per-class AP50, peak memory."""
    _ensure_datasets()
    return _run_bccd("yolov3", args)


def run_bccd_yolov2(args):
    """YOLOv2 (small Darknet-19) on BCCD: AP, AP50, per-class AP50, peak memory."""
    _ensure_datasets()
    return _run_bccd("yolov2", args)


def run_bccd_yolov1(args):
    """YOLOv1 (fast 9-conv net, 7x7 grid) on BCCD: AP, AP50, per-class AP50, peak memory."""
    _ensure_datasets()
    return _run_bccd("yolov1", args)


ROWS = {
    "yolov3_latency": run_yolov3_latency,
    "bccd/yolov3": run_bccd_yolov3,
    "bccd/yolov2": run_bccd_yolov2,
    "bccd/yolov1": run_bccd_yolov1,
}
