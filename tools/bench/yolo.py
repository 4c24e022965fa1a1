"""YOLO rows: latency / size, BCCD training of YOLOv1/v2/v3 (and the ultralytics YOLOv8n peer),
and equivalence of Darknet weights loaded by d2ext and by OpenCV.

    tools/benchmark.py yolov3_latency
    tools/benchmark.py bccd/yolov1 bccd/yolov2 bccd/yolov3 bccd/ultralytics_yolov8n \\
        [--budget-min N] [--output DIR] [--ultralytics-python VENV/bin/python]
    tools/benchmark.py darknet_equivalence/yolov3 darknet_equivalence/yolov3-tiny darknet_equivalence/yolov2

``bccd/<model>``: trains ``configs/bccd/<model>.yaml`` from scratch within ``--budget-min``
(the shared ``train_within_budget`` rule), evaluates on ``bccd_test`` with Detectron2's
``COCOEvaluator``: AP, AP50, AP50 per class, peak RSS of the training process.

``bccd/ultralytics_yolov8n``: the peer. ultralytics YOLOv8n from scratch (``yolov8n.yaml``, no
pretrained weights) on the same train/test split, ``imgsz`` 320, ``time`` = the same budget,
plots off, run by the interpreter given with ``--ultralytics-python`` (a separate venv, so
ultralytics' own torch/opencv pins never touch ours). Without it the row says so (NaN).

``darknet_equivalence/<layout>``: the full-size Darknet layout (``configs/darknet/*.yaml``: yolov3
61.9M parameters, yolov3-tiny, yolov2-voc), random weights written as Darknet .cfg + .weights,
loaded by ``cv2.dnn.readNetFromDarknet`` and by d2ext (``tools/convert_weights.py``'s path):
max |difference| of the raw head outputs and of the decoded boxes on one 416x416 image.
"""
import json
import logging
import os
import subprocess
import time
from pathlib import Path

from tools.bench.common import Result, bccd_detector_rows, row_output, time_call

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
DARKNET_YOLOV3_PARAMS = 61_949_149  # Darknet yolov3.cfg (80 classes)


def add_arguments(parser):
    parser.add_argument("--ultralytics-python", default=None,
                        help="bccd/ultralytics_yolov8n: python of a separate venv with ultralytics installed")


def run_yolov3_latency(args):
    """YOLOv3-416 (80 classes) CPU latency, batch 1, and parameter count."""
    import torch
    from detectron2.modeling import build_model

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.engine import setup_cfg

    cfg = setup_cfg(str(REPO / "configs" / "darknet" / "yolov3.yaml"), ["MODEL.DEVICE", "cpu"])
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


# ---------------------------------------------------------------------------------- BCCD
def run_bccd_yolov3(args):
    """YOLOv3 (small Darknet-53) on BCCD within --budget-min: AP, AP50, per-class AP50, memory."""
    return bccd_detector_rows(args, "yolov3")


def run_bccd_yolov2(args):
    """YOLOv2 (small Darknet-19) on BCCD within --budget-min: AP, AP50, per-class AP50, memory."""
    return bccd_detector_rows(args, "yolov2")


def run_bccd_yolov1(args):
    """YOLOv1 (Fast YOLO 9-conv net, 7x7 grid) on BCCD within --budget-min."""
    return bccd_detector_rows(args, "yolov1")


# The peer's script, run by --ultralytics-python; argv: data.yaml, project dir, minutes, result json.
_ULTRALYTICS_SCRIPT = r"""
import json, sys, time
from ultralytics import YOLO, __version__
data, project, minutes, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
t0 = time.time()
model = YOLO("yolov8n.yaml")  # architecture only: from scratch, nothing downloaded
model.train(data=data, imgsz=320, epochs=1000, time=minutes / 60.0, batch=8, workers=2, device="cpu",
            project=project, name="train", exist_ok=True, plots=False, pretrained=False, amp=False,
            verbose=False, seed=0)
train_min = (time.time() - t0) / 60
m = model.val(data=data, split="test", imgsz=320, batch=8, device="cpu", plots=False, verbose=False)
json.dump({"map50": float(m.box.map50), "map": float(m.box.map), "train_minutes": train_min,
           "per_class_ap50": {m.names[int(c)]: float(v) for c, v in zip(m.box.ap_class_index, m.box.ap50)},
           "version": __version__}, open(out, "w"))
"""


