#!/usr/bin/env python
"""Draw PoseShotClassifier / FusedShotClassifier predictions: skeleton, normalised-pose inset, shot, probability.

    tools/visualize_shot.py --config-file configs/cricket/pose_shot_head.yaml --weights HEAD.pth \
        --input IMG_OR_DIR [...] --output-dir vis/ [--keypoints kp.json] [KEY VALUE ...]

With ``--keypoints`` (a ``tools/extract_keypoints.py`` file) the cached persons are used, matched
by path relative to the input folder or by base name; otherwise the config's keypoint model
(``MODEL.POSE_SHOT.KEYPOINT_CONFIG`` + ``KEYPOINT_WEIGHTS``) runs on the images. Class names come
from ``--class-names`` or the metadata of ``DATASETS.TEST[0]``. One PNG per image is written.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import register_real_datasets, setup_tool_logger  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="a PoseShotClassifier or FusedShotClassifier config")
    p.add_argument("--weights", default="", help="its trained checkpoint")
    p.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    p.add_argument("--output", "--output-dir", dest="output_dir", required=True, help="folder for the pictures")
    p.add_argument("--keypoints", help="cached keypoints (tools/extract_keypoints.py output)")
    p.add_argument("--class-names", nargs="+", help="shot names in label order")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)  # before the heavy imports: --help answers at once

    import torch
    import tqdm
    from d2ext.checkpoint import SafeCheckpointer
    from detectron2.data import MetadataCatalog
    from detectron2.data import detection_utils as utils
    from detectron2.modeling import build_model
    from PIL import Image

    import d2ext.engine  # noqa: F401  (registers every d2ext component)
    from d2ext.core import atomic_save_image
    from d2ext.data import build_dataset_mapper
    from d2ext.engine import list_images, setup_cfg
    from d2ext.utils.pose_vis import draw_pose_shot

    logger = setup_tool_logger()
    register_real_datasets()
    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model(cfg)
    if args.weights:
        SafeCheckpointer(model, allow_partial=cfg.MODEL.WEIGHTS_PARTIAL).load(args.weights)
    model.eval()
    mapper = build_dataset_mapper(cfg, False)  # INPUT.DATASET_MAPPER_NAME: PoseShot- / FusedShotDatasetMapper
    names = args.class_names
    if names is None and cfg.DATASETS.TEST:
        names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes", None)
    cached = {}
    if args.keypoints:
        from converters.cricket import load_keypoint_results

        cached = load_keypoint_results(args.keypoints)
    by_base = {}
    for key in cached:
        by_base.setdefault(os.path.basename(key), []).append(key)
    roots = [os.path.abspath(p) for p in args.input if os.path.isdir(p)]
    files = list_images(args.input)
    os.makedirs(args.output_dir, exist_ok=True)
    for f in tqdm.tqdm(files, desc="visualize"):
        with Image.open(f) as im:
            width, height = im.size
        record = {"file_name": f, "height": height, "width": width}
        if args.keypoints:
            af = os.path.abspath(f)
            rel = next((os.path.relpath(af, r) for r in roots if af.startswith(r + os.sep)), None)
            key = rel if rel in cached else (by_base[os.path.basename(f)][0]
                                             if len(by_base.get(os.path.basename(f), [])) == 1 else None)
            if key is None:
                logger.warning("%s: no cached keypoints in %s; drawn without a person", f, args.keypoints)
            record["keypoints"] = cached.get(key, [])
        with torch.no_grad():
            out = model([mapper(record)])[0]
        image = utils.read_image(f, format="RGB")
        kps = out["keypoints"].numpy() if out["person_index"] >= 0 else None
        vis = draw_pose_shot(image, kps, out["scores"], names)
        af = os.path.abspath(f)
        rel = next((os.path.relpath(af, r) for r in roots if af.startswith(r + os.sep)), os.path.basename(f))
        stem = os.path.splitext(rel)[0]
        atomic_save_image(os.path.join(args.output_dir, stem.replace(os.sep, "__") + ".png"), vis)
    logger.info("wrote %d images to %s", len(files), args.output_dir)


if __name__ == "__main__":
    main()
