#!/usr/bin/env python
"""Run a Detectron2 keypoint model over an image-folder dataset; write COCO-format keypoints.

    tools/extract_keypoints.py --config-file KP.yaml --weights KP.pth --root CRICKET_DIR --out kp.json
    tools/extract_keypoints.py --config-file model_zoo:COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml \
        --weights model_final_a6e10b.pkl --dataset cricket_test --out kp.json [KEY VALUE ...]

``--root`` is a cricket-style folder (one sub-folder per class, read with
``converters.cricket``); ``--dataset`` any registered dataset whose records have ``file_name``.
The output is a COCO keypoint file::

    {"images": [{"id", "file_name", "height", "width"}, ...],         # every image processed
     "annotations": [{"id", "image_id", "file_name", "category_id": 1, "bbox": [x, y, w, h],
                      "score", "keypoints": [x, y, s] * 17}, ...],     # one per detected person
     "categories": [{"id": 1, "name": "person", "keypoints": [...], "skeleton": [...]}],
     "info": {"config_file", "weights"}}

``file_name`` is the path relative to ``--root`` (``"0. Cut Shot/12_cut_main.jpg"``; the file name
of the record with ``--dataset``), which ``converters.cricket.load_keypoint_results`` /
``attach_keypoints`` match. Keypoints follow Detectron2's COCO results (``x, y`` minus 0.5: COCO
pixel indices; ``s`` the keypoint score). The run is resumable: images already listed in an
existing ``--out`` are skipped, and the file is rewritten atomically every ``--save-every`` images.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import d2ext.engine  # noqa: E402,F401  (registers every d2ext component)
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402
from d2ext.engine import setup_cfg  # noqa: E402
from d2ext.modeling.pose import COCO_KEYPOINT_NAMES  # noqa: E402
from d2ext.core import atomic_write_json  # noqa: E402
from tools._common import register_real_datasets, setup_tool_logger  # noqa: E402

logger = logging.getLogger("d2ext.extract_keypoints")

# COCO person skeleton, 1-based (as in person_keypoints_*.json).
COCO_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                 [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True,
                   help="keypoint model config (a file, or model_zoo:COCO-Keypoints/<name>.yaml)")
    p.add_argument("--weights", required=True, help="its weights (.pth / .pkl); a user-given file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="image folder: one sub-folder per class (cricket layout)")
    src.add_argument("--dataset", help="a registered dataset name (records with file_name)")
    p.add_argument("--out", required=True, help="COCO keypoint JSON to write (resumed when it exists)")
    p.add_argument("--min-score", type=float, default=0.0, help="drop persons below this detection score")
    p.add_argument("--max-persons", type=int, default=10, help="keep at most this many persons per image")
    p.add_argument("--save-every", type=int, default=50, help="rewrite --out every N images")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="keypoint config overrides KEY VALUE ...")
    return p


def load_keypoint_model_cfg(config_file, weights, opts):
    if config_file.startswith("model_zoo:"):
        from detectron2 import model_zoo

        config_file = model_zoo.get_config_file(config_file[len("model_zoo:"):])
    cfg = setup_cfg(config_file, list(opts) + ["MODEL.WEIGHTS", weights])
    if not cfg.MODEL.KEYPOINT_ON:
        raise SystemExit(f"extract_keypoints: {config_file} is not a keypoint model (MODEL.KEYPOINT_ON False)")
    return cfg


def list_images(args):
    """``[(key, absolute file name)]`` in a stable order."""
    if args.root:
        from converters.common import ConversionReport
        from converters.cricket import load_cricket_records

        report = ConversionReport("cricket")
        _, records = load_cricket_records(args.root, report=report)
        if report.skipped:
            logger.warning("%d files skipped in %s: %s", len(report.skipped), args.root, report.skip_reasons())
        return [(r["relative_path"], r["file_name"]) for r in records]
    from detectron2.data import DatasetCatalog

    register_real_datasets()
    return [(r["file_name"], r["file_name"]) for r in DatasetCatalog.get(args.dataset)]


def load_existing(path):
    """The results written by an earlier run (resume), or an empty result."""
    import json

    if not os.path.exists(path):
        return {"images": [], "annotations": []}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SystemExit(f"extract_keypoints: {path}:{e.lineno}: not valid JSON ({e.msg}); move it away to restart")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise SystemExit(f"extract_keypoints: {path}: not a keypoint file of this tool (no images/annotations)")
    return data


class KeypointExtractor:
    """``extractor(file_name) -> (height, width, [COCO annotation without ids])``."""

    def __init__(self, cfg):
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        self.model = build_model(cfg)
        self.model.eval()
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.format = cfg.INPUT.FORMAT

    @torch.no_grad()
    def __call__(self, file_name, min_score=0.0, max_persons=10):
        from detectron2.data import detection_utils as utils

        image = utils.read_image(file_name, format=self.format)
        h, w = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(image)
        inp = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))), "height": h, "width": w}
        inst = self.model([inp])[0]["instances"].to("cpu")
        order = torch.argsort(inst.scores, descending=True)[:max_persons]
        anns = []
        for k in order.tolist():
            score = float(inst.scores[k])
            if score < min_score:
                continue
            x0, y0, x1, y1 = [float(v) for v in inst.pred_boxes.tensor[k]]
            kp = inst.pred_keypoints[k].clone()
            kp[:, :2] -= 0.5  # Detectron2 continuous coordinates -> COCO pixel indices
            anns.append({"category_id": 1, "score": round(score, 5),
                         "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                         "keypoints": [round(float(v), 3) for v in kp.flatten()]})
        return h, w, anns


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_tool_logger()
    cfg = load_keypoint_model_cfg(args.config_file, args.weights, args.opts)
    images = list_images(args)
    if args.limit > 0:
        images = images[:args.limit]
    if not images:
        raise SystemExit("extract_keypoints: no images found")
    data = load_existing(args.out)
    done = {img["file_name"] for img in data["images"]}
    todo = [(key, path) for key, path in images if key not in done]
    logger.info("%d images, %d already in %s, %d to do", len(images), len(images) - len(todo), args.out, len(todo))
    data["categories"] = [{"id": 1, "name": "person", "supercategory": "person",
                           "keypoints": list(COCO_KEYPOINT_NAMES), "skeleton": COCO_SKELETON}]
    data["info"] = {"config_file": args.config_file, "weights": args.weights}
    if not todo:
        atomic_write_json(args.out, data)
        return data
    extractor = KeypointExtractor(cfg)
    next_img = max([img["id"] for img in data["images"]], default=-1) + 1
    next_ann = max([a["id"] for a in data["annotations"]], default=-1) + 1
    for n, (key, path) in enumerate(tqdm.tqdm(todo, desc="keypoints", unit="img"), start=1):
        h, w, anns = extractor(path, args.min_score, args.max_persons)
        data["images"].append({"id": next_img, "file_name": key, "height": h, "width": w})
        for a in anns:
            data["annotations"].append(dict(a, id=next_ann, image_id=next_img, file_name=key))
            next_ann += 1
        next_img += 1
        if n % max(args.save_every, 1) == 0:
            atomic_write_json(args.out, data)
    atomic_write_json(args.out, data)
    logger.info("wrote %s: %d images, %d persons", args.out, len(data["images"]), len(data["annotations"]))
    return data


if __name__ == "__main__":
    main()
