#!/usr/bin/env python
"""The course's patch table: every patch of every image with a 1/0 WBC label, as CSV
``filename,patch,xmin,xmax,ymin,ymax,WBC``.

    tools/patches.py --csv wbc1.csv --images BCCD/JPEGImages --grid 2 --out patches4.csv
    tools/patches.py --csv wbc1.csv --size 640x480 --grid 4 --out patches16.csv
    tools/patches.py --csv wbc1.csv --size 640x480 --anchors --sizes 160 224 \
        --ratios 0.5 1 2 --stride 128 --out patches_anchors.csv

Input: the course's single-object CSV ``filename,xmin,xmax,ymin,ymax`` (``tools/convert.py
bccd-wbc1 --csv-out``; VOC 1-based values). Image sizes come from the image headers
(``--images``) or one ``--size WxH`` for all. Patches are numbered from 1, row-major (patch 1
top-left); a patch is labelled 1 when its IoU with the WBC is >= ``--iou`` or it is the WBC's
best patch (see :mod:`d2ext.data.patches`), the rule the PatchDetector trains with.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv", required=True, help="course CSV filename,xmin,xmax,ymin,ymax")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of the images (sizes read from their headers)")
    src.add_argument("--size", help="WxH of every image, e.g. 640x480")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--grid", type=int, help="N: an N x N grid of patches")
    kind.add_argument("--anchors", action="store_true", help="anchor-shaped patches (--sizes/--ratios/--stride)")
    p.add_argument("--sizes", type=float, nargs="+", default=[160, 224], help="anchors: sqrt(area), pixels")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="anchors: height / width")
    p.add_argument("--stride", type=float, default=128, help="anchors: centre spacing, pixels")
    p.add_argument("--iou", type=float, default=0.5, help="IoU for a positive patch")
    p.add_argument("--output", "--out", dest="out", required=True, help="patch CSV to write")
    add_debug_flag(p)
    return p


def main(args) -> int:
    from converters.bccd_wbc1 import load_wbc1_csv
    from converters.common import ConversionReport
    from d2ext.core import check_outputs
    from d2ext.data.patches import anchor_patches, grid_patches, patch_table_rows, write_patch_csv

    check_outputs([args.csv, args.images], [args.out], "patches")
    report = ConversionReport("bccd_wbc1", sources=[args.csv])
    records = load_wbc1_csv(args.csv, args.images, report=report, read_sizes=args.images is not None)
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size: expected WxH such as 640x480, got {args.size!r}") from None
        for rec in records:
            rec["width"], rec["height"] = w, h
    if args.anchors:
        def patch_fn(w, h):
            return anchor_patches(w, h, args.sizes, args.ratios, args.stride)
    else:
        def patch_fn(w, h):
            return grid_patches(w, h, args.grid)
    rows = patch_table_rows(records, patch_fn, args.iou)
    write_patch_csv(rows, args.out)
    pos = sum(r[-1] for r in rows)
    print(f"wrote {args.out}: {len(records)} images, {len(rows)} patches, {pos} labelled WBC; "
          f"{len(report.skipped)} rows skipped")
    for s in report.skipped:
        print(f"  skipped {s['file']}:{s['line']}: {s['reason']}")
    return 0


if __name__ == "__main__":
    parsed = build_parser().parse_args()
    sys.exit(run_tool(main, parsed, "patches"))