def _write_yolo_dataset(root: Path) -> Path:
    """BCCD train/test in ultralytics' layout (image symlinks + normalised cx cy w h labels)."""
    from d2ext.core import atomic_write_text
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from converters.builtin import register_builtin_datasets

    register_builtin_datasets()
    names = MetadataCatalog.get("bccd_train").thing_classes
    for split in ("train", "test"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for r in DatasetCatalog.get(f"bccd_{split}"):
            src = Path(r["file_name"])
            link = root / "images" / split / src.name
            if not link.exists():
                link.symlink_to(src)
            w, h = r["width"], r["height"]
            lines = []
            for a in r["annotations"]:
                x0, y0, x1, y1 = a["bbox"]  # XYXY_ABS from the BCCD converter
                if x1 <= x0 or y1 <= y0:
                    continue  # the two zero-area boxes of BCCD, as d2ext's models skip them
                lines.append(f"{a['category_id']} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                             f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
            atomic_write_text(root / "labels" / split / f"{src.stem}.txt", "\n".join(lines) + "\n")
    data_yaml = root / "bccd.yaml"
    atomic_write_text(data_yaml, f"path: {root}\ntrain: images/train\nval: images/test\ntest: images/test\n"
                      f"names: {dict(enumerate(names))}\n")
    return data_yaml


def run_bccd_ultralytics(args):
    """Peer: ultralytics YOLOv8n from scratch on the BCCD split at the same budget."""
    name = "bccd/ultralytics_yolov8n"
    py = getattr(args, "ultralytics_python", None)
    if not py or not os.path.exists(py):
        why = "not given" if not py else f"{py} does not exist"
        return [Result(name, float("nan"), "AP50", notes=f"skipped: --ultralytics-python {why} (a venv with "
                       "ultralytics; ours is kept free of its pins)")]
    out = Path(row_output(args, name))
    out.mkdir(parents=True, exist_ok=True)
    data_yaml = _write_yolo_dataset(out / "data")
    script = out / "run_ultralytics.py"
    script.write_text(_ULTRALYTICS_SCRIPT)
    result = out / "result.json"
    t0 = time.perf_counter()
    log = out / "ultralytics.log"
    with open(log, "w") as f:
        code = subprocess.call([py, str(script), str(data_yaml), str(out / "runs"), str(args.budget_min),
                                str(result)], stdout=f, stderr=subprocess.STDOUT, cwd=str(out))
    if code != 0 or not result.exists():
        raise RuntimeError(f"{name}: the ultralytics run exited {code}; see {log}")
    r = json.loads(result.read_text())
    note = (f"ultralytics {r['version']} YOLOv8n from scratch, imgsz 320, time budget {args.budget_min:g} min "
            f"({r['train_minutes']:.1f} min train, {(time.perf_counter() - t0) / 60:.1f} min with eval), "
            "plots off, CPU; its own mAP50 (COCO-style 101-point)")
    rows = [Result(name, r["map50"], "AP50", notes=note), Result(f"{name}/AP", r["map"], "AP")]
    rows += [Result(f"{name}/AP50/{c}", v, "AP50") for c, v in r["per_class_ap50"].items()]
    return rows


# ---------------------------------------------------------------------------------- Darknet
def _darknet_equivalence(args, layout: str):
    import cv2
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    import d2ext.engine  # noqa: F401
    from d2ext.engine import setup_cfg
    from d2ext.modeling import darknet_weights as dw

    size = 416
    cfg = setup_cfg(dw.layout_config(layout), ["MODEL.DEVICE", "cpu"])
    model = dw.randomize_weights(build_model(cfg))
    with torch.no_grad():
        # 23 residual additions in Darknet-53 would grow activations to ~100 (exp() of such box
        # logits overflows): residual branches get small gains, as a trained network has.
        for m in model.modules():
            if type(m).__name__ == "DarknetResidual":
                m.conv2.norm.weight.mul_(0.2)
                m.conv2.norm.bias.mul_(0.2)
    out = Path(row_output(args, f"darknet_equivalence/{layout}"))
    out.mkdir(parents=True, exist_ok=True)
    cfg_path, weights_path = out / f"{layout}.cfg", out / f"{layout}.weights"
    cfg_path.write_text(dw.darknet_cfg_text_of_model(model, cfg, size, size))
    specs = dw.conv_specs(dw.parse_darknet_cfg(str(cfg_path)), str(cfg_path))
    dw.write_darknet_weights(str(weights_path), specs, dw.export_darknet_weights(model))

    # d2ext side: the import path of tools/convert_weights.py (cfg -> config -> model -> weights)
    sections = dw.parse_darknet_cfg(str(cfg_path))
    _, opts = dw.d2ext_opts_from_darknet(sections, str(cfg_path))
    ours = build_model(setup_cfg(dw.layout_config(layout), ["MODEL.DEVICE", "cpu"] + opts)).eval()
    dw.load_darknet_weights(ours, specs, dw.read_darknet_weights(str(weights_path), specs)[1])

    img = (np.random.RandomState(0).rand(size, size, 3) * 255).astype(np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    with torch.no_grad():
        feats = ours.backbone((x - ours.pixel_mean) / ours.pixel_std)
        heads = ours.head([feats[f] for f in ours.head_in_features])
        pred, cells, strides, anchors, sizes = ours._flatten(heads)
        boxes = ours._decode(pred, cells, strides, anchors)[0]
    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    blob = cv2.dnn.blobFromImage(img, 1 / 255.0, (size, size), swapRB=False, crop=False)
    net.setInput(blob)
    cv_raw = net.forward([f"conv_{s.index}" for s in specs if s.activation == "linear"])
    raw_diff = max(float(np.abs(a.numpy() - b).max()) for a, b in zip(heads[::-1], cv_raw))
    scale = max(float(np.abs(b).max()) for b in cv_raw)
    net.setInput(blob)
    dets = net.forward(net.getUnconnectedOutLayersNames())
    rows = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                        boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1).numpy()
    offsets = np.cumsum([0] + [h * w * len(a) for (h, w), a in zip(sizes, ours.anchors)])
    box_diff = max(float(np.abs(rows[offsets[lvl]:offsets[lvl + 1]] - d[:, :4] * size).max())
                   for d, lvl in zip(dets, reversed(range(len(sizes)))))
    n = sum(p.numel() for p in ours.parameters())
    name = f"darknet_equivalence/{layout}"
    return [
        Result(name, raw_diff, "max|diff|", "OpenCV readNetFromDarknet", 0.0,
               notes=f"raw head outputs (max |value| {scale:.3g}), {n / 1e6:.2f}M params, random weights, "
                     f"416x416; cv2 {cv2.__version__}"),
        Result(f"{name}/boxes", box_diff, "px", "OpenCV readNetFromDarknet", 0.0,
               notes="decoded box centres and sizes, max |diff| in input pixels"),
    ]


def _equivalence_row(layout):
    def row(args):
        return _darknet_equivalence(args, layout)

    row.__doc__ = f"Darknet {layout} layout, random weights: d2ext vs OpenCV readNetFromDarknet (max |diff|)."
    return row


ROWS = {
    "yolov3_latency": run_yolov3_latency,
    "bccd/yolov1": run_bccd_yolov1,
    "bccd/yolov2": run_bccd_yolov2,
    "bccd/yolov3": run_bccd_yolov3,
    "bccd/ultralytics_yolov8n": run_bccd_ultralytics,
    **{f"darknet_equivalence/{k}": _equivalence_row(k) for k in ("yolov3", "yolov3-tiny", "yolov2")},
}
