"""COCO JSON (instances / person keypoints) -> Detectron2 dicts, checked, with full keypoint
metadata for registration.

The records are the ones Detectron2's ``load_coco_json(json_file, image_root, dataset_name)``
gives (tested): ``category_id`` contiguous 0-based over the sorted COCO category ids, boxes
``XYWH_ABS``, polygons with fewer than 3 points dropped, uncompressed RLE (crowd regions)
converted to compressed RLE with pycocotools, and keypoint x/y shifted by +0.5 (COCO keypoints
are integer pixel indices; Detectron2 uses continuous coordinates). Visibility ``v`` stays
0 / 1 / 2 (0 = not labelled, 1 = labelled but hidden, 2 = visible).

On top of Detectron2's loader every problem is reported instead of asserted: annotations of
unknown images or categories, boxes of zero size, keypoint lists of the wrong length and
visibility outside {0, 1, 2} are skipped with their annotation id; so are boxes, keypoints and
polygons holding a value that is not a finite number within +-2**20 px (``NaN`` / ``Infinity``
tokens, which Python's json accepts, strings, ``1e300``), and images whose ``file_name`` is
absolute or leaves the image folder or whose size is not a positive integer. A category
without an integer ``id`` or a string ``name`` and duplicate image ids are errors naming the
entry. With ``read_sizes`` the image headers are read and compared with the JSON sizes (mismatch:
reported repair, header wins; missing image: reported skip).

Keypoint metadata (:func:`keypoint_metadata`): ``keypoint_names`` from the category,
``keypoint_flip_map`` pairs every ``left_*`` with its ``right_*`` name, and
``keypoint_connection_rules`` are ``(name_a, name_b, (r, g, b))`` for each (1-based) COCO skeleton
edge, coloured by side (left blue, right red, centre green) as Detectron2's visualizer expects.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

from .common import (BOX_MODE_XYWH_ABS, ConversionError, ConversionReport, ImagePaths,
                     bad_numbers, make_record, progress, read_image_size, register_dataset)

logger = logging.getLogger(__name__)

FORMAT = "coco_keypoints"

#: The 17 COCO person keypoints, in file order (Lin et al. 2014, COCO keypoint task).
COCO_PERSON_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle")
#: COCO person skeleton, 1-based indices into the names (as in the annotation files).
COCO_PERSON_SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))

_LEFT, _RIGHT, _CENTRE = (0, 128, 255), (255, 64, 0), (0, 200, 80)


def keypoint_flip_map(names: Sequence[str]):
    """``[(left_x, right_x), ...]`` for every ``left_``/``right_`` name pair."""
    pairs = []
    for n in names:
        if n.startswith("left_") and "right_" + n[5:] in names:
            pairs.append((n, "right_" + n[5:]))
    return pairs


def keypoint_connection_rules(names: Sequence[str], skeleton_1based):
    rules = []
    for a, b in skeleton_1based:
        na, nb = names[a - 1], names[b - 1]
        if na.startswith("left_") and nb.startswith("left_"):
            color = _LEFT
        elif na.startswith("right_") and nb.startswith("right_"):
            color = _RIGHT
        else:
            color = _CENTRE
        rules.append((na, nb, color))
    return rules


def keypoint_metadata(names: Sequence[str] = COCO_PERSON_KEYPOINT_NAMES,
                      skeleton_1based=COCO_PERSON_SKELETON) -> Dict:
    return {"keypoint_names": list(names), "keypoint_flip_map": keypoint_flip_map(names),
            "keypoint_connection_rules": keypoint_connection_rules(names, skeleton_1based)}


def _read_json(json_file):
    src = os.fspath(json_file)
    try:
        with open(src, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConversionError(src, None, f"cannot open: {e.strerror}", FORMAT) from None
    if not raw.strip():
        raise ConversionError(src, None, "empty file: expected a COCO JSON object", FORMAT)
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConversionError(src, line, "not valid UTF-8", FORMAT) from None
    except json.JSONDecodeError as e:
        raise ConversionError(src, e.lineno, f"not valid JSON: {e.msg} (column {e.colno})", FORMAT) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list):
        raise ConversionError(src, None, "not a COCO file: needs 'images' and 'categories' lists", FORMAT)
    return data


def load_coco_records(json_file, image_root=None, *, report: Optional[ConversionReport] = None,
                      read_sizes: bool = False, show_progress: bool = False) -> List[dict]:
    """Checked Detectron2 records of a COCO JSON (see the module docstring).

    ``report.notes`` gets ``thing_classes``, ``keypoint_names`` / ``skeleton`` (when present),
    ``num_with_keypoints`` and ``num_crowd``.
    """
    from pycocotools import mask as mask_util

    report = report if report is not None else ConversionReport(FORMAT, sources=[json_file])
    src = os.fspath(json_file)
    data = _read_json(src)
    cats = sorted(_checked_categories(data["categories"], src), key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(cats)}
    report.note("thing_classes", [c["name"] for c in cats])
    report.note("category_ids", [c["id"] for c in cats])  # COCO id of each contiguous class
    kp_names = next((c["keypoints"] for c in cats if c.get("keypoints")), None)
    if kp_names:
        report.note("keypoint_names", list(kp_names))
        report.note("skeleton", next((c.get("skeleton") for c in cats if c.get("keypoints")), []))
    images = {}
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(k in img for k in ("id", "file_name", "height", "width")):
            raise ConversionError(src, None, f"images[{n}]: entry {_short(img)} lacks one of id, "
                                  "file_name, height, width", FORMAT)
        if not _is_int(img["id"]):
            raise ConversionError(src, None, f"images[{n}]: id {img['id']!r} is not an integer", FORMAT)
        if img["id"] in images:
            raise ConversionError(src, None, f"image id {img['id']} listed twice", FORMAT)
        images[img["id"]] = (img, [])
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ConversionError(src, None, "'annotations' must be a list", FORMAT)
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            report.skip(src, None, f"annotations[{n}]: not an object: {_short(ann)}")
            continue
        aid = ann.get("id")
        image_id = ann.get("image_id")
        entry = images.get(image_id) if _is_int(image_id) else None
        if entry is None:
            report.skip(src, None, f"annotation {aid}: unknown image_id {image_id!r}")
            continue
        if not _is_int(ann.get("category_id")) or ann.get("category_id") not in id_map:
            report.skip(src, None, f"annotation {aid}: unknown category_id {ann.get('category_id')}")
            continue
        entry[1].append(ann)
    num_kp = len(kp_names) if kp_names else None
    records, n_with_kp, n_crowd = [], 0, 0
    paths = ImagePaths(image_root)
    for img_id, (img, anns) in progress(images.items(), show_progress, desc="coco", unit="img"):
        rel = img["file_name"]
        file_name = paths.resolve(rel) if isinstance(rel, str) else None
        if file_name is None:
            report.skip(src, None, f"image {img_id}: file_name {rel!r} is not a path inside the "
                                   f"image folder; its {len(anns)} annotations skipped")
            continue
        bad_size = next((f"{k} {img[k]!r}" for k in ("height", "width")
                         if not (_is_int(img[k]) and 0 < img[k] <= 1 << 20)), None)
        if bad_size is not None:
            report.skip(src, None, f"image {img_id}: {bad_size} is not a positive integer; its "
                                   f"{len(anns)} annotations skipped")
            continue
        height, width = int(img["height"]), int(img["width"])
        if read_sizes and image_root is not None:
            try:
                hh, ww = read_image_size(file_name, FORMAT)
            except ConversionError as e:
                report.skip(src, None, f"image {img_id}: {e.message}; its {len(anns)} annotations "
                                       "skipped", image=file_name)
                continue
            if (hh, ww) != (height, width):
                report.repair(src, None, f"image {img_id}: JSON size {width}x{height} differs from "
                                         f"the header {ww}x{hh}: header used", image=file_name)
                height, width = hh, ww
        objs = []
        for ann in anns:
            obj = _convert_annotation(ann, id_map, num_kp, report, src, mask_util)
            if obj is not None:
                objs.append(obj)
                n_with_kp += bool(obj.get("keypoints") and any(v > 0 for v in obj["keypoints"][2::3]))
                n_crowd += obj["iscrowd"]
        rec = make_record(file_name, img_id, objs, height, width)
        report.add_record(rec, report.notes["thing_classes"])
        records.append(rec)
    report.note("num_with_keypoints", n_with_kp)
    report.note("num_crowd", n_crowd)
    return records


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _checked_categories(categories, src):
    """The categories list, each with an integer ``id`` and a string ``name`` (else an error
    naming the entry)."""
    seen = set()
    for n, cat in enumerate(categories):
        if not isinstance(cat, dict):
            raise ConversionError(src, None, f"categories[{n}]: not an object: {_short(cat)}", FORMAT)
        for key, ok in (("id", _is_int), ("name", lambda v: isinstance(v, str))):
            if key not in cat:
                raise ConversionError(src, None, f"categories[{n}]: no '{key}' ({_short(cat)})", FORMAT)
            if not ok(cat[key]):
                raise ConversionError(src, None, f"categories[{n}]: '{key}' {cat[key]!r} is not "
                                      f"{'an integer' if key == 'id' else 'a string'}", FORMAT)
        if cat["id"] in seen:
            raise ConversionError(src, None, f"categories[{n}]: id {cat['id']} listed twice", FORMAT)
        seen.add(cat["id"])
    return categories


def _convert_annotation(ann, id_map, num_kp, report, src, mask_util):
    aid = ann.get("id")
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        report.skip(src, None, f"annotation {aid}: bbox must be 4 numbers, got {_short(bbox)}")
        return None
    why = bad_numbers(bbox, ("x", "y", "width", "height"))
    if why is not None:
        report.skip(src, None, f"annotation {aid}: bbox {why}")
        return None
    if ann.get("iscrowd", 0) not in (0, 1):
        report.skip(src, None, f"annotation {aid}: iscrowd {_short(ann.get('iscrowd'))} is not 0 or 1")
        return None
    if not (bbox[2] > 0 and bbox[3] > 0):
        report.skip(src, None, f"annotation {aid}: zero or negative size box {bbox}")
        return None
    obj = {"iscrowd": int(ann.get("iscrowd", 0)), "bbox": [float(v) for v in bbox],
           "category_id": id_map[ann["category_id"]], "bbox_mode": BOX_MODE_XYWH_ABS}
    segm = ann.get("segmentation")
    if segm:
        if isinstance(segm, dict):
            if isinstance(segm.get("counts"), list):
                try:
                    segm = mask_util.frPyObjects(segm, *segm["size"])
                except Exception as e:  # pycocotools raises TypeError / KeyError / its own errors
                    report.skip(src, None, f"annotation {aid}: RLE segmentation not readable "
                                           f"({e.__class__.__name__}: {e})")
                    return None
        else:
            if not isinstance(segm, list) or not all(isinstance(p, list) for p in segm):
                report.skip(src, None, f"annotation {aid}: segmentation is neither polygons nor RLE")
                return None
            why = next((w for w in (bad_numbers(p) for p in segm) if w is not None), None)
            if why is not None:
                report.skip(src, None, f"annotation {aid}: segmentation {why}")
                return None
            valid = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
            if len(valid) < len(segm):
                report.repair(src, None, f"annotation {aid}: {len(segm) - len(valid)} polygon(s) "
                                         "with fewer than 3 points dropped")
            if not valid:
                report.skip(src, None, f"annotation {aid}: no valid polygon")
                return None
            segm = valid
        obj["segmentation"] = segm
    kps = ann.get("keypoints")
    if kps:
        if not isinstance(kps, list):
            report.skip(src, None, f"annotation {aid}: keypoints must be a list, got {_short(kps)}")
            return None
        if num_kp is not None and len(kps) != 3 * num_kp:
            report.skip(src, None, f"annotation {aid}: {len(kps)} keypoint values, expected "
                                   f"3 x {num_kp}")
            return None
        why = bad_numbers(kps)
        if why is not None:
            report.skip(src, None, f"annotation {aid}: keypoint {why.replace('value ', 'value #')}")
            return None
        bad = sorted({v for v in kps[2::3] if v not in (0, 1, 2)})
        if bad:
            report.skip(src, None, f"annotation {aid}: keypoint visibility {bad} not in {{0, 1, 2}}")
            return None
        # Detectron2 convention: COCO keypoints are pixel indices, +0.5 gives continuous coords.
        obj["keypoints"] = [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(kps)]
    return obj


def register_coco_keypoints(name: str, json_file, image_root,
                            keypoint_names: Sequence[str] = COCO_PERSON_KEYPOINT_NAMES,
                            skeleton=COCO_PERSON_SKELETON, thing_classes=("person",)) -> None:
    """Register a COCO person-keypoints file lazily (evaluator_type "coco", ``json_file`` set so
    COCOEvaluator uses the original file). The loader checks the file's keypoint names against
    ``keypoint_names``."""
    metadata = {"thing_classes": list(thing_classes), "evaluator_type": "coco",
                "json_file": os.fspath(json_file), "image_root": os.fspath(image_root),
                **keypoint_metadata(keypoint_names, skeleton)}
    register_dataset(name, load_coco_keypoints_checked, metadata, json_file=json_file,
                     image_root=image_root, keypoint_names=list(keypoint_names), dataset_name=name)


def load_coco_keypoints_checked(json_file, image_root, keypoint_names, dataset_name=None) -> List[dict]:
    """Loader of :func:`register_coco_keypoints`: records + a check of the keypoint names. Sets
    the dataset's ``thing_dataset_id_to_contiguous_id`` (as Detectron2's ``load_coco_json``
    does), which COCOEvaluator needs to write the file's own category ids."""
    report = ConversionReport(FORMAT, sources=[json_file])
    records = load_coco_records(json_file, image_root, report=report)
    if dataset_name is not None:
        from detectron2.data import MetadataCatalog  # only when Detectron2 loads the dataset

        MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id = {
            cid: i for i, cid in enumerate(report.notes["category_ids"])}
    found = report.notes.get("keypoint_names")
    if found is not None and list(found) != list(keypoint_names):
        raise ConversionError(json_file, None, f"keypoint names {found} differ from the registered "
                              f"{list(keypoint_names)}", FORMAT)
    logger.info(report.summary())
    return records


