#!/usr/bin/env python
"""Run a config + weights on images and write COCO-format results.

    tools/predict.py --config-file C --weights W --input IMG_OR_DIR [...] --output results.json [KEY VALUE ...]
    tools/predict.py --config-file C --weights W --input test.json --output results.json

With ``--input COCO.json`` the images of that file are predicted and each row carries the file's
own ``image_id``, so ``tools/evaluate.py --gt test.json --pred results.json`` scores it directly
(images are found as for training: ``--image-root``, else the file's ``"d2ext": {"image_root"}``,
else its folder). Otherwise ``image_id`` is the file name (``--image-id relpath``: the path
relative to the input folder).

Rows: ``{"image_id", "category_id" (the dataset's ids, 1-based for converted data), "bbox":
[x, y, w, h], "score"}``, plus ``segmentation`` (RLE) / ``keypoints`` when the model predicts them;
classifiers give their top-k ``{"image_id", "category_id", "score"}`` rows.
``tools/visualize_predictions.py --results`` draws this file. ``--input`` ends at the next option
or at the first config override (``--input DIR INPUT.MIN_SIZE_TEST 64`` works).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool, split_inputs  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", required=True, help="checkpoint file (.pth / .pkl)")
    p.add_argument("--input", nargs="+", required=True,
                   help="image files and/or folders, or one COCO .json file (its images, its image_ids)")
    p.add_argument("--output", "--out", required=True, help="COCO results JSON to write")
    p.add_argument("--image-root", help="folder of the COCO file's images (default: as recorded in "
                                        "the file, else the file's folder)")
    p.add_argument("--top-k", type=int, default=5, help="classification: rows per image")
    p.add_argument("--image-id", choices=["name", "relpath"], default="name",
                   help="image folders: image_id is the file name, or its path relative to the folder")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.input, args.opts = split_inputs(args.input, args.opts)
    if not args.input:
        build_parser().error("--input needs at least one image, folder or COCO .json file")
    return args


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


def coco_file_items(name, model_metadata):
    """(file_name, image_id) of a registered COCO-file dataset, and the metadata that maps the
    model's class indices to that file's category ids (the classes must be the model's)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(name)
    model_classes = getattr(model_metadata, "thing_classes", None) if model_metadata else None
    if model_classes is not None and list(model_classes) != list(meta.thing_classes):
        raise ValueError(f"{name}: its categories {list(meta.thing_classes)} are not the model's classes "
                         f"{list(model_classes)} (from the config's DATASETS.TEST / TRAIN)")
    return [(r["file_name"], r["image_id"]) for r in DatasetCatalog.get(name)], meta


def main(args):
    import tqdm

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.core import atomic_write_json, check_outputs
    from d2ext.data.coco_files import is_coco_path, resolve_dataset
    from d2ext.engine import Predictor, list_images, outputs_to_coco_results, setup_cfg
    from tools._common import register_real_datasets, setup_tool_logger

    logger = setup_tool_logger()
    check_outputs(args.input, [args.output], tool="predict")
    register_real_datasets()
    cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.weights],
                    image_root=args.image_root)
    coco_inputs = [p for p in args.input if is_coco_path(p)]
    if coco_inputs and len(args.input) > 1:
        raise ValueError("--input takes one COCO .json file, or image files and folders, not both")
    predictor = Predictor(cfg)
    if coco_inputs:
        items, metadata = coco_file_items(resolve_dataset(args.input[0], args.image_root), predictor.metadata)
    else:
        files = list_images(args.input)
        items, metadata = list(zip(files, image_ids(files, args.input, args.image_id))), predictor.metadata
    if not items:
        raise ValueError(f"no images found in {' '.join(args.input)}")
    rows = []
    for f, image_id in tqdm.tqdm(items, desc="predict", disable=not sys.stderr.isatty()):
        rows += outputs_to_coco_results(predictor(f), image_id, metadata, top_k=args.top_k)
    atomic_write_json(args.output, rows)
    logger.info("wrote %d result rows for %d images to %s", len(rows), len(items), args.output)
    return 0


def cli(argv=None):
    sys.exit(run_tool(main, parse_args(argv), "predict"))


if __name__ == "__main__":
    cli()
