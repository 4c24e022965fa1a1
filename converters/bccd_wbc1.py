"""The course's single-object set: BCCD images holding exactly one white blood cell (WBC).

The detection lineage (patches -> R-CNN -> Fast R-CNN -> ...) starts from a single-class,
single-object problem: keep only the BCCD images with exactly one WBC box (344 of 364; 6 have
none, 14 have two), drop every other cell, one class ``"WBC"``.

Records: ``bccd_wbc1_{train,val,test,trainval}`` = the VOC split lists filtered this way; one
annotation each (``category_id`` 0, XYXY_ABS, VOC 1-based coordinates shifted as
:mod:`converters.bccd` does). ``image_id`` is the number in the file name plus one
(``BloodImage_00012`` -> 13; COCO ids start at 1), so one image has the same id in every split
and one proposal file serves them all.
Metadata ``evaluator_type = ["coco", "best_box_iou"]``: COCO AP and the course's per-image IoU.

The course's CSV, ``filename,xmin,xmax,ymin,ymax`` (BCCD's x-range-first order, VOC 1-based
values exactly as in BCCD's own ``test.csv``), is written by :func:`write_wbc1_csv` and read by
:func:`load_wbc1_csv` (columns found by name; a second row for one image is an error naming both
lines: the file is single-object by definition).

Dropped images are listed in the conversion report under ``dropped_images`` with the reason
(``"0 WBC boxes"``, ``"2 WBC boxes"``); they are a filter, not bad input, so ``--strict`` does
not fail on them.

    tools/convert.py bccd-wbc1 --root ../shared/data/bccd [--split test] --csv-out wbc1.csv \
        [--output wbc1_coco.json] [--report report.json]
    tools/convert.py wbc1-csv --csv wbc1.csv --images BCCD/JPEGImages --output wbc1_coco.json
"""
import csv
import io
import os
import re
from typing import List, Optional, Sequence

from .bccd import BCCD_CLASSES, bccd_paths, load_voc
from .common import (ConversionError, ConversionReport, atomic_open, check_box_xyxy,
                     export_coco_json, iter_text_lines, make_box_annotation, make_record,
                     read_image_size, register_dataset, require_dir)

FORMAT = "bccd_wbc1"
WBC1_CLASSES = ["WBC"]
CSV_HEADER = ["filename", "xmin", "xmax", "ymin", "ymax"]
SPLITS = ("train", "val", "test", "trainval")


def _image_number(file_name: str, fallback: int) -> int:
    """``BloodImage_00012.jpg`` -> 13 (the id shared by every split); ``fallback`` otherwise."""
    m = re.search(r"(\d+)\D*$", os.path.basename(file_name))
    return int(m.group(1)) + 1 if m else fallback


def single_wbc_records(records: Sequence[dict], wbc_category: int,
                       report: Optional[ConversionReport] = None) -> List[dict]:
    """Records holding exactly one box of ``wbc_category``, reduced to that box (``category_id``
    0); the others are listed in ``report.notes["dropped_images"]`` with the number of WBCs."""
    kept, dropped = [], []
    for index, rec in enumerate(records, 1):
        wbcs = [a for a in rec.get("annotations", ()) if a["category_id"] == wbc_category]
        if len(wbcs) != 1:
            dropped.append({"image": os.path.basename(rec["file_name"]),
                            "reason": f"{len(wbcs)} WBC boxes"})
            continue
        ann = dict(wbcs[0], category_id=0)
        out = dict(rec, annotations=[ann], image_id=_image_number(rec["file_name"], index))
        kept.append(out)
        if report is not None:
            report.add_record(out, WBC1_CLASSES)
    if report is not None:
        report.note("thing_classes", list(WBC1_CLASSES))
        report.note("dropped_images", report.notes.get("dropped_images", []) + dropped)
        reasons = {}
        for d in report.notes["dropped_images"]:
            reasons[d["reason"]] = reasons.get(d["reason"], 0) + 1
        report.note("dropped_reasons", reasons)
    return kept


