#!/usr/bin/env python
"""COCO AP of a results file against a COCO ground-truth file (pycocotools' COCOeval).

    tools/evaluate.py --gt test.json --pred results.json [--iou-type bbox|segm|keypoints] \
        [--json metrics.json] [--plot pr.png] [--plain]

Prints AP (IoU .50:.95), AP50, AP75, the size breakdown and per-class AP50 / AP; ``--json``
writes them with the per-class precision/recall curves (IoU 0.5); ``--plot`` draws those curves.
``--plain`` also prints the textbook AP50 per class from ``d2ext.utils.metrics`` (greedy matching,
Detectron2's box IoU, 101-point AP), which equals COCO's AP50 on crowd-free data.

``results.json`` is a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` rows
(``segmentation`` / ``keypoints`` for the other IoU types) whose ids are the ground truth's:
``tools/predict.py --input test.json`` writes exactly that. Figures are 0..1.
Needs numpy, pycocotools and (for ``--plot``) matplotlib; torch only with ``--plain``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gt", required=True, metavar="COCO.json", help="ground truth (COCO annotation file)")
    p.add_argument("--pred", required=True, metavar="RESULTS.json", help="COCO results rows")
    p.add_argument("--iou-type", choices=["bbox", "segm", "keypoints"], default="bbox")
    p.add_argument("--json", "--output", dest="json", metavar="M.json",
                   help="write the metrics and per-class PR curves here")
    p.add_argument("--plot", metavar="PR.png", help="draw the per-class precision/recall curves (IoU 0.5)")
    p.add_argument("--plain", action="store_true",
                   help="also print the plain AP50 per class (greedy matching, 101-point AP; bbox only)")
    p.add_argument("--kpt-oks-sigmas", type=float, nargs="+",
                   help="keypoints: per-keypoint OKS sigmas (default COCO's 17)")
    add_debug_flag(p)
    return p


def _fmt(v) -> str:
    return "  -  " if v is None else f"{v:.4f}"


def format_report(m: dict) -> str:
    lines = [f"evaluate: {m['iou_type']} on {m['num_images']} images, {len(m['per_class'])} classes, "
             f"{m['num_predictions']} predictions"]
    head = ["AP", "AP50", "AP75", "APs", "APm", "APl"] if m["iou_type"] != "keypoints" else \
        ["AP", "AP50", "AP75", "APm", "APl"]
    lines.append("  ".join(f"{k} {_fmt(m.get(k))}" for k in head))
    width = max([5] + [len(n) for n in m["per_class"]])
    lines.append(f"{'class':{width}s}  {'AP50':>6s}  {'AP':>6s}  {'gt':>5s}")
    for name, c in m["per_class"].items():
        lines.append(f"{name:{width}s}  {_fmt(c['AP50']):>6s}  {_fmt(c['AP']):>6s}  {c['num_gt']:5d}")
    return "\n".join(lines)


def plot_pr_curves(m: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from d2ext.core import atomic_path

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for name, curve in m["pr_curves"].items():
        ap50 = m["per_class"][name]["AP50"]
        ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP50 {_fmt(ap50)})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{m['iou_type']} precision/recall at IoU 0.5 (AP50 {_fmt(m.get('AP50'))})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plain_ap50(gt_file: str, pred_file: str) -> dict:
    """Per-class plain AP50 (:func:`d2ext.utils.metrics.plain_average_precision`), crowd boxes left
    out of the ground truth."""
    import json

    from d2ext.utils.metrics import plain_average_precision

    with open(gt_file, "rb") as f:
        gt = json.loads(f.read())
    with open(pred_file, "rb") as f:
        rows = json.loads(f.read())
    out = {}
    for cat in sorted(gt["categories"], key=lambda c: c["id"]):
        boxes = {}
        for a in gt.get("annotations", []):
            if a["category_id"] == cat["id"] and not a.get("iscrowd", 0):
                x, y, w, h = a["bbox"]
                boxes.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
        dets = [(r["image_id"], [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                                 r["bbox"][1] + r["bbox"][3]], r["score"])
                for r in rows if r["category_id"] == cat["id"]]
        ap = plain_average_precision(boxes, dets, 0.5)
        out[str(cat.get("name", cat["id"]))] = None if ap != ap else ap
    return out


def main(args):
    from d2ext.core import atomic_write_json, check_outputs
    from d2ext.utils.metrics import coco_evaluate

    for path in (args.gt, args.pred):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
    check_outputs([args.gt, args.pred], [args.json, args.plot], tool="evaluate")
    metrics = coco_evaluate(args.gt, args.pred, args.iou_type, kpt_oks_sigmas=args.kpt_oks_sigmas)
    print(format_report(metrics))
    if args.plain:
        if args.iou_type != "bbox":
            raise ValueError("--plain computes box AP50 only (--iou-type bbox)")
        metrics["plain_AP50"] = plain_ap50(args.gt, args.pred)
        print("plain AP50 per class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in metrics["plain_AP50"].items()))
    if args.json:
        atomic_write_json(args.json, metrics, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot_pr_curves(metrics, args.plot)
        print(f"wrote {args.plot}")
    return 0


def cli(argv=None):
    sys.exit(run_tool(main, build_parser().parse_args(argv), "evaluate"))


if __name__ == "__main__":
    cli()
