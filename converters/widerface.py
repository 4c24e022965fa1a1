"""WIDER Face (Yang et al., CVPR 2016) ``wider_face_{train,val}_bbx_gt.txt`` -> Detectron2 dicts.

File format, per image::

    0--Parade/0_Parade_marchingband_1_465.jpg      image path relative to WIDER_*/images
    126                                            face count
    345 211 4 4 2 0 0 0 2 0                        x1 y1 w h blur expression illumination
    ...                                            invalid occlusion pose (10 integers per face)

Attributes are kept as ints under ``anno["attributes"]`` in the **official order**
:data:`ATTRIBUTE_NAMES` (checked against the official ``wider_face_val.mat`` in the tests).
Blur and occlusion take 0-2, the others 0/1; anything else is an error.

Decisions (all documented in the conversion report):

- A face-less image is written either as count ``0`` + one dummy row of zeros (train file) or as
  count ``1`` + an all-zero row (val file). Both give an image with no annotations; the dummy /
  all-zero row is reported as a skip ("placeholder row of a face-less image").
- ``invalid`` faces are kept with ``iscrowd=1`` so Detectron2 / COCOeval ignore them in training
  matching and evaluation instead of counting them as misses.
- Faces with zero (or negative) width or height are reported and skipped; a face row repeated in
  the same image is reported and skipped once (val: ``21_Festival_Festival_21_604``).
- Boxes are ``XYWH_ABS`` exactly as in the file; when image sizes are read, boxes sticking out of
  the image are clipped (reported repair) and boxes fully outside are skipped (reported).
- The record keeps the event folder in ``file_name`` (``<image_root>/0--Parade/...jpg``) and in
  ``record["event"]``; there is one class, ``face``.
- Image ids are 1, 2, ... in file order. A repeated image path is an error. An image path that
  is absolute or leaves the image folder (``..``, a symlink leading out) is reported and its
  faces skipped (``--strict``: an error).
- A box coordinate that is a number but not a finite integer (``nan``, ``10.5``, ``1e400``) or
  beyond +-2**20 px is reported and the face skipped; a word where a number should be, or an
  attribute that is not an integer in its range, is an error naming the line and the value.
- Parsing streams (blocks of 1 MiB, one record at a time): memory does not grow with the number
  of faces, only by ~0.3 KiB per image entry (the set of paths for the duplicate check, reported
  skips). CRLF, BOM and trailing spaces are accepted; bad bytes, wrong counts, short rows and truncated files are errors that name the
  file and line.

Report notes: ``num_face_rows`` (sum of the face counts), ``num_faces_kept``,
``num_faces_skipped`` (face rows reported as skipped, including placeholder rows and faces of
skipped images), ``num_empty_images``, ``num_crowd_faces`` (invalid=1).
"""
from __future__ import annotations

import logging
import os
import re
from itertools import product, repeat
from operator import add, itemgetter, methodcaller

TYPE_CHECKING = False  # typing off the start-up path of tools/convert.py (converters.common)
if TYPE_CHECKING:
    from typing import Iterator, List, Optional

from d2ext.core import check_outputs

from .common import (BOX_MODE_XYWH_ABS, MAX_COORDINATE, BoxColumns, ConversionError,
                     ConversionReport, ImagePaths, check_box_xyxy, export_coco_json, iter_text_blocks,
                     progress, read_image_size, register_dataset, require_dir)

logger = logging.getLogger(__name__)

FORMAT = "widerface"
THING_CLASSES = ["face"]
#: Official attribute order of WIDER Face (the readme of the annotation zip and the .mat files).
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
#: Largest legal value of each attribute (blur/occlusion: none, partial/normal, heavy).
ATTRIBUTE_MAX = {"blur": 2, "expression": 1, "illumination": 1, "invalid": 1, "occlusion": 2, "pose": 1}


