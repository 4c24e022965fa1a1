"""White-blood-cell segmentation: U-Net, DeepLabv3 and Mask R-CNN (trained here, from scratch, on
CPU) vs Otsu and k-means, on the split as it is and under controlled shifts.

    tools/benchmark.py wbc_seg [--wbc-modes binary 3class]
    tools/benchmark.py wbc_seg/deeplabv3/binary wbc_seg/deeplabv3/3class wbc_seg/mask_rcnn/binary
    tools/benchmark.py wbc_seg_shift [--wbc-models unet deeplabv3 deeplabv3plus mask_rcnn] [--wbc-recipe shift|none]
    (shared: --budget-min N per trained model, --data DIR, --test-data DIR, --output DIR)

Data: ``--data`` is a folder of ``NNN.bmp`` images + ``NNN.png`` masks (Zheng et al. 2018 format;
default ``$D2EXT_SHARED_DATA/wbc_seg/dataset2``), read through ``converters.wbc_seg``. Without
``--test-data`` the converter's seeded 80/20 split is used; with it, training uses all of ``--data``
and testing all of ``--test-data`` (any image size). Training runs in ``tools/train_net.py``
(``train_within_budget``), which sees ``--data`` as ``$D2EXT_SHARED_DATA/wbc_seg/dataset2``
through a link in the row's output folder.

Models (``--wbc-models``, configs in ``configs/wbc_seg/``): ``unet`` = ``unet_classic_<mode>``
at 1/4 width (``--wbc-width`` 16: 16 -> 256 channels), ``deeplabv3`` = ``deeplabv3_R18_<mode>``
(dilated ResNet-18, ASPP of 128 channels: the R34 / 256 one is under-trained in a CPU budget),
``deeplabv3plus`` = ``deeplabv3plus_R34_<mode>`` (the R34 DeepLabv3 with the v3+ decoder),
``mask_rcnn`` = ``mask_rcnn_R34_FPN`` (binary only: its painted instance masks are scored as a
label map). Each trains with its config's recipe (``--wbc-recipe shift``: scale 0.4x-3x, crops,
flips, colour / stain / blur augmentation, inference at a fixed factor of each image's own size;
README "WBC segmentation recipe"), or with the recipe before it (``none``: Detectron2's
ResizeShortestEdge jitter + horizontal flip, test images resized to a fixed short side:
``--wbc-size`` for the U-Net, 160 for the others). On a CPU every image is first scaled by
``--wbc-scale`` (``INPUT.AUG.BASE_SCALE``; 0.43: 300x300 -> 129x129, the working size of the recipe
before); predictions are pasted back at
full size and scored there with ``SegmentationMetricsEvaluator``.

Shifts (``wbc_seg_shift``; ``d2ext.data.augmentations.SHIFTS``): the test images and labels zoomed
in x2 / x2.5 / x3 and cropped back to their size (seeded window), zoomed out x0.5, hue +30
degrees, saturation x0.5, brightness x0.7, blurred (sigma 2), beside the unshifted images; written
under ``<output>/shifts/`` and registered as sem-seg datasets. Otsu and k-means run on the same
images.

Rows (Dice / IoU / accuracy are fractions): ``wbc_seg/<method>/<mode>`` = foreground Dice (mean
over the non-background classes), ``.../mIoU``, ``.../pixel_acc``, ``.../per_image_dice`` (mean of
the per-image Dice; notes: the share below 0.5 and the worst images); trained models add
``.../latency_ms`` and ``.../peak_train_mem``; Mask R-CNN adds ``/segm_AP`` and ``/box_AP`` (COCO,
on the instance view). ``wbc_seg_shift/<method>/<mode>/<shift>`` = pooled foreground Dice (peer:
the better classical method on that shift; notes: per-image mean, share below 0.5, worst 3 and
the drop against unshifted), and per method ``.../worst_shift`` (lowest Dice over the shifts) and
``.../max_drop`` (unshifted minus that). Per-image Dice of every image and overlays of the worst
images are in ``<output>/<row>/eval/<method>/<dataset>/``.
"""
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path

