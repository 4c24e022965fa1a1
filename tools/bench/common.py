"""Shared pieces of the benchmark harness: the result row, measuring helpers, and the one rule
that sizes every trained row to its budget.

A benchmark module in ``tools/bench/`` defines ``ROWS = {"name": fn}`` (and optionally
``add_arguments(parser)`` for flags of its own); ``fn(args)`` returns a list of :class:`Result`.
The shared flags are declared once, in ``tools/benchmark.py``: ``--budget-min`` (training minutes
per trained model), ``--data`` / ``--test-data`` (dataset folders for rows that read one),
``--output`` (folder for the runs; ``row_output(args, row)`` gives each row its own).

Every trained row goes through :func:`train_within_budget`: the budget covers calibration (one
timed training step in this process), building and training (``tools/train_net.py`` in a
subprocess); evaluation comes after and is not counted. The number of iterations is the one
formula in that function, the same for every model.
"""
import gc
import os
import statistics
import tempfile
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


def run_measured(cmd: List[str], log_path: str, cwd: Optional[str] = None,
                 env: Optional[dict] = None) -> Tuple[int, float, float]:
    """Run ``cmd`` with stdout+stderr to ``log_path`` (``env``: variables set for it on top of this
    process's); return (exit code, wall seconds, peak RSS in MiB of that process alone — read with
    ``os.wait4``, so rows run one after another in the same benchmark each get their own figure;
    data-loader worker processes are not included)."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def coco_eval_files(eval_dir, dataset_name: str) -> Tuple[str, str]:
    """(ground-truth JSON, results JSON) that ``COCOEvaluator`` used for ``dataset_name`` with
    ``output_dir=eval_dir``: the ground truth is the dataset's ``json_file`` (which the first
    evaluator in a process caches, possibly in another run's folder), else the cache in eval_dir."""
    from d2ext.data.coco_files import dataset_folder_name
    from detectron2.data import MetadataCatalog

    gt = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not gt or not os.path.exists(gt):
        gt = os.path.join(eval_dir, f"{dataset_folder_name(dataset_name)}_coco_format.json")
    return gt, os.path.join(eval_dir, "coco_instances_results.json")


