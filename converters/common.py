"""Shared machinery of every converter: records, errors, the conversion report, atomic writers,
image sizes, COCO JSON export and lazy Detectron2 registration.

Only numpy / PIL / pycocotools / tqdm are imported here (lazily where they are slow);
Detectron2 is imported inside :func:`register_dataset` only, so ``tools/convert.py`` starts fast.

Stable API (other converter modules build on exactly this)
-----------------------------------------------------------
Records (Detectron2 dataset dicts, plain ``dict`` s):

- ``BOX_MODE_XYXY_ABS = 0``, ``BOX_MODE_XYWH_ABS = 1`` — the integer values of Detectron2's
  ``BoxMode`` (an ``IntEnum``, so they compare equal and stay JSON-serialisable).
- ``make_record(file_name, image_id, annotations=(), height=None, width=None, **extra) -> dict``
- ``make_box_annotation(bbox, category_id, *, bbox_mode=BOX_MODE_XYXY_ABS, iscrowd=0, **extra)``
  ``category_id`` is 0-based (Detectron2); extras (``attributes``, ``truncated``, ...) ride along.
- ``check_box_xyxy(box, width, height, report, file, line, what="box", **extra) -> list | None``:
  returns the box (clipped to the image with a reported repair when partly outside), or ``None``
  after a reported skip (non-finite, zero/negative size, fully outside the image); ``extra``
  fields (e.g. ``image=...``) go into the skip / repair entry.
- ``require_dir(path, what, fmt)`` raises ``ConversionError`` unless ``path`` is a folder.

Errors and reports:

- ``ConversionError(file, line, message, fmt="common")`` — ``str(err)`` is
  ``"converters.<fmt>: <file>:<line>: <message>"`` (``:<line>`` omitted when ``line`` is None).
  Attributes ``file``, ``line``, ``message``, ``fmt``.
- ``ConversionReport(fmt, strict=False, sources=())``:
  ``skip(file, line, reason, **extra)`` records a dropped item (in ``strict`` mode it raises a
  ``ConversionError`` instead); ``repair(file, line, reason, **extra)`` records a fixed item;
  ``add_record(record, thing_classes=None)`` counts an emitted image and its objects per class
  (``add_image({"class": n, ...})`` does the same from known counts);
  ``note(key, value)`` stores free-form figures; ``error(file, line, message)`` builds (does not
  raise) a ``ConversionError`` of this format; ``to_dict()``; ``write(path)`` (atomic JSON);
  ``summary()`` one line. Counters: ``num_images``, ``num_annotations``, ``objects_per_class``,
  ``skipped``, ``repaired`` (lists of ``{"file", "line", "reason", ...}``).

Files:

- ``iter_text_lines(path, fmt) -> iterator of (lineno, text)``: streams a text file (1-based line
  numbers) as strict UTF-8, drops a UTF-8 BOM and CR/LF line ends; bad bytes raise a
  ``ConversionError`` naming the line. ``skip_blank=True`` yields only non-blank lines,
  stripped. Missing file -> ``ConversionError(path, None, ...)``.
- ``atomic_write_json(path, obj, indent=None)``, ``atomic_write_bytes(path, data)``,
  ``atomic_open(path, mode="w")``: re-exported from :mod:`d2ext.core` (the one atomic writer).
- ``read_image_size(path) -> (height, width)`` from the image header (PIL, no pixel decode),
  swapped for EXIF orientations 5-8 as Detectron2's ``read_image`` would.
  Raises ``ConversionError`` when the file is missing or not an image.
- ``progress(iterable, enabled, desc, total=None, unit="it")`` — tqdm when enabled.

COCO and Detectron2:

- ``export_coco_json(records, thing_classes, path, *, image_root=None, info=None,
  keypoint_names=None, skeleton=None) -> dict(num_images, num_annotations)`` streams any iterable
  of records into a COCO JSON (categories 1-based; image ``file_name`` relative to
  ``image_root`` when given; extra annotation keys such as ``attributes`` are kept; keypoint
  x/y have Detectron2's +0.5 removed so ``load_coco_json`` gives back the same values).
  Memory stays bounded (annotations are spooled to a temp file). Written atomically.
- ``register_dataset(name, loader, metadata, **loader_kwargs)`` registers ``loader(**kwargs)``
  lazily in ``DatasetCatalog`` and ``metadata`` in ``MetadataCatalog``. Calling it again with an
  equal loader (same function / partial args), kwargs and metadata is a no-op; anything else
  raises ``ValueError`` naming the dataset.
- ``default_data_root() -> Path``: ``$D2EXT_SHARED_DATA`` or ``<repo>/../shared/data``.
"""
import functools
import json
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from d2ext.core import atomic_open, atomic_write_bytes, atomic_write_json, data_root  # noqa: E402,F401

