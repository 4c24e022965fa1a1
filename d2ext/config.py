"""All d2ext config keys, with their defaults.

``add_d2ext_config(cfg)`` is the only entry point, as in Detectron2's ``projects/``: call it on a
fresh ``get_cfg()`` before ``merge_from_file``. Keys live where Detectron2 users look for them
(``MODEL.<ARCH>``, ``INPUT``, ``TEST``); each topic adds its keys in its own function below.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_d2ext_config"]


def add_d2ext_config(cfg: CN) -> CN:
    """Add every d2ext key with its default to ``cfg`` (in place; also returned).

    Safe to call twice: keys already present keep their current values.
    """
    if "DATASET_MAPPER_NAME" in cfg.INPUT:  # already added: keep the user's values
        return cfg
    _add_data_config(cfg)
    _add_classification_config(cfg)
    _add_backbone_config(cfg)
    _add_detector_config(cfg)
    _add_segmentation_config(cfg)
    _add_pose_config(cfg)
    _add_evaluation_config(cfg)
    return cfg


def _add_data_config(cfg: CN) -> None:
    # Name in d2ext.data.DATASET_MAPPER_REGISTRY; "" = pick by task (Detectron2's DatasetMapper
    # for detection/instance/keypoint/sem-seg models, the classification mapper for classifiers).
    cfg.INPUT.DATASET_MAPPER_NAME = ""
    # Synthetic shapes dataset (the demo and the tests): where generated images are cached.
    cfg.DATASETS.SYNTHETIC_ROOT = ""  # "" = $D2EXT_CACHE or ~/.cache/d2ext


def _add_classification_config(cfg: CN) -> None:
    pass


def _add_backbone_config(cfg: CN) -> None:
    pass


def _add_detector_config(cfg: CN) -> None:
    pass


def _add_segmentation_config(cfg: CN) -> None:
    pass


def _add_pose_config(cfg: CN) -> None:
    pass


def _add_evaluation_config(cfg: CN) -> None:
    # COCOEvaluator: Detectron2's compiled fast COCOeval needs `_C`, which does not load on
    # Python 3.11; the pure pycocotools path gives the same numbers.
    cfg.TEST.COCO_USE_FAST_IMPL = False
    # Maximum number of images for which evaluators draw overlay PNGs (0 = none).
    cfg.TEST.NUM_VIS_IMAGES = 4
