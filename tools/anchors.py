#!/usr/bin/env python
"""YOLO anchors for a registered dataset: k-means on box sizes with 1 - IoU distance (YOLOv2's
"dimension clusters", Redmon & Farhadi 2017, Sec. 2).

    tools/anchors.py --dataset bccd_train --input-size 416 --k 9 --levels 3
    tools/anchors.py --dataset widerface_val --input-size 640 --resize width --k 9 --levels 3

Boxes are scaled as the model's input resize scales them:
``shortest`` (Detectron2's ResizeShortestEdge: shorter side -> input size, longer side capped by
``--max-size``), ``longest`` (longer side -> input size), ``width`` (width -> input size; records
without a width use ``--default-width``), ``square`` (both sides -> input size, Darknet's resize).
Crowd / zero-size boxes are skipped and counted. Prints the anchors (sorted by area, split into
``--levels`` groups, finest first) as ``MODEL.YOLO.ANCHORS`` YAML and the mean best IoU.
``--dataset`` may be the path of a COCO ``.json`` file (``--image-root`` is not needed: only the
recorded box and image sizes are read).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402

logger = logging.getLogger("d2ext.tools.anchors")


def _scale(record, args):
    """(sx, sy) factors from the record's pixels to the network input's."""
    h, w = record.get("height"), record.get("width")
    if args.resize == "width":
        w = w or args.default_width
        if not w:
            raise ValueError(f"{record.get('file_name')}: record has no width; pass --default-width")
        s = args.input_size / w
        return s, s
    if not (h and w):
        raise ValueError(f"{record.get('file_name')}: record has no height/width, needed by "
                         f"--resize {args.resize} (use --resize width --default-width W)")
    if args.resize == "square":
        return args.input_size / w, args.input_size / h
    if args.resize == "longest":
        s = args.input_size / max(h, w)
        return s, s
    s = args.input_size / min(h, w)
    if args.max_size and max(h, w) * s > args.max_size:
        s = args.max_size / max(h, w)
    return s, s


def collect_wh(records, args):
    """(N, 2) box sizes in input pixels, and counts of skipped crowd / empty boxes."""
    import torch
    from detectron2.structures import BoxMode

    wh, crowd, empty = [], 0, 0
    for r in records:
        sx, sy = _scale(r, args)
        for a in r.get("annotations", []):
            if a.get("iscrowd", 0):
                crowd += 1
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
            w, h = (x1 - x0) * sx, (y1 - y0) * sy
            if w <= 0 or h <= 0:
                empty += 1
                continue
            wh.append((w, h))
    return torch.tensor(wh, dtype=torch.float64).view(-1, 2), crowd, empty


def format_anchors(anchors, levels: int) -> str:
    k = len(anchors)
    if k % levels:
        raise ValueError(f"--k {k} is not divisible by --levels {levels}")
    rows = [round(float(v)) for v in anchors.flatten()]
    pairs = [[max(1, rows[2 * i]), max(1, rows[2 * i + 1])] for i in range(k)]
    per = k // levels
    groups = [pairs[i * per:(i + 1) * per] for i in range(levels)]
    return "ANCHORS: [" + ", ".join("[" + ", ".join(f"[{w}, {h}]" for w, h in g) + "]" for g in groups) + "]"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="registered dataset name (bccd_train) or COCO .json path")
    p.add_argument("--input-size", type=int, default=416, help="network input size (default 416)")
    p.add_argument("--resize", choices=["shortest", "longest", "width", "square"], default="shortest")
    p.add_argument("--max-size", type=int, default=0, help="cap of the longer side (shortest mode)")
    p.add_argument("--default-width", type=int, default=0, help="width of records without one")
    p.add_argument("--k", type=int, default=9, help="number of anchors (9 for v3, 5 for v2)")
    p.add_argument("--levels", type=int, default=3, help="output levels to split them over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--centre", choices=["mean", "median"], default="mean")
    add_debug_flag(p)
    return p


def _records(name):
    """The dataset's records; a COCO file is read directly (its images need not be present)."""
    from d2ext.data.coco_files import is_coco_path, resolve_dataset

    if is_coco_path(name) and os.path.isfile(name):
        # read directly: only boxes and sizes are needed, and a file converted without its images
        # (no height/width) is fine with --resize width
        import json

        with open(name, "rb") as f:
            coco = json.loads(f.read())
        records = {im["id"]: {"file_name": im.get("file_name"), "height": im.get("height"),
                              "width": im.get("width"), "annotations": []} for im in coco.get("images", [])}
        for a in coco.get("annotations", []):
            if a.get("image_id") in records:
                records[a["image_id"]]["annotations"].append(
                    {"bbox": a["bbox"], "bbox_mode": 1, "iscrowd": a.get("iscrowd", 0)})  # 1: XYWH_ABS
        return list(records.values())
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get(resolve_dataset(name))


def main(args):
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.modeling.meta_arch.yolo_utils import kmeans_anchors
    from tools._common import register_real_datasets

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.k % args.levels:
        raise ValueError(f"--k {args.k} is not divisible by --levels {args.levels}")
    register_real_datasets()
    records = _records(args.dataset)
    wh, crowd, empty = collect_wh(records, args)
    anchors, mean_iou = kmeans_anchors(wh, args.k, seed=args.seed, centre=args.centre)
    print(f"# tools/anchors.py --dataset {args.dataset} --input-size {args.input_size} "
          f"--resize {args.resize}" + (f" --max-size {args.max_size}" if args.max_size else "")
          + f" --k {args.k} --levels {args.levels} --seed {args.seed}")
    print(f"# {len(records)} images, {len(wh)} boxes (skipped {crowd} crowd, {empty} empty); "
          f"mean IoU of boxes with their best anchor: {mean_iou:.4f}")
    print(format_anchors(anchors, args.levels))
    return 0


def cli(argv=None):
    sys.exit(run_tool(main, build_parser().parse_args(argv), "anchors"))


if __name__ == "__main__":
    cli()