logger = logging.getLogger(__name__)

# Detectron2's BoxMode values (detectron2.structures.BoxMode is an IntEnum with these values).
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

_STANDARD_ANN_KEYS = {"bbox", "bbox_mode", "category_id", "iscrowd", "segmentation", "keypoints"}


# --------------------------------------------------------------------------------------------
# errors and the conversion report
# --------------------------------------------------------------------------------------------
class ConversionError(Exception):
    """A problem in the input that the user can act on: names the file and line."""

    def __init__(self, file, line: Optional[int], message: str, fmt: str = "common"):
        self.file = str(file)
        self.line = line
        self.message = message
        self.fmt = fmt
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"converters.{self.fmt}: {where}: {self.message}"


class ConversionReport:
    """What a conversion produced and everything it skipped or repaired, with source lines."""

    def __init__(self, fmt: str, strict: bool = False, sources: Sequence = ()):
        self.fmt = fmt
        self.strict = strict
        self.sources = [str(s) for s in sources]
        self.num_images = 0
        self.num_annotations = 0
        self.objects_per_class: Counter = Counter()
        self.skipped: List[Dict[str, Any]] = []
        self.repaired: List[Dict[str, Any]] = []
        self.notes: Dict[str, Any] = {}

    def error(self, file, line, message) -> ConversionError:
        return ConversionError(file, line, message, fmt=self.fmt)

    def skip(self, file, line, reason: str, **extra) -> None:
        """Record a dropped item; with ``strict`` raise a ConversionError instead."""
        if self.strict:
            raise self.error(file, line, f"{reason} (--strict: skips are errors)")
        self.skipped.append({"file": str(file), "line": line, "reason": reason, **extra})
        logger.debug("skip %s:%s: %s", file, line, reason)

    def repair(self, file, line, reason: str, **extra) -> None:
        """Record an item that was kept after a fix (clipped box, corrected size, ...)."""
        self.repaired.append({"file": str(file), "line": line, "reason": reason, **extra})

    def note(self, key: str, value) -> None:
        self.notes[key] = value

    def add_record(self, record: dict, thing_classes: Optional[Sequence[str]] = None) -> None:
        self.num_images += 1
        if thing_classes is not None and not self.objects_per_class:
            for name in thing_classes:  # fixes the order of the counts (and shows zeros)
                self.objects_per_class[name] = 0
        for ann in record.get("annotations", ()):
            self.num_annotations += 1
            cid = ann.get("category_id")
            name = thing_classes[cid] if thing_classes is not None and cid is not None else str(cid)
            self.objects_per_class[name] += 1

    def add_image(self, objects_per_class: Dict[str, int]) -> None:
        """Count one emitted image from its per-class object counts (a fast
        :meth:`add_record` for converters that already know them)."""
        self.num_images += 1
        for name, n in objects_per_class.items():
            self.num_annotations += n
            self.objects_per_class[name] += n

    def skip_reasons(self) -> Dict[str, int]:
        """Skips counted by reason (the text before any ':' detail)."""
        return dict(Counter(s["reason"].split(":")[0] for s in self.skipped))

    def to_dict(self) -> dict:
        return {
            "format": self.fmt,
            "sources": self.sources,
            "num_images": self.num_images,
            "num_annotations": self.num_annotations,
            "objects_per_class": dict(self.objects_per_class),
            "num_skipped": len(self.skipped),
            "num_repaired": len(self.repaired),
            "skip_reasons": self.skip_reasons(),
            "skipped": self.skipped,
            "repaired": self.repaired,
            **self.notes,
        }

    def write(self, path) -> None:
        atomic_write_json(path, self.to_dict(), indent=1)

    def summary(self) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in self.objects_per_class.items())
        return (f"{self.fmt}: {self.num_images} images, {self.num_annotations} objects"
                f"{' (' + per_class + ')' if per_class else ''}; {len(self.skipped)} skipped, "
                f"{len(self.repaired)} repaired")


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
def make_record(file_name, image_id, annotations: Iterable[dict] = (), height=None, width=None,
                **extra) -> dict:
    """A Detectron2 dataset dict; ``height``/``width`` are left out when unknown."""
    rec = {"file_name": str(file_name), "image_id": image_id}
    if height is not None:
        rec["height"] = int(height)
    if width is not None:
        rec["width"] = int(width)
    rec["annotations"] = list(annotations)
    rec.update(extra)
    return rec


