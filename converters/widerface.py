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
- Image ids are 1, 2, ... in file order. A repeated image path is an error.
- Parsing streams (blocks of 1 MiB, one record at a time): memory does not grow with the number
  of faces, only by ~0.3 KiB per image entry (the set of paths for the duplicate check, reported
  skips). CRLF, BOM and trailing spaces are accepted; bad bytes, wrong counts, short rows and truncated files are errors that name the
  file and line.

Report notes: ``num_face_rows`` (sum of the face counts), ``num_faces_kept``,
``num_faces_skipped`` (face rows reported as skipped, including placeholder rows and faces of
skipped images), ``num_empty_images``, ``num_crowd_faces`` (invalid=1).
"""
import logging
import os
from typing import Iterator, List, Optional

from .common import (BOX_MODE_XYWH_ABS, ConversionError, ConversionReport, check_box_xyxy,
                     export_coco_json, iter_text_lines, make_record,
                     progress, read_image_size, register_dataset, require_dir)

logger = logging.getLogger(__name__)

FORMAT = "widerface"
THING_CLASSES = ["face"]
#: Official attribute order of WIDER Face (the readme of the annotation zip and the .mat files).
ATTRIBUTE_NAMES = ("blur", "expression", "illumination", "invalid", "occlusion", "pose")
#: Largest legal value of each attribute (blur/occlusion: none, partial/normal, heavy).
ATTRIBUTE_MAX = {"blur": 2, "expression": 1, "illumination": 1, "invalid": 1, "occlusion": 2, "pose": 1}


class _Lines:
    """Non-blank, stripped lines with one-line look-ahead."""

    def __init__(self, path):
        self._it = iter_text_lines(path, FORMAT, skip_blank=True)
        self._peeked = None
        self.last_lineno = 0

    def peek(self):
        if self._peeked is None:
            self._peeked = next(self._it, None)
            if self._peeked is not None:
                self.last_lineno = self._peeked[0]
        return self._peeked

    def next(self):
        item = self._peeked if self._peeked is not None else self.peek()
        self._peeked = None
        return item


def _ints(text: str):
    try:
        return list(map(int, text.split()))
    except ValueError:
        return None


def iter_widerface(annotation_file, image_root=None, *, report: Optional[ConversionReport] = None,
                   read_sizes: bool = True, image_size=None,
                   show_progress: bool = False) -> Iterator[dict]:
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
    """
    report = report if report is not None else ConversionReport(FORMAT)
    src = os.fspath(annotation_file)
    if read_sizes and image_root is not None and image_size is None:
        require_dir(image_root, "image folder", FORMAT)
    lines = _Lines(src)
    face_lines = lines._it  # no look-ahead is pending while face rows are read
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
        if _ints(rel) is not None:
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
        last_line = count_line
        count = _ints(count_text)
        if count is None or len(count) != 1 or count[0] < 0:
            raise ConversionError(src, count_line, f"expected a face count (one integer >= 0) for "
                                  f"'{rel}', got '{count_text}'", FORMAT)
        count = count[0]
        stats["num_face_rows"] += count
        rows = []
        for k in range(count):  # hot loop: read the face rows straight from the line stream
            item = next(face_lines, None)
            if item is None:
                raise ConversionError(src, last_line, f"file ends after {k} of {count} faces "
                                      f"of '{rel}' (count on line {count_line})", FORMAT)
            last_line = item[0]
            rows.append(_parse_face(src, item, count_line, count))
        lines.last_lineno = last_line
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
        file_name = os.path.join(image_root, rel) if image_root is not None else rel
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
        if count == 1 and not any(rows[0][1]):
            report.skip(src, rows[0][0], "placeholder row of a face-less image (count 1, all zeros)",
                        image=rel)
            stats["num_faces_skipped"] += 1
            rows = []
        for lineno, vals in rows:
            key = tuple(vals)
            if key in first_seen:
                report.skip(src, lineno, f"duplicate face row: same as line {first_seen[key]}",
                            image=rel)
                stats["num_faces_skipped"] += 1
                continue
            first_seen[key] = lineno
            x, y, w, h = vals[:4]
            if w > 0 and h > 0 and (width is None or (x >= 0 and y >= 0 and x + w <= width
                                                      and y + h <= height)):
                bbox = [x, y, w, h]  # the common case, kept as the file's ints
            else:
                box = check_box_xyxy((x, y, x + w, y + h), width, height, report, src, lineno,
                                     what="face", image=rel)
                if box is None:
                    stats["num_faces_skipped"] += 1
                    continue
                bbox = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            attributes = {"blur": vals[4], "expression": vals[5], "illumination": vals[6],
                          "invalid": vals[7], "occlusion": vals[8], "pose": vals[9]}
            # same keys as common.make_box_annotation, built inline (hot loop: ~40k faces per file)
            annotations.append({"bbox": bbox, "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": 0,
                                "iscrowd": attributes["invalid"], "attributes": attributes})
            stats["num_crowd_faces"] += attributes["invalid"]
        stats["num_faces_kept"] += len(annotations)
        stats["num_empty_images"] += not annotations
        image_id += 1
        record = make_record(file_name, image_id, annotations, height, width, event=event)
        report.add_image({"face": len(annotations)})
        if show_progress:
            next(bar)
        yield record
    if not seen_paths:
        raise ConversionError(src, None, "no image entries: empty file?", FORMAT)
    for key, value in stats.items():
        report.note(key, value)


