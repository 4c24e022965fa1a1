"""A seeded synthetic person-keypoint dataset: stick figures with COCO's 17 keypoints.

For the Keypoint R-CNN tests and smoke runs, so they need no download. Each image holds 1 to
``max_objects`` stick figures on a noisy background; a figure is COCO's 17 person keypoints
(same names, order and left/right flip map as ``person_keypoints_*2017.json``) placed on a fixed
template scaled into a random box and jittered, drawn as limbs plus one coloured dot per
keypoint (each keypoint has its own colour, so the task is learnable). Every keypoint is
visible (v = 2). Records carry ``bbox`` (XYXY, the keypoints' extent plus a margin),
``keypoints`` (51 floats) and ``category_id`` 0 ("person"); ``evaluator_type`` "coco" gives OKS
AP with COCO's sigmas.
"""
from typing import Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from .synthetic import generate_detection_records, register_synthetic

__all__ = ["PERSON_KEYPOINT_NAMES", "PERSON_KEYPOINT_FLIP_MAP", "generate_keypoint_figures",
           "register_keypoint_figures"]

# COCO 2017 person keypoints, in the annotation files' order.
PERSON_KEYPOINT_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle",
]
PERSON_KEYPOINT_FLIP_MAP = [(n, "right_" + n[len("left_"):]) for n in PERSON_KEYPOINT_NAMES if n.startswith("left_")]
# Limbs (0-based pairs) drawn between keypoints.
_LIMBS = [(5, 7), (7, 9), (6, 8), (8, 10), (5, 6), (11, 12), (5, 11), (6, 12), (11, 13), (13, 15),
          (12, 14), (14, 16), (0, 1), (0, 2), (1, 3), (2, 4)]
# Template (x, y) in [0, 1]^2 of a frontal figure (image left = the person's right).
_TEMPLATE = np.array([
    [0.50, 0.08], [0.55, 0.05], [0.45, 0.05], [0.60, 0.07], [0.40, 0.07], [0.68, 0.25],
    [0.32, 0.25], [0.80, 0.42], [0.20, 0.42], [0.88, 0.58], [0.12, 0.58], [0.62, 0.58],
    [0.38, 0.58], [0.64, 0.78], [0.36, 0.78], [0.66, 0.97], [0.34, 0.97],
], np.float32)
_COLOURS = [tuple(int(c) for c in np.random.default_rng(k).integers(40, 256, 3)) for k in range(17)]


def _make_record(rng: np.random.Generator, size: int, max_objects: int):
    noise = rng.normal(0, 10, (size, size, 3)) + rng.uniform(20, 90)
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    annos = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        h = rng.uniform(0.45, 0.9) * size
        w = h * rng.uniform(0.45, 0.6)
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        pts = _TEMPLATE * [w, h] + [x0, y0] + rng.normal(0, 0.02 * h, _TEMPLATE.shape)
        pts = np.clip(pts, 0, size - 1)
        for a, b in _LIMBS:
            draw.line([tuple(pts[a]), tuple(pts[b])], fill=(200, 200, 200), width=max(1, size // 64))
        r = max(1.0, size / 64)
        for k, (x, y) in enumerate(pts):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_COLOURS[k])
        margin = 0.05 * h
        box = [float(max(0, pts[:, 0].min() - margin)), float(max(0, pts[:, 1].min() - margin)),
               float(min(size, pts[:, 0].max() + margin)), float(min(size, pts[:, 1].max() + margin))]
        kps = np.concatenate([pts, np.full((17, 1), 2.0, np.float32)], axis=1).reshape(-1)
        annos.append({"bbox": box, "category_id": 0, "iscrowd": 0, "keypoints": [float(v) for v in kps]})
    return img, annos


def generate_keypoint_figures(num_images: int, image_size: int = 64, seed: int = 0, max_objects: int = 2,
                              root: Optional[str] = None) -> List[Dict]:
    """Generate (or reuse from the cache) the images; return Detectron2 dataset dicts."""
    key = f"kpfig_n{num_images}_s{image_size}_seed{seed}_m{max_objects}"
    return generate_detection_records(key, num_images, image_size, seed,
                                      lambda rng: _make_record(rng, image_size, max_objects), root)


def register_keypoint_figures(name: str, num_images: int, image_size: int = 64, seed: int = 0,
                              max_objects: int = 2, root: Optional[str] = None) -> None:
    """Register a synthetic stick-figure split under ``name`` (keypoint metadata as COCO person)."""
    args = (num_images, image_size, seed, max_objects, root)
    register_synthetic(
        name, lambda: generate_keypoint_figures(*args), args,
        thing_classes=["person"],
        keypoint_names=list(PERSON_KEYPOINT_NAMES),
        keypoint_flip_map=list(PERSON_KEYPOINT_FLIP_MAP),
        keypoint_connection_rules=[(PERSON_KEYPOINT_NAMES[a], PERSON_KEYPOINT_NAMES[b], (200, 200, 200))
                                   for a, b in _LIMBS],
        evaluator_type="coco",
    )
