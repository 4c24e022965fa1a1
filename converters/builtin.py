"""Register the real datasets found on disk (lazily: files are only read when a dataset is used).

``register_builtin_datasets(root=None)`` looks under ``root`` (default ``$D2EXT_SHARED_DATA`` or
``<repo>/../shared/data``) and registers each dataset whose files exist; a missing dataset is
simply not registered. Calling it twice is harmless. Returns the names registered.

==================  =====================================================================
``bccd_train``      BCCD VOC XML, ``ImageSets/Main/train.txt`` (205 images)
``bccd_val``        ... ``val.txt`` (87)
``bccd_test``       ... ``test.txt`` (72)
``bccd_trainval``   ... ``trainval.txt`` (292)
                    thing_classes RBC, WBC, Platelets (:data:`converters.bccd.BCCD_CLASSES`),
                    evaluator_type "coco"
``bccd_wbc1_*``     the same four splits, only images with exactly one WBC (194 / 85 / 65 / 279), one
                    class "WBC", evaluator_type ["coco", "best_box_iou"] (converters.bccd_wbc1)
``widerface_val``   WIDER Face val annotations (images are not in the shared data: records have
                    no height/width; ``file_name`` points to ``widerface/WIDER_val/images/...``).
                    Metadata ``widerface_gt_dir`` = ``eval_tools/ground_truth``, evaluator_type
                    "widerface"
``widerface_train`` WIDER Face train, only when ``wider_face_split/wider_face_train_bbx_gt.txt``
                    and ``WIDER_train/images`` both exist (a user's full download)
``coco_kp_train``   COCO person keypoints subset (train2017 json + images), full keypoint
``coco_kp_val``     metadata, ``json_file``, evaluator_type "coco"
``wbc_seg_binary_*`` WBC masks (``_train`` 80 / ``_test`` 20 images, seeded split), labels
``wbc_seg_3class_*`` background/wbc or background/cytoplasm/nucleus, label PNGs generated in
                    ``$D2EXT_CACHE`` (default ``~/.cache/d2ext``), evaluator_type "sem_seg"
``wbc_inst_*``      the same images, one "wbc" box + polygon each, evaluator_type "coco"
``cricket_*``       ``_train/_val/_test`` from ``$D2EXT_CRICKET_ROOT`` or ``<data>/cricket`` when
                    present (group-aware split), evaluator_type "classification"
==================  =====================================================================
"""
import logging
import os
from pathlib import Path
from typing import List, Optional

from d2ext.core import data_root

logger = logging.getLogger(__name__)

# dataset-name prefix -> the folder under the data root that the family is read from
BUILTIN_FOLDERS = (("bccd_", "bccd"), ("widerface_", "widerface"), ("coco_kp_", "coco_kp"),
                   ("wbc_seg_", "wbc_seg"), ("wbc_inst_", "wbc_seg"), ("cricket_", "cricket"))


def builtin_folder(name: str, root=None) -> Optional[Path]:
    """The folder a built-in dataset ``name`` is read from (``$D2EXT_CRICKET_ROOT`` for the
    cricket sets when set), or None when ``name`` is no built-in."""
    for prefix, folder in BUILTIN_FOLDERS:
        if name.startswith(prefix):
            if folder == "cricket" and os.environ.get("D2EXT_CRICKET_ROOT"):
                return Path(os.environ["D2EXT_CRICKET_ROOT"])
            return Path(root if root is not None else data_root()) / folder
    return None


def _register_bccd(root: Path) -> List[str]:
    from .bccd import register_bccd

    base = root / "bccd"
    names = []
    for split in ("train", "val", "test", "trainval"):
        if (base / "BCCD" / "ImageSets" / "Main" / f"{split}.txt").is_file() \
                and (base / "BCCD" / "Annotations").is_dir():
            register_bccd(f"bccd_{split}", base, split)
            names.append(f"bccd_{split}")
    return names


def _register_bccd_wbc1(root: Path) -> List[str]:
    """bccd_wbc1_{train,val,test,trainval}: the BCCD splits, images with exactly one WBC."""
    from .bccd_wbc1 import SPLITS, register_bccd_wbc1

    base = root / "bccd"
    names = []
    for split in SPLITS:
        if (base / "BCCD" / "ImageSets" / "Main" / f"{split}.txt").is_file() \
                and (base / "BCCD" / "Annotations").is_dir():
            register_bccd_wbc1(f"bccd_wbc1_{split}", base, split)
            names.append(f"bccd_wbc1_{split}")
    return names


