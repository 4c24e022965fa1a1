"""BCCD blood cells: the flat CSV (``filename,cell_type,xmin,xmax,ymin,ymax``) and the Pascal VOC
XML annotations -> Detectron2 dicts, split lists from ``ImageSets/Main/*.txt``.

CSV: columns are found **by header name** (case and spaces ignored), so BCCD's x-range-first
order (``xmin,xmax,ymin,ymax``) and any other order are read right. The class column may be
called ``cell_type``, ``class``, ``label``, ``name`` or ``category``; the image column
``filename``, ``file_name``, ``image`` or ``image_id``. BOM, CRLF and blank lines are accepted.

VOC XML: the image is ``<filename>`` (never ``<path>``: three BCCD files carry a stale path);
``<size>`` is cross-checked against the image header (a mismatch is a reported repair: the header
wins). ``truncated`` and ``difficult`` are kept on each annotation as ints (not turned into
``iscrowd``).

Coordinates: both readers treat VOC-style pixel coordinates as **1-based** (BCCD boxes span
``xmin >= 1`` to ``xmax <= 640``), exactly as Detectron2's ``load_voc_instances`` does:
``bbox = [xmin - 1, ymin - 1, xmax, ymax]`` (XYXY_ABS). Pass ``one_based=False`` to take them as
they are. Degenerate boxes (``xmax == xmin`` or ``ymax == ymin`` in the file, e.g. the points in
BloodImage_00338 / 00343: "zero-area box") and inverted ones (``xmin 491 > xmax 260``), and
coordinates that are not finite or beyond +-2**20 px, are reported and skipped; boxes partly outside the image are clipped
(reported repair) and boxes fully outside are skipped.

Classes: ``thing_classes`` given -> rows of other classes are reported and skipped ("unknown
class"). Not given -> taken from the data in a stable order: :data:`BCCD_CLASSES` order for the
BCCD names (RBC, WBC, Platelets), then any other names alphabetically.

Paths: an image file name (CSV ``filename``, VOC ``<filename>``) or a split id that is absolute
or leaves its folder is reported and skipped (``--strict``: an error); a VOC ``<size>`` that is
not an integer (``inf``) is a reported repair when the image header gives the size, else a
reported skip.

Images: sizes come from the image headers (no decode); a missing or unreadable image is
reported and its boxes skipped. Image ids are 1, 2, ... over the images sorted by file name (CSV)
or in split-file order (VOC). A CSV row repeated exactly for the same image is reported as a
duplicate and skipped; XML objects are kept as written.
"""
import csv
import logging
import os
import xml.etree.ElementTree as ET
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from .common import (ConversionError, ConversionReport, ImagePaths, bad_number, check_box_xyxy,
                     export_coco_json, iter_text_lines, make_box_annotation, make_record, progress,
                     read_image_size, register_dataset, require_dir, resolve_inside)

logger = logging.getLogger(__name__)

FORMAT = "bccd"
BCCD_CLASSES = ["RBC", "WBC", "Platelets"]

_COLUMN_ALIASES = {
    "filename": ("filename", "file_name", "image", "image_id", "imagename", "image_name"),
    "class": ("cell_type", "celltype", "class", "label", "name", "category", "class_name"),
    "xmin": ("xmin", "x_min", "x1"),
    "xmax": ("xmax", "x_max", "x2"),
    "ymin": ("ymin", "y_min", "y1"),
    "ymax": ("ymax", "y_max", "y2"),
}


def ordered_classes(names) -> List[str]:
    """Stable class order: BCCD's RBC, WBC, Platelets first, then other names alphabetically."""
    names = set(names)
    return [c for c in BCCD_CLASSES if c in names] + sorted(names - set(BCCD_CLASSES))


def _box_from_voc(file, line, image, xmin, ymin, xmax, ymax, width, height, one_based, report):
    for name, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
        why = bad_number(v)
        if why is not None:
            report.skip(file, line, f"bad coordinate: {name} {why}", image=image)
            return None
    if xmin > xmax or ymin > ymax:  # say what was found: the two ends are swapped
        which = f"xmin {xmin:g} > xmax {xmax:g}" if xmin > xmax else f"ymin {ymin:g} > ymax {ymax:g}"
        report.skip(file, line, f"inverted box: {which}", image=image)
        return None
    if xmax == xmin or ymax == ymin:
        report.skip(file, line, f"zero-area box: xmin {xmin:g} xmax {xmax:g} ymin {ymin:g} "
                                f"ymax {ymax:g}", image=image)
        return None
    x0, y0 = (xmin - 1, ymin - 1) if one_based else (xmin, ymin)
    return check_box_xyxy((x0, y0, xmax, ymax), width, height, report, file, line, what="box",
                          image=image)


