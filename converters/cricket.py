"""Cricket-shot image folders -> classification records with a group-aware train/val/test split.

Layout::

    root/
      0. Cut Shot/          12_cut_main.jpg  12_cut_30.jpg  13_cut_main.jpg ...
      1. Cover Drive/       ...
      03_pull/              ...
      sweep & reverse/      ...

One folder per shot. Folder names in the wild carry an ordering prefix (``0. Cut Shot``,
``03_pull``, ``7) hook``); the class name is the human name without it (``Cut Shot``, ``pull``),
and the class order is stable: prefixed folders by their number, then unprefixed ones by name.

Each record is a plain dict::

    {"file_name": "/abs/root/0. Cut Shot/12_cut_main.jpg", "height": 240, "width": 320,
     "image_id": 0, "label": 0, "class_name": "Cut Shot", "group": "12",
     "relative_path": "0. Cut Shot/12_cut_main.jpg",
     "keypoints": [{"keypoints": [x, y, v] * 17, "score": 0.98, "bbox": [x, y, w, h]}, ...]}

``keypoints`` is present only when a keypoint results file is given (then it is a list of the
persons detected in that image, possibly empty). Detectron2 ignores image-level keys it does not
know, so these records feed its loaders unchanged.

The split is deterministic for a seed, stratified (each class is split on its own, in the given
ratios) and **group-aware**: augmented copies of one photo (``12_cut_main.jpg``, ``12_cut_30.jpg``)
share a group key (default: the leading number of the file name) and always land in the same
split. Groups are scoped to their class folder: ``12_*.jpg`` under "cut" and ``12_*.jpg`` under
"pull" are different photos.
"""
import copy
import functools
import json
import logging
import math
import os
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from .common import (ConversionError, ConversionReport, atomic_write_json, bad_number, bad_numbers,
                     progress, read_image_size)

logger = logging.getLogger(__name__)

FMT = "cricket"


def _error(file, line, message):
    return ConversionError(file, line, message, fmt=FMT)


__all__ = [
    "IMAGE_EXTENSIONS",
    "DEFAULT_SPLIT_RATIOS",
    "parse_class_folder_name",
    "discover_classes",
    "make_group_key_fn",
    "load_cricket_records",
    "group_stratified_split",
    "attach_keypoints",
    "load_keypoint_results",
    "convert_cricket",
    "write_cricket_json",
    "load_cricket_split",
    "register_cricket",
    "add_subcommand",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "test")
# 70/15/15 is the usual hold-out for small image-classification sets.
DEFAULT_SPLIT_RATIOS = (0.7, 0.15, 0.15)
# The leading id of a file name: "12_cut_30.jpg" -> "12".
DEFAULT_GROUP_PATTERN = r"^(\d+)"
NUM_COCO_KEYPOINTS = 17

# "0. Cut Shot", "03_pull", "7) hook", "2 - sweep": digits, then a separator, then the name.
# "3D shot" has no separator after the digits, so it keeps its digits.
_PREFIX_RE = re.compile(r"^\s*(\d+)(?:\s*[._\-)\]:]+\s*|\s+)(?=\S)")


def parse_class_folder_name(folder_name):
    """Split a class folder name into ``(order, class_name)``.

    ``"0. Cut Shot" -> (0, "Cut Shot")``, ``"03_pull" -> (3, "pull")``,
    ``"cover drive & more" -> (None, "cover drive & more")``. Inner spaces, dots and ``&`` are
    kept; surrounding whitespace is stripped.
    """
    m = _PREFIX_RE.match(folder_name)
    if m:
        order = int(m.group(1))
        name = folder_name[m.end():].strip()
        if name:
            return order, name
    return None, folder_name.strip()


def _class_sort_key(item):
    order, name, folder = item
    # Prefixed folders first, by number; then unprefixed ones by name (case-insensitively, then
    # exactly, so the order never depends on the file system's listing order).
    return (0, order, name.lower(), folder) if order is not None else (1, 0, name.lower(), folder)


