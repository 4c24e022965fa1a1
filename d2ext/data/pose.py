"""Pose-to-shot data: the ``PoseShotDatasetMapper`` and the synthetic ``pose_synthetic_*`` sets.

``FusedShotDatasetMapper`` gives ``FusedShotClassifier`` both the augmented image and the cached
persons (flipped together).

Records are the cricket converter's (``converters/cricket.py``): ``file_name``, ``height``,
``width``, ``label`` and, once keypoints are attached, ``keypoints`` = a list of persons
``{"keypoints": [x, y, v] * 17, "score"?, "bbox"? XYWH}``.

Built-in synthetic datasets (stick-figure batsmen, :mod:`d2ext.data.synthetic_pose`; no
images, keypoints only; evaluator_type "classification"): ``pose_synthetic_train`` (2000 poses,
seed 0), ``pose_synthetic_test`` (1000, seed 1); 30 % of the images hold a second, smaller person.
"""
import logging
from typing import Dict, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES

from .classification import ClassificationDatasetMapper
from .mappers import DATASET_MAPPER_REGISTRY
from .pose_features import COCO_FLIP_INDICES, mirror_keypoints, persons_to_tensors
from .synthetic_pose import SYNTHETIC_SHOT_CLASSES, synthetic_pose_records

__all__ = ["PoseShotDatasetMapper", "FusedShotDatasetMapper", "build_keypoint_cfg", "register_synthetic_poses"]

logger = logging.getLogger(__name__)


def build_keypoint_cfg(cfg):
    """The keypoint model's config: ``MODEL.POSE_SHOT.KEYPOINT_CONFIG`` (a file, or
    ``model_zoo:<path>`` inside Detectron2's model zoo) + ``KEYPOINT_OPTS``, on ``cfg``'s device,
    with ``MODEL.WEIGHTS = KEYPOINT_WEIGHTS``. None when no keypoint config is set."""
    from detectron2.config import get_cfg

    from ..config import add_d2ext_config

    p = cfg.MODEL.POSE_SHOT
    if not p.KEYPOINT_CONFIG:
        return None
    path = p.KEYPOINT_CONFIG
    if path.startswith("model_zoo:"):
        from detectron2 import model_zoo

        path = model_zoo.get_config_file(path[len("model_zoo:"):])
    kcfg = get_cfg()
    add_d2ext_config(kcfg)
    from ..checkpoint import merge_config_file

    merge_config_file(kcfg, path)  # safe YAML loader only
    kcfg.merge_from_list(list(p.KEYPOINT_OPTS))
    kcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    kcfg.MODEL.WEIGHTS = p.KEYPOINT_WEIGHTS
    if not kcfg.MODEL.KEYPOINT_ON:
        raise ValueError(f"MODEL.POSE_SHOT.KEYPOINT_CONFIG {p.KEYPOINT_CONFIG!r} is not a keypoint model "
                         f"(MODEL.KEYPOINT_ON is False)")
    kcfg.freeze()
    return kcfg


@DATASET_MAPPER_REGISTRY.register()
class PoseShotDatasetMapper:
    """Record -> ``PoseShotClassifier`` input.

    With cached keypoints (``use_cached`` and the record has ``keypoints``): ``{"persons": (P, 17,
    3), "person_boxes": (P, 4) XYXY, "person_scores": (P,), "height", "width", "label", ...}`` —
    no image is read. Otherwise the image is read in ``image_format`` and resized with
    ``ResizeShortestEdge(min_size, max_size)`` for the keypoint model: ``"image": (C, H, W)`` uint8.
    In training, ``mirror_prob`` mirrors the pose (or the image) with the COCO flip map.
    """

    @configurable
    def __init__(self, is_train: bool, *, use_cached: bool = True, mirror_prob: float = 0.0,
                 image_format: str = "BGR", min_size: int = 800, max_size: int = 1333,
                 flip_indices: Sequence[int] = COCO_FLIP_INDICES, score_threshold: float = 0.05):
        self.is_train = is_train
        self.use_cached = use_cached
        self.mirror_prob = float(mirror_prob) if is_train else 0.0
        self.image_format = image_format
        self.resize = T.ResizeShortestEdge(min_size, max_size) if min_size > 0 else None
        self.flip_indices = list(flip_indices)
        self.score_threshold = score_threshold

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        kcfg = build_keypoint_cfg(cfg) or cfg  # images go to the keypoint model: its input format
        return {
            "is_train": is_train,
            "use_cached": cfg.MODEL.POSE_SHOT.TRAIN_MODE == "cached",
            "mirror_prob": cfg.MODEL.POSE_SHOT.MIRROR_PROB,
            "image_format": kcfg.INPUT.FORMAT,
            "min_size": kcfg.INPUT.MIN_SIZE_TEST,
            "max_size": kcfg.INPUT.MAX_SIZE_TEST,
            "score_threshold": cfg.MODEL.POSE_SHOT.KEYPOINT_THRESHOLD,
        }

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = {k: v for k, v in dataset_dict.items() if k != "keypoints"}
        if self.is_train and "label" not in record:
            raise KeyError(f"{record.get('file_name', '?')}: shot record has no 'label'")
        mirror = self.mirror_prob > 0 and np.random.rand() < self.mirror_prob
        if self.use_cached and "keypoints" in dataset_dict:
            kps, boxes, scores = _persons(dataset_dict, len(self.flip_indices), self.score_threshold,
                                          record["width"] if mirror else None, self.flip_indices)
            record.update(persons=kps, person_boxes=boxes, person_scores=scores)
            return record
        file_name = record["file_name"]
        if file_name.startswith("synthetic://"):
            raise ValueError(f"{file_name}: a synthetic pose record has no image; use cached keypoints "
                             f"(MODEL.POSE_SHOT.TRAIN_MODE 'cached')")
        image = utils.read_image(file_name, format=self.image_format)
        utils.check_image_size(record, image)
        if mirror:
            image = image[:, ::-1]
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record