def load_bccd_wbc1(root, split: Optional[str] = None,
                   report: Optional[ConversionReport] = None) -> List[dict]:
    """The single-WBC records of a BCCD checkout: one VOC split (``ImageSets/Main/<split>.txt``)
    or, with ``split=None``, every XML file."""
    p = bccd_paths(root)
    report = report if report is not None else ConversionReport(FORMAT, sources=[p["annotations"]])
    split_file = os.path.join(p["splits"], split + ".txt") if split else None
    # the VOC reader counts its own images; the filter counts the kept ones in `report`
    voc_report = ConversionReport("bccd", strict=report.strict)
    records = load_voc(p["annotations"], p["images"], split_file, thing_classes=BCCD_CLASSES,
                       report=voc_report)
    report.skipped.extend(voc_report.skipped)
    report.repaired.extend(voc_report.repaired)
    return single_wbc_records(records, BCCD_CLASSES.index("WBC"), report)


def load_bccd_wbc1_split(root, split: str) -> List[dict]:
    """The Detectron2 loader of ``bccd_wbc1_<split>``."""
    return load_bccd_wbc1(root, split)


def register_bccd_wbc1(name: str, root, split: str) -> None:
    """Register ``bccd_wbc1_<split>`` lazily: one class, COCO AP + the course's best-box IoU."""
    p = bccd_paths(root)
    register_dataset(name, load_bccd_wbc1_split,
                     {"thing_classes": list(WBC1_CLASSES), "evaluator_type": ["coco", "best_box_iou"],
                      "image_root": p["images"], "split": split},
                     root=os.fspath(root), split=split)