def _register_widerface(root: Path) -> List[str]:
    from .widerface import register_widerface

    base = root / "widerface"
    ann = base / "wider_face_split" / "wider_face_val_bbx_gt.txt"
    if not ann.is_file():
        return []
    images = base / "WIDER_val" / "images"
    gt_dir = base / "eval_tools" / "ground_truth"
    register_widerface("widerface_val", ann, images, gt_dir=gt_dir if gt_dir.is_dir() else None,
                       read_sizes=images.is_dir())
    names = ["widerface_val"]
    # The training split needs the full official train file and its images (a user's download;
    # the shared data holds only its first 4 entries, which are not registered).
    train_ann = base / "wider_face_split" / "wider_face_train_bbx_gt.txt"
    train_images = base / "WIDER_train" / "images"
    if train_ann.is_file() and train_images.is_dir():
        register_widerface("widerface_train", train_ann, train_images)
        names.append("widerface_train")
    return names


def _register_coco_kp(root: Path) -> List[str]:
    from .coco_keypoints import register_coco_keypoints

    base = root / "coco_kp"
    names = []
    for split in ("train", "val"):
        ann = base / "annotations" / f"person_keypoints_{split}2017.json"
        if ann.is_file() and (base / f"{split}2017").is_dir():
            register_coco_keypoints(f"coco_kp_{split}", ann, base / f"{split}2017")
            names.append(f"coco_kp_{split}")
    return names


def _register_wbc_seg(root: Path) -> List[str]:
    """wbc_seg_{binary,3class}_{train,test} (sem-seg, labels cached under $D2EXT_CACHE) and
    wbc_inst_{train,test} (one "wbc" box + polygon per image); the seeded 80/20 split of
    :func:`converters.wbc_seg.split_wbc` (seed 0) is shared by all six."""
    from .wbc_seg import default_label_dir, register_wbc_instances, register_wbc_seg

    images = root / "wbc_seg" / "dataset2"
    if not images.is_dir():
        return []
    csv_file = root / "wbc_seg" / "dataset2_class_labels.csv"
    csv_file = csv_file if csv_file.is_file() else None
    names = []
    for mode, tag in (("binary", "binary"), ("three_class", "3class")):
        for split in ("train", "test"):
            names.append(register_wbc_seg(f"wbc_seg_{tag}_{split}", images, mode, split,
                                          default_label_dir(images, mode), csv_file=csv_file))
    for split in ("train", "test"):
        names.append(register_wbc_instances(f"wbc_inst_{split}", images, split, csv_file=csv_file))
    return names


def _register_cricket(root: Path) -> List[str]:
    """cricket_{train,val,test} from ``$D2EXT_CRICKET_ROOT`` or ``<data>/cricket`` (one folder per
    shot) when present; group-aware seeded split (seed 0). ``$D2EXT_CRICKET_KEYPOINTS`` names a
    keypoint results file (``tools/extract_keypoints.py`` output) to attach to the records."""
    from .cricket import register_cricket

    folder = builtin_folder("cricket_", root)
    if not folder.is_dir():
        return []
    keypoints = os.environ.get("D2EXT_CRICKET_KEYPOINTS") or None
    return register_cricket("cricket", folder, seed=0, keypoints_file=keypoints)


def register_builtin_datasets(root=None) -> List[str]:
    """Register every real dataset present under ``root``; returns the registered names."""
    # resolved, so "../shared/data" and its absolute path register the same arguments
    root = (Path(root) if root is not None else data_root()).resolve()
    if not root.is_dir():
        logger.info("no real data at %s: only synthetic datasets are registered", root)
        return []
    names: List[str] = []
    names += _register_bccd(root)
    names += _register_widerface(root)
    names += _register_coco_kp(root)
    # ---- other converters register here: add one line per dataset family ----------------
    names += _register_wbc_seg(root)
    names += _register_cricket(root)
    names += _register_bccd_wbc1(root)
    # ---------------------------------------------------------------------------------------
    logger.info("registered real datasets from %s: %s", root, ", ".join(names) or "none")
    return names
