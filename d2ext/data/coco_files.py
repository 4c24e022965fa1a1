"""COCO JSON files as datasets: a ``DATASETS.TRAIN`` / ``DATASETS.TEST`` entry that is the path of
an existing ``.json`` file is registered under that path on first use, the Detectron2 way
(``load_coco_json`` records, ``MetadataCatalog`` entry), so nobody has to write
``register_coco_instances`` to train on their own data.

Images are looked up under, in this order:

1. ``image_root`` given by the caller (the tools' ``--image-root`` flag);
2. the file's own top-level ``"d2ext": {"image_root": "<path>"}`` key, which ``tools/convert.py``
   writes (a path relative to the JSON file's folder, or absolute), so a converted dataset works
   wherever it is moved with its images;
3. the JSON file's folder.

Metadata: ``thing_classes`` (categories sorted by id, as ``load_coco_json`` does),
``thing_dataset_id_to_contiguous_id``, ``json_file`` (so ``COCOEvaluator`` scores against this very
file), ``image_root``, ``evaluator_type`` ``"coco"``; ``keypoint_names`` / ``keypoint_flip_map`` /
``keypoint_connection_rules`` when the categories carry keypoints; a file whose images carry
``sem_seg_file_name`` and which has no annotations is a semantic-segmentation set
(``stuff_classes`` = the category names, ``ignore_label`` 255, ``evaluator_type`` ``"sem_seg"``).

Also here, because this is where configs meet datasets: :func:`check_datasets` (every TRAIN/TEST
name resolves; a missing built-in dataset names ``$D2EXT_SHARED_DATA``, the folder searched and the
README section) and :func:`check_num_classes` (the dataset's classes fit the model's
``NUM_CLASSES`` key).
"""
import functools
import json
import logging
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..core import missing_data_message

__all__ = [
    "DatasetNotFoundError", "NumClassesError", "is_coco_path", "coco_image_root",
    "register_coco_file", "register_coco_datasets", "resolve_dataset", "check_datasets",
    "check_num_classes", "num_classes_key", "dataset_folder_name",
]

logger = logging.getLogger(__name__)


class DatasetNotFoundError(LookupError):
    """A dataset name that is neither registered nor the path of an existing COCO file."""


class NumClassesError(ValueError):
    """The training data has more classes than the model's NUM_CLASSES key allows."""


# (name prefix, folder under $D2EXT_SHARED_DATA) of the real datasets converters.builtin
# registers; kept here (d2ext does not import converters/) only to say where one was looked for.

# name -> (json_file, image_root) of the files registered by this module
_REGISTERED: Dict[str, tuple] = {}


def is_coco_path(name) -> bool:
    """True when ``name`` names a ``.json`` file (existing or not): it is meant as a COCO file."""
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".json")


def coco_image_root(json_file, coco: Optional[dict] = None, image_root=None) -> str:
    """Where the images of ``json_file`` are: ``image_root`` when given, else the file's
    ``"d2ext": {"image_root"}`` key (relative to the file's folder, or absolute), else its folder."""
    if image_root:
        return os.path.abspath(os.fspath(image_root))
    folder = os.path.dirname(os.path.abspath(os.fspath(json_file)))
    extra = (coco or {}).get("d2ext")
    recorded = extra.get("image_root") if isinstance(extra, dict) else None
    if recorded:
        return os.path.normpath(recorded if os.path.isabs(recorded) else os.path.join(folder, recorded))
    return folder


def _flip_map(names: Sequence[str]) -> List[tuple]:
    """("left_x", "right_x") pairs (COCO's naming; also ``l_``/``r_`` and ``Left``/``Right``)."""
    pairs = []
    for n in names:
        m = re.match(r"(?i)^(left|l)([_ ].*)$", n)
        if m:
            for right in ("right", "r", "Right", "R", "RIGHT"):
                other = right + m.group(2)
                if other in names and (n, other) not in pairs:
                    pairs.append((n, other))
                    break
    return pairs