def make_box_annotation(bbox, category_id: int, *, bbox_mode: int = BOX_MODE_XYXY_ABS,
                        iscrowd: int = 0, **extra) -> dict:
    ann = {"bbox": [float(v) for v in bbox], "bbox_mode": int(bbox_mode),
           "category_id": int(category_id), "iscrowd": int(iscrowd)}
    ann.update(extra)
    return ann


def check_box_xyxy(box, width, height, report: ConversionReport, file, line, what: str = "box",
                   **extra):
    """Validate an XYXY box against its image (``width``/``height`` may be None = unknown).

    Returns the box (clipped, with a reported repair, when it sticks out of the image) or None
    after a reported skip: non-finite values, zero or negative width/height, or no overlap with
    the image at all.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        report.skip(file, line, f"non-finite {what}: {[x0, y0, x1, y1]}", **extra)
        return None
    if x1 <= x0 or y1 <= y0:
        report.skip(file, line, f"zero or negative size {what}: "
                                f"width {x1 - x0:g}, height {y1 - y0:g}", bbox_xyxy=[x0, y0, x1, y1],
                    **extra)
        return None
    if width is not None and height is not None:
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            report.skip(file, line, f"{what} outside the image: {[x0, y0, x1, y1]} in "
                                    f"{width}x{height}", **extra)
            return None
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            report.repair(file, line, f"{what} clipped to the image",
                          original=[x0, y0, x1, y1], clipped=[cx0, cy0, cx1, cy1], **extra)
            return [cx0, cy0, cx1, cy1]
    return [x0, y0, x1, y1]


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def iter_text_lines(path, fmt: str = "common", *, skip_blank: bool = False,
                    block_size: int = 1 << 20) -> Iterator[Tuple[int, str]]:
    """Stream ``(lineno, text)`` from a UTF-8 text file: BOM dropped, CR/LF stripped.

    Reads blocks of ``block_size`` bytes (memory stays bounded) and decodes each block at once.
    ``skip_blank=True`` yields only non-blank lines, stripped of surrounding whitespace.
    """
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConversionError(path, None, f"cannot open: {e.strerror}", fmt=fmt) from None
    with f:
        lineno = 0
        rest = b""
        first = True
        while True:
            block = f.read(max(block_size, 3) if first else block_size)  # 3: a whole BOM
            eof = not block
            if first:
                first = False
                if block.startswith(b"\xef\xbb\xbf"):
                    block = block[3:]
            data = rest + block
            if not eof:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: keep reading
                    rest = data
                    continue
                data, rest = data[:cut], data[cut:]
            elif not data:
                return
            else:
                rest = b""
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                bad_line = lineno + data.count(b"\n", 0, e.start) + 1
                column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
                raise ConversionError(path, bad_line, f"not valid UTF-8 (byte {data[e.start]:#04x} at "
                                                      f"column {column})", fmt=fmt) from None
            lines = text.split("\n")
            if lines[-1] == "":
                lines.pop()
            for line in lines:
                lineno += 1
                if skip_blank:
                    line = line.strip()
                    if line:
                        yield lineno, line
                else:
                    yield lineno, line[:-1] if line.endswith("\r") else line
            if eof:
                return


def read_image_size(path, fmt: str = "common") -> Tuple[int, int]:
    """``(height, width)`` from the image header, without decoding pixels.

    EXIF orientations 5-8 (90-degree rotations) swap the two, as Detectron2's ``read_image``
    applies them when loading.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = im.getexif().get(0x0112, 1)
            except Exception:  # broken EXIF block: the pixels are still readable
                orientation = 1
    except FileNotFoundError:
        raise ConversionError(path, None, "image not found", fmt=fmt) from None
    except (UnidentifiedImageError, OSError) as e:
        raise ConversionError(path, None, f"not a readable image ({e.__class__.__name__})", fmt=fmt) from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(h), int(w)