def _persons(dataset_dict: Dict, num_keypoints: int, score_threshold: float, mirror_width=None,
             flip_indices: Sequence[int] = COCO_FLIP_INDICES):
    """Cached persons of a record as tensors, mirrored about ``mirror_width`` when given."""
    kps, boxes, scores = persons_to_tensors(dataset_dict.get("keypoints") or [], num_keypoints, score_threshold)
    if mirror_width is not None:
        w = float(mirror_width)
        kps = mirror_keypoints(kps, w, flip_indices)
        kps[..., :2] = torch.where(kps[..., 2:] > score_threshold, kps[..., :2], 0.0)  # missing: 0
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return kps, boxes, scores


class _RecordingAugmentations:
    """Calls an ``AugmentationList`` and keeps the transforms of the last call (to know whether
    the image was flipped)."""

    def __init__(self, augmentations: T.AugmentationList):
        self.augmentations, self.last = augmentations, None

    def __call__(self, aug_input):
        self.last = self.augmentations(aug_input)
        return self.last

    def __repr__(self):
        return repr(self.augmentations)


@DATASET_MAPPER_REGISTRY.register()
class FusedShotDatasetMapper(ClassificationDatasetMapper):
    """Record -> ``FusedShotClassifier`` input: the image exactly as ``ClassificationDatasetMapper``
    gives it (``INPUT.*`` resize / crop / flip), plus the record's cached persons ``persons (P,
    17, 3)``, ``person_boxes``, ``person_scores`` in original-image pixels (pose features are
    translation and scale invariant, so resizing and cropping do not matter; a horizontal flip of
    the image mirrors the persons too). A record without ``keypoints`` or with an empty list gets
    ``P = 0``: the model then uses its "no pose" input.
    """

    @configurable
    def __init__(self, is_train: bool, *, flip_indices: Sequence[int] = COCO_FLIP_INDICES,
                 score_threshold: float = 0.05, **kwargs):
        super().__init__(is_train, **kwargs)
        self.augmentations = _RecordingAugmentations(self.augmentations)
        self.flip_indices = list(flip_indices)
        self.score_threshold = float(score_threshold)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["score_threshold"] = cfg.MODEL.POSE_SHOT.KEYPOINT_THRESHOLD
        return ret

    def __call__(self, dataset_dict: Dict) -> Dict:
        record = super().__call__({k: v for k, v in dataset_dict.items() if k != "keypoints"})
        flips = sum(isinstance(t, T.HFlipTransform) for t in self.augmentations.last.transforms)
        kps, boxes, scores = _persons(dataset_dict, len(self.flip_indices), self.score_threshold,
                                      record["width"] if flips % 2 else None, self.flip_indices)
        record.update(persons=kps, person_boxes=boxes, person_scores=scores)
        return record


def register_synthetic_poses(name: str, num: int, seed: int = 0, distractor_prob: float = 0.3,
                             classes: Sequence[str] = SYNTHETIC_SHOT_CLASSES, **pose_kwargs) -> None:
    """Register ``name``: ``num`` synthetic batsmen with cached keypoints (no images)."""
    if name in DatasetCatalog.list():
        return
    DatasetCatalog.register(name, lambda: synthetic_pose_records(num, seed, classes, distractor_prob=distractor_prob,
                                                                 **pose_kwargs))
    MetadataCatalog.get(name).set(
        thing_classes=list(classes), classes=list(classes), evaluator_type="classification",
        keypoint_names=list(COCO_PERSON_KEYPOINT_NAMES), keypoint_flip_map=list(COCO_PERSON_KEYPOINT_FLIP_MAP),
    )


register_synthetic_poses("pose_synthetic_train", 2000, seed=0)
register_synthetic_poses("pose_synthetic_test", 1000, seed=1)