def _metadata(json_file: str, coco: dict, image_root: str) -> dict:
    cats = sorted(coco.get("categories") or [], key=lambda c: c["id"])
    if not cats:
        raise ValueError(f"{json_file}: COCO file has no categories")
    names = [str(c.get("name", c["id"])) for c in cats]
    meta = {"thing_classes": names,
            "thing_dataset_id_to_contiguous_id": {int(c["id"]): i for i, c in enumerate(cats)},
            "json_file": json_file, "image_root": image_root, "evaluator_type": "coco"}
    kp_cat = next((c for c in cats if c.get("keypoints")), None)
    if kp_cat is not None:
        kp_names = [str(k) for k in kp_cat["keypoints"]]
        meta["keypoint_names"] = kp_names
        meta["keypoint_flip_map"] = _flip_map(kp_names)
        # COCO's skeleton is 1-based pairs; Detectron2's Visualizer wants (name, name, colour).
        meta["keypoint_connection_rules"] = [
            (kp_names[a - 1], kp_names[b - 1], (102, 204, 255))
            for a, b in (kp_cat.get("skeleton") or []) if 1 <= a <= len(kp_names) and 1 <= b <= len(kp_names)]
    images = coco.get("images") or []
    if images and not coco.get("annotations") and all("sem_seg_file_name" in im for im in images):
        meta.update(stuff_classes=names, ignore_label=255, evaluator_type="sem_seg")
        del meta["thing_dataset_id_to_contiguous_id"]
    return meta


def _load_coco_file(json_file: str, image_root: str, name: str, unsized: int = 0,
                    has_annotations: bool = True, has_sem_seg: bool = False) -> List[dict]:
    """``load_coco_json`` records, plus ``sem_seg_file_name`` when the images carry one; every
    image file must exist (one error naming the first missing one and how many are missing).
    The flags come from registration, so a plain instances file is parsed once here (by
    ``load_coco_json``), not twice."""
    from detectron2.data.datasets import load_coco_json

    if unsized:  # e.g. tools/convert.py widerface --no-images: Detectron2's loaders need sizes
        raise ValueError(f"{json_file}: {unsized} images have no height/width (converted without "
                         "reading the images?); convert it again with its images to train on it")
    coco = None
    if has_sem_seg or not has_annotations:
        with open(json_file, "rb") as f:
            coco = json.loads(f.read())
    if has_annotations:
        records = load_coco_json(json_file, image_root, dataset_name=name)
    else:  # sem-seg only (or empty): load_coco_json needs nothing more than the image list
        records = [{"file_name": os.path.join(image_root, im["file_name"]), "height": im.get("height"),
                    "width": im.get("width"), "image_id": im["id"], "annotations": []}
                   for im in sorted(coco.get("images") or [], key=lambda im: im["id"])]
    if has_sem_seg:
        sem_seg = {im["id"]: im["sem_seg_file_name"] for im in coco["images"] if "sem_seg_file_name" in im}
        for r in records:
            if r["image_id"] in sem_seg:
                r["sem_seg_file_name"] = os.path.join(image_root, sem_seg[r["image_id"]])
            if not r.get("annotations"):
                r.pop("annotations", None)
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise FileNotFoundError(
            f"{json_file}: {len(missing)} of {len(records)} images not found, e.g. {missing[0]} "
            f"(image root {image_root}); pass --image-root DIR, or set \"d2ext\": {{\"image_root\": DIR}} "
            "in the file")
    return records


def register_coco_file(json_file, image_root=None, name: Optional[str] = None) -> str:
    """Register COCO file ``json_file`` as dataset ``name`` (default: the path as given) and
    return the name. Reads the categories now, the records on first use. Registering the same
    file again with the same image root does nothing; another image root replaces the entry."""
    name = os.fspath(json_file) if name is None else name
    path = os.path.abspath(os.fspath(json_file))
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"COCO file {os.fspath(json_file)} not found")
    try:
        with open(path, "rb") as f:
            coco = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(coco, dict) or "images" not in coco:
        raise ValueError(f"{path}: not a COCO annotation file (no \"images\" list)")
    root = coco_image_root(path, coco, image_root)
    key = (path, root)
    if _REGISTERED.get(name) == key and name in DatasetCatalog.list():
        return name
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    meta = _metadata(path, coco, root)
    images = coco.get("images") or []
    DatasetCatalog.register(name, functools.partial(
        _load_coco_file, path, root, name,
        unsized=sum(1 for im in images if "height" not in im or "width" not in im),
        has_annotations=bool(coco.get("annotations")),
        has_sem_seg=any("sem_seg_file_name" in im for im in images)))
    MetadataCatalog.get(name).set(**meta)
    _REGISTERED[name] = key
    logger.info("registered COCO file %s (%d images, %d classes, images under %s)", path,
                len(coco["images"]), len(meta["thing_classes"]), root)
    return name


