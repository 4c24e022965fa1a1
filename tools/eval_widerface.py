#!/usr/bin/env python
"""WIDER Face easy / medium / hard AP of a prediction folder, with the official protocol.

    tools/eval_widerface.py --pred DIR --gt DIR [--json F] [--plot PNG] [--report F]

``--pred``: the official layout ``<event>/<image>.txt`` (image name line, count line, then
``x y w h score`` per face; blank lines and trailing spaces are fine). A missing file counts as
no detections and is listed; a box line with a non-finite or out-of-range number (e.g. a score of
1e308) is left out and listed with its file and line. ``--gt``: the toolkit's
``eval_tools/ground_truth`` folder (``wider_face_val.mat`` + ``wider_{easy,medium,hard}_val.mat``).

Prints a table and ``Easy Val AP: x`` / ``Medium Val AP: x`` / ``Hard Val AP: x`` (AP in [0, 1],
as the toolkit prints it); ``--json`` writes ``{"easy": x, "medium": x, "hard": x}``, ``--plot``
the three PR curves, ``--report`` the reading report (missing / unexpected files, skipped lines).
A file that cannot be used stops the run with one line naming it (``--debug``: the traceback).

Light: torch and Detectron2 are never imported (the protocol is
``d2ext.evaluation.widerface_protocol``: NumPy, SciPy for the .mat files).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402  (light: stdlib only)

MAX_LISTED = 20  # skipped box lines printed one per line; the rest are in --report


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pred", required=True, help="prediction folder: <event>/<image>.txt")
    p.add_argument("--gt", required=True, help="folder of wider_face_val.mat and wider_{easy,medium,hard}_val.mat")
    p.add_argument("--json", help="write {'easy', 'medium', 'hard'} AP here")
    p.add_argument("--plot", help="write the PR curves here (PNG)")
    p.add_argument("--report", help="write the reading report (missing / unexpected files, skipped lines) here (JSON)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold (the toolkit's: 0.5)")
    add_debug_flag(p)
    return p


def evaluate(args) -> int:
    from d2ext.core import OutputBatch, check_outputs, setup_logger
    from d2ext.evaluation.widerface_protocol import (WIDERFACE_SETTINGS, evaluate_widerface,
                                                     load_widerface_gt, plot_widerface_pr,
                                                     read_widerface_predictions)

    setup_logger("d2ext")
    check_outputs([args.pred, args.gt], [args.json, args.plot, args.report], "eval_widerface")
    gt = load_widerface_gt(args.gt)
    preds, report = read_widerface_predictions(args.pred, gt)
    print(report.summary())
    for rel in report.missing:
        print(f"missing: {rel}")
    for line in report.skipped[:MAX_LISTED]:
        print(f"skipped: {line}")
    if len(report.skipped) > MAX_LISTED:
        print(f"skipped: ... {len(report.skipped) - MAX_LISTED} more"
              + (f" (all in {args.report})" if args.report else " (--report lists all)"))
    results = evaluate_widerface(preds, gt, iou_thresh=args.iou)

    width = max(len(s) for s in WIDERFACE_SETTINGS)
    print(f"{'setting':<{width}}  {'AP':>6}  {'faces':>6}")
    for s in WIDERFACE_SETTINGS:
        print(f"{s:<{width}}  {results[s]['ap']:6.4f}  {results[s]['num_faces']:6d}")
    for s in WIDERFACE_SETTINGS:
        print(f"{s.capitalize()} Val AP: {results[s]['ap']}")
    with OutputBatch() as out:  # all outputs appear together, only when all are ready
        if args.json:
            out.write_json(args.json, {s: float(results[s]["ap"]) for s in WIDERFACE_SETTINGS}, indent=2)
        if args.plot:
            plot_widerface_pr(results, out.path(args.plot))
        if args.report:
            out.write_json(args.report, {"num_read": report.num_read, "num_boxes": report.num_boxes,
                                         "missing": report.missing, "unexpected": report.unexpected,
                                         "skipped": report.skipped}, indent=2)
    for path in (args.json, args.plot, args.report):
        if path:
            print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_tool(evaluate, args, "eval_widerface")


if __name__ == "__main__":
    sys.exit(main())