# --------------------------------------------------------------------------------------------
# the course's CSV
# --------------------------------------------------------------------------------------------
def _coord(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def wbc1_csv_text(records: Sequence[dict]) -> str:
    """``filename,xmin,xmax,ymin,ymax`` rows (VOC 1-based values: ``xmin = bbox[0] + 1``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for rec in records:
        if len(rec["annotations"]) != 1:
            raise ValueError(f"{rec['file_name']}: {len(rec['annotations'])} boxes; the course CSV "
                             f"holds exactly one per image")
        x0, y0, x1, y1 = rec["annotations"][0]["bbox"]
        w.writerow([os.path.basename(rec["file_name"]), _coord(x0 + 1), _coord(x1), _coord(y0 + 1),
                    _coord(y1)])
    return buf.getvalue()


def write_wbc1_csv(records: Sequence[dict], path, batch=None) -> None:
    """Write the course CSV (atomic; into ``batch``, a ``d2ext.core.OutputBatch``, when given)."""
    if batch is not None:
        batch.write_bytes(path, wbc1_csv_text(records).encode("utf-8"))
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        f.write(wbc1_csv_text(records))


def load_wbc1_csv(csv_file, image_root=None, *, report: Optional[ConversionReport] = None,
                  read_sizes: bool = True) -> List[dict]:
    """Records (file order) from the course CSV; boxes as :mod:`converters.bccd` reads VOC
    values (``[xmin - 1, ymin - 1, xmax, ymax]``). Degenerate / outside boxes are reported skips."""
    report = report if report is not None else ConversionReport(FORMAT, sources=[csv_file])
    src = os.fspath(csv_file)
    if read_sizes and image_root is not None:
        require_dir(image_root, "image folder", FORMAT)
    rows = [(n, t) for n, t in iter_text_lines(src, FORMAT) if t.strip()]
    if not rows:
        raise ConversionError(src, None, f"empty file: expected a header {','.join(CSV_HEADER)}", FORMAT)
    header = [h.strip().lower() for h in next(csv.reader([rows[0][1]]))]
    missing = [c for c in CSV_HEADER if c not in header]
    if missing:
        raise ConversionError(src, rows[0][0], f"missing column(s) {', '.join(missing)}; expected "
                              f"{','.join(CSV_HEADER)}, got {rows[0][1]}", FORMAT)
    col = {c: header.index(c) for c in CSV_HEADER}
    records, first_line = [], {}
    for lineno, text in rows[1:]:
        row = next(csv.reader([text]))
        if len(row) != len(header):
            raise ConversionError(src, lineno, f"expected {len(header)} fields, got {len(row)}", FORMAT)
        fname = row[col["filename"]].strip()
        if not fname:
            raise ConversionError(src, lineno, "empty file name", FORMAT)
        if fname in first_line:
            raise ConversionError(src, lineno, f"second box for {fname} (first on line "
                                  f"{first_line[fname]}): the course CSV holds one object per image",
                                  FORMAT)
        first_line[fname] = lineno
        try:
            xmin, xmax, ymin, ymax = (float(row[col[c]]) for c in ("xmin", "xmax", "ymin", "ymax"))
        except ValueError:
            raise ConversionError(src, lineno, f"expected numbers in xmin,xmax,ymin,ymax, got "
                                  f"{','.join(row[col[c]] for c in CSV_HEADER[1:])}", FORMAT) from None
        path = os.path.join(image_root, fname) if image_root is not None else fname
        height = width = None
        if read_sizes and image_root is not None:
            try:
                height, width = read_image_size(path, FORMAT)
            except ConversionError as e:
                report.skip(src, lineno, f"image unreadable: {e.message}", image=fname)
                continue
        if xmax <= xmin or ymax <= ymin:
            report.skip(src, lineno, f"zero-area box: xmin {xmin:g} xmax {xmax:g} ymin {ymin:g} "
                                     f"ymax {ymax:g}", image=fname)
            continue
        box = check_box_xyxy((xmin - 1, ymin - 1, xmax, ymax), width, height, report, src, lineno,
                             image=fname)
        if box is None:
            continue
        rec = make_record(path, _image_number(fname, len(records) + 1),
                          [make_box_annotation(box, 0)], height, width)
        report.add_record(rec, WBC1_CLASSES)
        records.append(rec)
    report.note("thing_classes", list(WBC1_CLASSES))
    return records


# --------------------------------------------------------------------------------------------
# tools/convert.py subcommands
# --------------------------------------------------------------------------------------------
def add_subcommand(subparsers):
    p = subparsers.add_parser("bccd-wbc1", help="BCCD -> the single-WBC set: course CSV and/or COCO JSON")
    p.add_argument("--root", required=True, help="BCCD checkout (holds BCCD/Annotations, BCCD/JPEGImages)")
    p.add_argument("--split", choices=SPLITS, help="only this VOC split list (default: every XML file)")
    p.add_argument("--csv-out", help="course CSV filename,xmin,xmax,ymin,ymax to write")
    p.add_argument("--output", "--out", dest="out", help="COCO JSON to write")
    p.set_defaults(run=_run_bccd_wbc1, register_fn=_register_split, fmt=FORMAT)

    p = subparsers.add_parser("wbc1-csv", help="course CSV filename,xmin,xmax,ymin,ymax -> COCO JSON")
    p.add_argument("--csv", required=True, help="filename,xmin,xmax,ymin,ymax (one box per image)")
    p.add_argument("--images", required=True, help="folder of the images named in the CSV")
    p.add_argument("--output", "--out", dest="out", required=True, help="COCO JSON to write")
    p.set_defaults(run=_run_wbc1_csv, register_fn=None, fmt=FORMAT)


def _run_bccd_wbc1(args, report, batch=None):
    # tools/convert.py has already refused outputs that are or lie inside an input (--root)
    if not args.csv_out and not args.out:
        raise ConversionError(args.root, None, "nothing to write: give --csv-out and/or --output", FORMAT)
    report.sources.append(str(args.root))
    records = load_bccd_wbc1(args.root, args.split, report)
    if args.csv_out:
        write_wbc1_csv(records, args.csv_out, batch)
    if args.out:
        export_coco_json(records, WBC1_CLASSES, args.out, image_root=bccd_paths(args.root)["images"],
                         fmt=FORMAT, batch=batch)
    return {"kept": len(records), "dropped": len(report.notes["dropped_images"]),
            **{f"dropped ({k})": v for k, v in report.notes["dropped_reasons"].items()}}


def _run_wbc1_csv(args, report, batch=None):
    report.sources.append(str(args.csv))
    records = load_wbc1_csv(args.csv, args.images, report=report)
    export_coco_json(records, WBC1_CLASSES, args.out, image_root=args.images, fmt=FORMAT, batch=batch)


def _register_split(args, name):
    register_bccd_wbc1(name, args.root, args.split or "trainval")
