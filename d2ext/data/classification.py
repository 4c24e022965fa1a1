"""Image classification data: the classification dataset mapper and the built-in ``digits``.

A classification dataset dict is a Detectron2 record without ``annotations``::

    {"file_name": str, "height": int, "width": int, "image_id": int, "label": int}

``label`` indexes ``MetadataCatalog.get(name).thing_classes``; the dataset's ``evaluator_type`` is
``"classification"`` (:class:`d2ext.evaluation.ClassificationEvaluator`). Configs set
``DATALOADER.FILTER_EMPTY_ANNOTATIONS: False`` (Detectron2's filter expects ``annotations``).
"""
import json
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..core import atomic_write_json, cache_root
from .mappers import DATASET_MAPPER_REGISTRY

__all__ = [
    "CenterCrop",
    "RandomShift",
    "ShortEdgeResize",
    "ClassificationDatasetMapper",
    "DIGITS_IMAGE_SIZE",
    "build_classification_augmentations",
    "load_digits_split",
    "register_digits",
]

logger = logging.getLogger(__name__)


class CenterCrop(T.Augmentation):
    """Crop the central ``size`` x ``size`` window (offsets rounded as torchvision's CenterCrop)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def get_transform(self, image):
        h, w = image.shape[:2]
        if h < self.size or w < self.size:
            return T.NoOpTransform()  # reported by the mapper, which knows the file name
        y0 = int(round((h - self.size) / 2.0))
        x0 = int(round((w - self.size) / 2.0))
        return T.CropTransform(x0, y0, self.size, self.size)


class ShortEdgeResize(T.Augmentation):
    """Resize the short edge to ``size`` by torchvision's ``Resize(int)`` rule (long edge
    truncated, bilinear PIL resampling), so evaluation crops equal torchvision's pixel for pixel.
    (Detectron2's ``ResizeShortestEdge`` rounds the long edge instead.)
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def get_transform(self, image):
        from PIL import Image

        h, w = image.shape[:2]
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_h, new_w = self.size, int(self.size * w / h)
        return T.ResizeTransform(h, w, new_h, new_w, Image.BILINEAR)


class RandomShift(T.Augmentation):
    """Translate by up to ``max_shift`` pixels in x and y, filling with zeros; same output size.

    The usual augmentation for centred digits (e.g. Simard et al. 2003 use small distortions).
    """

    def __init__(self, max_shift: int):
        super().__init__()
        self.max_shift = int(max_shift)

    def get_transform(self, image):
        h, w = image.shape[:2]
        m = self.max_shift
        dx, dy = (int(v) for v in np.random.randint(-m, m + 1, size=2))
        # Pad m on every side, then crop the window moved by (dx, dy) from the centre.
        return T.TransformList([
            T.PadTransform(m, m, m, m, orig_w=w, orig_h=h, pad_value=0),
            T.CropTransform(m + dx, m + dy, w, h),
        ])


def build_classification_augmentations(cfg, is_train: bool) -> List[T.Augmentation]:
    """Resize the short edge (``INPUT.MIN_SIZE_*``; 0 keeps the size; one size with
    ``MAX_SIZE_*`` >= 10000 resizes as torchvision's ``Resize``), crop
    ``INPUT.CLASSIFICATION.CROP_SIZE`` (random in training, centred in testing; 0 = none), and in
    training shift by up to ``INPUT.CLASSIFICATION.RANDOM_SHIFT`` pixels and flip per
    ``INPUT.RANDOM_FLIP``. Torchvision's ImageNet evaluation is
    ``MIN_SIZE_TEST: 256``, ``CROP_SIZE: 224``.
    """
    if is_train:
        min_size, max_size = cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN
        sample_style = cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
    else:
        min_size, max_size, sample_style = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice"
    if isinstance(min_size, int):
        min_size = (min_size,)
    augs: List[T.Augmentation] = []
    if len(min_size) == 1 and min_size[0] > 0 and max_size >= 10000:
        augs.append(ShortEdgeResize(min_size[0]))  # torchvision's rule: uncapped, long edge truncated
    elif any(s > 0 for s in min_size):
        augs.append(T.ResizeShortestEdge(min_size, max_size, sample_style))
    crop = cfg.INPUT.CLASSIFICATION.CROP_SIZE
    if crop > 0:
        augs.append(T.RandomCrop("absolute", (crop, crop)) if is_train else CenterCrop(crop))
    if is_train and cfg.INPUT.CLASSIFICATION.RANDOM_SHIFT > 0:
        augs.append(RandomShift(cfg.INPUT.CLASSIFICATION.RANDOM_SHIFT))
    if is_train and cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(
            horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
            vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
        ))
    return augs


