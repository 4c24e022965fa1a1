"""Seeded synthetic semantic-segmentation data: blobs and circles on noisy backgrounds.

Used by the segmentation tests (U-Net, DeepLabv3) so that none of them needs a download. Images
are written once per argument set as ``NNNNN.png`` (RGB) beside ``NNNNN_label.png`` (uint8 class
ids; 0 = background) and then read like any real dataset through Detectron2's ``DatasetMapper``.

Class ids: 0 background, 1 circles, 2 ellipse "blobs" (only when ``num_classes == 3``).

Two knobs make the task hard for global thresholding while staying easy for a CNN:

- ``gradient``: an illumination ramp of this amplitude (grey levels) across the background, so no
  single threshold separates objects from background everywhere (uneven illumination);
- ``contrast``: how much darker objects are than their surroundings (class 2 twice class 1);
- ``texture``: objects carry a per-pixel +-``texture`` grey-level checkerboard around a mean equal
  to the local background, so object and background have the *same* mean intensity and differ only
  in texture. With ``texture > 0`` and ``contrast == 0`` thresholding fails by construction.
"""
import hashlib
import os
from typing import Dict, List, Optional

import numpy as np

from ..core import atomic_save_image, cache_root
from .synthetic import cached_synthetic_folder, register_synthetic, synthetic_image_id

__all__ = ["SYNTHETIC_SEG_CLASSES", "make_seg_sample", "generate_synthetic_seg", "register_synthetic_seg"]

SYNTHETIC_SEG_CLASSES = ["background", "circle", "blob"]


def make_seg_sample(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_classes: int = 2,
    max_objects: int = 3,
    contrast: float = 80.0,
    noise: float = 10.0,
    gradient: float = 0.0,
    texture: float = 0.0,
):
    """One image and its label map.

    Returns:
        image: ``(H, W, 3)`` uint8 RGB (grey objects on a grey background, same value in all
            three channels so that colour does not give the answer away). Objects are darker
            than the background by ``contrast * cls / (num_classes - 1)``, as stained cells
            under a bright field are;
        label: ``(H, W)`` uint8 class ids in ``[0, num_classes)``.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = float(rng.uniform(90, 150))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * (xx / max(width - 1, 1) - 0.5) + np.sin(angle) * (yy / max(height - 1, 1) - 0.5))
    background = base + gradient * ramp
    img = background.copy()
    label = np.zeros((height, width), np.uint8)
    checker = np.where((yy.astype(int) + xx.astype(int)) % 2 == 0, 1.0, -1.0).astype(np.float32)
    size = min(height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = 1 if num_classes == 2 else int(rng.integers(1, 3))
        r = rng.uniform(0.1, 0.22) * size
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        if cls == 1:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:  # an axis-aligned ellipse, aspect 2:1
            inside = ((yy - cy) / (0.5 * r)) ** 2 + ((xx - cx) / r) ** 2 <= 1.0
        img[inside] = background[inside] - contrast * cls / (num_classes - 1) + texture * checker[inside]
        label[inside] = cls
    img = img + rng.normal(0, noise, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(img[..., None], 3, axis=2), label


def generate_synthetic_seg(
    root: str,
    num_images: int,
    image_size=64,
    seed: int = 0,
    num_classes: int = 2,
    **sample_kwargs,
) -> List[Dict]:
    """Write (or reuse) the images under ``root/<key>/`` and return Detectron2 dataset dicts.

    ``image_size`` is an int (square) or ``(height, width)``. Dicts carry ``file_name``,
    ``sem_seg_file_name``, ``height``, ``width``, ``image_id``. Same arguments, same files.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    kw = ",".join(f"{k}={sample_kwargs[k]}" for k in sorted(sample_kwargs))
    key = f"seg_n{num_images}_{h}x{w}_seed{seed}_c{num_classes}_" + hashlib.md5(kw.encode()).hexdigest()[:8]

    def write(folder):
        rng = np.random.default_rng(seed)
        for i in range(num_images):
            img, label = make_seg_sample(rng, h, w, num_classes=num_classes, **sample_kwargs)
            atomic_save_image(os.path.join(folder, f"{i:05d}.png"), img)
            atomic_save_image(os.path.join(folder, f"{i:05d}_label.png"), label)
        return {"num_images": num_images, "height": h, "width": w}

    folder = cached_synthetic_folder(key, root, write)
    return [
        {
            "file_name": os.path.join(folder, f"{i:05d}.png"),
            "sem_seg_file_name": os.path.join(folder, f"{i:05d}_label.png"),
            "height": h,
            "width": w,
            "image_id": synthetic_image_id(key, i),
        }
        for i in range(num_images)
    ]


def register_synthetic_seg(
    name: str,
    root: Optional[str] = None,
    num_images: int = 16,
    image_size=64,
    seed: int = 0,
    num_classes: int = 2,
    **sample_kwargs,
) -> None:
    """Register a synthetic sem-seg split under ``name`` (``evaluator_type`` "sem_seg").

    Metadata: ``stuff_classes`` (``num_classes`` names), ``ignore_label`` 255.
    ``root`` defaults to ``$D2EXT_CACHE`` or ``~/.cache/d2ext``.
    """
    root = root or str(cache_root())
    args = (root, num_images, image_size, seed, num_classes, tuple(sorted(sample_kwargs.items())))
    register_synthetic(
        name,
        lambda: generate_synthetic_seg(root, num_images, image_size, seed, num_classes, **sample_kwargs),
        args,
        stuff_classes=list(SYNTHETIC_SEG_CLASSES[:num_classes]),
        ignore_label=255,
        evaluator_type="sem_seg",
    )
