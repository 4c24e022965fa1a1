#!/usr/bin/env python
"""Selective-search region proposals (Uijlings et al. 2013), cached per image, written as a
Detectron2 proposal file.

    tools/proposals.py --dataset bccd_wbc1_train bccd_wbc1_val bccd_wbc1_test \
        --out output/proposals/bccd_wbc1_ss.pkl [--max-proposals 300] [--max-side 320] [--mode fast]

OpenCV's ``cv2.ximgproc.segmentation`` (the contrib build) in its fast mode (R-CNN used the fast
mode too, Girshick et al. 2014). Images are shrunk to ``--max-side`` pixels on the long side first
(320: ~0.8 s per BCCD image on one core instead of ~7 s at 640) and the boxes scaled back.
Boxes smaller than ``--min-size`` pixels on a side are dropped, duplicates kept once, and the
first ``--max-proposals`` kept in a fixed pseudo-random order (OpenCV's own ranking has an
unseeded random factor, so it differs between runs; the set of boxes does not).

Cache: every image's full proposal list (before the cap) is stored once under
``$D2EXT_CACHE/selective_search/<mode>_<max side>/`` (``~/.cache/d2ext``), keyed by the image's
absolute path, size and modification time, so the R-CNN, its SVM stage and Fast R-CNN share one
run. The output file is a pickled dict ``{"ids", "boxes" (N_i x 4 float32, XYXY_ABS),
"objectness_logits" (N_i, decreasing with the rank), "bbox_mode"}`` — what Detectron2's
``load_proposals_into_dataset`` reads for ``MODEL.LOAD_PROPOSALS`` / ``DATASETS.PROPOSAL_FILES_*``.
"""
import argparse
import hashlib
import os
import pickle
import sys
import time
from typing import Iterable, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from d2ext.core import atomic_open, cache_root, check_outputs  # noqa: E402
from tools._common import add_debug_flag, run_tool  # noqa: E402

MODES = ("fast", "quality")