@DATASET_MAPPER_REGISTRY.register()
class ClassificationDatasetMapper:
    """Dataset dict -> ``{"image": (C, H, W) uint8 tensor in INPUT.FORMAT, "label": int, ...}``.

    ``image_format`` "L" reads 1 channel; "RGB"/"BGR" read 3 (grey files are replicated to 3
    channels). ``num_channels`` (= ``len(MODEL.PIXEL_MEAN)``) is checked against what is read.
    ``crop_size`` > 0 asserts every output is ``crop_size`` x ``crop_size``.
    """

    @configurable
    def __init__(self, is_train: bool, *, augmentations: List[T.Augmentation], image_format: str = "RGB",
                 num_channels: Optional[int] = None, crop_size: int = 0):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_channels = num_channels
        self.crop_size = int(crop_size)
        logger.info(f"[ClassificationDatasetMapper] {'train' if is_train else 'test'}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        return {
            "is_train": is_train,
            "augmentations": build_classification_augmentations(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_channels": len(cfg.MODEL.PIXEL_MEAN),
            "crop_size": cfg.INPUT.CLASSIFICATION.CROP_SIZE,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = dict(dataset_dict)
        file_name = record["file_name"]
        if self.is_train and "label" not in record:
            raise KeyError(f"{file_name}: classification record has no 'label'")
        image = utils.read_image(file_name, format=self.image_format)
        if image.ndim == 2:
            image = image[:, :, None]
        if self.num_channels is not None and image.shape[2] != self.num_channels:
            raise ValueError(
                f"{file_name}: INPUT.FORMAT {self.image_format!r} gives {image.shape[2]} channel(s) but "
                f"the model normalises {self.num_channels} (len(MODEL.PIXEL_MEAN))"
            )
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        if image.ndim == 2:  # some transforms drop a single channel axis
            image = image[:, :, None]
        if self.crop_size and image.shape[:2] != (self.crop_size, self.crop_size):
            raise ValueError(
                f"{file_name}: image is {image.shape[1]}x{image.shape[0]} after resizing, smaller than "
                f"INPUT.CLASSIFICATION.CROP_SIZE {self.crop_size}; raise INPUT.MIN_SIZE_*"
            )
        record["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)).copy())
        if "label" in record:
            record["label"] = int(record["label"])
        return record


# ---------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, UCI), upscaled to 32x32.

DIGITS_IMAGE_SIZE = 32
DIGITS_CLASSES = [str(i) for i in range(10)]


def _generate_digits(folder: str, test_fraction: float, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    split = {}
    for c in range(10):  # stratified: the same share of every class in the test split
        idx = np.flatnonzero(digits.target == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        split.update({int(i): "test" for i in idx[:n_test]})
        split.update({int(i): "train" for i in idx[n_test:]})
    records = {"train": [], "test": []}
    for sub in records:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i, (img8, label) in enumerate(zip(digits.images, digits.target)):
        # 0..16 ink levels -> 0..255, bilinear upscaling (white digit on black, as MNIST).
        img = Image.fromarray(np.round(img8 * (255.0 / 16.0)).astype(np.uint8), mode="L")
        img = img.resize((DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE), Image.BILINEAR)
        sub = split[i]
        fname = f"{sub}/{i:04d}.png"
        img.save(os.path.join(folder, fname))
        records[sub].append({"file_name": fname, "image_id": i, "label": int(label)})
    # Written last and atomically: a folder without index.json is regenerated.
    atomic_write_json(os.path.join(folder, "index.json"), records)


def load_digits_split(split: str, root: Optional[str] = None, test_fraction: float = 0.2,
                      seed: int = 0) -> List[Dict]:
    """Dataset dicts of the ``"train"`` or ``"test"`` split (PNGs cached on first use).

    The split is stratified, fixed by ``seed``: 1438 train / 359 test images at the defaults.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    folder = os.path.join(root or cache_root(), f"digits{DIGITS_IMAGE_SIZE}_test{test_fraction}_seed{seed}")
    index = os.path.join(folder, "index.json")
    if not os.path.exists(index):
        logger.info(f"Generating the digits dataset into {folder}")
        _generate_digits(folder, test_fraction, seed)
    with open(index) as f:
        records = json.load(f)[split]
    return [
        dict(r, file_name=os.path.join(folder, r["file_name"]), height=DIGITS_IMAGE_SIZE, width=DIGITS_IMAGE_SIZE)
        for r in records
    ]


def register_digits(prefix: str = "digits", root: Optional[str] = None, test_fraction: float = 0.2,
                    seed: int = 0) -> None:
    """Register ``<prefix>_train`` and ``<prefix>_test`` (evaluator_type "classification")."""
    for split in ("train", "test"):
        name = f"{prefix}_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(
            name, lambda split=split: load_digits_split(split, root, test_fraction, seed)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(DIGITS_CLASSES), evaluator_type="classification",
            image_size=DIGITS_IMAGE_SIZE,
        )


register_digits()
