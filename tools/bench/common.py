"""Shared pieces of the benchmark harness: the result row and measuring helpers.

A benchmark module in ``tools/bench/`` defines ``ROWS = {"name": fn}`` (and optionally
``add_arguments(parser)`` for its options); ``fn(args)`` returns a list of :class:`Result`.
"""
import gc
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple


@dataclass
class Result:
    name: str
    value: float
    unit: str
    peer: Optional[str] = None  # what we compare against, e.g. "torchvision ssd300_vgg16"
    peer_value: Optional[float] = None
    notes: str = ""
    ratio: Optional[float] = field(default=None)

    def __post_init__(self):
        if self.ratio is None and self.peer_value not in (None, 0):
            self.ratio = float(self.value) / float(self.peer_value)

    def to_json(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ("name", "value", "unit", "peer", "peer_value", "ratio", "notes")}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024.0 if sys.platform != "darwin" else kib / 2**20


def time_call(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> List[float]:
    """Wall-clock seconds of ``repeat`` calls after ``warmup`` calls (GC run before each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run_measured(cmd: List[str], log_path: str, cwd: Optional[str] = None) -> Tuple[int, float, float]:
    """Run ``cmd`` with stdout+stderr to ``log_path``; return (exit code, wall seconds, peak RSS
    in MiB of that process alone — read with ``os.wait4``, so rows run one after another in the
    same benchmark each get their own figure; data-loader worker processes are not included)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def coco_ap_per_class(gt_json: str, results_json: str) -> Tuple[float, float, dict]:
    """(AP, AP50, {class name: AP50}) of a COCO results file against COCO ground truth, as
    fractions (pycocotools; per-class AP50 from the precision array at IoU 0.5, all areas,
    100 detections). No detections at all: zeros."""
    import json

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(gt_json)
    with open(results_json) as f:
        dets = json.load(f)
    if not dets:
        return 0.0, 0.0, {c["name"]: 0.0 for c in gt.dataset["categories"]}
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    precision = ev.eval["precision"]  # (IoU, recall, class, area, maxDets)
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        per_class[gt.cats[int(cat_id)]["name"]] = float(p[p > -1].mean()) if (p > -1).any() else float("nan")
    return float(ev.stats[0]), float(ev.stats[1]), per_class


def coco_eval_files(eval_dir, dataset_name: str) -> Tuple[str, str]:
    """(ground-truth JSON, results JSON) that ``COCOEvaluator`` used for ``dataset_name`` with
    ``output_dir=eval_dir``: the ground truth is the dataset's ``json_file`` (which the first
    evaluator in a process caches, possibly in another run's folder), else the cache in eval_dir."""
    from detectron2.data import MetadataCatalog

    gt = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not gt or not os.path.exists(gt):
        gt = os.path.join(eval_dir, f"{dataset_name}_coco_format.json")
    return gt, os.path.join(eval_dir, "coco_instances_results.json")


def seconds_per_train_step(cfg, n_warmup: int = 1, n_timed: int = 3) -> float:
    """Median wall time of one training step of ``cfg`` in this process — a real batch from the
    config's train loader (in-process, no workers), forward, backward, optimizer step — used to
    size a run to a time budget. The median, since the machine may be shared."""
    import statistics

    from d2ext.engine import Trainer
    from detectron2.utils.events import EventStorage

    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    model = Trainer.build_model(cfg).train()
    optimizer = Trainer.build_optimizer(cfg, model)
    data = iter(Trainer.build_train_loader(cfg))
    times = []
    with EventStorage(0):  # R-CNNs log training statistics to it
        for i in range(n_warmup + n_timed):
            t0 = time.perf_counter()
            loss = sum(model(next(data)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= n_warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)
