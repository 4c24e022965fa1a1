#!/usr/bin/env python
"""Draw a registered dataset's ground truth, or the train loader's augmented batches, to PNGs.

    tools/visualize_data.py --dataset bccd_train --output out/ [--num 8]
    tools/visualize_data.py --config-file C --source dataloader --output out/ [--num 8]

``--source annotation`` (default) draws the dataset dicts as converted (the dataset is
``--dataset`` or the config's first DATASETS.TRAIN); ``dataloader`` draws what the model trains
on, after the config's mapper and augmentations.

A ``--dataset`` (or DATASETS.TRAIN entry) may be the path of a COCO ``.json`` file (images under
``--image-root``, else where the file records them, else beside it). Semantic-segmentation labels
are filled with one colour per class and one legend per image.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", help="registered dataset name or COCO .json path (default: the config's first TRAIN)")
    p.add_argument("--config-file", default="", help="config (needed for --source dataloader)")
    p.add_argument("--source", choices=["annotation", "dataloader"], default="annotation")
    p.add_argument("--output", "--output-dir", required=True, help="folder for the PNGs")
    p.add_argument("--image-root", help="folder of a COCO file's images (default: as the file records)")
    p.add_argument("--num", type=int, default=8, help="number of images to draw")
    p.add_argument("--scale", type=float, default=1.0, help="resize the drawings by this factor")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def _loader_image_to_record(d, input_format):
    """A mapped training input -> (RGB image, dataset-dict-like record in the augmented frame)."""
    from detectron2.data import detection_utils as utils
    from detectron2.structures import BoxMode

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


def main(args):
    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.core import atomic_save_image, check_outputs
    from d2ext.data import build_dataset_mapper
    from d2ext.data.coco_files import resolve_dataset
    from d2ext.engine import setup_cfg
    from d2ext.utils.visualization import draw_record
    from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
    from detectron2.data import detection_utils as utils
    from tools._common import register_real_datasets, setup_tool_logger

    logger = setup_tool_logger()
    register_real_datasets()
    cfg = setup_cfg(args.config_file, args.opts, freeze=False, image_root=args.image_root)
    name = args.dataset or (cfg.DATASETS.TRAIN[0] if cfg.DATASETS.TRAIN else None)
    if not name:
        raise ValueError("give --dataset or a config with DATASETS.TRAIN")
    name = resolve_dataset(name, args.image_root)
    metadata = MetadataCatalog.get(name)
    check_outputs([name] if os.path.exists(name) else [], [args.output], tool="visualize_data")
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


def cli(argv=None):
    sys.exit(run_tool(main, build_parser().parse_args(argv), "visualize_data"))


if __name__ == "__main__":
    cli()