def discover_classes(root):
    """Class folders of ``root`` in the stable class order.

    Returns a list of ``(folder_name, class_name)``. Two folders whose human names coincide
    (``0. cut`` and ``1_cut``) are an error: they would silently merge two classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise _error(str(root), None, "not a directory (expected one sub-folder per class)")
    entries = []
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            order, name = parse_class_folder_name(child.name)
            entries.append((order, name, child.name))
    if not entries:
        raise _error(str(root), None, "no class folders found (expected root/<class>/<images>)")
    entries.sort(key=_class_sort_key)
    seen = {}
    for _, name, folder in entries:
        key = name.lower()
        if key in seen:
            raise _error(
                str(root / folder), None,
                f"class name {name!r} is also given by folder {seen[key]!r}; rename one of them",
            )
        seen[key] = folder
    return [(folder, name) for _, name, folder in entries]


def make_group_key_fn(group_key=None):
    """Turn ``group_key`` into ``fn(file_name) -> str``.

    ``None`` -> the leading number of the file name (``12_cut_30.jpg -> "12"``); a string -> a
    regular expression searched in the file name (its first group, or the whole match when it
    has none); a callable -> used as is (it gets the base name, e.g. ``"12_cut_30.jpg"``).
    A file the pattern does not match is its own group (its stem).
    """
    if callable(group_key):
        return lambda file_name: str(group_key(file_name))
    try:
        pattern = re.compile(DEFAULT_GROUP_PATTERN if group_key is None else group_key)
    except re.error as e:
        raise ValueError(f"group key {group_key!r} is not a valid regular expression: {e}") from None

    def fn(file_name):
        m = pattern.search(file_name)
        if m is None:
            return os.path.splitext(file_name)[0]
        return m.group(1) if m.groups() else m.group(0)

    return fn


def _read_image(path, verify):
    """``(height, width)`` from the image header (EXIF rotations applied, as Detectron2's
    ``read_image`` does); with ``verify`` the pixels are decoded too, which catches files cut
    short after a valid header. Raises ConversionError naming the file."""
    height, width = read_image_size(path, fmt=FMT)
    if verify:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.load()
        except (OSError, ValueError, SyntaxError) as e:  # "image file is truncated", bad data
            raise _error(path, None, f"image data cannot be decoded ({e})") from None
    if width <= 0 or height <= 0:
        raise _error(path, None, f"image size {width}x{height}")
    return height, width


def load_cricket_records(root, *, group_key=None, verify_images=False, report=None, progress_bar=False):
    """Scan ``root/<class folder>/<images>`` into records (without split).

    Returns ``(classes, records)``: class names in label order and records sorted by
    ``(label, file name)``; ``image_id`` is the position in that order. Non-image files,
    unreadable images, sub-folders inside a class folder and empty class folders are reported in
    ``report`` (a :class:`ConversionReport`); an empty class keeps its label, so labels do not
    shift when a folder happens to be empty. Grayscale and RGB images are both accepted
    (Detectron2's ``read_image`` converts either to the model's input format).
    """
    root = Path(root).resolve()
    report = report if report is not None else ConversionReport(FMT)
    group_fn = make_group_key_fn(group_key)
    class_folders = discover_classes(root)
    classes = [name for _, name in class_folders]

    candidates = []
    for label, (folder, class_name) in enumerate(class_folders):
        class_dir = root / folder
        n_images = 0
        for path in sorted(class_dir.iterdir(), key=lambda p: p.name):
            if path.name.startswith("."):
                continue  # .DS_Store and friends: hidden, not data
            if path.is_dir():
                report.skip(path, None, "sub-folder inside a class folder (only direct files are read)")
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                report.skip(path, None, f"not an image file: extension {path.suffix or 'none'!r}")
                continue
            candidates.append((label, class_name, path, f"{folder}/{path.name}"))
            n_images += 1
        if n_images == 0:
            report.skip(class_dir, None, f"empty class folder: no images for class {class_name!r}")

    records = []
    for label, class_name, path, rel in progress(candidates, progress_bar, desc="cricket images", unit="img"):
        try:
            height, width = _read_image(path, verify_images)
        except ConversionError as e:
            report.skip(path, None, f"unreadable image: {e.message}")
            continue
        records.append(
            {
                "file_name": str(path),
                "height": height,
                "width": width,
                "image_id": len(records),
                "label": label,
                "class_name": class_name,
                "group": group_fn(path.name),
                "relative_path": rel,
            }
        )
        report.add_record(records[-1])
    report.note("images_per_class", {c: sum(r["label"] == i for r in records) for i, c in enumerate(classes)})
    return classes, records


def _normalise_ratios(ratios):
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be 3 non-negative numbers (train, val, test), got {ratios}")
    total = sum(ratios)
    return [r / total for r in ratios]


def _split_one_class(groups, ratios, rng):
    """Assign the groups of one class to splits. ``groups``: {key: n_images}.

    Groups are shuffled with ``rng``, then placed largest first (a stable sort keeps the shuffled
    order among equal sizes) into the split furthest below its target image count. When there
    are at least as many groups as splits with a non-zero ratio, every such split gets at least
    one group, so val and test see every class that has enough photos.
    """
    keys = sorted(groups)
    rng.shuffle(keys)
    keys.sort(key=lambda k: -groups[k])
    total = sum(groups.values())
    targets = [r * total for r in ratios]
    counts = [0, 0, 0]
    assignment = {0: [], 1: [], 2: []}
    for k in keys:
        deficits = [targets[i] - counts[i] if ratios[i] > 0 else float("-inf") for i in range(3)]
        best = max(range(3), key=lambda i: (deficits[i], -i))
        assignment[best].append(k)
        counts[best] += groups[k]
    active = [i for i in range(3) if ratios[i] > 0]
    if len(keys) >= len(active):
        for i in active:
            if assignment[i]:
                continue
            # Take the smallest group from the split holding the most groups.
            donor = max(active, key=lambda j: (len(assignment[j]), -j))
            if len(assignment[donor]) <= 1:
                continue
            smallest = min(assignment[donor], key=lambda k: (groups[k], keys.index(k)))
            assignment[donor].remove(smallest)
            assignment[i].append(smallest)
    return {k: i for i, ks in assignment.items() for k in ks}


def group_stratified_split(records, ratios=DEFAULT_SPLIT_RATIOS, seed=0):
    """Split records into ``{"train": [...], "val": [...], "test": [...]}``.

    Deterministic for ``seed`` (and independent of the order of ``records``); stratified by
    ``label``; records sharing ``(label, group)`` always go to the same split. Within a split,
    records keep the order of ``image_id``.
    """
    ratios = _normalise_ratios(ratios)
    by_class = defaultdict(Counter)
    for r in records:
        by_class[r["label"]][r["group"]] += 1
    where = {}
    for label in sorted(by_class):
        # A string seed is hashed with SHA-512 by random.Random: stable across runs and machines
        # (unlike hash()), and each class gets its own independent stream.
        rng = random.Random(f"d2ext-cricket:{seed}:{label}")
        for key, split_index in _split_one_class(dict(by_class[label]), ratios, rng).items():
            where[(label, key)] = split_index
    splits = {name: [] for name in SPLIT_NAMES}
    for r in sorted(records, key=lambda r: r["image_id"]):
        splits[SPLIT_NAMES[where[(r["label"], r["group"])]]].append(r)
    return splits


def load_keypoint_results(path, report=None):
    """Read a COCO-format keypoint results file into ``{file key: [person, ...]}``.

    Accepted layouts (each person is ``{"keypoints": [x, y, v] * 17, "score": s, "bbox": [x, y,
    w, h]}``; ``score``/``bbox`` optional):

    * a list of COCO results, each carrying ``file_name`` (``tools/extract_keypoints.py``);
    * a COCO dataset / results dict with ``images`` (id -> ``file_name``) and ``annotations``;
    * a dict ``{file_name: [person, ...]}``.

    A person whose ``keypoints`` is not 51 numbers, or whose ``score`` / ``bbox`` is not
    numeric, is an error naming the file and entry. A person with a number that is not finite
    or out of range (NaN, Infinity, 1e300) is skipped and reported in ``report`` (an error when
    no report is given).
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise _error(path, e.lineno, f"invalid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise _error(path, None, f"not UTF-8 text: {e}") from None
    except OSError as e:
        raise _error(path, None, f"cannot read: {e.strerror}") from None

    def bad_value(where, why):
        if report is None:
            raise _error(path, None, f"{where}: {why}")
        report.skip(path, None, f"{where}: {why}; person skipped")
        return None

    def person(entry, where):
        if not isinstance(entry, dict) or "keypoints" not in entry:
            raise _error(path, None, f"{where}: expected an object with 'keypoints'")
        kps = entry["keypoints"]
        if not isinstance(kps, list) or len(kps) != 3 * NUM_COCO_KEYPOINTS:
            n = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise _error(
                path, None,
                f"{where}: expected {3 * NUM_COCO_KEYPOINTS} keypoint numbers (x, y, v) * 17, got {n}",
            )
        if any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in kps):
            raise _error(path, None, f"{where}: keypoints must be numbers")
        for i, v in enumerate(kps):
            # x and y are coordinates (finite, in range); the third value is a visibility flag or
            # an unbounded model score (Detectron2 writes raw heatmap logits): finite is enough.
            why = bad_number(v) if i % 3 != 2 else (None if math.isfinite(v) else f"{v!r} is not finite")
            if why is not None:
                return bad_value(where, f"keypoint value #{i} {why}")
        out = {"keypoints": [float(v) for v in kps]}
        if "score" in entry:
            score = entry["score"]
            if isinstance(score, (str, bool)) or not isinstance(score, (int, float)):
                raise _error(path, None, f"{where}: score {score!r} is not a number")
            if not math.isfinite(score):  # a model score: any finite value
                return bad_value(where, f"score {score!r} is not finite")
            out["score"] = float(score)
        if "bbox" in entry:
            bbox = entry["bbox"]
            if not isinstance(bbox, list) or len(bbox) != 4 or \
                    any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for v in bbox):
                raise _error(path, None, f"{where}: bbox must be 4 numbers, got {bbox!r}"[:200])
            why = bad_numbers(bbox, ("x", "y", "width", "height"))
            if why is not None:
                return bad_value(where, f"bbox {why}")
            out["bbox"] = [float(v) for v in bbox]
        return out

    result = defaultdict(list)
    if isinstance(data, dict) and "annotations" in data:
        id_to_file = {}
        for i, img in enumerate(data.get("images", [])):
            if "id" not in img or "file_name" not in img:
                raise _error(path, None, f"images[{i}]: expected 'id' and 'file_name'")
            id_to_file[img["id"]] = img["file_name"]
            result.setdefault(img["file_name"], [])
        for i, ann in enumerate(data["annotations"]):
            fname = ann.get("file_name", id_to_file.get(ann.get("image_id")))
            if fname is None:
                raise _error(path, None,
                             f"annotations[{i}]: image_id {ann.get('image_id')!r} is not in 'images'")
            p = person(ann, f"annotations[{i}]")
            if p is not None:
                result[fname].append(p)
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "file_name" not in entry:
                raise _error(path, None, f"entry {i}: expected 'file_name' (results keyed by file name)")
            p = person(entry, f"entry {i}")
            if p is not None:
                result[entry["file_name"]].append(p)
    elif isinstance(data, dict):
        for fname, persons in data.items():
            if not isinstance(persons, list):
                raise _error(path, None, f"{fname!r}: expected a list of persons")
            result[fname] = [q for q in (person(p, f"{fname!r}[{j}]") for j, p in enumerate(persons))
                             if q is not None]
    else:
        raise _error(path, None, "expected a list of results or an object")
    return dict(result)