from tools.bench.common import Result, latency_ms, row_output, train_within_budget

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODES = {"binary": "binary", "3class": "three_class"}  # config tag -> converter mode
MODELS = ("unet", "deeplabv3", "deeplabv3plus", "mask_rcnn")
CLASSICAL = ("otsu", "kmeans")
# U-Net / DeepLab / Mask R-CNN configs of each mode
CONFIGS = {"unet": "unet_classic_{mode}.yaml", "deeplabv3": "deeplabv3_R18_{mode}.yaml",
           "deeplabv3plus": "deeplabv3plus_R34_{mode}.yaml", "mask_rcnn": "mask_rcnn_R34_FPN.yaml"}
SHIFT_SEED = 0


# the names of d2ext.data.augmentations.SHIFTS (not imported here: --help must not import torch)
SHIFT_NAMES = ("unshifted", "zoom_in_x2", "zoom_in_x2.5", "zoom_in_x3", "zoom_out_x0.5", "hue_+30deg",
               "saturation_x0.5", "brightness_x0.7", "blur_sigma2")


def add_arguments(parser):
    parser.add_argument("--wbc-modes", nargs="+", default=["binary", "3class"], choices=sorted(MODES),
                        help="wbc_seg / wbc_seg_shift: label modes to run (Mask R-CNN: binary only)")
    parser.add_argument("--wbc-models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="wbc_seg_shift: models to train and test")
    parser.add_argument("--wbc-recipe", default="shift", choices=("shift", "none"),
                        help="wbc_seg rows: train with the configs' scale/stain recipe, or with the one "
                             "before it (resize to a fixed side + horizontal flip) for a before/after")
    parser.add_argument("--wbc-shifts", nargs="+", default=list(SHIFT_NAMES), choices=SHIFT_NAMES,
                        help="wbc_seg_shift: shifts to test on")
    parser.add_argument("--wbc-width", type=int, default=16, help="wbc_seg: U-Net first-level channels (classic 64)")
    parser.add_argument("--wbc-scale", type=float, default=0.43,
                        help="wbc_seg rows: INPUT.AUG.BASE_SCALE, the factor every image is resized by "
                             "(train and test; 1 = native; 0.43 = the 128-px side of 300 of --wbc-recipe none)")
    parser.add_argument("--wbc-opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="wbc_seg rows: extra config overrides of every trained model, after the row's "
                             "own (ablations, e.g. TEST.AUG.ENABLED False)")
    parser.add_argument("--wbc-size", type=int, default=128,
                        help="wbc_seg rows, --wbc-recipe none: the U-Net's fixed short side")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def _default_data() -> Path:
    from d2ext.core import data_root

    return Path(data_root()) / "wbc_seg" / "dataset2"


class _Data:
    """Dataset names for one label mode, in this process and in the training subprocess."""

    def __init__(self, args, mode_tag: str, out: Path):
        from converters.builtin import register_builtin_datasets
        from converters.wbc_seg import register_wbc_instances, register_wbc_seg

        mode = MODES[mode_tag]
        data = Path(args.data).resolve() if args.data else _default_data()
        if not data.is_dir():
            raise SystemExit(f"wbc_seg: data folder {data} not found (give --data DIR of NNN.bmp + NNN.png)")
        self.env_root = None
        if args.data:
            # train_net.py registers the built-in datasets from $D2EXT_SHARED_DATA: point it at a link
            root = out / "data_root"
            link = root / "wbc_seg" / "dataset2"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(data, target_is_directory=True)
            self.env_root = str(root)
        try:
            register_builtin_datasets(self.env_root)
        except ValueError as e:
            raise SystemExit(f"wbc_seg: --data {data} conflicts with datasets registered earlier in this "
                             f"run ({e}); run the WBC rows in a benchmark command of their own") from None
        self.train = (f"wbc_seg_{mode_tag}_train",)
        self.test = f"wbc_seg_{mode_tag}_test"
        self.inst_train, self.inst_test = ("wbc_inst_train",), "wbc_inst_test"
        if args.test_data:
            test_data = Path(args.test_data).resolve()
            if not test_data.is_dir():
                raise SystemExit(f"wbc_seg: --test-data folder {test_data} not found")
            tag = "bench_wbc_" + hashlib.md5(str(test_data).encode()).hexdigest()[:8]
            self.train = (f"wbc_seg_{mode_tag}_train", f"wbc_seg_{mode_tag}_test")  # all of --data
            self.inst_train = ("wbc_inst_train", "wbc_inst_test")
            self.test = register_wbc_seg(f"{tag}_{mode_tag}_test", test_data, mode, "all",
                                         out / "labels" / f"{tag}_{mode_tag}")
            self.inst_test = register_wbc_instances(f"{tag}_inst_test", test_data, "all")

    def training_env(self):
        """Environment of the training subprocess: ``$D2EXT_SHARED_DATA`` pointing at ``--data``."""
        return {"D2EXT_SHARED_DATA": self.env_root} if self.env_root else None


def build_shifted_sets(test_name: str, out: Path, shifts, seed: int = SHIFT_SEED) -> "OrderedDict[str, str]":
    """Write every shift of ``test_name``'s images + labels under ``out/<shift>/`` and register
    each as a sem-seg dataset; returns ``{shift: dataset name}``."""
    import numpy as np
    from PIL import Image

    from d2ext.core import atomic_save_image
    from d2ext.data.augmentations import apply_shift
    from detectron2.data import DatasetCatalog, MetadataCatalog

    records = DatasetCatalog.get(test_name)
    meta = MetadataCatalog.get(test_name)
    names = OrderedDict()
    for shift in shifts:
        folder = out / shift
        dicts = []
        for i, d in enumerate(records):
            with Image.open(d["file_name"]) as im:
                image = np.asarray(im.convert("RGB"))
            with Image.open(d["sem_seg_file_name"]) as im:
                labels = np.asarray(im)
            image, labels = apply_shift(shift, image, labels, seed=seed * 100003 + i)
            stem = Path(d["file_name"]).stem
            img_file, lab_file = folder / f"{stem}.png", folder / "labels" / f"{stem}.png"
            atomic_save_image(img_file, image)
            atomic_save_image(lab_file, labels.astype(np.uint8))
            dicts.append({"file_name": str(img_file), "sem_seg_file_name": str(lab_file),
                          "height": image.shape[0], "width": image.shape[1], "image_id": i})
        name = f"{test_name}_shift_{shift}_{hashlib.md5(str(folder).encode()).hexdigest()[:6]}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda dicts=dicts: dicts)
            MetadataCatalog.get(name).set(stuff_classes=list(meta.stuff_classes),
                                          ignore_label=getattr(meta, "ignore_label", 255), evaluator_type="sem_seg")
        names[shift] = name
    return names


# --------------------------------------------------------------------------------------------
# training and scoring
# --------------------------------------------------------------------------------------------
def _recipe_opts(model: str, args) -> list:
    """Config overrides for a CPU run of ``model`` with ``--wbc-recipe``."""
    # CPU rows: bfloat16 autocast where the CPU has it (SOLVER.AMP.ENABLED, d2ext.engine.trainer) and
    # augmentation in the training process. Measured on the 2-core benchmark machine (AVX512-BF16),
    # seconds per iteration, float32 with one loader worker -> bfloat16 in-process: U-Net 0.305 ->
    # 0.176, DeepLabv3 0.471 -> 0.282; a worker competes with the 2 compute threads (U-Net float32:
    # 0.305 with it, 0.264 without). Dice per iteration unchanged (README "WBC segmentation recipe").
    opts = ["MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "SOLVER.AMP.ENABLED", "True"]
    if model == "unet":
        widths = [args.wbc_width * 2 ** i for i in range(5)]
        opts += ["MODEL.UNET.ENCODER_CHANNELS", str(widths), "MODEL.UNET.DECODER_CHANNELS", str(widths[-2::-1]),
                 "SOLVER.BASE_LR", "0.05"]
    if args.wbc_recipe == "none":  # the recipe before: fixed short side, horizontal flip only
        size = args.wbc_size if model == "unet" else 160
        opts += ["INPUT.DATASET_MAPPER_NAME", "", "INPUT.AUG.TRAIN", "[]",
                 "INPUT.MIN_SIZE_TRAIN", f"({int(size * 0.9)}, {size}, {int(size * 1.1)})",
                 "INPUT.MAX_SIZE_TRAIN", "10000", "INPUT.MIN_SIZE_TEST", str(size), "INPUT.MAX_SIZE_TEST", "10000",
                 "INPUT.RANDOM_FLIP", "horizontal"]
    else:
        opts += ["INPUT.AUG.BASE_SCALE", str(args.wbc_scale)]
    if len(args.wbc_opts) % 2:
        raise SystemExit(f"--wbc-opts needs KEY VALUE pairs, got {args.wbc_opts}")
    return opts + list(args.wbc_opts)


def _train(model: str, mode_tag: str, data: _Data, args, row: str):
    """``(BudgetRun, model in eval mode)``: ``model`` trained within ``--budget-min``."""
    from d2ext.checkpoint import SafeCheckpointer

    from d2ext.engine import Trainer

    config = REPO / "configs" / "wbc_seg" / CONFIGS[model].format(mode=mode_tag)
    train = data.inst_train if model == "mask_rcnn" else data.train
    opts = _recipe_opts(model, args) + ["DATASETS.TRAIN", str(tuple(train))]
    run = train_within_budget(str(config), os.path.join(row_output(args, row), model), args.budget_min,
                              opts=opts, register_real_data=False, env=data.training_env())
    net = Trainer.build_model(run.cfg)
    SafeCheckpointer(net).load(os.path.join(run.output_dir, "model_final.pth"))
    return run, net.eval()


def _score(method: str, net, cfg, dataset: str, out_dir: str):
    """``(results in percent, per-image report)`` of ``method`` on a sem-seg dataset."""
    if method in CLASSICAL:
        from d2ext.evaluation.classical import evaluate_classical

        res = evaluate_classical(dataset, method, out_dir)  # also writes per_image_dice.json there
        return res, _saved_report(out_dir)
    from detectron2.evaluation import inference_on_dataset

    from d2ext.engine import Trainer
    from d2ext.evaluation.mask_sem_seg import MaskToSemSegEvaluator
    from d2ext.evaluation.segmentation import SegmentationMetricsEvaluator

    if method == "mask_rcnn":
        ev = MaskToSemSegEvaluator(dataset, out_dir, score_thresh=cfg.TEST.MASK_SEM_SEG_SCORE_THRESH,
                                   distributed=False, num_vis=cfg.TEST.NUM_VIS_IMAGES)
    else:
        ev = SegmentationMetricsEvaluator(dataset, out_dir, distributed=False, num_vis=cfg.TEST.NUM_VIS_IMAGES)
    from d2ext.modeling.test_time_augmentation import with_test_time_augmentation

    net = with_test_time_augmentation(cfg, net)  # TEST.AUG.* (U-Net, DeepLab)
    res = inference_on_dataset(net, Trainer.build_test_loader(cfg, dataset), ev)
    return next(iter(res.values())), ev.per_image_report()


def _saved_report(out_dir: str):
    """The per-image report the evaluator wrote to ``out_dir/per_image_dice.json``."""
    import json

    from d2ext.evaluation.segmentation import per_image_summary

    with open(os.path.join(out_dir, "per_image_dice.json")) as f:
        saved = json.load(f)
    return per_image_summary([(a, float("nan") if b is None else b) for a, b in saved["images"]])


def _per_image_note(report, worst: int = 3) -> str:
    if not report["num_images"]:
        return "per image: no scored image"
    names = ", ".join(f"{Path(f).stem} {d:.2f}" for f, d in report["worst"][:worst])
    return (f"per image: mean {report['mean_dice']:.3f}, {100 * report['fraction_below']:.0f}% below 0.5, "
            f"worst {names}")


def _seg_rows(row: str, res, report, note: str = ""):
    return [Result(row, res["fgDice"] / 100, "Dice", notes=note),
            Result(f"{row}/mIoU", res["mIoU"] / 100, "IoU"),
            Result(f"{row}/pixel_acc", res["pACC"] / 100, "acc"),
            Result(f"{row}/per_image_dice", report["mean_dice"], "Dice", notes=_per_image_note(report, 5))]


def _train_note(model: str, run, args) -> str:
    recipe = ("scale/stain recipe, test at x%g of each image" % args.wbc_scale if args.wbc_recipe == "shift"
              else "recipe before: fixed short side + hflip")
    from d2ext.modeling.test_time_augmentation import uses_test_time_augmentation

    aug = run.cfg.TEST.AUG
    if uses_test_time_augmentation(run.cfg):
        flips = " + flips" if aug.FLIP or aug.VFLIP else ""
        recipe += f", test-time scales {tuple(aug.SCALE_FACTORS)}{flips}"
    return f"{model} from scratch, {run.note()}, CPU (budget {args.budget_min:g} min); {recipe}"


def _threads_note() -> str:
    return f"OMP threads {os.environ.get('OMP_NUM_THREADS', 'default')}"


def _trained_rows(model: str, mode_tag: str, args, row: str):
    """Rows of one trained model on the (unshifted) test split."""
    from detectron2.data import DatasetCatalog

    from d2ext.data import build_dataset_mapper

    out = Path(row_output(args, row))
    data = _Data(args, mode_tag, out)
    run, net = _train(model, mode_tag, data, args, row)
    res, report = _score(model, net, run.cfg, data.test, str(out / "eval" / model / data.test))
    rows = _seg_rows(row, res, report, _train_note(model, run, args))
    if model == "mask_rcnn":
        from tools.bench.common import coco_ap

        cfg = run.cfg.clone()
        cfg.defrost()
        cfg.DATASETS.TEST = (data.inst_test,)
        cfg.TEST.MASK_SEM_SEG_DATASETS = []
        cfg.freeze()
        from d2ext.engine import Trainer

        coco = Trainer.test(cfg, net)
        rows += [Result(f"{row}/segm_AP", coco_ap(coco, "segm"), "AP", notes=f"COCO mask AP on {data.inst_test}"),
                 Result(f"{row}/box_AP", coco_ap(coco, "bbox"), "AP")]
    record = DatasetCatalog.get(data.test)[0]
    inputs = [build_dataset_mapper(run.cfg, False)(record)]
    rows += [Result(f"{row}/latency_ms", latency_ms(net, inputs), "ms",
                    notes=f"one {record['height']}x{record['width']} image, batch 1, CPU, {_threads_note()}"),
             Result(f"{row}/peak_train_mem", run.peak_mib, "MiB", notes="peak RSS of the training process")]
    return rows


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------
def run_wbc_seg(args):
    """U-Net vs Otsu vs k-means on white-blood-cell images (Dice, mIoU, pixel accuracy, per image)."""
    import d2ext.engine  # noqa: F401  (registers every d2ext component)

    results = [Result("wbc_seg/unet_classic/params", _classic_params() / 1e6, "M params",
                      notes="configs/wbc_seg/unet_classic_binary.yaml (Ronneberger et al. 2015: ~31M)")]
    for mode_tag in args.wbc_modes:
        row = f"wbc_seg/unet/{mode_tag}"
        results += _trained_rows("unet", mode_tag, args, row)
        out = Path(row_output(args, row))
        test = _Data(args, mode_tag, out).test
        for method in CLASSICAL:
            res, report = _score(method, None, None, test, str(out / "eval" / method / test))
            results += _seg_rows(f"wbc_seg/{method}/{mode_tag}", res, report, "darker = higher class id")
    return results


def _classic_params() -> int:
    from d2ext.engine import setup_cfg
    from detectron2.modeling import build_model

    model = build_model(setup_cfg(str(REPO / "configs" / "wbc_seg" / "unet_classic_binary.yaml"),
                                  ["MODEL.DEVICE", "cpu"]))
    return sum(p.numel() for p in model.parameters())


def run_deeplab_binary(args):
    """DeepLabv3 R34 on WBC, binary: foreground Dice, mIoU, pixel accuracy, per image, latency, memory."""
    import d2ext.engine  # noqa: F401

    return _trained_rows("deeplabv3", "binary", args, "wbc_seg/deeplabv3/binary")


def run_deeplab_3class(args):
    """DeepLabv3 R34 on WBC, 3 classes: foreground Dice, mIoU, pixel accuracy, per image, latency, memory."""
    import d2ext.engine  # noqa: F401

    return _trained_rows("deeplabv3", "3class", args, "wbc_seg/deeplabv3/3class")


def run_mask_rcnn_binary(args):
    """Mask R-CNN R34-FPN on WBC: painted masks' Dice (as U-Net), segm/box AP, latency, memory."""
    import d2ext.engine  # noqa: F401

    return _trained_rows("mask_rcnn", "binary", args, "wbc_seg/mask_rcnn/binary")


def run_wbc_seg_shift(args):
    """Trained segmenters and Otsu / k-means on the WBC test split under zoom, stain and blur shifts."""
    import d2ext.engine  # noqa: F401

    results = []
    for mode_tag in args.wbc_modes:
        row = f"wbc_seg_shift/{mode_tag}"
        out = Path(row_output(args, row))
        data = _Data(args, mode_tag, out)
        shifted = build_shifted_sets(data.test, out / "shifts", args.wbc_shifts)
        scores = OrderedDict()  # method -> shift -> (res, report)
        notes = {}
        for method in CLASSICAL:
            scores[method] = OrderedDict()
            for shift, name in shifted.items():
                scores[method][shift] = _score(method, None, None, name, str(out / "eval" / method / shift))
        for model in args.wbc_models:
            if model == "mask_rcnn" and mode_tag != "binary":
                continue
            run, net = _train(model, mode_tag, data, args, row)
            notes[model] = _train_note(model, run, args)
            scores[model] = OrderedDict(
                (shift, _score(model, net, run.cfg, name, str(out / "eval" / model / shift)))
                for shift, name in shifted.items())
        for method, per_shift in scores.items():
            base = per_shift.get("unshifted", (None,))[0]
            dice = {s: r["fgDice"] / 100 for s, (r, _) in per_shift.items()}
            for shift, (res, report) in per_shift.items():
                best_classical = max(scores[c][shift][0]["fgDice"] for c in CLASSICAL) / 100
                note = _per_image_note(report)
                if base is not None and shift != "unshifted":
                    note += f"; {dice[shift] - base['fgDice'] / 100:+.3f} vs unshifted"
                if shift == "unshifted" and method in notes:
                    note = notes[method] + "; " + note
                peer = None if method in CLASSICAL else "best classical"
                results.append(Result(f"wbc_seg_shift/{method}/{mode_tag}/{shift}", dice[shift], "Dice",
                                      peer, None if peer is None else best_classical, note))
            worst = min(dice, key=dice.get)
            results.append(Result(f"wbc_seg_shift/{method}/{mode_tag}/worst_shift", dice[worst], "Dice",
                                  notes=f"lowest Dice over the shifts: {worst}"))
            if base is not None:
                results.append(Result(f"wbc_seg_shift/{method}/{mode_tag}/max_drop",
                                      base["fgDice"] / 100 - dice[worst], "Dice",
                                      notes="unshifted Dice minus the lowest shifted Dice"))
    return results


ROWS = {
    "wbc_seg": run_wbc_seg,
    "wbc_seg_shift": run_wbc_seg_shift,
    "wbc_seg/deeplabv3/binary": run_deeplab_binary,
    "wbc_seg/deeplabv3/3class": run_deeplab_3class,
    "wbc_seg/mask_rcnn/binary": run_mask_rcnn_binary,
}
