"""White-blood-cell segmentation (Zheng et al., Micron 107:55-71, 2018: "dataset2") -> Detectron2
semantic-segmentation records, label PNGs, and an instance (box + polygon) view.

Layout: ``NNN.bmp`` images and ``NNN.png`` masks, in one folder or in two (``mask_root``).
Masks are grey levels 0 (background, red cells included), 128 (cytoplasm) and 255 (nucleus),
plus a few stray values in some masks, so levels are thresholded / snapped, never compared
exactly. Two label modes:

* ``binary``: class 1 ("wbc") where ``mask > threshold`` (default 0, the dataset's definition of
  the white cell), else 0;
* ``three_class``: background / cytoplasm / nucleus = 0 / 1 / 2 by the nearest of the levels
  0 / 128 / 255 (ties go to the lower level: 64 -> background, 192 -> nucleus).

Label PNGs (``uint8`` class ids; 255 is Detectron2's ignore label, used only with
``stray="ignore"``) are written atomically to an output folder as ``<stem>.png``; a label file
whose content is already right is left alone. Image sizes are read from each image header and
must equal the mask's (sizes vary between datasets of this kind; nothing assumes 300x300).

A record::

    {"file_name": ".../001.bmp", "height": 300, "width": 300, "image_id": 1,
     "sem_seg_file_name": "<out>/001.png", "mask_file_name": ".../001.png", "sample_id": "001",
     "cell_type": 2, "cell_type_name": "lymphocyte"}

``cell_type`` comes from the optional CSV (``image ID,class``; ids not zero-padded; CRLF fine).
The instance view gives the same images with one annotation: the cell (``category_id`` 0,
"wbc"), its box (XYXY, pixel edges) and its outer contour as a polygon (``cv2.findContours`` on
the largest connected cell region; holes are filled and specks outside it are dropped, both
reported).
"""
import csv
import io
import logging
import os
import random
from pathlib import Path

import numpy as np

from d2ext.core import atomic_dir, cache_root, check_outputs

from .common import (
    BOX_MODE_XYXY_ABS,
    ConversionError,
    ConversionReport,
    atomic_write_bytes,
    atomic_write_json,
    iter_text_lines,
    make_box_annotation,
    make_record,
    progress,
    read_image_size,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MODES",
    "STUFF_CLASSES",
    "MASK_LEVELS",
    "IGNORE_LABEL",
    "CELL_TYPES",
    "find_wbc_pairs",
    "read_cell_types",
    "scan_wbc",
    "load_mask",
    "mask_to_labels",
    "count_stray_pixels",
    "split_wbc",
    "load_wbc_seg",
    "load_wbc_instances",
    "mask_to_instance",
    "convert_wbc_seg",
    "default_label_dir",
    "register_wbc_seg",
    "register_wbc_instances",
    "add_subcommand",
]

FMT = "wbc_seg"
MODES = ("binary", "three_class")
#: Other spellings of a mode (the dataset and config names say "3class").
MODE_ALIASES = {"3class": "three_class", "three-class": "three_class"}


def canonical_mode(mode):
    """``"3class"`` -> ``"three_class"``; a mode of :data:`MODES` as is; anything else: ValueError."""
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES + tuple(MODE_ALIASES)}, got {mode!r}")
    return mode
STUFF_CLASSES = {"binary": ["background", "wbc"], "three_class": ["background", "cytoplasm", "nucleus"]}
STUFF_COLORS = {"binary": [[0, 0, 0], [255, 255, 255]],
                "three_class": [[0, 0, 0], [128, 128, 128], [255, 255, 255]]}
THING_CLASSES = ["wbc"]
# Grey levels of the annotation: background, cytoplasm, nucleus.
MASK_LEVELS = (0, 128, 255)
IGNORE_LABEL = 255
# The dataset's class column (Zheng et al. 2018, dataset2_class_labels.csv).
CELL_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
IMAGE_EXTENSIONS = (".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff")
DEFAULT_TRAIN_FRACTION = 0.8


def _error(file, line, message):
    return ConversionError(file, line, message, fmt=FMT)


def _sample_sort_key(stem):
    # Numeric stems in numeric order ("2" before "10"), then the rest by name.
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