def attach_keypoints(records, keypoint_results, root=None, report=None, source="keypoints"):
    """Attach ``keypoints`` (a list of persons) to each record, in place.

    A results key matches a record by its absolute ``file_name``, its ``relative_path``
    (``"0. Cut Shot/12_cut_main.jpg"``), or its base name when that is unique in the dataset.
    Every record gets a list (empty when no person was found); result keys that match no
    record are reported.
    """
    report = report if report is not None else ConversionReport(FMT)
    index = {}
    base_counts = Counter(os.path.basename(r["file_name"]) for r in records)
    for r in records:
        index[os.path.normpath(r["file_name"])] = r
        index[r["relative_path"]] = r
        base = os.path.basename(r["file_name"])
        if base_counts[base] == 1:
            index[base] = r
        r["keypoints"] = []
    unmatched = 0
    for key in sorted(keypoint_results):
        norm = key.replace("\\", "/")
        r = index.get(norm) or index.get(os.path.normpath(key))
        if r is None and root is not None and os.path.isabs(key):
            try:
                r = index.get(Path(key).resolve().relative_to(Path(root).resolve()).as_posix())
            except ValueError:
                r = None
        if r is None:
            unmatched += 1
            report.skip(source, None, f"keypoints for {key!r}: no such image in the dataset")
            continue
        r["keypoints"].extend(keypoint_results[key])
    return unmatched