def _image_size(image_path, report, file, line, what):
    try:
        return read_image_size(image_path, FORMAT)
    except ConversionError as e:
        report.skip(file, line, f"image unreadable: {e.message}; {what} skipped", image=str(image_path))
        return None


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------
def _find_columns(header: Sequence[str], src) -> Dict[str, int]:
    norm = [h.strip().lower().replace(" ", "_") for h in header]
    cols, missing = {}, []
    for key, aliases in _COLUMN_ALIASES.items():
        hits = [i for i, h in enumerate(norm) if h in aliases]
        if not hits:
            missing.append(f"{key} (one of {', '.join(aliases)})")
        else:
            cols[key] = hits[0]
    if missing:
        raise ConversionError(src, 1, f"missing column(s): {'; '.join(missing)}; header is "
                              f"{','.join(header)}", FORMAT)
    return cols


def _number(text, src, line, column):
    try:
        return float(text)
    except ValueError:
        raise ConversionError(src, line, f"column {column}: expected a number, got '{text}'",
                              FORMAT) from None


def load_bccd_csv(csv_file, image_root=None, *, thing_classes: Optional[Sequence[str]] = None,
                  report: Optional[ConversionReport] = None, read_sizes: bool = True,
                  one_based: bool = True, show_progress: bool = False) -> List[dict]:
    """Records (one per image, sorted by file name) from a BCCD-style box CSV.

    ``report.note("thing_classes", ...)`` holds the class order used for ``category_id``.
    """
    report = report if report is not None else ConversionReport(FORMAT, sources=[csv_file])
    src = os.fspath(csv_file)
    if read_sizes and image_root is not None:
        require_dir(image_root, "image folder", FORMAT)
    lines = iter_text_lines(src, FORMAT)
    line_numbers = []

    def texts():
        for lineno, text in lines:
            line_numbers.append(lineno)
            yield text

    reader = csv.reader(texts())
    header = next(reader, None)
    while header is not None and not any(h.strip() for h in header):
        header = next(reader, None)
    if header is None:
        raise ConversionError(src, None, "empty file: expected a header "
                              "filename,cell_type,xmin,xmax,ymin,ymax", FORMAT)
    cols = _find_columns(header, src)
    rows_by_image: "OrderedDict[str, list]" = OrderedDict()
    names_seen = set()
    for row in progress(reader, show_progress, desc=f"bccd {os.path.basename(src)}", unit="row"):
        lineno = line_numbers[-1]
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ConversionError(src, lineno, f"expected {len(header)} fields, got {len(row)}", FORMAT)
        fname = row[cols["filename"]].strip()
        cname = row[cols["class"]].strip()
        if not fname:
            raise ConversionError(src, lineno, "empty file name", FORMAT)
        if not cname:
            raise ConversionError(src, lineno, "empty class name", FORMAT)
        coords = {k: _number(row[cols[k]].strip(), src, lineno, header[cols[k]])
                  for k in ("xmin", "xmax", "ymin", "ymax")}
        rows_by_image.setdefault(fname, []).append((lineno, cname, coords))
        names_seen.add(cname)

    classes = list(thing_classes) if thing_classes is not None else ordered_classes(names_seen)
    report.note("thing_classes", classes)
    records = []
    paths = ImagePaths(image_root)
    for fname in sorted(rows_by_image):
        rows = rows_by_image[fname]
        path = paths.resolve(fname)
        if path is None:
            report.skip(src, rows[0][0], f"image path '{fname}' is absolute or leaves the image "
                                         f"folder; its {len(rows)} boxes skipped", image=fname)
            continue
        height = width = None
        if read_sizes and image_root is not None:
            size = _image_size(path, report, src, rows[0][0], f"its {len(rows)} boxes")
            if size is None:
                continue
            height, width = size
        anns, seen = [], {}
        for lineno, cname, c in rows:
            if cname not in classes:
                report.skip(src, lineno, f"unknown class '{cname}' (known: {', '.join(classes)})",
                            image=fname)
                continue
            key = (cname, c["xmin"], c["xmax"], c["ymin"], c["ymax"])
            if key in seen:
                report.skip(src, lineno, f"duplicate box: same as line {seen[key]}", image=fname)
                continue
            seen[key] = lineno
            box = _box_from_voc(src, lineno, fname, c["xmin"], c["ymin"], c["xmax"], c["ymax"],
                                width, height, one_based, report)
            if box is not None:
                anns.append(make_box_annotation(box, classes.index(cname)))
        rec = make_record(path, len(records) + 1, anns, height, width)
        report.add_record(rec, classes)
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------
# VOC XML
# --------------------------------------------------------------------------------------------
def _xml_text(node, tag, src, line, required=True):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise ConversionError(src, line, f"missing <{tag}>", FORMAT)
        return None
    return child.text.strip()


