"""SSD benchmark rows.

``ssd300_latency``: CPU forward latency, batch 1, of our SSD300 (configs/coco/ssd300_vgg16_torchvision
  .yaml) against torchvision's ``ssd300_vgg16`` holding the same (random) weights, on the same
  480x640 image (both warp it to 300x300 in the model). Calls alternate between the two models and
  the median of ``--latency-repeat`` calls each is reported (the CPU may be shared); threads =
  ``--threads``. Goal: ratio <= 1.05.
``bccd/ssd300``, ``bccd/ssd512``: train ``configs/bccd/ssd*.yaml`` from scratch on ``bccd_train``
  within ``--budget-min`` minutes (the shared ``train_within_budget`` rule), evaluate on
  ``bccd_test`` with COCOEvaluator and report AP, AP50, per-class AP50 and the peak memory of the
  training process.
"""
import statistics
import time
from pathlib import Path

from tools.bench.common import Result, bccd_detector_rows

REPO = Path(__file__).resolve().parents[2]


def add_arguments(parser):
    parser.add_argument("--latency-repeat", type=int, default=10, help="ssd300_latency: timed calls per model")
    parser.add_argument("--threads", type=int, default=1, help="ssd300_latency: torch threads")


# ---------------------------------------------------------------------------------- latency
def ssd300_latency(args):
    """SSD300 CPU forward latency, batch 1: ours vs torchvision ssd300_vgg16, same weights."""
    import torch
    from torchvision.models.detection import ssd300_vgg16

    import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg
    from d2ext.modeling.weight_import import get_weight_converter
    from detectron2.modeling import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91).eval()
    cfg = setup_cfg(str(REPO / "configs/coco/ssd300_vgg16_torchvision.yaml"))
    ours = build_model(cfg).eval()
    ours.load_state_dict(get_weight_converter("ssd300_vgg16")(tv.state_dict()), strict=True)
    rgb = torch.randint(0, 256, (3, 480, 640), dtype=torch.uint8)
    tv_in = [rgb.float() / 255.0]
    our_in = [{"image": rgb, "height": 480, "width": 640}]

    times = {"ours": [], "tv": []}
    with torch.no_grad():
        for _ in range(2):  # warm-up
            tv(tv_in), ours(our_in)
        for _ in range(args.latency_repeat):
            for name, fn in (("tv", lambda: tv(tv_in)), ("ours", lambda: ours(our_in))):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        n_ours = len(ours(our_in)[0]["instances"])
        n_tv = len(tv(tv_in)[0]["boxes"])
    med_ours, med_tv = statistics.median(times["ours"]), statistics.median(times["tv"])
    return [Result(
        "ssd300_latency", med_ours * 1000, "ms", "torchvision ssd300_vgg16", med_tv * 1000,
        notes=f"CPU, {args.threads} thread(s), batch 1, 480x640 input, 91 classes, median of "
              f"{args.latency_repeat}; detections {n_ours} vs {n_tv}; goal ratio <= 1.05",
    )]


# ---------------------------------------------------------------------------------- BCCD
def bccd_ssd300(args):
    """SSD300 on BCCD within --budget-min: AP, AP50, per-class AP50, peak training memory."""
    return bccd_detector_rows(args, "ssd300")


def bccd_ssd512(args):
    """SSD512 on BCCD within --budget-min: AP, AP50, per-class AP50, peak training memory."""
    return bccd_detector_rows(args, "ssd512")


ROWS = {"ssd300_latency": ssd300_latency, "bccd/ssd300": bccd_ssd300, "bccd/ssd512": bccd_ssd512}