def seconds_per_train_step(cfg, n_warmup: int = 2, n_timed: int = 3) -> float:
    """Median wall time of one training step of ``cfg`` in this process — a real batch from the
    config's train loader (in-process, no workers), forward, backward, optimizer step — used to
    size a run to a time budget. The median, since the machine may be shared."""
    import statistics

    from d2ext.engine import Trainer, training_autocast
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
            with training_autocast(cfg):  # as the Trainer's step under SOLVER.AMP.ENABLED
                loss = sum(model(next(data)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= n_warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# one budget rule for every trained row
# --------------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Start-up of tools/train_net.py (imports, model and data-loader building) before the first step,
# measured on this 2-core machine at 8-15 s; the budget reserves it so the run ends in time.
STARTUP_S = 15.0
# Data loading, logging and hooks on top of the bare step time measured in-process (measured:
# 5-12% on the BCCD and WBC configs).
LOOP_OVERHEAD = 1.1


def dataset_opts(args) -> List[str]:
    """Config overrides that train on ``--data`` and test on ``--test-data`` when they name COCO
    JSON files (any dataset, e.g. one written by ``tools/convert.py``); none otherwise."""
    opts = []
    for flag, key in (("data", "DATASETS.TRAIN"), ("test_data", "DATASETS.TEST")):
        value = getattr(args, flag, None)
        if value and value.endswith(".json"):
            if not os.path.isfile(value):
                raise FileNotFoundError(f"--{flag.replace('_', '-')} {value}: no such file")
            opts += [key, f"('{os.path.abspath(value)}',)"]
    return opts


def row_output(args, row: str) -> str:
    """This row's own folder (absolute) under ``--output`` (a temp folder when ``--output`` is not
    given)."""
    root = getattr(args, "output", None)
    if not root:
        if not getattr(args, "_output_tmp", None):
            args._output_tmp = tempfile.mkdtemp(prefix="d2ext_bench_")
        root = args._output_tmp
    return os.path.abspath(os.path.join(root, row.replace("/", "_")))


@dataclass
class BudgetRun:
    """A model trained by :func:`train_within_budget`."""
    cfg: object  # the trained config (frozen CfgNode; OUTPUT_DIR = output_dir, DATASETS.TEST kept)
    max_iter: int
    seconds_per_step: float
    train_minutes: float  # calibration + building + training: what the budget limits
    peak_mib: float  # peak RSS of the training process
    output_dir: str
    log_path: str

    def note(self) -> str:
        return (f"{self.max_iter} iters x {self.cfg.SOLVER.IMS_PER_BATCH} imgs, "
                f"{self.train_minutes:.1f} min train (budget covers calibration + build + train)")

    def eval_dir(self) -> str:
        """Where :meth:`evaluate` (``Trainer.test``) wrote the files of the first test dataset."""
        from d2ext.data.coco_files import dataset_folder_name

        return os.path.join(self.output_dir, "inference", dataset_folder_name(self.cfg.DATASETS.TEST[0]))

    def evaluate(self):
        """``(model, results)``: ``model_final.pth`` loaded in this process and evaluated with
        ``Trainer.test`` on the config's ``DATASETS.TEST`` (the evaluator its ``evaluator_type``
        selects; files under ``<output_dir>/inference/<dataset>``)."""
        from d2ext.checkpoint import SafeCheckpointer
        from d2ext.engine import Trainer

        model = Trainer.build_model(self.cfg)
        SafeCheckpointer(model).load(os.path.join(self.output_dir, "model_final.pth"))
        model.eval()
        return model, Trainer.test(self.cfg, model)


def iterations_for_budget(budget_s: float, elapsed_s: float, seconds_per_step: float) -> int:
    """The one rule: what is left of the budget after calibration and start-up, divided by the
    step time plus the loop overhead. At least one iteration: a budget too small for the model
    shows as a tiny iteration count in the row's note rather than as an overrun."""
    left = budget_s - elapsed_s - STARTUP_S
    return max(1, int(left / (seconds_per_step * LOOP_OVERHEAD)))


def _schedule_opts(cfg, max_iter: int) -> List[str]:
    opts = ["SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", str(min(cfg.SOLVER.WARMUP_ITERS, max(1, max_iter // 10)))]
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        # the config's steps, scaled to the new length (80% / 93% when it had none)
        old = cfg.SOLVER.MAX_ITER
        fractions = [s / old for s in cfg.SOLVER.STEPS if 0 < s < old] or [0.8, 0.93]
        steps = sorted({max(1, int(f * max_iter)) for f in fractions})
        opts += ["SOLVER.STEPS", "(" + ",".join(map(str, steps)) + ",)"]
    return opts


def train_within_budget(config: str, output_dir: str, budget_min: float, opts=(),
                        register_real_data: bool = True, env: Optional[dict] = None) -> BudgetRun:
    """Train ``config`` (+ ``opts``) from its own initialisation for as many iterations as fit in
    ``budget_min`` minutes, with ``tools/train_net.py`` in a subprocess (its peak RSS is its own).

    The learning-rate schedule is rescaled to the new length; checkpointing happens at the end
    only; no evaluation runs inside the budget (call :meth:`BudgetRun.evaluate`). ``env``:
    environment variables for the training process (e.g. another ``D2EXT_SHARED_DATA``). Raises
    ``RuntimeError`` naming the log when training fails.
    """
    t0 = time.perf_counter()
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg

    if register_real_data:
        from converters.builtin import register_builtin_datasets

        register_builtin_datasets()
    base = [*map(str, opts), "SEED", "0"]
    probe = setup_cfg(str(config), base)
    step_s = seconds_per_train_step(probe)
    max_iter = iterations_for_budget(60.0 * budget_min, time.perf_counter() - t0, step_s)
    os.makedirs(output_dir, exist_ok=True)
    train_opts = base + _schedule_opts(probe, max_iter) + [
        "SOLVER.CHECKPOINT_PERIOD", str(10 ** 9), "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()", "OUTPUT_DIR", str(output_dir)]
    log_path = os.path.join(os.path.dirname(os.path.abspath(output_dir)),
                            os.path.basename(os.path.normpath(output_dir)) + ".log")
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", str(config),
           *train_opts]
    code, _, peak_mib = run_measured(cmd, log_path, cwd=REPO, env=env)
    train_minutes = (time.perf_counter() - t0) / 60.0
    if code != 0:
        raise RuntimeError(f"{config}: tools/train_net.py exited {code}; see {log_path}")
    cfg = setup_cfg(str(config), base + ["OUTPUT_DIR", str(output_dir), "DATALOADER.NUM_WORKERS", "0"])
    return BudgetRun(cfg, max_iter, step_s, train_minutes, peak_mib, str(output_dir), log_path)


def latency_ms(model, inputs, repeat: int = 5) -> float:
    """Median milliseconds of ``model(inputs)`` under ``torch.no_grad`` (one warm-up call)."""
    import torch

    model.eval()
    with torch.no_grad():
        return 1000 * statistics.median(time_call(lambda: model(inputs), repeat=repeat, warmup=1))


def coco_ap(results: dict, task: str, key: str = "AP") -> float:
    """COCO ``results[task][key]`` as a fraction; 0 when the model made no detection (Detectron2
    then reports NaN, or leaves the task out when no prediction carries it)."""
    v = results.get(task, {}).get(key, float("nan"))
    return 0.0 if v != v else v / 100


def detection_rows(base: str, run: BudgetRun, results: dict, note: str) -> List[Result]:
    """The rows every trained detector reports, in one format so one table ranks them all:
    ``<base>`` = COCO AP, ``/AP50``, ``/AP50/<class>`` (fractions), ``/peak_train_mem`` (MiB)."""
    from d2ext.utils.metrics import coco_evaluate

    per_class = coco_evaluate(*coco_eval_files(run.eval_dir(), run.cfg.DATASETS.TEST[0]))["per_class"]
    rows = [Result(base, coco_ap(results, "bbox"), "AP", notes=note),
            Result(f"{base}/AP50", coco_ap(results, "bbox", "AP50"), "AP50")]
    rows += [Result(f"{base}/AP50/{name}", c["AP50"], "AP50") for name, c in per_class.items()]
    rows.append(Result(f"{base}/peak_train_mem", run.peak_mib, "MiB",
                       notes="peak RSS of the training process (data workers excluded)"))
    return rows


def train_detector_rows(args, base: str, config: str, opts=()):
    """Train a detector config within ``--budget-min`` (on ``--data`` / ``--test-data`` when they
    name COCO files, else the config's datasets), evaluate it, and return ``(run, model, rows)``
    with :func:`detection_rows` — the one path of every BCCD detector row."""
    run = train_within_budget(str(config), row_output(args, base), args.budget_min,
                              opts=[*opts, *dataset_opts(args)])
    model, res = run.evaluate()
    note = (f"from scratch, {run.note()}, budget {args.budget_min:g} min, CPU; "
            f"{os.path.relpath(str(config), REPO)}")
    return run, model, detection_rows(base, run, res, note)


def bccd_detector_rows(args, model_name: str) -> List[Result]:
    """The ``bccd/<model_name>`` rows of ``configs/bccd/<model_name>.yaml``."""
    return train_detector_rows(args, f"bccd/{model_name}", os.path.join(REPO, "configs", "bccd", f"{model_name}.yaml"))[2]
