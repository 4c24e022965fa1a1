"""White-blood-cell segmentation: U-Net (trained here, from scratch, on CPU) vs Otsu vs k-means.

    tools/benchmark.py wbc_seg [--data DIR] [--test-data DIR] [--budget-min N] [--wbc-modes ...]

``--data`` is a folder of ``NNN.bmp`` images + ``NNN.png`` masks (Zheng et al. 2018 format;
default ``$D2EXT_SHARED_DATA/wbc_seg/dataset2``), read through ``converters.wbc_seg``. Without
``--test-data`` the converter's seeded 80/20 split is used; with it, training uses all of
``--data`` and testing all of ``--test-data`` (any image size).

For each mode (binary: cell vs background; 3class: background / cytoplasm / nucleus) the U-Net
of ``configs/wbc_seg/unet_classic_<mode>.yaml`` is trained through the d2ext ``Trainer`` for as
many iterations as fit in ``--budget-min`` minutes (measured on a few warm-up steps; cosine LR),
then evaluated with ``SegmentationMetricsEvaluator`` on the test images at full resolution;
Otsu and k-means (``d2ext.evaluation.classical``) run on the same images. On a CPU the U-Net is
the classic architecture at 1/4 width (16 -> 256 channels, ``--wbc-width``) on images resized to
a 128-pixel short side (``--wbc-size``); predictions are upsampled back to full size.

Rows (Dice/IoU/accuracy are fractions): ``wbc_seg/<method>/<mode>`` = foreground Dice (mean
over the non-background classes), ``.../mIoU``, ``.../pixel_acc``; for U-Net also
``.../latency_ms`` (first test image, 300x300 for dataset2: resize + forward + upsample, batch 1)
and ``.../peak_train_mem`` (peak RSS of the process after training, MiB); and
``wbc_seg/unet_classic/params`` (the full-width classic U-Net of the configs, 2 classes).
"""
import argparse
import hashlib
import logging
import math
import os
import tempfile
import time
from pathlib import Path

from tools.bench.common import Result, peak_rss_mb, seconds_per_train_step, time_call

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODES = {"binary": "binary", "3class": "three_class"}  # config tag -> converter mode


def add_arguments(parser):
    for args, kw in [
        (("--data",), dict(default=None, help="wbc_seg: folder of NNN.bmp + NNN.png to train on "
                           "(default $D2EXT_SHARED_DATA/wbc_seg/dataset2)")),
        (("--test-data",), dict(default=None, help="wbc_seg: folder of the same format to test on "
                                "(default: the 80/20 split of --data)")),
        (("--budget-min",), dict(type=float, default=10.0, help="training budget in minutes per model "
                                 "(wbc_seg: per mode)")),
        (("--wbc-modes",), dict(nargs="+", default=["binary", "3class"], choices=sorted(MODES),
                                help="wbc_seg: label modes to run")),
        (("--wbc-width",), dict(type=int, default=16, help="wbc_seg: U-Net first-level channels (classic 64)")),
        (("--wbc-size",), dict(type=int, default=128, help="wbc_seg: short side the U-Net sees (0 = native)")),
    ]:
        try:
            parser.add_argument(*args, **kw)
        except argparse.ArgumentError:
            pass


def _default_data() -> Path:
    root = Path(os.environ.get("D2EXT_SHARED_DATA", REPO.parent / "shared" / "data"))
    return root / "wbc_seg" / "dataset2"


def _register(data: Path, test_data, mode: str, label_root: Path):
    from converters.wbc_seg import register_wbc_seg

    key = f"{Path(data).resolve()}|{Path(test_data).resolve() if test_data else ''}"
    tag = f"bench_wbc_{mode}_{hashlib.md5(key.encode()).hexdigest()[:8]}"
    if test_data is None:
        train = register_wbc_seg(f"{tag}_train", data, mode, "train", label_root / "train")
        test = register_wbc_seg(f"{tag}_test", data, mode, "test", label_root / "test")
    else:
        train = register_wbc_seg(f"{tag}_train", data, mode, "all", label_root / "train")
        test = register_wbc_seg(f"{tag}_test", test_data, mode, "all", label_root / "test")
    return train, test