class _Lines:
    """Non-blank, stripped lines with their numbers, read a block (~1 MiB) at a time and handed
    out one (``next``/``peek``) or many (``take``: an image's face rows, one list slice)."""

    def __init__(self, path):
        self._blocks = iter_text_blocks(path, FORMAT, skip_blank=True)
        self._nums: List[int] = []
        self._texts: List[str] = []
        self._pos = 0
        self.last_lineno = 0

    def _more(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            return False
        self._nums = self._nums[self._pos:] + block[0]
        self._texts = self._texts[self._pos:] + block[1]
        self._pos = 0
        return True

    def peek(self):
        if self._pos >= len(self._texts) and not self._more():
            return None
        return self._nums[self._pos], self._texts[self._pos]

    def next(self):
        item = self.peek()
        if item is not None:
            self._pos += 1
            self.last_lineno = item[0]
        return item

    def take(self, n: int):
        """``(line numbers, texts)`` of the next ``n`` lines (fewer at the end of the file)."""
        while self._pos + n > len(self._texts) and self._more():
            pass
        end = self._pos + n
        nums, texts = self._nums[self._pos:end], self._texts[self._pos:end]
        self._pos += len(texts)
        if nums:
            self.last_lineno = nums[-1]
        return nums, texts


def _ints(text: str):
    try:
        return list(map(int, text.split()))
    except ValueError:
        return None


def iter_widerface(annotation_file, image_root=None, *, report: Optional[ConversionReport] = None,
                   read_sizes: bool = True, image_size=None,
                   show_progress: bool = False, columns: bool = False) -> Iterator[dict]:
    """Yield one Detectron2 record per image of a WIDER Face annotation file.

    Args:
        annotation_file: ``wider_face_{train,val}_bbx_gt.txt``.
        image_root: folder holding the event folders (``WIDER_val/images``); ``file_name`` is
            ``image_root/<event>/<file>``, or the relative path when None.
        report: filled as the records stream (a fresh one is made when None).
        read_sizes: read ``height``/``width`` from each image header (needs the images; missing
            images are then reported and skipped). False leaves the size out of the records.
        image_size: ``(height, width)`` given to every image instead of reading headers (for
            annotation-only work such as synthetic benchmarks); boxes are checked against it.
        columns: the faces of an image that needs no skip or repair (nearly all) come as a
            :class:`converters.common.BoxColumns` instead of a list of dicts (for
            :func:`export_coco_json`, which writes them without a dict per face; their attribute
            dicts are shared between faces). False: Detectron2 records throughout.
    """
    report = report if report is not None else ConversionReport(FORMAT)
    src = os.fspath(annotation_file)
    if read_sizes and image_root is not None and image_size is None:
        require_dir(image_root, "image folder", FORMAT)
    paths = ImagePaths(image_root)
    lines = _Lines(src)
    seen_paths = {}
    stats = dict(num_face_rows=0, num_faces_kept=0, num_faces_skipped=0, num_empty_images=0,
                 num_crowd_faces=0)
    image_id = 0
    bar = progress(iter(int, 1), show_progress, desc=f"widerface {os.path.basename(src)}", unit="img")
    while True:
        item = lines.next()
        if item is None:
            break
        path_line, rel = item
        if _NUMBER_ROW.fullmatch(rel) and _ints(rel) is not None:
            raise ConversionError(src, path_line, f"expected an image path, got a row of numbers "
                                  f"'{rel}' (is the previous face count too small?)", FORMAT)
        if rel in seen_paths:
            raise ConversionError(src, path_line, f"image '{rel}' listed twice (first on line "
                                  f"{seen_paths[rel]})", FORMAT)
        seen_paths[rel] = path_line
        item = lines.next()
        if item is None:
            raise ConversionError(src, lines.last_lineno, f"file ends after image path '{rel}': "
                                  "expected a face count", FORMAT)
        count_line, count_text = item
        count = int(count_text) if count_text.isdigit() else _ints(count_text)  # isdigit: the fast path
        if isinstance(count, list):
            if len(count) != 1 or count[0] < 0:
                raise ConversionError(src, count_line, f"expected a face count (one integer >= 0) "
                                      f"for '{rel}', got '{count_text}'", FORMAT)
            count = count[0]
        elif count is None:
            raise ConversionError(src, count_line, f"expected a face count (one integer >= 0) for "
                                  f"'{rel}', got '{count_text}'", FORMAT)
        stats["num_face_rows"] += count
        parsed, rows = None, ()
        if count:  # hot path: all face rows of the image at once, one slice of the line buffer
            nums, texts = lines.take(count)
            if len(texts) < count:
                raise ConversionError(src, nums[-1] if nums else count_line,
                                      f"file ends after {len(texts)} of {count} faces "
                                      f"of '{rel}' (count on line {count_line})", FORMAT)
            parsed = _parse_faces(texts)
            if parsed is None:  # some row is not 10 plain integers in range: row by row
                rows = [_parse_face(src, item, count_line, count) for item in zip(nums, texts)]
        if count == 0:
            # Train-file form of a face-less image: count 0 followed by one dummy row of zeros.
            nxt = lines.peek()
            if nxt is not None:
                vals = _ints(nxt[1])
                if vals is not None:
                    if len(vals) == 10 and not any(vals):
                        lines.next()
                        report.skip(src, nxt[0], "placeholder row of a face-less image (count 0)",
                                    image=rel)
                    else:
                        raise ConversionError(src, nxt[0], f"face count of '{rel}' is 0 (line "
                                              f"{count_line}) but a face row follows", FORMAT)
        event = os.path.dirname(rel) or None
        file_name = paths.resolve(rel)
        if file_name is None:
            report.skip(src, path_line, f"image path '{rel}' is absolute or leaves the image folder",
                        image=rel, faces=count)
            stats["num_faces_skipped"] += count
            continue
        height = width = None
        if image_size is not None:
            height, width = image_size
        elif read_sizes and image_root is not None:
            try:
                height, width = read_image_size(file_name, FORMAT)
            except ConversionError as e:
                report.skip(src, path_line, f"image unreadable: {e.message}", image=file_name,
                            faces=count)
                stats["num_faces_skipped"] += count
                continue
        annotations = []
        first_seen = {}
        crowd = 0
        if count == 1:
            first = _face_values(parsed)[0] if parsed is not None else rows[0][1]
            if first is not None and not any(first):
                report.skip(src, nums[0], "placeholder row of a face-less image (count 1, all zeros)",
                            image=rel)
                stats["num_faces_skipped"] += 1
                parsed, rows = None, ()
        max_x = width if width is not None else MAX_COORDINATE
        max_y = height if height is not None else MAX_COORDINATE
        if parsed is not None and _clean_faces(parsed, max_x, max_y):
            # every face well formed, distinct and inside the image: the columns as parsed
            # (the COCO export writes them as they are; Detectron2 gets a dict per face)
            crowds = list(map(itemgetter(3), parsed[1]))  # attribute 3: invalid
            annotations = BoxColumns(*parsed[0], crowds, category_id=0, extra_key="attributes",
                                     extra=list(map(_ATTRIBUTE_DICTS.__getitem__, parsed[1])))
            if not columns:
                annotations = annotations.to_records()
            crowd = sum(crowds)
        elif parsed is not None:
            rows = zip(nums, _face_values(parsed), repeat(None))
        for lineno, vals, bad in rows:  # the general loop: skips and repairs, face by face
            if bad is not None:  # a coordinate that is not a finite integer: face skipped
                report.skip(src, lineno, bad, image=rel)
                stats["num_faces_skipped"] += 1
                continue
            if vals in first_seen:
                report.skip(src, lineno, f"duplicate face row: same as line {first_seen[vals]}",
                            image=rel)
                stats["num_faces_skipped"] += 1
                continue
            first_seen[vals] = lineno
            x, y, w, h, blur, expression, illumination, invalid, occlusion, pose = vals
            if w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= max_x and y + h <= max_y:
                bbox = [x, y, w, h]  # the common case, kept as the file's ints
            else:
                box = check_box_xyxy((x, y, x + w, y + h), width, height, report, src, lineno,
                                     what="face", image=rel)
                if box is None:
                    stats["num_faces_skipped"] += 1
                    continue
                bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            # same keys as common.make_box_annotation, built inline
            annotations.append({"bbox": bbox, "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": 0,
                                "iscrowd": invalid, "attributes": {
                                    "blur": blur, "expression": expression,
                                    "illumination": illumination, "invalid": invalid,
                                    "occlusion": occlusion, "pose": pose}})
            crowd += invalid
        stats["num_crowd_faces"] += crowd
        stats["num_faces_kept"] += len(annotations)
        stats["num_empty_images"] += not annotations
        image_id += 1
        # common.make_record's dict, built inline (it copies the annotation list)
        record = {"file_name": file_name, "image_id": image_id}
        if height is not None:
            record["height"], record["width"] = int(height), int(width)
        record["annotations"] = annotations
        record["event"] = event
        report.add_image({"face": len(annotations)})
        if show_progress:
            next(bar)
        yield record
    if not seen_paths:
        raise ConversionError(src, None, "no image entries: empty file?", FORMAT)
    for key, value in stats.items():
        report.note(key, value)


_FIELDS = ("x1", "y1", "w", "h") + ATTRIBUTE_NAMES


# A row made only of integers (a path line that is one is an error: a face count too small).
_NUMBER_ROW = re.compile(r"[-+\d\s]+")
# The last 12 characters of a row in the files' own layout (one space between numbers) -> its 6
# attributes: every legal combination (ATTRIBUTE_MAX), 144 of them.
_ATTRIBUTE_TAILS = {" " + " ".join(map(str, v)): v for v in product(
    *(range(ATTRIBUTE_MAX[name] + 1) for name in ATTRIBUTE_NAMES))}
_COUNT_SPACES = methodcaller("count", " ")
# attribute 6-tuple -> its dict in the official order, one per legal combination (shared by the
# faces of BoxColumns, which only the COCO export serialises)
_ATTRIBUTE_DICTS = {v: dict(zip(ATTRIBUTE_NAMES, v)) for v in _ATTRIBUTE_TAILS.values()}


def _parse_faces(texts):
    """The faces of one image (its face rows ``texts``) as ``(boxes, attributes)`` -- the 4 box
    columns as lists and an attribute 6-tuple per face (:func:`_face_values` joins them) -- when
    every row is 10 integers separated by single spaces, coordinates within +-MAX_COORDINATE and
    attributes in range (the official files); None otherwise, and the caller goes row by row through
    :func:`_parse_face` for the exact skip or error. Column-wise, not row by row (40k faces per
    WIDER file): one split of the image's rows, one ``int`` map per box column, the attributes
    looked up whole from each row's last 12 characters."""
    if set(map(_COUNT_SPACES, texts)) != {9}:  # 10 tokens per row (an empty token fails below)
        return None
    flat = " ".join(texts).split(" ")
    try:
        boxes = [list(map(int, flat[i::10])) for i in range(4)]
        attributes = list(map(_ATTRIBUTE_TAILS.__getitem__, [t[-12:] for t in texts]))
    except (KeyError, ValueError):
        return None
    if max(map(max, boxes)) > MAX_COORDINATE or min(map(min, boxes)) < -MAX_COORDINATE:
        return None
    return boxes, attributes


def _clean_faces(parsed, max_x, max_y) -> bool:
    """Whether the faces ``(boxes, attributes)`` of :func:`_parse_faces` need no skip and no
    repair: no face repeats, every box has a positive size inside ``[0, max_x] x [0, max_y]``.
    Checked column-wise with C-level min/max, not face by face; faces are compared whole only
    when two boxes are equal."""
    xs, ys, ws, hs = parsed[0]
    if not (min(ws) > 0 and min(hs) > 0 and min(xs) >= 0 and min(ys) >= 0 and
            max(map(add, xs, ws)) <= max_x and max(map(add, ys, hs)) <= max_y):
        return False
    if len(set(zip(*parsed[0]))) == len(xs):
        return True
    faces = _face_values(parsed)
    return len(set(faces)) == len(faces)


def _face_values(parsed) -> list:
    """The 10-int tuple of each face of ``(boxes, attributes)`` (:func:`_parse_faces`)."""
    return list(map(add, zip(*parsed[0]), parsed[1]))


def _parse_face(src, item, count_line, count):
    """``(lineno, values, None)`` for a good face row, ``(lineno, None, reason)`` for a row whose
    box coordinates are numbers but not finite integers (NaN, 10.5, 1e300: the face is skipped
    and reported); anything else malformed is an error naming the line and what was found."""
    lineno, text = item
    vals = _ints(text)
    if vals is None:
        return _diagnose_face(src, lineno, text, count_line, count)
    if len(vals) != 10:
        raise ConversionError(src, lineno, f"expected 10 integers per face, got {len(vals)}", FORMAT)
    attrs = vals[4:]
    if min(attrs) < 0 or max(attrs) > 1:  # cheap test first; the exact ranges only when needed
        for name, v in zip(ATTRIBUTE_NAMES, attrs):
            if not 0 <= v <= ATTRIBUTE_MAX[name]:
                raise ConversionError(src, lineno, f"attribute {name}={v} out of range "
                                      f"0..{ATTRIBUTE_MAX[name]}", FORMAT)
    if max(vals[:4]) > MAX_COORDINATE or min(vals[:4]) < -MAX_COORDINATE:
        big = next(f for f, v in zip(_FIELDS, vals) if abs(v) > MAX_COORDINATE)
        return lineno, None, f"face {big} {vals[_FIELDS.index(big)]} out of range (|v| <= {MAX_COORDINATE:g})"
    return lineno, tuple(vals), None


def _diagnose_face(src, lineno, text, count_line, count):
    """The slow path of :func:`_parse_face`: say what is wrong with a row that is not 10 ints."""
    tokens = text.split()
    numeric = []
    for t in tokens:
        try:
            numeric.append(float(t))
        except ValueError:
            numeric.append(None)
    if len(tokens) != 10 or all(v is None for v in numeric):
        if all(v is None for v in numeric):  # a path or a word: the count promised more faces
            raise ConversionError(src, lineno, f"expected 10 integers per face, got '{text}' (face "
                                  f"count on line {count_line} is {count}: too large?)", FORMAT)
        raise ConversionError(src, lineno, f"expected 10 integers per face, got {len(tokens)} "
                              f"values '{text}'", FORMAT)
    for field, t, v in zip(_FIELDS, tokens, numeric):
        if v is None:
            raise ConversionError(src, lineno, f"face {field}: expected an integer, got '{t}'", FORMAT)
    for field, t, v in zip(_FIELDS[4:], tokens[4:], numeric[4:]):
        if not (v.is_integer() if v == v and abs(v) != float("inf") else False):
            raise ConversionError(src, lineno, f"attribute {field}: expected an integer, got '{t}'",
                                  FORMAT)
    bad = next(((f, t) for f, t, v in zip(_FIELDS[:4], tokens, numeric)
                if not (v == v and abs(v) != float("inf") and v.is_integer())), None)
    if bad is None:  # integer-valued numbers written as floats ("10.0", "1e3"): read as ints
        return _parse_face(src, (lineno, " ".join(str(int(v)) for v in numeric)), count_line, count)
    return lineno, None, f"face {bad[0]} '{bad[1]}' is not a finite integer"


def load_widerface(annotation_file, image_root=None, read_sizes: bool = True,
                   report: Optional[ConversionReport] = None) -> List[dict]:
    """All records of :func:`iter_widerface` as a list (the Detectron2 loader)."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[annotation_file])
    records = list(iter_widerface(annotation_file, image_root, report=report, read_sizes=read_sizes))
    logger.info(report.summary())
    return records


def convert_widerface(annotation_file, image_root, out_json, *, report=None, image_size=None,
                      read_sizes: bool = True, show_progress: bool = False,
                      batch=None) -> ConversionReport:
    """Stream a WIDER annotation file into a COCO JSON (``file_name`` keeps the event folder;
    annotations carry ``attributes``). Image sizes come from the image headers (or
    ``image_size``, see :func:`iter_widerface`). Memory does not grow with the file.

    ``read_sizes=False`` (``--no-images``): no image is opened; the COCO images then have no
    ``height``/``width`` and the file says ``"d2ext": {"image_sizes": false}`` (the report says
    so too). ``batch``: an :class:`d2ext.core.OutputBatch` to write into."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[annotation_file])
    check_outputs([annotation_file, image_root], [out_json], "converters.widerface")
    records = iter_widerface(annotation_file, image_root, report=report, read_sizes=read_sizes,
                             image_size=image_size, show_progress=show_progress, columns=True)
    counts = export_coco_json(records, THING_CLASSES, out_json, image_root=image_root, fmt=FORMAT,
                              info={"description": f"WIDER Face from "
                                                   f"{os.path.basename(str(annotation_file))}",
                                    "attribute_names": list(ATTRIBUTE_NAMES)},
                              batch=batch, require_sizes=read_sizes or image_size is not None)
    if counts.get("num_images_without_size"):
        report.note("image_sizes", f"not read (--no-images): the {counts['num_images_without_size']} "
                                   "COCO images have no height/width; boxes were not checked "
                                   "against the image borders")
    return report


def register_widerface(name: str, annotation_file, image_root=None, gt_dir=None,
                       read_sizes: bool = True) -> None:
    """Register a WIDER Face split (lazily). ``gt_dir`` = ``eval_tools/ground_truth`` (for the
    official easy/medium/hard evaluation) goes into metadata ``widerface_gt_dir``."""
    metadata = {"thing_classes": list(THING_CLASSES), "evaluator_type": "widerface",
                "annotation_file": os.fspath(annotation_file),
                "attribute_names": list(ATTRIBUTE_NAMES)}
    if image_root is not None:
        metadata["image_root"] = os.fspath(image_root)
    if gt_dir is not None:
        metadata["widerface_gt_dir"] = os.fspath(gt_dir)
    register_dataset(name, load_widerface, metadata, annotation_file=annotation_file,
                     image_root=image_root, read_sizes=read_sizes)


def add_subcommand(subparsers):
    p = subparsers.add_parser("widerface", help="WIDER Face bbx_gt.txt -> COCO JSON")
    p.add_argument("--annotations", required=True, help="wider_face_{train,val}_bbx_gt.txt")
    p.add_argument("--images", help="WIDER_{train,val}/images (holds the event folders); "
                                    "required unless --no-images")
    p.add_argument("--output", "--out", dest="out", required=True, help="COCO JSON to write")
    p.add_argument("--no-images", action="store_true",
                   help="do not open the images: no height/width in the output (the report says so)")
    p.set_defaults(run=_run, register_fn=_register_cli, fmt=FORMAT)


def _run(args, report, batch=None):
    report.sources.append(str(args.annotations))
    if args.images is None and not args.no_images:
        raise ConversionError(args.annotations, None, "--images is required to read image sizes "
                              "(or pass --no-images to convert without them)", FORMAT)
    convert_widerface(args.annotations, args.images, args.out, report=report,
                      read_sizes=not args.no_images, show_progress=args.progress, batch=batch)


def _register_cli(args, name, report):
    register_widerface(name, args.annotations, args.images, read_sizes=not args.no_images)