def add_subcommand(subparsers):
    p = subparsers.add_parser("coco-keypoints", help="check a COCO (keypoints) JSON against its "
                              "images; optionally write a cleaned copy / register it")
    p.add_argument("--json", required=True, help="COCO JSON (e.g. person_keypoints_val2017.json)")
    p.add_argument("--images", required=True, help="folder of the images it references")
    p.add_argument("--output", "--out", dest="out", help="write the checked records back as COCO JSON here")
    p.set_defaults(run=_run, register_fn=_register_cli, fmt=FORMAT)


def _run(args, report, batch=None):
    report.sources.append(str(args.json))
    from .common import export_coco_json

    records = load_coco_records(args.json, args.images, report=report, read_sizes=True,
                                show_progress=args.progress)
    if args.out:
        names = report.notes.get("keypoint_names")
        export_coco_json(records, report.notes["thing_classes"], args.out, image_root=args.images,
                         keypoint_names=names, skeleton=report.notes.get("skeleton"), fmt=FORMAT,
                         batch=batch)


def _register_cli(args, name, report):
    names = report.notes.get("keypoint_names")
    if names:
        register_coco_keypoints(name, args.json, args.images, keypoint_names=names,
                                skeleton=[tuple(s) for s in report.notes.get("skeleton") or []],
                                thing_classes=report.notes["thing_classes"])
    else:
        register_dataset(name, load_coco_records,
                         {"thing_classes": report.notes["thing_classes"], "evaluator_type": "coco",
                          "json_file": os.fspath(args.json), "image_root": os.fspath(args.images)},
                         json_file=args.json, image_root=args.images)
