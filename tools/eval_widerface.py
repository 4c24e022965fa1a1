#!/usr/bin/env python
"""WIDER Face easy / medium / hard AP of a prediction folder, with the official protocol.

    tools/eval_widerface.py --pred DIR --gt DIR [--json F] [--plot PNG] [--report F]

``--pred``: the official layout ``<event>/<image>.txt`` (image name line, count line, then
``x y w h score`` per face; blank lines and trailing spaces are fine). A missing file counts as
no detections and is listed. ``--gt``: the toolkit's ``eval_tools/ground_truth`` folder
(``wider_face_val.mat`` + ``wider_{easy,medium,hard}_val.mat``).

Prints a table and ``Easy Val AP: x`` / ``Medium Val AP: x`` / ``Hard Val AP: x`` (AP in [0, 1],
as the toolkit prints it); ``--json`` writes ``{"easy": x, "medium": x, "hard": x}``, ``--plot``
the three PR curves, ``--report`` the reading report (missing / unexpected files).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from d2ext.evaluation.widerface import (WIDERFACE_SETTINGS, evaluate_widerface,  # noqa: E402
                                        load_widerface_gt, plot_widerface_pr,
                                        read_widerface_predictions)
from d2ext.core import atomic_write_json  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="prediction folder: <event>/<image>.txt")
    p.add_argument("--gt", required=True, help="folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    p.add_argument("--json", help="write {'easy', 'medium', 'hard'} AP here")
    p.add_argument("--plot", help="write the PR curves here (PNG)")
    p.add_argument("--report", help="write the reading report (missing / unexpected files) here (JSON)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold (the toolkit's: 0.5)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        gt = load_widerface_gt(args.gt)
        preds, report = read_widerface_predictions(args.pred, gt)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    for rel in report.missing:
        print(f"missing: {rel}")
    results = evaluate_widerface(preds, gt, iou_thresh=args.iou)

    from tabulate import tabulate

    rows = [[s, f"{results[s]['ap']:.4f}", results[s]["num_faces"]] for s in WIDERFACE_SETTINGS]
    print(tabulate(rows, headers=["setting", "AP", "faces"]))
    for s in WIDERFACE_SETTINGS:
        print(f"{s.capitalize()} Val AP: {results[s]['ap']}")
    if args.json:
        atomic_write_json(args.json, {s: float(results[s]["ap"]) for s in WIDERFACE_SETTINGS}, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_widerface_pr(results, args.plot)
        print(f"wrote {args.plot}")
    if args.report:
        atomic_write_json(args.report, {"num_read": report.num_read, "num_boxes": report.num_boxes,
                           "missing": report.missing, "unexpected": report.unexpected}, indent=2)
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