def _unet_cfg(mode_tag, train_name, test_name, out_dir, width, size, max_iter):
    from d2ext.engine import setup_cfg

    widths = [width * 2**i for i in range(5)]
    opts = [
        "MODEL.UNET.ENCODER_CHANNELS", widths,
        "MODEL.UNET.DECODER_CHANNELS", widths[-2::-1],
        "DATASETS.TRAIN", (train_name,), "DATASETS.TEST", (test_name,),
        # Scale jitter around the working size; the test size is the working size.
        "INPUT.MIN_SIZE_TRAIN", (int(size * 0.9), size, int(size * 1.1)) if size else (0,),
        "INPUT.MIN_SIZE_TEST", size,
        "DATALOADER.NUM_WORKERS", 0,
        "SOLVER.BASE_LR", 0.05,
        "SOLVER.MAX_ITER", max_iter,
        "SOLVER.WARMUP_ITERS", min(50, max(1, max_iter // 10)),
        "SOLVER.CHECKPOINT_PERIOD", 10**9,
        "TEST.NUM_VIS_IMAGES", 4,
        "OUTPUT_DIR", str(out_dir),
        "SEED", 0,
    ]
    return setup_cfg(str(REPO / "configs" / "wbc_seg" / f"unet_classic_{mode_tag}.yaml"), opts)


def _latency_ms(cfg, model, test_name):
    """Median ms per image of resize + forward + upsample on the first test image, and its size."""
    import torch
    from detectron2.data import DatasetCatalog

    from d2ext.data import build_dataset_mapper

    record = DatasetCatalog.get(test_name)[0]
    inputs = [build_dataset_mapper(cfg, False)(record)]
    model.eval()
    with torch.no_grad():
        times = time_call(lambda: model(inputs), repeat=5, warmup=1)
    return 1000 * sorted(times)[len(times) // 2], f"{record['height']}x{record['width']}"


def _classic_params() -> int:
    from d2ext.engine import setup_cfg
    from detectron2.modeling import build_model

    model = build_model(setup_cfg(str(REPO / "configs" / "wbc_seg" / "unet_classic_binary.yaml")))
    return sum(p.numel() for p in model.parameters())


def run_wbc_seg(args):
    """U-Net vs Otsu vs k-means on white-blood-cell images (Dice, mIoU, pixel accuracy)."""
    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import Trainer
    from d2ext.evaluation.classical import evaluate_classical

    data = Path(args.data) if args.data else _default_data()
    if not data.is_dir():
        raise SystemExit(f"wbc_seg: data folder {data} not found (give --data DIR of NNN.bmp + NNN.png)")
    test_data = Path(args.test_data) if args.test_data else None
    budget_s = 60.0 * args.budget_min
    work = Path(tempfile.mkdtemp(prefix="d2ext_wbc_bench_"))
    results = [Result("wbc_seg/unet_classic/params", _classic_params() / 1e6, "M params",
                      notes="configs/wbc_seg/unet_classic_binary.yaml (Ronneberger et al. 2015: ~31M)")]
    for mode_tag in args.wbc_modes:
        train_name, test_name = _register(data, test_data, MODES[mode_tag], work / "labels" / mode_tag)
        out_dir = work / mode_tag
        t_probe = time.perf_counter()
        probe = _unet_cfg(mode_tag, train_name, test_name, out_dir, args.wbc_width, args.wbc_size, 1)
        sec_per_iter = seconds_per_train_step(probe)
        left_s = budget_s - (time.perf_counter() - t_probe)
        # Data loading and logging cost ~10% on top of the compute measured here.
        max_iter = max(10, int(0.9 * left_s / sec_per_iter))
        cfg = _unet_cfg(mode_tag, train_name, test_name, out_dir, args.wbc_width, args.wbc_size, max_iter)
        logger.info("wbc_seg %s: training %d iterations (budget %.1f min)", mode_tag, max_iter, args.budget_min)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        train_min = (time.perf_counter() - t_probe) / 60  # probe + build + train
        mem = peak_rss_mb()
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        # The Trainer's EvalHook already evaluated the final model on DATASETS.TEST.
        last = getattr(trainer, "_last_eval_results", None) or Trainer.test(cfg, model)
        scores = {"unet": last["sem_seg"]}
        for method in ("otsu", "kmeans"):
            scores[method] = evaluate_classical(test_name, method, str(work / f"{method}_{mode_tag}"))
        n_params = sum(p.numel() for p in model.parameters())
        unet_note = (f"U-Net width {args.wbc_width}, {n_params / 1e6:.2f}M params, {max_iter} iters in "
                     f"{train_min:.1f} min CPU, short side {args.wbc_size or 'native'}; overlays in {work}")
        for method, res in scores.items():
            peer = None if method == "otsu" else "otsu"
            note = unet_note if method == "unet" else "darker = higher class id"
            base = f"wbc_seg/{method}/{mode_tag}"
            for suffix, key, unit in (("", "fgDice", "Dice"), ("/mIoU", "mIoU", "IoU"), ("/pixel_acc", "pACC", "acc")):
                v = res[key] / 100
                pv = scores["otsu"][key] / 100 if peer else None
                results.append(Result(base + suffix, v, unit, peer, pv, note if not suffix else ""))
        ms, size = _latency_ms(cfg, model, test_name)
        results.append(Result(f"wbc_seg/unet/{mode_tag}/latency_ms", ms, "ms",
                              notes=f"one {size} image, batch 1, CPU, OMP threads "
                                    f"{os.environ.get('OMP_NUM_THREADS', 'default')}"))
        results.append(Result(f"wbc_seg/unet/{mode_tag}/peak_train_mem", mem, "MiB", notes="process peak RSS"))
        if not all(math.isfinite(r.value) for r in results):
            logger.warning("wbc_seg: some metrics are undefined (a class absent from the test truth)")
    return results


ROWS = {"wbc_seg": run_wbc_seg}
