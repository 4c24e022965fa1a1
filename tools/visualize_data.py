#!/usr/bin/env python
"""Draw a registered dataset's ground truth, or the train loader's augmented batches, to PNGs.

    tools/visualize_data.py --dataset bccd_train --output out/ [--num 8]
    tools/visualize_data.py --config-file C --source dataloader --output out/ [--num 8]

``--source annotation`` (default) draws the dataset dicts as converted (the dataset is
``--dataset`` or the config's first DATASETS.TRAIN); ``dataloader`` draws what the model trains
on, after the config's mapper and augmentations.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
import numpy as np  # noqa: E402
from d2ext.data import build_dataset_mapper  # noqa: E402
from d2ext.engine import setup_cfg  # noqa: E402
from d2ext.core import atomic_save_image  # noqa: E402
from d2ext.utils.visualization import draw_record  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from tools._common import register_real_datasets, setup_tool_logger  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="registered dataset name (default: the config's first TRAIN)")
    p.add_argument("--config-file", default="", help="config (needed for --source dataloader)")
    p.add_argument("--source", choices=["annotation", "dataloader"], default="annotation")
    p.add_argument("--output", required=True, help="folder for the PNGs")
    p.add_argument("--num", type=int, default=8, help="number of images to draw")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def _loader_image_to_record(d, input_format):
    """A mapped training input -> (RGB image, dataset-dict-like record in the augmented frame)."""
    img = utils.convert_image_to_rgb(d["image"].permute(1, 2, 0).numpy(), input_format)
    record = {"file_name": d.get("file_name", ""), "annotations": []}
    if "instances" in d:
        inst = d["instances"]
        for k in range(len(inst)):
            a = {"bbox": inst.gt_boxes.tensor[k].tolist(), "bbox_mode": BoxMode.XYXY_ABS,
                 "category_id": int(inst.gt_classes[k])}
            if inst.has("gt_keypoints"):
                a["keypoints"] = inst.gt_keypoints.tensor[k].flatten().tolist()
            record["annotations"].append(a)
    if "sem_seg" in d:
        record["sem_seg"] = d["sem_seg"].numpy()
    return img, record


def main(argv=None):
    args = build_parser().parse_args(argv)
    logger = setup_tool_logger()
    register_real_datasets()
    cfg = setup_cfg(args.config_file, args.opts, freeze=False)
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if not name:
        raise SystemExit("visualize_data: give --dataset or a config with DATASETS.TRAIN")
    metadata = MetadataCatalog.get(name)
    os.makedirs(args.output, exist_ok=True)
    written = []
    if args.source == "annotation":
        for k, record in enumerate(DatasetCatalog.get(name)[: args.num]):
            img = utils.read_image(record["file_name"], "RGB")
            out = os.path.join(args.output, f"{k:04d}_" + os.path.basename(record["file_name"]).rsplit(".", 1)[0] + ".png")
            atomic_save_image(out, draw_record(img, record, metadata, args.scale))
            written.append(out)
    else:
        cfg.DATASETS.TRAIN = (name,)
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.freeze()
        loader = build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, True))
        for batch in loader:
            for d in batch:
                img, record = _loader_image_to_record(d, cfg.INPUT.FORMAT)
                out = os.path.join(args.output, f"{len(written):04d}_train.png")
                atomic_save_image(out, draw_record(img, record, metadata, args.scale))
                written.append(out)
                if len(written) >= args.num:
                    break
            if len(written) >= args.num:
                break
    logger.info("wrote %d images to %s", len(written), args.output)
    print("\n".join(written))
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
