#!/usr/bin/env python
"""Draw predictions above a score threshold to PNGs.

Either run a model:
    tools/visualize_predictions.py --config-file C --weights W --input IMG_OR_DIR --output out/
or draw an existing COCO results file (``tools/predict.py`` output; image_id = file name):
    tools/visualize_predictions.py --results results.json --input IMG_DIR --output out/ [--dataset NAME]
"""
import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
from d2ext.engine import Predictor, list_images, setup_cfg  # noqa: E402
from d2ext.core import atomic_save_image  # noqa: E402
from d2ext.utils.visualization import draw_coco_results, draw_instances  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from tools._common import register_real_datasets, setup_tool_logger  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="")
    p.add_argument("--weights", default="")
    p.add_argument("--results", help="COCO results JSON to draw instead of running a model")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--dataset", help="registered dataset whose class names to use")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logger = setup_tool_logger()
    register_real_datasets()
    if not args.results and not (args.config_file and args.weights):
        raise SystemExit("visualize_predictions: give --results, or --config-file and --weights")
    files = list_images(args.input)
    os.makedirs(args.output, exist_ok=True)
    written = []
    if args.results:
        with open(args.results) as f:
            rows = json.load(f)
        by_image = collections.defaultdict(list)
        for r in rows:
            by_image[str(r["image_id"])].append(r)
        metadata = MetadataCatalog.get(args.dataset) if args.dataset else None
        for f in files:
            img = utils.read_image(f, "RGB")
            key = os.path.basename(f)
            vis = draw_coco_results(img, by_image.get(key, []), metadata, args.score_thresh)
            out = os.path.join(args.output, os.path.splitext(key)[0] + ".png")
            atomic_save_image(out, vis)
            written.append(out)
    else:
        cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.weights])
        predictor = Predictor(cfg)
        metadata = MetadataCatalog.get(args.dataset) if args.dataset else predictor.metadata
        for f in files:
            outputs = predictor(f)
            if "instances" not in outputs:
                raise SystemExit("visualize_predictions: the model gives no instances to draw")
            img = utils.read_image(f, "RGB")
            vis = draw_instances(img, outputs["instances"], metadata, args.score_thresh)
            out = os.path.join(args.output, os.path.splitext(os.path.basename(f))[0] + ".png")
            atomic_save_image(out, vis)
            written.append(out)
    logger.info("wrote %d images to %s", len(written), args.output)
    print("\n".join(written))
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