def _xml_int(node, tag, src, line, default=None):
    text = _xml_text(node, tag, src, line, required=default is None)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or bad_number(value) is not None or not value.is_integer():
        raise ConversionError(src, line, f"<{tag}>: expected an integer, got '{text}'", FORMAT)
    return int(value)


def _element_lines(src):
    """Parse an XML file keeping the source line of each <object> (for messages)."""
    lines = {}
    try:
        parser = ET.XMLPullParser(events=("start",))
        with open(src, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConversionError(src, None, f"cannot open: {e.strerror}", FORMAT) from None
    if not data.strip():
        raise ConversionError(src, None, "empty file: expected a VOC <annotation>", FORMAT)
    try:
        # expat tracks positions; feed line by line so each <object> start maps to its line
        root = None
        for lineno, chunk in enumerate(data.splitlines(keepends=True), 1):
            parser.feed(chunk)
            for _event, elem in parser.read_events():
                if root is None:
                    root = elem
                lines[id(elem)] = lineno
        parser.close()
    except ET.ParseError as e:
        line = e.position[0] if getattr(e, "position", None) else None
        raise ConversionError(src, line, f"not well-formed XML: {e}", FORMAT) from None
    return root, lines


def read_voc_xml(xml_file, image_root=None, *, thing_classes: Optional[Sequence[str]] = None,
                 report: Optional[ConversionReport] = None, read_sizes: bool = True,
                 one_based: bool = True, image_id=None):
    """One VOC annotation file -> ``(record, class_names_seen)``; record is None when the image
    is skipped (reported). With ``thing_classes`` None, ``category_id`` holds the class *name*
    (resolved by :func:`load_voc`)."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[xml_file])
    src = os.fspath(xml_file)
    root, lines = _element_lines(src)
    if root.tag != "annotation":
        raise ConversionError(src, lines.get(id(root)), f"expected <annotation>, got <{root.tag}>", FORMAT)
    fname = _xml_text(root, "filename", src, lines.get(id(root)))
    path = ImagePaths(image_root).resolve(fname)
    if path is None:
        report.skip(src, lines.get(id(root)), f"<filename> '{fname}' is absolute or leaves the "
                                              "image folder; its boxes skipped", image=fname)
        return None, set()
    size = root.find("size")
    xml_wh = None
    if size is not None:
        try:
            w = _xml_int(size, "width", src, lines.get(id(size)), default=0)
            h = _xml_int(size, "height", src, lines.get(id(size)), default=0)
        except ConversionError as e:  # the image header gives the size; without it: skip
            if not (read_sizes and image_root is not None):
                report.skip(src, e.line, f"{e.message}; image skipped", image=fname)
                return None, set()
            report.repair(src, e.line, f"{e.message}; size taken from the image header", image=fname)
            w = h = 0
        xml_wh = (w, h) if w > 0 and h > 0 else None
    width, height = xml_wh if xml_wh else (None, None)
    if read_sizes and image_root is not None:
        hw = _image_size(path, report, src, lines.get(id(root)), "its boxes")
        if hw is None:
            return None, set()
        if xml_wh is not None and (hw[1], hw[0]) != xml_wh:
            report.repair(src, lines.get(id(size)), f"<size> {xml_wh[0]}x{xml_wh[1]} differs from "
                          f"the image header {hw[1]}x{hw[0]}: header used", image=fname)
        height, width = hw
    anns, names = [], set()
    for obj in root.findall("object"):
        line = lines.get(id(obj))
        name = _xml_text(obj, "name", src, line)
        bnd = obj.find("bndbox")
        if bnd is None:
            report.skip(src, line, f"object '{name}' has no <bndbox>", image=fname)
            continue
        coords = {}
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _xml_text(bnd, tag, src, lines.get(id(bnd), line))
            coords[tag] = _number(text, src, lines.get(id(bnd.find(tag)), line), tag)
        if thing_classes is not None and name not in thing_classes:
            report.skip(src, line, f"unknown class '{name}' (known: {', '.join(thing_classes)})",
                        image=fname)
            continue
        box = _box_from_voc(src, line, fname, coords["xmin"], coords["ymin"], coords["xmax"],
                            coords["ymax"], width, height, one_based, report)
        if box is None:
            continue
        names.add(name)
        cid = thing_classes.index(name) if thing_classes is not None else name
        anns.append(make_box_annotation(
            box, 0, truncated=_xml_int(obj, "truncated", src, line, default=0),
            difficult=_xml_int(obj, "difficult", src, line, default=0)))
        anns[-1]["category_id"] = cid
    rec = make_record(path, image_id, anns, height, width)
    return rec, names


def read_split_file(split_file, report: Optional[ConversionReport] = None) -> List[str]:
    """Image ids of an ``ImageSets/Main/<split>.txt`` (first token per line; duplicates reported)."""
    return [i for i, _ in read_split_lines(split_file, report)]


def read_split_lines(split_file, report: Optional[ConversionReport] = None):
    """``[(id, line number)]`` of a split file (see :func:`read_split_file`)."""
    report = report if report is not None else ConversionReport(FORMAT)
    ids, seen = [], {}
    for lineno, text in iter_text_lines(split_file, FORMAT):
        token = text.strip().split()[0] if text.strip() else ""
        if not token:
            continue
        if token in seen:
            report.skip(split_file, lineno, f"duplicate id '{token}': same as line {seen[token]}")
            continue
        seen[token] = lineno
        ids.append((token, lineno))
    return ids


def load_voc(annotations_dir, image_root=None, split_file=None, *,
             thing_classes: Optional[Sequence[str]] = None, report: Optional[ConversionReport] = None,
             read_sizes: bool = True, one_based: bool = True, show_progress: bool = False) -> List[dict]:
    """Records of all ``*.xml`` in ``annotations_dir`` (sorted), or of the ids in ``split_file``
    (its order). ``report.note("thing_classes", ...)`` holds the class order used."""
    report = report if report is not None else ConversionReport(
        FORMAT, sources=[annotations_dir] + ([split_file] if split_file else []))
    require_dir(annotations_dir, "annotation folder", FORMAT)
    if read_sizes and image_root is not None:
        require_dir(image_root, "image folder", FORMAT)
    if split_file is not None:
        xml_files = []
        for i, lineno in read_split_lines(split_file, report):
            # an id is a file name stem: '../v1/a' or '/etc/x' must not open a file elsewhere
            xml = resolve_inside(annotations_dir, i + ".xml")
            if xml is None:
                report.skip(split_file, lineno, f"id '{i}' names a file outside the annotation folder")
                continue
            xml_files.append((str(xml), split_file, lineno))
    else:
        try:
            names = sorted(n for n in os.listdir(annotations_dir) if n.endswith(".xml"))
        except OSError as e:
            raise ConversionError(annotations_dir, None, f"cannot list: {e.strerror}", FORMAT) from None
        if not names:
            raise ConversionError(annotations_dir, None, "no .xml files", FORMAT)
        xml_files = [(os.path.join(annotations_dir, n), None, None) for n in names]
    records, names_seen, file_names = [], set(), {}
    for xml_file, listed_in, listed_line in progress(xml_files, show_progress, desc="voc", unit="xml"):
        if not os.path.exists(xml_file):
            report.skip(listed_in, listed_line, f"annotation file missing: {xml_file}")
            continue
        rec, names = read_voc_xml(xml_file, image_root, thing_classes=thing_classes, report=report,
                                  read_sizes=read_sizes, one_based=one_based,
                                  image_id=len(records) + 1)
        if rec is None:
            continue
        if rec["file_name"] in file_names:
            report.skip(xml_file, None, f"image {rec['file_name']} already annotated by "
                                        f"{file_names[rec['file_name']]}; this file skipped")
            continue
        file_names[rec["file_name"]] = xml_file
        names_seen |= names
        records.append(rec)
    classes = list(thing_classes) if thing_classes is not None else ordered_classes(names_seen)
    if thing_classes is None:
        for rec in records:
            for ann in rec["annotations"]:
                ann["category_id"] = classes.index(ann["category_id"])
    report.note("thing_classes", classes)
    for rec in records:
        report.add_record(rec, classes)
    return records


# --------------------------------------------------------------------------------------------
# conversion, registration, CLI
# --------------------------------------------------------------------------------------------
def bccd_paths(root) -> Dict[str, str]:
    """Standard paths inside a BCCD checkout (``root`` holds ``BCCD/`` and ``test.csv``)."""
    base = os.path.join(root, "BCCD")
    return {"annotations": os.path.join(base, "Annotations"),
            "images": os.path.join(base, "JPEGImages"),
            "splits": os.path.join(base, "ImageSets", "Main"),
            "csv": os.path.join(root, "test.csv")}


def load_bccd_split(root, split: str, thing_classes: Sequence[str] = tuple(BCCD_CLASSES)) -> List[dict]:
    """The Detectron2 loader of ``bccd_<split>``: VOC XML of the ids in ``ImageSets/Main/<split>.txt``."""
    p = bccd_paths(root)
    report = ConversionReport(FORMAT, sources=[p["annotations"]])
    records = load_voc(p["annotations"], p["images"], os.path.join(p["splits"], split + ".txt"),
                       thing_classes=list(thing_classes), report=report)
    logger.info("bccd_%s: %s", split, report.summary())
    return records


def register_bccd(name: str, root, split: str, thing_classes: Sequence[str] = tuple(BCCD_CLASSES)) -> None:
    """Register a BCCD split (train / val / trainval / test) lazily, evaluator_type "coco"."""
    p = bccd_paths(root)
    register_dataset(name, load_bccd_split,
                     {"thing_classes": list(thing_classes), "evaluator_type": "coco",
                      "image_root": p["images"], "split": split},
                     root=os.fspath(root), split=split, thing_classes=list(thing_classes))


def _export(records, report, out, image_root, batch=None):
    classes = report.notes["thing_classes"]
    export_coco_json(records, classes, out, image_root=image_root, fmt=FORMAT, batch=batch)


def add_subcommand(subparsers):
    p = subparsers.add_parser("bccd-csv", help="BCCD-style box CSV -> COCO JSON")
    p.add_argument("--csv", required=True, help="filename,cell_type,xmin,xmax,ymin,ymax (any column order)")
    p.add_argument("--images", required=True, help="folder of the images named in the CSV")
    p.add_argument("--output", "--out", dest="out", required=True, help="COCO JSON to write")
    p.add_argument("--classes", help="comma-separated class order (default: from the data)")
    p.add_argument("--zero-based", action="store_true", help="coordinates are 0-based (default 1-based VOC)")
    p.set_defaults(run=_run_csv, register_fn=_register_from_out, fmt=FORMAT)

    p = subparsers.add_parser("voc", help="Pascal VOC XML folder (+ split file) -> COCO JSON")
    p.add_argument("--annotations", required=True, help="folder of VOC .xml files")
    p.add_argument("--images", required=True, help="folder of the images named by <filename>")
    p.add_argument("--split-file", help="ImageSets/Main/<split>.txt: only these ids, in this order")
    p.add_argument("--output", "--out", dest="out", required=True, help="COCO JSON to write")
    p.add_argument("--classes", help="comma-separated class order (default: from the data)")
    p.add_argument("--zero-based", action="store_true", help="coordinates are 0-based (default 1-based VOC)")
    p.set_defaults(run=_run_voc, register_fn=_register_from_out, fmt="voc")


def _classes(args):
    return [c.strip() for c in args.classes.split(",")] if args.classes else None


def _run_csv(args, report, batch=None):
    report.sources.append(str(args.csv))
    records = load_bccd_csv(args.csv, args.images, thing_classes=_classes(args), report=report,
                            one_based=not args.zero_based, show_progress=args.progress)
    _export(records, report, args.out, args.images, batch)


def _run_voc(args, report, batch=None):
    report.sources.extend(str(s) for s in (args.annotations, args.split_file) if s)
    records = load_voc(args.annotations, args.images, args.split_file, thing_classes=_classes(args),
                       report=report, one_based=not args.zero_based, show_progress=args.progress)
    _export(records, report, args.out, args.images, batch)


def _register_from_out(args, name, report):
    """``--register``: the written COCO JSON as a Detectron2 dataset (via register_dataset)."""
    from .coco_keypoints import load_coco_records

    register_dataset(name, load_coco_records,
                     {"thing_classes": report.notes["thing_classes"], "evaluator_type": "coco",
                      "json_file": os.path.abspath(args.out),
                      "image_root": os.path.abspath(args.images)},
                     json_file=os.path.abspath(args.out), image_root=os.path.abspath(args.images))
