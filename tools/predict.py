#!/usr/bin/env python
"""Run a config + weights on images and write COCO-format results.

    tools/predict.py --config-file C --weights W --input IMG_OR_DIR [...] --output results.json

Rows: ``{"image_id": <file name>, "category_id": <1-based>, "bbox": [x, y, w, h], "score"}``,
plus ``segmentation`` (RLE) / ``keypoints`` when the model predicts them; classifiers give their
top-k ``{"image_id", "category_id", "score"}`` rows. ``tools/visualize_predictions.py --results``
draws this file.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
import tqdm  # noqa: E402
from d2ext.engine import Predictor, list_images, outputs_to_coco_results, setup_cfg  # noqa: E402
from d2ext.core import atomic_write_json  # noqa: E402
from tools._common import register_real_datasets, setup_tool_logger  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="checkpoint file (.pth / .pkl)")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--output", required=True, help="COCO results JSON to write")
    p.add_argument("--top-k", type=int, default=5, help="classification: rows per image")
    p.add_argument("--image-id", choices=["name", "relpath"], default="name",
                   help="image_id: the file name, or its path relative to the input folder")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def image_ids(files, inputs, mode):
    if mode == "name":
        return [os.path.basename(f) for f in files]
    roots = [os.path.abspath(p) for p in inputs if os.path.isdir(p)]
    out = []
    for f in files:
        af = os.path.abspath(f)
        root = next((r for r in roots if af.startswith(r + os.sep)), os.path.dirname(af))
        out.append(os.path.relpath(af, root))
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    logger = setup_tool_logger()
    register_real_datasets()
    cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.weights])
    predictor = Predictor(cfg)
    files = list_images(args.input)
    if not files:
        raise SystemExit(f"predict: no images found in {args.input}")
    rows = []
    for f, image_id in zip(tqdm.tqdm(files, desc="predict"), image_ids(files, args.input, args.image_id)):
        rows += outputs_to_coco_results(predictor(f), image_id, predictor.metadata, top_k=args.top_k)
    atomic_write_json(args.output, rows)
    logger.info("wrote %d result rows for %d images to %s", len(rows), len(files), args.output)
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