def convert_cricket(root, *, seed=0, ratios=DEFAULT_SPLIT_RATIOS, group_key=None, keypoints_file=None,
                    verify_images=False, report=None, progress_bar=False):
    """Read, split and (optionally) attach keypoints.

    Returns ``{"classes": [...], "splits": {"train": [...], "val": [...], "test": [...]}}``.
    """
    report = report if report is not None else ConversionReport(FMT)
    classes, records = load_cricket_records(
        root, group_key=group_key, verify_images=verify_images, report=report, progress_bar=progress_bar
    )
    if keypoints_file is not None:
        attach_keypoints(records, load_keypoint_results(keypoints_file, report), root=root, report=report,
                         source=str(keypoints_file))
    splits = group_stratified_split(records, ratios=ratios, seed=seed)
    logger.info(
        "cricket %s: %d classes, %d images (train %d, val %d, test %d), %d skipped",
        root, len(classes), len(records), len(splits["train"]), len(splits["val"]), len(splits["test"]),
        len(report.skipped),
    )
    return {"classes": classes, "splits": splits}


def write_cricket_json(result, path, batch=None):
    """Write ``convert_cricket``'s result atomically as ``{"classes": [...], "splits": {...}}``
    (into ``batch``, a :class:`d2ext.core.OutputBatch`, when given)."""
    if batch is not None:
        batch.write_json(path, result, indent=1)
    else:
        atomic_write_json(path, result, indent=1)


