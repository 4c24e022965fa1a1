"""A seeded synthetic detection / instance-segmentation dataset: coloured shapes on texture.

Used by ``make demo`` and the tests, so neither needs a download. Images are generated once per
(seed, size, count) into a cache folder and then read like any real dataset.

Each image holds 1-4 objects of three classes (circle, square, triangle) with random colour,
size and position on a noisy gradient background. Annotations are XYXY boxes plus polygon masks
(a circle is a 32-gon), so Faster/Mask R-CNN, RetinaNet and d2ext's dense detectors all train on it.
"""
import hashlib
import json
import math
import os
from typing import Callable, Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from ..core import atomic_save_image, atomic_write_json, cache_root

__all__ = ["SHAPE_CLASSES", "generate_shapes", "register_shapes",
           "cached_synthetic_folder", "generate_detection_records", "register_synthetic"]

SHAPE_CLASSES = ["circle", "square", "triangle"]


def _shape_polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> List[float]:
    if cls == "circle":
        n, offset = 32, 0.0
    elif cls == "square":
        n, offset = 4, math.pi / 4 + angle
    else:
        n, offset = 3, -math.pi / 2 + angle
    pts = []
    for k in range(n):
        t = offset + 2 * math.pi * k / n
        pts += [cx + r * math.cos(t), cy + r * math.sin(t)]
    return pts


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    w = rng.uniform(0, 1)
    ramp = (w * xx + (1 - w) * yy)[..., None]
    img = c0 * (1 - ramp) + c1 * ramp + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_record(rng: np.random.Generator, size: int, max_objects: int):
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    annos = []
    placed = []  # (cx, cy, r): keep shapes mostly apart so every box is well defined
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            r = rng.uniform(0.08, 0.2) * size
            cx, cy = rng.uniform(r, size - r, 2)
            if all(math.hypot(cx - px, cy - py) > 0.9 * (r + pr) for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        cls = int(rng.integers(len(SHAPE_CLASSES)))
        poly = _shape_polygon(SHAPE_CLASSES[cls], cx, cy, r, rng.uniform(0, math.pi / 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=colour, outline=(0, 0, 0))
        xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
        box = [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]
        annos.append({"bbox": box, "category_id": cls, "segmentation": [poly], "iscrowd": 0})
    return img, annos


def cached_synthetic_folder(key: str, root: Optional[str], write: Callable[[str], object]) -> str:
    """``<root>/<key>/``, filled once by ``write(folder)``; its return value is saved as
    ``index.json``, written last and atomically, so an interrupted folder is regenerated."""
    folder = os.path.join(root or cache_root(), key)
    index = os.path.join(folder, "index.json")
    if not os.path.exists(index):
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(index, write(folder))
    return folder


def synthetic_image_id(key: str, i: int) -> int:
    """Image ids unique across synthetic sets (COCO evaluation keys images by id)."""
    return int(hashlib.md5(key.encode()).hexdigest()[:6], 16) * 100000 + i


def generate_detection_records(key: str, num_images: int, image_size: int, seed: int,
                               make_record: Callable, root: Optional[str] = None) -> List[Dict]:
    """Dataset dicts of a cached synthetic detection set; ``make_record(rng)`` returns
    ``(PIL image, annotations with XYXY boxes)`` and is called ``num_images`` times in order."""
    from detectron2.structures import BoxMode

    def write(folder):
        rng = np.random.default_rng(seed)
        records = []
        for i in range(num_images):
            img, annos = make_record(rng)
            atomic_save_image(os.path.join(folder, f"{i:05d}.png"), np.asarray(img))
            records.append({"file_name": f"{i:05d}.png", "annotations": annos})
        return records

    folder = cached_synthetic_folder(key, root, write)
    with open(os.path.join(folder, "index.json")) as f:
        records = json.load(f)
    return [
        {
            "file_name": os.path.join(folder, r["file_name"]),
            "height": image_size, "width": image_size,
            "image_id": synthetic_image_id(key, i),
            "annotations": [dict(a, bbox_mode=BoxMode.XYXY_ABS) for a in r["annotations"]],
        }
        for i, r in enumerate(records)
    ]


def register_synthetic(name: str, loader: Callable[[], List[Dict]], args: tuple, **metadata) -> None:
    """Register ``loader`` under ``name``; again with the same ``args`` is a no-op, with other
    ``args`` an error (two different datasets must not share a name)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(name)
    if name in DatasetCatalog.list():
        if getattr(meta, "d2ext_synthetic_args", None) == args:
            return
        raise ValueError(f"dataset {name!r} is already registered with different arguments")
    DatasetCatalog.register(name, loader)
    meta.set(d2ext_synthetic_args=args, **metadata)


def generate_shapes(
    num_images: int, image_size: int = 128, seed: int = 0, max_objects: int = 4,
    root: Optional[str] = None,
) -> List[Dict]:
    """Generate (or reuse from the cache) the dataset; return Detectron2 dataset dicts.

    The same arguments always give the same images and annotations.
    """
    key = f"shapes_n{num_images}_s{image_size}_seed{seed}_m{max_objects}"
    return generate_detection_records(key, num_images, image_size, seed,
                                      lambda rng: _make_record(rng, image_size, max_objects), root)


def register_shapes(
    name: str, num_images: int, image_size: int = 128, seed: int = 0, max_objects: int = 4,
    root: Optional[str] = None,
) -> None:
    """Register a synthetic shapes split under ``name`` (COCO-style evaluation)."""
    args = (num_images, image_size, seed, max_objects, root)
    register_synthetic(name, lambda: generate_shapes(*args), args,
                       thing_classes=list(SHAPE_CLASSES), evaluator_type="coco")