def require_dir(path, what: str = "folder", fmt: str = "common") -> None:
    if not os.path.isdir(path):
        raise ConversionError(path, None, f"{what} not found (not a directory)", fmt=fmt)


def progress(iterable, enabled: bool = False, desc: str = "", total=None, unit: str = "it"):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)


default_data_root = data_root  # the one lookup lives in d2ext.core


# --------------------------------------------------------------------------------------------
# COCO JSON export
# --------------------------------------------------------------------------------------------
def _polygon_area(poly: Sequence[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    s = 0.0
    n = len(xs)
    for i in range(n):
        j = (i + 1) % n
        s += xs[i] * ys[j] - xs[j] * ys[i]
    return abs(s) / 2.0


def _segmentation_area(segm) -> Optional[float]:
    if isinstance(segm, dict):
        from pycocotools import mask as mask_util

        rle = segm
        if isinstance(segm.get("counts"), list):
            rle = mask_util.frPyObjects(segm, *segm["size"])
        elif isinstance(segm.get("counts"), str):
            rle = dict(segm, counts=segm["counts"].encode("ascii"))
        return float(mask_util.area(rle))
    if isinstance(segm, list) and segm:
        return float(sum(_polygon_area(p) for p in segm))
    return None


def _json_segmentation(segm):
    if isinstance(segm, dict) and isinstance(segm.get("counts"), bytes):
        return dict(segm, counts=segm["counts"].decode("ascii"))
    return segm


def _xywh(ann: dict) -> List[float]:
    x0, y0, a, b = (float(v) for v in ann["bbox"])
    mode = int(ann.get("bbox_mode", BOX_MODE_XYXY_ABS))
    if mode == BOX_MODE_XYXY_ABS:
        return [x0, y0, a - x0, b - y0]
    if mode == BOX_MODE_XYWH_ABS:
        return [x0, y0, a, b]
    raise ValueError(f"bbox_mode {mode} cannot be exported to COCO (absolute XYXY/XYWH only)")


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


_dumps = json.JSONEncoder(separators=(",", ":")).encode
_EXTRA_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


def _coco_annotation(ann: dict, ann_id: int, image_id) -> dict:
    mode = ann.get("bbox_mode", BOX_MODE_XYXY_ABS)
    bbox = list(ann["bbox"]) if mode == BOX_MODE_XYWH_ABS else _xywh(ann)
    coco = {"id": ann_id, "image_id": image_id, "category_id": int(ann["category_id"]) + 1,
            "bbox": bbox, "iscrowd": int(ann.get("iscrowd", 0))}
    segm = ann.get("segmentation")
    area = _segmentation_area(segm) if segm else None
    coco["area"] = area if area is not None else bbox[2] * bbox[3]
    if segm:
        coco["segmentation"] = _json_segmentation(segm)
    if ann.get("keypoints") is not None:
        kp = [float(v) for v in ann["keypoints"]]
        # Detectron2 adds 0.5 to COCO keypoint x/y when loading; undo it here.
        kp = [v - 0.5 if i % 3 != 2 else int(v) for i, v in enumerate(kp)]
        coco["keypoints"] = kp
        coco["num_keypoints"] = sum(1 for v in kp[2::3] if v > 0)
    for key, value in ann.items():
        if key not in _STANDARD_ANN_KEYS and key not in coco and isinstance(value, _EXTRA_TYPES):
            coco[key] = value
    return coco


def export_coco_json(records: Iterable[dict], thing_classes: Sequence[str], path, *,
                     image_root=None, info: Optional[dict] = None,
                     keypoint_names: Optional[Sequence[str]] = None,
                     skeleton: Optional[Sequence[Sequence[int]]] = None,
                     fmt: str = "common") -> Dict[str, int]:
    """Stream Detectron2 records into a COCO JSON file (written atomically).

    Categories are 1-based (``id = category_id + 1``). Image ids are the records' ``image_id``
    when they are ints, else 1, 2, ... in order. Annotation ids are 1, 2, .... Each image needs
    ``height`` and ``width``. ``skeleton`` (for keypoints) is 1-based, as in COCO.
    """
    categories = []
    for i, name in enumerate(thing_classes):
        cat = {"id": i + 1, "name": name, "supercategory": name}
        if keypoint_names is not None:
            cat["keypoints"] = list(keypoint_names)
            cat["skeleton"] = [list(map(int, s)) for s in (skeleton or [])]
        categories.append(cat)
    head = {"info": info or {"description": "written by d2ext converters"}, "licenses": [],
            "categories": categories}
    num_images = num_anns = 0
    seen_ids = set()
    root = os.path.abspath(image_root) if image_root is not None else None
    with atomic_open(path, "w", encoding="utf-8") as out, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        out.write(_dumps(head)[:-1] + ',"images":[')
        for index, rec in enumerate(records, 1):
            if "height" not in rec or "width" not in rec:
                raise ConversionError(rec.get("file_name", "?"), None,
                                      "image size unknown: COCO export needs height and width", fmt=fmt)
            image_id = rec.get("image_id")
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                image_id = index
            if image_id in seen_ids:
                raise ConversionError(rec["file_name"], None, f"duplicate image id {image_id}", fmt=fmt)
            seen_ids.add(image_id)
            file_name = rec["file_name"]
            if root is not None:
                file_name = os.path.relpath(os.path.abspath(file_name), root)
            img = {"id": image_id, "file_name": file_name.replace(os.sep, "/"),
                   "height": int(rec["height"]), "width": int(rec["width"])}
            out.write(("," if num_images else "") + _dumps(img))
            num_images += 1
            coco_anns = []
            for ann in rec.get("annotations", ()):
                num_anns += 1
                coco_anns.append(_coco_annotation(ann, num_anns, image_id))
            if coco_anns:
                try:
                    text = _dumps(coco_anns)
                except (TypeError, ValueError):  # an extra field JSON cannot hold: leave it out
                    coco_anns = [{k: v for k, v in a.items() if _jsonable(v)} for a in coco_anns]
                    text = _dumps(coco_anns)
                spool.write(("," if num_anns > len(coco_anns) else "") + text[1:-1])
        out.write('],"annotations":[')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        out.write("]}")
    return {"num_images": num_images, "num_annotations": num_anns}


# --------------------------------------------------------------------------------------------
# Detectron2 registration (lazy)
# --------------------------------------------------------------------------------------------
_REGISTERED: Dict[str, tuple] = {}


def _loader_identity(loader) -> tuple:
    if isinstance(loader, functools.partial):
        return ("partial", _loader_identity(loader.func), loader.args,
                tuple(sorted(loader.keywords.items())))
    module = getattr(loader, "__module__", None)
    qualname = getattr(loader, "__qualname__", None)
    if qualname and "<lambda>" not in qualname and "<locals>" not in qualname:
        return ("function", module, qualname)
    return ("object", id(loader))


def _normalise(value):
    """Make metadata / kwargs comparable by value (paths -> str, tuples -> lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def register_dataset(name: str, loader, metadata: Optional[dict] = None, **loader_kwargs) -> None:
    """Register ``loader(**loader_kwargs)`` lazily as Detectron2 dataset ``name`` with ``metadata``.

    The loader is only called when Detectron2 asks for the dataset. Registering the same name
    again with an equal loader, kwargs and metadata does nothing; different ones raise
    ``ValueError``. A name registered by other code (not through here) also raises.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    metadata = dict(metadata or {})
    identity = (_loader_identity(loader), _normalise(loader_kwargs), _normalise(metadata))
    if name in _REGISTERED:
        if _REGISTERED[name] == identity:
            return
        raise ValueError(
            f"dataset '{name}' is already registered with different arguments:\n"
            f"  before: {_REGISTERED[name]}\n  now:    {identity}")
    if name in DatasetCatalog.list():
        raise ValueError(f"dataset '{name}' is already registered in DatasetCatalog by other code")
    DatasetCatalog.register(name, functools.partial(loader, **loader_kwargs))
    try:
        MetadataCatalog.get(name).set(**metadata)
    except AssertionError as e:  # stale metadata left by earlier code under the same name
        DatasetCatalog.remove(name)
        raise ValueError(f"dataset '{name}': metadata conflicts with existing metadata: {e}") from None
    _REGISTERED[name] = identity
    logger.debug("registered dataset %s", name)