def _parse_face(src, item, count_line, count):
    lineno, text = item
    vals = _ints(text)
    if vals is None:
        raise ConversionError(src, lineno, f"expected 10 integers per face, got '{text}' (face count "
                              f"on line {count_line} is {count}: too large?)", FORMAT)
    if len(vals) != 10:
        raise ConversionError(src, lineno, f"expected 10 integers per face, got {len(vals)}", FORMAT)
    attrs = vals[4:]
    if min(attrs) < 0 or max(attrs) > 1:  # cheap test first; the exact ranges only when needed
        for name, v in zip(ATTRIBUTE_NAMES, attrs):
            if not 0 <= v <= ATTRIBUTE_MAX[name]:
                raise ConversionError(src, lineno, f"attribute {name}={v} out of range "
                                      f"0..{ATTRIBUTE_MAX[name]}", FORMAT)
    return lineno, vals


def load_widerface(annotation_file, image_root=None, read_sizes: bool = True,
                   report: Optional[ConversionReport] = None) -> List[dict]:
    """All records of :func:`iter_widerface` as a list (the Detectron2 loader)."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[annotation_file])
    records = list(iter_widerface(annotation_file, image_root, report=report, read_sizes=read_sizes))
    logger.info(report.summary())
    return records


def convert_widerface(annotation_file, image_root, out_json, *, report=None, image_size=None,
                      show_progress: bool = False) -> ConversionReport:
    """Stream a WIDER annotation file into a COCO JSON (``file_name`` keeps the event folder;
    annotations carry ``attributes``). Image sizes come from the image headers (or
    ``image_size``, see :func:`iter_widerface`). Memory does not grow with the file."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[annotation_file])
    records = iter_widerface(annotation_file, image_root, report=report, read_sizes=True,
                             image_size=image_size, show_progress=show_progress)
    export_coco_json(records, THING_CLASSES, out_json, image_root=image_root, fmt=FORMAT,
                     info={"description": f"WIDER Face from {os.path.basename(str(annotation_file))}",
                           "attribute_names": list(ATTRIBUTE_NAMES)})
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
    p.add_argument("--images", required=True, help="WIDER_{train,val}/images (holds the event folders)")
    p.add_argument("--out", required=True, help="COCO JSON to write")
    p.set_defaults(run=_run, register_fn=_register_cli, fmt=FORMAT)


def _run(args, report):
    report.sources.append(str(args.annotations))
    convert_widerface(args.annotations, args.images, args.out, report=report,
                      show_progress=args.progress)


def _register_cli(args, name, report):
    register_widerface(name, args.annotations, args.images)
