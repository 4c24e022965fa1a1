#!/usr/bin/env python
"""Draw predictions above a score threshold to PNGs.

Either run a model:
    tools/visualize_predictions.py --config-file C --weights W --input IMG_OR_DIR --output out/ [KEY VALUE ...]
or draw an existing COCO results file (``tools/predict.py`` output):
    tools/visualize_predictions.py --results results.json --input IMG_DIR --output out/ [--dataset NAME]
    tools/visualize_predictions.py --results results.json --input test.json --output out/

``--input`` takes image files and folders (results matched by file name), or one COCO ``.json``
file: its images, results matched by its ``image_id`` s, class names from its categories
(images under ``--image-root``, else where the file records them, else beside it). ``--input``
ends at the next option or at the first config override. ``--scale 4`` enlarges small images.
Semantic-segmentation models are drawn as one colour per class with a legend.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool, split_inputs  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default="", metavar="FILE")
    p.add_argument("--weights", default="")
    p.add_argument("--results", help="COCO results JSON to draw instead of running a model")
    p.add_argument("--input", nargs="+", required=True,
                   help="image files and/or folders, or one COCO .json file")
    p.add_argument("--output", "--output-dir", required=True, help="folder for the PNGs")
    p.add_argument("--dataset", help="registered dataset (or COCO .json) whose class names to use")
    p.add_argument("--image-root", help="folder of a COCO file's images (default: as the file records)")
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=1.0, help="resize the drawings by this factor")
    p.add_argument("--num", type=int, default=0, help="draw at most this many images (0: all)")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.input, args.opts = split_inputs(args.input, args.opts)
    if not args.input:
        build_parser().error("--input needs at least one image, folder or COCO .json file")
    if not args.results and not (args.config_file and args.weights):
        build_parser().error("give --results, or --config-file and --weights")
    return args


def _items(args):
    """[(image file, key that results rows use)], and the COCO file's dataset name (or None)."""
    from d2ext.data.coco_files import is_coco_path, resolve_dataset
    from d2ext.engine import list_images
    from detectron2.data import DatasetCatalog

    if any(is_coco_path(p) for p in args.input):
        if len(args.input) > 1:
            raise ValueError("--input takes one COCO .json file, or image files and folders, not both")
        name = resolve_dataset(args.input[0], args.image_root)
        return [(r["file_name"], str(r["image_id"])) for r in DatasetCatalog.get(name)], name
    return [(f, os.path.basename(f)) for f in list_images(args.input)], None


def main(args):
    import collections
    import json

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.core import atomic_save_image, check_outputs
    from d2ext.data.coco_files import resolve_dataset
    from d2ext.engine import Predictor, setup_cfg
    from d2ext.utils.visualization import draw_coco_results, draw_instances, draw_sem_seg
    from detectron2.data import MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.utils.visualizer import Visualizer
    from tools._common import register_real_datasets, setup_tool_logger

    logger = setup_tool_logger()
    check_outputs(args.input + ([args.results] if args.results else []), [args.output], tool="visualize_predictions")
    register_real_datasets()
    items, coco_name = _items(args)
    if args.num:
        items = items[: args.num]
    if not items:
        raise ValueError(f"no images found in {' '.join(args.input)}")
    dataset = resolve_dataset(args.dataset, args.image_root) if args.dataset else coco_name
    os.makedirs(args.output, exist_ok=True)
    written = []

    def out_path(f):
        return os.path.join(args.output, os.path.splitext(os.path.basename(f))[0] + ".png")

    if args.results:
        with open(args.results, "rb") as fh:
            rows = json.loads(fh.read())
        by_image = collections.defaultdict(list)
        for r in rows:
            by_image[str(r["image_id"])].append(r)
        metadata = MetadataCatalog.get(dataset) if dataset else None
        for f, key in items:
            img = utils.read_image(f, "RGB")
            vis = draw_coco_results(img, by_image.get(key, []), metadata, args.score_thresh, scale=args.scale)
            atomic_save_image(out_path(f), vis)
            written.append(out_path(f))
    else:
        cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.WEIGHTS", args.weights],
                        image_root=args.image_root)
        predictor = Predictor(cfg)
        metadata = MetadataCatalog.get(dataset) if dataset else predictor.metadata
        for f, _ in items:
            outputs = predictor(f)
            img = utils.read_image(f, "RGB")
            if "instances" in outputs:
                vis = draw_instances(img, outputs["instances"], metadata, args.score_thresh, scale=args.scale)
            elif "sem_seg" in outputs:
                v = Visualizer(img, metadata=metadata, scale=args.scale)
                vis = draw_sem_seg(v, outputs["sem_seg"].argmax(0).numpy(),
                                   getattr(metadata, "stuff_classes", None) if metadata else None).get_image()
            else:
                raise ValueError("the model gives neither instances nor sem_seg to draw")
            atomic_save_image(out_path(f), vis)
            written.append(out_path(f))
    logger.info("wrote %d images to %s", len(written), args.output)
    print("\n".join(written))
    return 0


def cli(argv=None):
    sys.exit(run_tool(main, parse_args(argv), "visualize_predictions"))


if __name__ == "__main__":
    cli()