def selective_search(image_bgr: np.ndarray, mode: str = "fast", max_side: int = 320,
                     min_size: float = 8.0) -> np.ndarray:
    """``(N, 4)`` float32 XYXY boxes of ``image_bgr`` (H x W x 3 uint8) in its own pixels,
    inside the image, in selective search's order, duplicates and boxes under ``min_size``
    pixels removed; the order is a fixed pseudo-random permutation (see below), so capping it is
    reproducible."""
    import cv2

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    cv2.setNumThreads(1)  # one core; results do not depend on the thread count
    h, w = image_bgr.shape[:2]
    scale = min(1.0, float(max_side) / max(h, w)) if max_side else 1.0
    small = image_bgr if scale == 1.0 else cv2.resize(
        image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    (ss.switchToSelectiveSearchFast if mode == "fast" else ss.switchToSelectiveSearchQuality)()
    rects = np.asarray(ss.process(), dtype=np.float64).reshape(-1, 4)  # x, y, w, h
    sh, sw = small.shape[:2]
    sx, sy = w / sw, h / sh
    boxes = np.stack([rects[:, 0] * sx, rects[:, 1] * sy, (rects[:, 0] + rects[:, 2]) * sx,
                      (rects[:, 1] + rects[:, 3]) * sy], axis=1)
    boxes = np.clip(boxes, 0, [w, h, w, h])
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    return _fixed_order(np.round(boxes[keep], 2).astype(np.float32))


def _fixed_order(boxes: np.ndarray) -> np.ndarray:
    """Unique boxes in a fixed pseudo-random order. OpenCV ranks the regions with an unseeded
    random factor (hierarchy level x random, as the paper), so its order changes from run to run
    while the set does not; this order of the set stands in for it, so a capped list is the same
    in every run."""
    boxes = np.unique(np.asarray(boxes, np.float32).reshape(-1, 4), axis=0)  # sorted
    return boxes[np.random.default_rng(0).permutation(len(boxes))]


def _cache_file(image_path: str, mode: str, max_side: int, min_size: float) -> str:
    st = os.stat(image_path)
    key = f"{os.path.abspath(image_path)}|{st.st_size}|{st.st_mtime_ns}|{min_size}"
    name = hashlib.sha1(key.encode()).hexdigest()[:20] + ".npy"
    return os.path.join(cache_root(), "selective_search", f"{mode}_{max_side}", name)


def cached_proposals(image_path: str, mode: str = "fast", max_side: int = 320,
                     min_size: float = 8.0) -> np.ndarray:
    """:func:`selective_search` of an image file, computed once and cached (atomic .npy)."""
    cache = _cache_file(image_path, mode, max_side, min_size)
    if os.path.exists(cache):
        return _fixed_order(np.load(cache))
    import cv2

    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{image_path}: not a readable image")
    boxes = selective_search(image, mode, max_side, min_size)
    with atomic_open(cache, "wb") as f:
        np.save(f, boxes)
    return boxes


def proposal_dict(records: Iterable[dict], max_proposals: int = 300, mode: str = "fast",
                  max_side: int = 320, min_size: float = 8.0, log_every: int = 0) -> dict:
    """Detectron2's proposal-file dict for ``records`` (unique ``image_id`` s, first kept)."""
    ids, boxes, logits, seen = [], [], [], set()
    t0 = time.perf_counter()
    records = list(records)
    for n, rec in enumerate(records, 1):
        if rec["image_id"] in seen:
            continue
        seen.add(rec["image_id"])
        b = cached_proposals(rec["file_name"], mode, max_side, min_size)[:max_proposals]
        ids.append(rec["image_id"])
        boxes.append(b)
        # selective search has no score: rank order, best first (Detectron2 sorts by this)
        logits.append(-np.arange(len(b), dtype=np.float32))
        if log_every and n % log_every == 0:
            print(f"proposals: {n}/{len(records)} images, {time.perf_counter() - t0:.0f} s", flush=True)
    return {"ids": ids, "boxes": boxes, "objectness_logits": logits, "bbox_mode": 0}


def write_proposal_file(records: Iterable[dict], path, **kwargs) -> dict:
    props = proposal_dict(records, **kwargs)
    with atomic_open(path, "wb") as f:
        pickle.dump(props, f, protocol=pickle.HIGHEST_PROTOCOL)
    return props


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", required=True, help="registered Detectron2 dataset(s)")
    p.add_argument("--output", "--out", dest="out", required=True, help="proposal file (.pkl) to write")
    p.add_argument("--max-proposals", type=int, default=300, help="per image (R-CNN: ~2000)")
    p.add_argument("--max-side", type=int, default=320, help="shrink images to this long side first (0: no)")
    p.add_argument("--min-size", type=float, default=8.0, help="drop boxes under this many pixels a side")
    p.add_argument("--mode", choices=MODES, default="fast")
    add_debug_flag(p)
    return p


def main(args) -> int:
    from detectron2.data import DatasetCatalog

    from tools._common import register_real_datasets

    import d2ext.data  # noqa: F401  (synthetic datasets)

    register_real_datasets()
    records: List[dict] = []
    for name in args.dataset:
        if name not in DatasetCatalog.list():
            raise KeyError(f"dataset {name!r} is not registered (is ../shared/data present?)")
        records += DatasetCatalog.get(name)
    check_outputs([r["file_name"] for r in records], [args.out], "proposals")
    props = write_proposal_file(records, args.out, max_proposals=args.max_proposals, mode=args.mode,
                                max_side=args.max_side, min_size=args.min_size, log_every=50)
    n = [len(b) for b in props["boxes"]]
    print(f"wrote {args.out}: {len(n)} images, {sum(n)} proposals ({min(n)}-{max(n)} per image)")
    return 0


if __name__ == "__main__":
    parsed = build_parser().parse_args()
    sys.exit(run_tool(main, parsed, "proposals"))