# --------------------------------------------------------------------------------------------
# finding samples
# --------------------------------------------------------------------------------------------
def find_wbc_pairs(root, mask_root=None, mask_ext=".png", report=None):
    """Pair images with masks by file stem.

    With ``mask_root=None`` images and masks share ``root``: files ending in ``mask_ext`` are
    masks, other image files are images. Otherwise every image file of ``root`` is an image and
    ``mask_root/<stem><mask_ext>`` its mask. Returns ``[(stem, image_path, mask_path)]`` in
    natural order; images without a mask, masks without an image, two images with one stem and
    stray files are reported (skipped).
    """
    report = report if report is not None else ConversionReport(FMT)
    root = Path(root).resolve()
    mask_root = root if mask_root is None else Path(mask_root).resolve()
    mask_ext = mask_ext.lower()
    for folder in {root, mask_root}:
        if not folder.is_dir():
            raise _error(folder, None, "not a directory")
    images, masks = {}, {}
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        ext = path.suffix.lower()
        if mask_root == root and ext == mask_ext:
            masks[path.stem] = path
        elif ext in IMAGE_EXTENSIONS:
            if path.stem in images:
                report.skip(path, None, f"duplicate image stem: {images[path.stem].name} already used")
                continue
            images[path.stem] = path
        else:
            report.skip(path, None, f"not an image or mask file: extension {ext or 'none'!r}")
    if mask_root != root:
        for path in sorted(mask_root.iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            if path.suffix.lower() == mask_ext:
                masks[path.stem] = path
            else:
                report.skip(path, None, f"not a mask file: expected extension {mask_ext!r}")
    pairs = []
    for stem in sorted(set(images) | set(masks), key=_sample_sort_key):
        if stem not in masks:
            report.skip(images[stem], None, f"missing mask: no {stem}{mask_ext} in {mask_root}")
        elif stem not in images:
            report.skip(masks[stem], None, f"mask without image: no {stem}.* image in {root}")
        else:
            pairs.append((stem, images[stem], masks[stem]))
    if not pairs:
        raise _error(root, None, f"no image/mask pairs found (expected NNN.bmp + NNN{mask_ext})")
    return pairs


def read_cell_types(csv_file, report=None, cell_types=CELL_TYPES):
    """``{int image id: int class}`` from the cell-type CSV (see :func:`_read_cell_type_rows`)."""
    rows = _read_cell_type_rows(csv_file, report, cell_types)
    return {image_id: cls for image_id, (cls, _) in rows.items()}


def _read_cell_type_rows(csv_file, report=None, cell_types=CELL_TYPES):
    """Read ``image ID,class`` into ``{int image id: (int class, line number)}``.

    Columns are found by header name (case and surrounding spaces ignored; BOM and CRLF are
    fine). A row whose id or class is not an integer, whose class is unknown, or that repeats
    an id is skipped and reported with its line. A missing column or an empty file is an error.
    """
    report = report if report is not None else ConversionReport(FMT)
    lines = iter_text_lines(csv_file, fmt=FMT)
    header = None
    for lineno, text in lines:
        if text.strip():
            header = (lineno, [c.strip().lower() for c in next(csv.reader([text]))])
            break
    if header is None:
        raise _error(csv_file, None, "empty file: expected a header 'image ID,class'")
    header_line, columns = header
    missing = [c for c in ("image id", "class") if c not in columns]
    if missing:
        raise _error(csv_file, header_line,
                     f"missing column(s) {missing}: expected header 'image ID,class', "
                     f"got {','.join(columns)!r}")
    id_col, class_col = columns.index("image id"), columns.index("class")
    result = {}
    for lineno, text in lines:
        if not text.strip():
            continue
        row = next(csv.reader([text]))
        if len(row) != len(columns):
            report.skip(csv_file, lineno,
                        f"bad row: expected {len(columns)} fields, got {len(row)} ({text!r})")
            continue
        try:
            image_id, cls = int(row[id_col].strip()), int(row[class_col].strip())
        except ValueError:
            report.skip(csv_file, lineno, f"bad row: image id and class must be integers, got {text!r}")
            continue
        if cls not in cell_types:
            report.skip(csv_file, lineno, f"unknown class {cls}: expected one of {sorted(cell_types)}")
            continue
        if image_id in result:
            report.skip(csv_file, lineno,
                        f"duplicate image id {image_id} (first on line {result[image_id][1]})")
            continue
        result[image_id] = (cls, lineno)
    return result


def scan_wbc(root, mask_root=None, csv_file=None, report=None, cell_types=CELL_TYPES):
    """Find valid samples: ``[{"sample_id", "image", "mask", "height", "width", ["cell_type"]}]``.

    Image and mask sizes come from their headers; a pair whose sizes differ, or with an
    unreadable file, is reported and left out. The cell type of image ``NNN`` is the CSV row
    with id ``int(NNN)``; CSV rows naming no image are reported.
    """
    report = report if report is not None else ConversionReport(FMT)
    samples = []
    for stem, image, mask in find_wbc_pairs(root, mask_root, report=report):
        try:
            size = read_image_size(image, fmt=FMT)
            mask_size = read_image_size(mask, fmt=FMT)
        except ConversionError as e:
            report.skip(e.file, None, f"unreadable file: {e.message}")
            continue
        if size != mask_size:
            report.skip(mask, None, f"mask/image size mismatch: mask {mask_size[1]}x{mask_size[0]}, "
                                    f"image {image.name} {size[1]}x{size[0]} (width x height)")
            continue
        samples.append({"sample_id": stem, "image": str(image), "mask": str(mask),
                        "height": size[0], "width": size[1]})
    if csv_file is not None:
        rows = _read_cell_type_rows(csv_file, report, cell_types)
        by_id = {int(s["sample_id"]): s for s in samples if s["sample_id"].isdigit()}
        for image_id, (cls, lineno) in sorted(rows.items()):
            if image_id not in by_id:
                report.skip(csv_file, lineno, f"cell type for image id {image_id}: no such image")
                continue
            by_id[image_id]["cell_type"] = cls
        without = [s["sample_id"] for s in samples if "cell_type" not in s]
        if without:
            logger.warning("%s: no cell type for %d images: %s", csv_file, len(without), without[:10])
        report.note("images_without_cell_type", without)
        per_type = {name: sum(s.get("cell_type") == k for s in samples) for k, name in cell_types.items()}
        report.note("images_per_cell_type", per_type)
    return samples


def split_wbc(sample_ids, seed=0, train_fraction=DEFAULT_TRAIN_FRACTION):
    """Deterministic seeded split: ``{"train": [...], "test": [...]}`` (ids in natural order).

    Depends only on the set of ids and the seed (not on the label mode), so binary, 3-class and
    instance datasets of one seed share their train/test images. 100 images -> 80 / 20.
    """
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
    ids = sorted(set(sample_ids), key=_sample_sort_key)
    # random.Random hashes a str seed with SHA-512: the same split on every machine and run.
    shuffled = list(ids)
    random.Random(f"d2ext-wbc:{seed}").shuffle(shuffled)
    n_train = int(round(train_fraction * len(ids)))
    train = set(shuffled[:n_train])
    return {"train": [i for i in ids if i in train], "test": [i for i in ids if i not in train]}


def _select_split(samples, split, seed, train_fraction):
    if split in (None, "all"):
        return samples
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    keep = set(split_wbc([s["sample_id"] for s in samples], seed, train_fraction)[split])
    return [s for s in samples if s["sample_id"] in keep]


# --------------------------------------------------------------------------------------------
# masks and labels
# --------------------------------------------------------------------------------------------
def load_mask(path, report=None):
    """The mask as a 2-D ``uint8`` array ``(H, W)`` of grey levels, read **by value** whatever
    the PNG mode, or a :class:`ConversionError` saying why it cannot be:

    - ``L`` (8-bit grey), ``LA`` (its grey channel) and ``1`` (1-bit: 0 / 255) as they are;
    - ``RGB`` / ``RGBA`` whose three channels are equal: one channel; a colour mask (channels
      differ) has no grey level: error;
    - ``P`` (palette): each pixel's palette colour, which must be grey (error otherwise: the
      indices say nothing about the levels);
    - 16/32-bit integer (``I;16``, ``I``) and float (``F``): values up to 255 as they are;
      values that are all multiples of 257 (0 / 32896 / 65535, the 8-bit levels stretched to
      16 bits) divided by 257, reported as a repair; anything else: error.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in ("P", "PA"):
                grey = _palette_grey(img, path)
            else:
                arr = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as e:
        raise _error(path, None, f"mask cannot be decoded ({e})") from None
    if mode in ("P", "PA"):
        return grey
    if mode == "L":
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if mode == "1":
        return np.where(arr, 255, 0).astype(np.uint8)
    if mode == "LA":
        return np.ascontiguousarray(arr[..., 0], dtype=np.uint8)
    if mode in ("RGB", "RGBA"):
        same = (arr[..., 0] == arr[..., 1]) & (arr[..., 1] == arr[..., 2])
        if not same.all():
            y, x = (int(v) for v in np.argwhere(~same)[0])
            raise _error(path, None, f"colour mask (mode {mode}): pixel (row {y}, col {x}) is "
                         f"{tuple(int(v) for v in arr[y, x, :3])}; expected grey levels 0/128/255")
        return np.ascontiguousarray(arr[..., 0], dtype=np.uint8)
    if mode.startswith("I") or mode == "F":
        values = arr.astype(np.float64)
        if not np.isfinite(values).all() or (values < 0).any() or (values != np.round(values)).any():
            raise _error(path, None, f"mask mode {mode}: values must be non-negative integers")
        top = int(values.max()) if values.size else 0
        if top <= 255:
            return values.astype(np.uint8)
        ints = values.astype(np.int64)
        if (ints % 257 == 0).all() and top <= 65535:
            if report is not None:
                levels = sorted(set(np.unique(ints).tolist()))[:8]
                report.repair(path, None, f"mask mode {mode}: 16-bit levels {levels} read as 8-bit "
                                          f"levels {[v // 257 for v in levels]} (value / 257)")
            return (ints // 257).astype(np.uint8)
        odd = sorted(set(np.unique(ints[ints > 255]).tolist()))[:5]
        raise _error(path, None, f"mask mode {mode}: values {odd} are above 255 and not 8-bit levels "
                     "x 257; save the mask as 8-bit grey (0/128/255)")
    raise _error(path, None, f"mask mode {mode} is not a grey-level mask; save it as 8-bit grey "
                 "(0/128/255)")


def _palette_grey(img, path):
    """Grey levels of a palette image by its colours (all used colours must be grey)."""
    idx = np.asarray(img)
    if idx.ndim == 3:  # PA: index + alpha
        idx = idx[..., 0]
    palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(idx)
    if used.size and int(used.max()) >= len(palette):
        raise _error(path, None, f"palette mask: index {int(used.max())} has no palette colour")
    colours = palette[used]
    grey = (colours[:, 0] == colours[:, 1]) & (colours[:, 1] == colours[:, 2])
    if not grey.all():
        bad = [(int(i), tuple(int(c) for c in col)) for i, col in zip(used[~grey], colours[~grey])][:3]
        raise _error(path, None, f"palette mask with colours that are not grey (index, RGB) {bad}: "
                     "the class of a colour is unknown; save the mask as 8-bit grey (0/128/255)")
    lut = np.zeros(256, np.uint8)
    lut[used] = colours[:, 0]
    return lut[idx]


def count_stray_pixels(mask):
    """Number of pixels whose value is none of the levels 0 / 128 / 255."""
    return int(np.count_nonzero(~np.isin(mask, MASK_LEVELS)))


def mask_to_labels(mask, mode, threshold=0, stray="snap"):
    """Class-id labels ``(H, W) uint8`` from a grey mask ``(H, W)``.

    ``binary``: 1 where ``mask > threshold``; ``three_class``: index of the nearest level in
    (0, 128, 255), ties to the lower. With ``stray="ignore"``, pixels off the three levels get
    :data:`IGNORE_LABEL` instead (evaluation and the loss skip them).
    """
    mode = canonical_mode(mode)
    if stray not in ("snap", "ignore"):
        raise ValueError(f"stray must be 'snap' or 'ignore', got {stray!r}")
    mask = np.asarray(mask)
    if mode == "binary":
        labels = (mask > threshold).astype(np.uint8)
    else:
        dist = np.abs(mask.astype(np.int16)[..., None] - np.asarray(MASK_LEVELS, np.int16))
        labels = np.argmin(dist, axis=-1).astype(np.uint8)  # argmin takes the first on ties
    if stray == "ignore":
        labels[~np.isin(mask, MASK_LEVELS)] = IGNORE_LABEL
    return labels


def _png_bytes(labels):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(labels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _write_label_png(path, labels):
    """Write atomically unless the file already holds exactly these labels."""
    from PIL import Image

    if os.path.exists(path):
        try:
            with Image.open(path) as img:
                if img.mode == "L" and np.array_equal(np.asarray(img), labels):
                    return False
        except (OSError, ValueError, SyntaxError):
            pass  # unreadable leftover: overwrite it
    atomic_write_bytes(path, _png_bytes(labels))
    return True


def _report_stray(report, mask_path, mask, stray):
    n = count_stray_pixels(mask)
    if n:
        values = sorted(set(np.unique(mask).tolist()) - set(MASK_LEVELS))
        action = "set to ignore (255)" if stray == "ignore" else "snapped to the nearest level"
        report.repair(mask_path, None, f"stray mask values: {n} pixels with values {values} {action}",
                      num_pixels=n, values=values)
    return n


def _attach_cell_type(record, sample, cell_types):
    if "cell_type" in sample:
        record["cell_type"] = sample["cell_type"]
        record["cell_type_name"] = cell_types[sample["cell_type"]]


def load_wbc_seg(root, mode, out_dir, *, split="all", seed=0, train_fraction=DEFAULT_TRAIN_FRACTION,
                 mask_root=None, csv_file=None, threshold=0, stray="snap", report=None, progress_bar=False,
                 cell_types=CELL_TYPES, write_dir=None):
    """Semantic-segmentation records; writes the label PNGs ``out_dir/<stem>.png`` on the way.

    ``split``: "train" / "test" (see :func:`split_wbc`) or "all". ``image_id`` is the sample's
    position (from 1) among all valid samples, so it is the same in every split and mode.
    ``out_dir`` must not be, hold or lie inside an input folder (``UnsafeOutputError``).
    ``write_dir``: write the PNGs there instead (a folder that will become ``out_dir``, see
    :func:`convert_wbc_seg`); the records still name ``out_dir``.
    """
    report = report if report is not None else ConversionReport(FMT)
    mode = canonical_mode(mode)
    check_outputs([root, mask_root, csv_file], [out_dir], "converters.wbc_seg")
    out_dir = Path(out_dir).resolve()
    write_to = out_dir if write_dir is None else Path(write_dir)
    samples = scan_wbc(root, mask_root, csv_file, report, cell_types)
    ids = {s["sample_id"]: i for i, s in enumerate(samples, 1)}
    records = []
    written = stray_masks = 0
    for s in progress(_select_split(samples, split, seed, train_fraction), progress_bar,
                      desc=f"wbc {mode} labels", unit="mask"):
        try:
            mask = load_mask(s["mask"], report)
        except ConversionError as e:
            report.skip(e.file, None, f"unreadable mask: {e.message}")
            continue
        if mask.shape != (s["height"], s["width"]):  # header and pixels disagree: a broken file
            report.skip(s["mask"], None,
                        f"mask/image size mismatch: decoded mask is {mask.shape[1]}x{mask.shape[0]}")
            continue
        stray_masks += bool(_report_stray(report, s["mask"], mask, stray))
        label_file = out_dir / f"{s['sample_id']}.png"
        written += _write_label_png(write_to / label_file.name, mask_to_labels(mask, mode, threshold, stray))
        rec = make_record(s["image"], ids[s["sample_id"]], height=s["height"], width=s["width"],
                          sem_seg_file_name=str(label_file), mask_file_name=s["mask"],
                          sample_id=s["sample_id"])
        del rec["annotations"]  # semantic segmentation: Detectron2 reads sem_seg_file_name only
        _attach_cell_type(rec, s, cell_types)
        report.add_record(rec)
        records.append(rec)
    report.note("label_files_written", written)
    report.note("masks_with_stray_values", stray_masks)
    return records


def mask_to_instance(mask, threshold=0):
    """The white cell of a mask ``(H, W)`` as ``(box_xyxy, polygon, info)`` or ``None`` when the
    mask holds no cell pixel.

    The cell is the largest 8-connected region of ``mask > threshold``; ``box_xyxy`` spans its
    pixel edges; ``polygon`` is its outer contour (``cv2.findContours``) at pixel centres
    (+0.5, COCO's continuous coordinates), so holes are filled. ``info`` gives
    ``num_specks`` / ``speck_pixels`` (regions dropped) and ``num_holes``.
    """
    import cv2

    cell = (np.asarray(mask) > threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cell, connectivity=8)
    if n <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    k = 1 + int(np.argmax(areas))
    x, y, w, h = (int(v) for v in stats[k, :4])
    region = (labels == k).astype(np.uint8)
    contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    outer = [c for c, hr in zip(contours, hierarchy[0]) if hr[3] < 0]
    contour = max(outer, key=cv2.contourArea).reshape(-1, 2)
    info = {"num_specks": int(n - 2),
            "speck_pixels": sorted(int(a) for i, a in enumerate(areas) if i != k - 1),
            "num_holes": int(sum(1 for hr in hierarchy[0] if hr[3] >= 0)), "area": int(areas[k - 1])}
    if len(contour) < 3:  # a cell of one or two pixels in a line has no polygon
        return [float(x), float(y), float(x + w), float(y + h)], None, info
    polygon = (contour.astype(np.float64) + 0.5).flatten().tolist()
    return [float(x), float(y), float(x + w), float(y + h)], polygon, info


def load_wbc_instances(root, *, split="all", seed=0, train_fraction=DEFAULT_TRAIN_FRACTION, mask_root=None,
                       csv_file=None, threshold=0, report=None, progress_bar=False, cell_types=CELL_TYPES):
    """Instance records (for Mask R-CNN): one annotation per image, the cell, ``category_id`` 0.

    Images whose mask holds no cell are reported and left out; specks outside the cell and holes
    inside it are reported as repairs.
    """
    report = report if report is not None else ConversionReport(FMT)
    samples = scan_wbc(root, mask_root, csv_file, report, cell_types)
    ids = {s["sample_id"]: i for i, s in enumerate(samples, 1)}
    records = []
    for s in progress(_select_split(samples, split, seed, train_fraction), progress_bar,
                      desc="wbc instances", unit="mask"):
        try:
            mask = load_mask(s["mask"], report)
        except ConversionError as e:
            report.skip(e.file, None, f"unreadable mask: {e.message}")
            continue
        found = mask_to_instance(mask, threshold)
        if found is None:
            report.skip(s["mask"], None, "no cell pixels in the mask: image left out of the instance view")
            continue
        box, polygon, info = found
        if polygon is None:
            report.skip(s["mask"], None, f"cell of {info['area']} pixel(s) has no polygon")
            continue
        if info["num_specks"]:
            report.repair(s["mask"], None, f"dropped {info['num_specks']} speck(s) outside the cell "
                                           f"(pixels {info['speck_pixels']})")
        if info["num_holes"]:
            report.repair(s["mask"], None, f"filled {info['num_holes']} hole(s) inside the cell polygon")
        ann = make_box_annotation(box, 0, bbox_mode=BOX_MODE_XYXY_ABS, segmentation=[polygon])
        rec = make_record(s["image"], ids[s["sample_id"]], [ann], height=s["height"], width=s["width"],
                          mask_file_name=s["mask"], sample_id=s["sample_id"])
        _attach_cell_type(rec, s, cell_types)
        report.add_record(rec, THING_CLASSES)
        records.append(rec)
    return records


def convert_wbc_seg(root, mode, out_dir, *, mask_root=None, csv_file=None, seed=0,
                    train_fraction=DEFAULT_TRAIN_FRACTION, threshold=0, stray="snap", report=None,
                    progress_bar=False, batch=None):
    """Write label PNGs and ``out_dir/dataset.json``; returns the dataset dict written::

        {"mode", "stuff_classes", "ignore_label", "seed", "splits": {"train": [ids], "test": [ids]},
         "records": [...]}

    The folder is built aside and swapped in whole (:func:`d2ext.core.atomic_dir`, or
    ``batch.dir`` of an :class:`d2ext.core.OutputBatch` to commit it with other outputs): an
    interrupted run leaves an earlier ``out_dir`` exactly as it was, never a mix of two runs.
    ``out_dir`` must not be, hold or lie inside an input (``UnsafeOutputError``).
    """
    report = report if report is not None else ConversionReport(FMT)
    mode = canonical_mode(mode)
    check_outputs([root, mask_root, csv_file], [out_dir], "converters.wbc_seg")
    if batch is not None:
        return _convert_into(batch.dir(out_dir), root, mode, out_dir, mask_root, csv_file, seed,
                             train_fraction, threshold, stray, report, progress_bar)
    with atomic_dir(out_dir) as tmp:
        return _convert_into(tmp, root, mode, out_dir, mask_root, csv_file, seed, train_fraction,
                             threshold, stray, report, progress_bar)


def _convert_into(write_dir, root, mode, out_dir, mask_root, csv_file, seed, train_fraction,
                  threshold, stray, report, progress_bar):
    records = load_wbc_seg(root, mode, out_dir, split="all", mask_root=mask_root, csv_file=csv_file,
                           threshold=threshold, stray=stray, report=report, progress_bar=progress_bar,
                           write_dir=write_dir)
    dataset = {
        "mode": mode,
        "stuff_classes": STUFF_CLASSES[mode],
        "ignore_label": IGNORE_LABEL,
        "seed": seed,
        "train_fraction": train_fraction,
        "splits": split_wbc([r["sample_id"] for r in records], seed, train_fraction),
        "records": records,
    }
    atomic_write_json(Path(write_dir) / "dataset.json", dataset, indent=1)
    return dataset


# --------------------------------------------------------------------------------------------
# Detectron2 registration
# --------------------------------------------------------------------------------------------
def default_label_dir(root, mode):
    """Where generated label PNGs of ``root`` go by default:
    ``$D2EXT_CACHE`` (or ``~/.cache/d2ext``) ``/wbc_seg/<folder>-<hash of its path>/<mode>``, so
    two data folders with one name never share labels and the read-only data is never written."""
    import hashlib

    cache = cache_root()
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode("utf-8")).hexdigest()[:8]
    return cache / "wbc_seg" / f"{root.name}-{digest}" / mode


def register_wbc_seg(name, root, mode, split, out_dir, seed=0, train_fraction=DEFAULT_TRAIN_FRACTION,
                     mask_root=None, csv_file=None, threshold=0, stray="snap"):
    """Register a semantic-segmentation dataset (lazy: label PNGs are written to ``out_dir``
    when Detectron2 first asks for the records).

    Metadata: ``stuff_classes``, ``stuff_colors``, ``ignore_label=255``,
    ``evaluator_type="sem_seg"``.
    """
    from .common import register_dataset

    mode = canonical_mode(mode)
    register_dataset(
        name, load_wbc_seg,
        metadata={"stuff_classes": STUFF_CLASSES[mode], "stuff_colors": STUFF_COLORS[mode],
                  "ignore_label": IGNORE_LABEL, "evaluator_type": "sem_seg"},
        root=str(root), mode=mode, out_dir=str(out_dir), split=split, seed=seed,
        train_fraction=train_fraction, mask_root=None if mask_root is None else str(mask_root),
        csv_file=None if csv_file is None else str(csv_file), threshold=threshold, stray=stray,
    )
    return name


def register_wbc_instances(name, root, split, seed=0, train_fraction=DEFAULT_TRAIN_FRACTION, mask_root=None,
                           csv_file=None, threshold=0):
    """Register the instance view (one "wbc" per image, box + polygon) for detection /
    Mask R-CNN; metadata ``thing_classes=["wbc"]``, ``evaluator_type="coco"``."""
    from .common import register_dataset

    register_dataset(
        name, load_wbc_instances,
        metadata={"thing_classes": THING_CLASSES, "thing_colors": [[220, 20, 60]], "evaluator_type": "coco"},
        root=str(root), split=split, seed=seed, train_fraction=train_fraction,
        mask_root=None if mask_root is None else str(mask_root),
        csv_file=None if csv_file is None else str(csv_file), threshold=threshold,
    )
    return name


# --------------------------------------------------------------------------------------------
# command line: tools/convert.py wbc-seg ...
# --------------------------------------------------------------------------------------------
def add_subcommand(subparsers):
    """``tools/convert.py wbc-seg --root DIR --mode {binary,three_class} --out DIR [--report R]``
    (``--report``, ``--strict``, ``--register`` and the progress flag come from tools/convert.py)."""
    p = subparsers.add_parser(
        "wbc-seg",
        help="white-blood-cell masks -> label PNGs + dataset.json (and optionally COCO instances)",
        description="Convert NNN.bmp + NNN.png masks into Detectron2 sem-seg label PNGs and records.",
    )
    p.add_argument("--root", required=True, help="folder with the images (and the masks unless --masks)")
    p.add_argument("--masks", default=None, help="folder with the NNN.png masks (default: --root)")
    p.add_argument("--mode", required=True, choices=MODES + tuple(MODE_ALIASES),
                   help="binary: cell vs background; three_class (or 3class): background / "
                        "cytoplasm / nucleus")
    p.add_argument("--output", "--out", dest="out", required=True,
                   help="output folder for label PNGs and dataset.json (replaced whole)")
    p.add_argument("--csv", default=None, help="cell-type CSV ('image ID,class')")
    p.add_argument("--seed", type=int, default=0, help="train/test split seed (default 0)")
    p.add_argument("--train-fraction", type=float, default=DEFAULT_TRAIN_FRACTION, help="default 0.8")
    p.add_argument("--threshold", type=int, default=0,
                   help="binary mode: cell = mask > THRESHOLD (default 0)")
    p.add_argument("--stray", choices=("snap", "ignore"), default="snap",
                   help="mask values off 0/128/255: snap to a class (default) or label them 255 (ignore)")
    p.add_argument("--instances-out", default=None, help="also write the instance view as COCO JSON")
    p.set_defaults(run=_run_cli, register_fn=_register_cli, fmt=FMT)
    return p


def _run_cli(args, report, batch=None):
    report.sources.extend([str(args.root)] + [str(s) for s in (args.masks, args.csv) if s])
    args.mode = canonical_mode(args.mode)
    dataset = convert_wbc_seg(args.root, args.mode, args.out, mask_root=args.masks, csv_file=args.csv,
                              seed=args.seed, train_fraction=args.train_fraction, threshold=args.threshold,
                              stray=args.stray, report=report, progress_bar=getattr(args, "progress", False),
                              batch=batch)
    report.note("mode", args.mode)
    report.note("split_sizes", {k: len(v) for k, v in dataset["splits"].items()})
    if args.instances_out:
        from .common import export_coco_json

        # The instance view reads the same pairs again; it gets its own report (so images are not
        # counted twice), whose skips and repairs are kept under "instances" in the main one.
        inst_report = ConversionReport(FMT, strict=report.strict)
        records = load_wbc_instances(args.root, mask_root=args.masks, csv_file=args.csv,
                                     threshold=args.threshold, report=inst_report)
        counts = export_coco_json(records, THING_CLASSES, args.instances_out, fmt=FMT,
                                  image_root=args.root, batch=batch)
        report.note("instances", {"out": str(args.instances_out), **counts,
                                  "skipped": inst_report.skipped, "repaired": inst_report.repaired})
    return {"out": str(Path(args.out) / "dataset.json"), **report.notes["split_sizes"]}


def _register_cli(args, name):
    """``--register NAME``: NAME_train and NAME_test (sem-seg, labels in ``--out``)."""
    return [register_wbc_seg(f"{name}_{split}", args.root, canonical_mode(args.mode), split, args.out, seed=args.seed,
                             train_fraction=args.train_fraction, mask_root=args.masks, csv_file=args.csv,
                             threshold=args.threshold, stray=args.stray) for split in ("train", "test")]
