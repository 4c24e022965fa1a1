#!/usr/bin/env python
"""Run a keypoint backend over an image-folder dataset; write COCO-format keypoints.

    # MediaPipe BlazePose: bundled with `make setup-pose`, nothing downloaded, CPU
    tools/extract_keypoints.py --backend mediapipe --root CRICKET_DIR --out kp.json
    # Detectron2 (the default backend): a keypoint config and weights the user downloads
    tools/extract_keypoints.py --config-file KP.yaml --weights KP.pth --root CRICKET_DIR --out kp.json
    tools/extract_keypoints.py --config-file model_zoo:COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml \\
        --weights model_final_a6e10b.pkl --dataset cricket_test --out kp.json [KEY VALUE ...]

``--root`` is a cricket-style folder (one sub-folder per class, read with ``converters.cricket``);
``--dataset`` any registered dataset whose records have ``file_name``. The output is a COCO
keypoint file, the same for every backend::

    {"images": [{"id", "file_name", "height", "width", "attempt"}, ...],   # every image processed
     "annotations": [{"id", "image_id", "file_name", "category_id": 1, "bbox": [x, y, w, h],
                      "score", "keypoints": [x, y, s] * 17}, ...],      # one per person found
     "categories": [{"id": 1, "name": "person", "keypoints": [...], "skeleton": [...]}],
     "info": {"backend", ...}}

An image where no person is found is listed in ``images`` with no annotation (``"attempt":
null``); ``attempt`` otherwise names the input that gave the persons (the mediapipe backend
retries on padded copies: ``original``, ``pad25``, ``pad50``; see d2ext/modeling/pose/backends.py).
``file_name`` is the path relative to ``--root`` (``"0. Cut Shot/12_cut_main.jpg"``; the file name
of the record with ``--dataset``), which ``converters.cricket.load_keypoint_results`` /
``attach_keypoints`` match. Keypoints are COCO pixel indices with the backend's keypoint score.
The run is resumable: images already listed in an existing ``--out`` are skipped (a file made by
another backend is refused), and the file is rewritten atomically every ``--save-every`` images.
An unreadable image is reported on one line and counted, not listed (a rerun retries it).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools._common import add_debug_flag, run_tool  # noqa: E402

logger = logging.getLogger("d2ext.extract_keypoints")

BACKENDS = ("detectron2", "mediapipe")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, default="detectron2",
                   help="keypoint model: a Detectron2 config + weights (default), or MediaPipe BlazePose "
                        "(bundled; `make setup-pose`)")
    p.add_argument("--config-file", help="detectron2: keypoint model config (a file, or "
                                         "model_zoo:COCO-Keypoints/<name>.yaml)")
    p.add_argument("--weights", help="detectron2: its weights (.pth / .pkl); a user-given file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="image folder: one sub-folder per class (cricket layout)")
    src.add_argument("--dataset", help="a registered dataset name (records with file_name)")
    p.add_argument("--output", "--out", dest="out", required=True, help="COCO keypoint JSON to write (resumed when it exists)")
    p.add_argument("--min-score", type=float, default=0.0, help="detectron2: drop persons below this score")
    p.add_argument("--max-persons", type=int, default=10, help="detectron2: keep at most this many persons")
    p.add_argument("--min-detection-confidence", type=float, default=0.5,
                   help="mediapipe: BlazePose detector threshold (MediaPipe's default 0.5)")
    p.add_argument("--save-every", type=int, default=50, help="rewrite --out every N images")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    add_debug_flag(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="detectron2: keypoint config overrides KEY VALUE ...")
    return p


def build_backend(args):
    from d2ext.modeling.pose.backends import build_keypoint_backend

    if args.backend == "mediapipe":
        return build_keypoint_backend("mediapipe", min_detection_confidence=args.min_detection_confidence)
    if not args.config_file or not args.weights:
        raise ValueError("--backend detectron2 needs --config-file and --weights (or use --backend mediapipe)")
    from d2ext.engine import setup_cfg

    config_file = args.config_file
    if config_file.startswith("model_zoo:"):
        from detectron2 import model_zoo

        config_file = model_zoo.get_config_file(config_file[len("model_zoo:"):])
    cfg = setup_cfg(config_file, list(args.opts or []) + ["MODEL.WEIGHTS", args.weights])
    return build_keypoint_backend("detectron2", cfg=cfg, min_score=args.min_score, max_persons=args.max_persons)


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

    from tools._common import register_real_datasets

    register_real_datasets()
    return [(r["file_name"], r["file_name"]) for r in DatasetCatalog.get(args.dataset)]


def load_existing(path, backend_name):
    """The results written by an earlier run of the same backend (resume), or an empty result."""
    import json

    if not os.path.exists(path):
        return {"images": [], "annotations": []}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); move it away to restart") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{path}: not a keypoint file of this tool (no images/annotations)")
    old = data.get("info", {}).get("backend", "detectron2")  # files of older versions: detectron2
    if old != backend_name:
        raise ValueError(f"{path}: written by backend {old!r}, not {backend_name!r}; use another --out")
    return data


def extract(args):
    from converters.coco_keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
    from d2ext.core import atomic_write_json, setup_logger

    setup_logger("d2ext")
    images = list_images(args)
    if args.limit > 0:
        images = images[:args.limit]
    if not images:
        raise ValueError(f"no images found in {args.root or args.dataset}")
    data = load_existing(args.out, args.backend)
    done = {img["file_name"] for img in data["images"]}
    todo = [(key, path) for key, path in images if key not in done]
    logger.info("%d images, %d already in %s, %d to do", len(images), len(images) - len(todo), args.out, len(todo))
    data["categories"] = [{"id": 1, "name": "person", "supercategory": "person",
                           "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
                           "skeleton": [list(e) for e in COCO_PERSON_SKELETON]}]
    if not todo:
        atomic_write_json(args.out, data)
        return 0
    import tqdm

    backend = build_backend(args)
    data["info"] = dict(backend.info(), **({"config_file": args.config_file} if args.config_file else {}))
    next_img = max([img["id"] for img in data["images"]], default=-1) + 1
    next_ann = max([a["id"] for a in data["annotations"]], default=-1) + 1
    unreadable = 0
    for n, (key, path) in enumerate(tqdm.tqdm(todo, desc=f"keypoints ({args.backend})", unit="img"), start=1):
        try:
            h, w, persons, attempt = backend(path)
        except OSError as e:  # unreadable / truncated image: one line, counted, retried by a rerun
            unreadable += 1
            logger.warning("%s: cannot read the image (%s); skipped", path, e)
            continue
        data["images"].append({"id": next_img, "file_name": key, "height": h, "width": w, "attempt": attempt})
        for a in persons:
            data["annotations"].append(dict(a, id=next_ann, image_id=next_img, file_name=key))
            next_ann += 1
        next_img += 1
        if n % max(args.save_every, 1) == 0:
            atomic_write_json(args.out, data)
    atomic_write_json(args.out, data)
    with_person = len({a["image_id"] for a in data["annotations"]})
    logger.info("wrote %s: %d images (%d with a person), %d persons; %d unreadable images skipped", args.out,
                len(data["images"]), with_person, len(data["annotations"]), unreadable)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_tool(extract, args, "extract_keypoints")


if __name__ == "__main__":
    sys.exit(main())