# --------------------------------------------------------------------------------------------
# Detectron2 registration
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _cached_conversion(root, seed, ratios, group_key, keypoints_file, verify_images):
    report = ConversionReport(FMT, sources=[root])
    result = convert_cricket(root, seed=seed, ratios=ratios, group_key=group_key,
                             keypoints_file=keypoints_file, verify_images=verify_images, report=report)
    if report.skipped:
        logger.warning("cricket %s: %d files skipped (%s)", root, len(report.skipped), report.skip_reasons())
    return result


def load_cricket_split(root, split, seed=0, ratios=DEFAULT_SPLIT_RATIOS, group_key=None,
                       keypoints_file=None, verify_images=False):
    """Records of one split (``"train"``, ``"val"`` or ``"test"``); the folder is scanned once
    per argument set and each call gets its own copy of the records."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    result = _cached_conversion(str(root), seed, tuple(ratios), group_key,
                                None if keypoints_file is None else str(keypoints_file), verify_images)
    return copy.deepcopy(result["splits"][split])


def register_cricket(name_prefix, root, seed=0, ratios=DEFAULT_SPLIT_RATIOS, group_key=None,
                     keypoints_file=None, verify_images=False):
    """Register ``<name_prefix>_train``, ``_val`` and ``_test`` (lazy: nothing is read now).

    Metadata: ``thing_classes`` and ``classes`` (the class names in label order, so the class
    list is known without reading images), ``evaluator_type="classification"``. Returns the
    three dataset names.
    """
    from .common import register_dataset

    root = str(Path(root).resolve())
    classes = [name for _, name in discover_classes(root)]
    names = []
    for split in SPLIT_NAMES:
        name = f"{name_prefix}_{split}"
        register_dataset(
            name,
            load_cricket_split,
            metadata={"thing_classes": classes, "classes": classes, "evaluator_type": "classification",
                      "root": root, "split": split, "seed": seed},
            root=root, split=split, seed=seed, ratios=tuple(ratios), group_key=group_key,
            keypoints_file=None if keypoints_file is None else str(keypoints_file),
            verify_images=verify_images,
        )
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------
# command line: tools/convert.py cricket ...
# --------------------------------------------------------------------------------------------
def add_subcommand(subparsers):
    """``tools/convert.py cricket --root DIR --out DICTS.json [--report R.json] [--seed S]``
    (``--report``, ``--strict``, ``--register`` and the progress flag come from tools/convert.py)."""
    p = subparsers.add_parser(
        "cricket",
        help="cricket-shot class folders -> classification records with a group-aware split",
        description="Read root/<class folder>/<images> into {'classes', 'splits': {train, val, test}}.",
    )
    p.add_argument("--root", required=True, help="folder with one sub-folder per shot class")
    p.add_argument("--output", "--out", dest="out", required=True, help="output JSON (classes + splits)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument("--ratios", type=float, nargs=3, default=list(DEFAULT_SPLIT_RATIOS),
                   metavar=("TRAIN", "VAL", "TEST"), help="split ratios (default 0.7 0.15 0.15)")
    p.add_argument("--group-regex", default=None,
                   help=f"regex giving the group key of a file name (first group or whole match; "
                        f"default {DEFAULT_GROUP_PATTERN!r}: the leading id)")
    p.add_argument("--keypoints", default=None, help="COCO-format keypoint results keyed by file name")
    p.add_argument("--verify-images", action="store_true", help="decode every image (finds truncated files)")
    p.set_defaults(run=_run_cli, register_fn=_register_cli, fmt=FMT)
    return p


def _run_cli(args, report, batch=None):
    report.sources.extend([str(args.root)] + ([str(args.keypoints)] if args.keypoints else []))
    result = convert_cricket(args.root, seed=args.seed, ratios=args.ratios, group_key=args.group_regex,
                             keypoints_file=args.keypoints, verify_images=args.verify_images, report=report,
                             progress_bar=getattr(args, "progress", False))
    report.note("classes", result["classes"])
    report.note("split_sizes", {k: len(v) for k, v in result["splits"].items()})
    write_cricket_json(result, args.out, batch)
    return {"out": args.out, **report.notes["split_sizes"]}


def _register_cli(args, name):
    """``--register NAME``: NAME_train, NAME_val and NAME_test."""
    return register_cricket(name, args.root, seed=args.seed, ratios=args.ratios, group_key=args.group_regex,
                            keypoints_file=args.keypoints, verify_images=args.verify_images)