def register_coco_datasets(cfg, image_root=None) -> List[str]:
    """Register every ``.json`` entry of ``cfg.DATASETS.TRAIN`` / ``TEST`` that is a file; returns
    their names. Other names, and files that do not exist (a prediction config whose training data
    has moved needs none), are left alone: :func:`check_datasets` reports them before training."""
    names = []
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS.get(key, ()):
            if is_coco_path(name) and os.path.isfile(name):
                names.append(register_coco_file(name, image_root))
    return names


def resolve_dataset(name: str, image_root=None) -> str:
    """``name`` when it is registered (a COCO file path is registered now), else a
    :class:`DatasetNotFoundError` with one line saying what to do."""
    if is_coco_path(name):
        if os.path.isfile(name):
            if name not in DatasetCatalog.list() or image_root:
                register_coco_file(name, image_root)
            return name
        raise DatasetNotFoundError(f"COCO file {name} not found")
    if name in DatasetCatalog.list():
        return name
    from converters.builtin import builtin_folder  # light: the converters' own table

    folder = builtin_folder(name)
    if folder is not None:
        if os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"dataset {name!r} is not registered although {folder} exists: call "
                "converters.builtin.register_builtin_datasets() first (the tools do)")
        raise DatasetNotFoundError(missing_data_message(f"dataset {name!r}", folder))
    raise DatasetNotFoundError(
        f"dataset {name!r} is not registered and is not the path of a COCO .json file; "
        f"registered: {', '.join(sorted(DatasetCatalog.list()))}")


def dataset_folder_name(name: str) -> str:
    """A folder name for a dataset's outputs (``inference/<it>``): a COCO path gives its file
    stem, so an absolute path never escapes OUTPUT_DIR."""
    if is_coco_path(name):
        return os.path.splitext(os.path.basename(name))[0] or "coco"
    return name.replace(os.sep, "_")


# meta-architecture -> (config key holding the class count, metadata field listing the classes)
_NUM_CLASSES_KEYS = {
    "RetinaNet": ("MODEL.RETINANET.NUM_CLASSES", "thing_classes"),
    "GeneralizedRCNN": ("MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes"),
    "ProposalNetwork": (None, None),
    "SSD": ("MODEL.SSD.NUM_CLASSES", "thing_classes"),
    "YOLOV1": ("MODEL.YOLO.NUM_CLASSES", "thing_classes"),
    "YOLOV2": ("MODEL.YOLO.NUM_CLASSES", "thing_classes"),
    "YOLOV3": ("MODEL.YOLO.NUM_CLASSES", "thing_classes"),
    "ImageClassifier": ("MODEL.CLASSIFIER.NUM_CLASSES", "thing_classes"),
    "PoseShotClassifier": ("MODEL.POSE_SHOT.NUM_CLASSES", "thing_classes"),
    "SemanticSegmentor": ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff_classes"),
}


def num_classes_key(cfg):
    """(config key, metadata field) of ``cfg``'s model, or (None, None) when it has no class count."""
    return _NUM_CLASSES_KEYS.get(cfg.MODEL.META_ARCHITECTURE, (None, None))


def _cfg_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_num_classes(cfg, names: Optional[Iterable[str]] = None) -> None:
    """Raise :class:`NumClassesError` when a dataset (default: ``cfg.DATASETS.TRAIN``) lists more
    classes than the model's NUM_CLASSES key; datasets whose metadata lists none are skipped."""
    key, field = num_classes_key(cfg)
    if key is None:
        return
    value = int(_cfg_value(cfg, key))
    for name in (cfg.DATASETS.TRAIN if names is None else names):
        classes = getattr(MetadataCatalog.get(name), field, None)
        if classes is not None and len(classes) > value:
            shown = ", ".join(map(str, classes[:6])) + (", ..." if len(classes) > 6 else "")
            raise NumClassesError(
                f"dataset {name} has {len(classes)} classes ({shown}) but {key} is {value}: "
                f"set {key} {len(classes)}")


def check_datasets(cfg, image_root=None) -> None:
    """Every ``DATASETS.TRAIN`` / ``TEST`` entry resolves (:func:`resolve_dataset`) and the
    training data fits the model's class count (:func:`check_num_classes`). Called before
    training starts, so a mistake costs seconds, not a run."""
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        resolve_dataset(name, image_root)
    check_num_classes(cfg)
