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
  stripped. Missing file -> ``ConversionError(path, None, ...)``. ``iter_text_blocks`` gives the
  same as ``(line numbers, lines)`` lists, one ~1 MiB block at a time.
- ``atomic_write_json(path, obj, indent=None)``, ``atomic_write_bytes(path, data)``,
  ``atomic_open(path, mode="w")``: re-exported from :mod:`d2ext.core` (the one atomic writer).
- ``read_image_size(path) -> (height, width)`` from the image header (no pixel decode; JPEGs
  by :func:`jpeg_header_size`, other formats by PIL), swapped for EXIF orientations 5-8 as
  Detectron2's ``read_image`` would. Raises ``ConversionError`` when the file is missing or
  not an image.

Values checked where they enter:

- ``MAX_COORDINATE`` (2**20 px); ``bad_number(v)`` / ``bad_numbers(values, names)`` say why a
  value is not a finite number within +-MAX_COORDINATE (None when it is one); the caller
  reports the skip with file and line.
- ``ImagePaths(root).resolve(relative)``: ``root/relative``, or None when the path is absolute
  or leaves ``root`` (``..``, symlinks); the caller reports the skip.
- ``progress(iterable, enabled, desc, total=None, unit="it")`` — tqdm when enabled.

COCO and Detectron2:

- ``export_coco_json(records, thing_classes, path, *, image_root=None, info=None,
  keypoint_names=None, skeleton=None, batch=None, require_sizes=True) -> dict(num_images,
  num_annotations)`` streams any iterable of records into a COCO JSON (categories 1-based;
  image ``file_name`` relative to ``image_root`` when given, which the file records as
  ``"d2ext": {"image_root": ...}`` (:func:`coco_image_root`); extra annotation keys such as
  ``attributes`` are kept; keypoint x/y have Detectron2's +0.5 removed so ``load_coco_json``
  gives back the same values). Memory stays bounded (annotations beyond 16 MiB of JSON are
  spooled to a temp file).
  Written atomically, or into ``batch`` (a ``d2ext.core.OutputBatch``); orjson encodes. A
  record's ``annotations`` may be a ``BoxColumns`` (boxes as checked columns: written without a
  dict per box; ``to_records()`` gives the Detectron2 dicts).
- ``register_dataset(name, loader, metadata, **loader_kwargs)`` registers ``loader(**kwargs)``
  lazily in ``DatasetCatalog`` and ``metadata`` in ``MetadataCatalog``. Calling it again with an
  equal loader (same function / partial args), kwargs and metadata is a no-op; anything else
  raises ``ValueError`` naming the dataset.

The data root (``$D2EXT_SHARED_DATA``) is :func:`d2ext.core.data_root`.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from itertools import count
from operator import itemgetter

# typing stays off the start-up path of tools/convert.py (as in d2ext.core): the annotations are
# never evaluated (``from __future__ import annotations``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from d2ext.core import (OutputBatch, atomic_open, atomic_write_bytes, atomic_write_json,  # noqa: F401
                        dumps_json, is_inside, resolve_inside)

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
            "skipped": _json_safe(self.skipped),
            "repaired": _json_safe(self.repaired),
            **_json_safe(self.notes),
        }

    def write(self, path) -> None:
        atomic_write_json(path, self.to_dict(), indent=1)

    def summary(self) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in self.objects_per_class.items())
        return (f"{self.fmt}: {self.num_images} images, {self.num_annotations} objects"
                f"{' (' + per_class + ')' if per_class else ''}; {len(self.skipped)} skipped, "
                f"{len(self.repaired)} repaired")


def _json_safe(value):
    """``value`` with non-finite floats written as strings ('nan', 'inf'): a report quotes bad
    input, and NaN is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


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
    if not all(-MAX_COORDINATE <= v <= MAX_COORDINATE for v in (x0, y0, x1, y1)):
        report.skip(file, line, f"{what} out of range: {[x0, y0, x1, y1]} (|v| <= "
                                f"{MAX_COORDINATE:g})", **extra)
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
def iter_text_blocks(path, fmt: str = "common", *, skip_blank: bool = False,
                     block_size: int = 1 << 20) -> Iterator[Tuple[List[int], List[str]]]:
    """Stream a UTF-8 text file as ``(line numbers, lines)`` lists, one block of about
    ``block_size`` bytes (whole lines) at a time: BOM dropped, CR/LF stripped, strict UTF-8 (bad
    bytes raise a ``ConversionError`` naming the line). ``skip_blank=True`` keeps only non-blank
    lines, stripped of surrounding whitespace. For parsers that take many lines at once (a WIDER
    image's face rows are one slice); :func:`iter_text_lines` gives them one by one."""
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
            numbers = range(lineno + 1, lineno + 1 + len(lines))
            lineno += len(lines)
            if skip_blank:
                lines = list(map(str.strip, lines))
                if "" in lines:
                    numbers = [n for n, line in zip(numbers, lines) if line]
                    lines = [line for line in lines if line]
            else:
                lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            if lines:
                yield list(numbers), lines
            if eof:
                return


def iter_text_lines(path, fmt: str = "common", *, skip_blank: bool = False,
                    block_size: int = 1 << 20) -> Iterator[Tuple[int, str]]:
    """Stream ``(lineno, text)`` from a UTF-8 text file: BOM dropped, CR/LF stripped.

    Reads blocks of ``block_size`` bytes (memory stays bounded) and decodes each block at once.
    ``skip_blank=True`` yields only non-blank lines, stripped of surrounding whitespace.
    """
    for numbers, lines in iter_text_blocks(path, fmt, skip_blank=skip_blank, block_size=block_size):
        yield from zip(numbers, lines)


def read_image_size(path, fmt: str = "common") -> Tuple[int, int]:
    """``(height, width)`` from the image header, without decoding pixels.

    EXIF orientations 5-8 (90-degree rotations) swap the two, as Detectron2's ``read_image``
    applies them when loading. JPEGs are read by :func:`jpeg_header_size`; other formats, and
    any JPEG it does not understand, go through PIL (Detectron2's own reader).
    """
    if os.fspath(path).lower().endswith((".jpg", ".jpeg", ".jpe", ".jfif")):
        try:
            size = jpeg_header_size(path)
        except OSError:
            size = None  # PIL below says what is wrong with the file
        if size is not None:
            return size
    return _read_image_size_pil(path, fmt)


_JPEG_NOT_SOF = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the 0xC0-0xCF range with the SOF markers


def jpeg_header_size(path) -> Optional[Tuple[int, int]]:
    """``(height, width)`` of a JPEG from its SOF marker, swapped when the first EXIF block's
    orientation (tag 0x0112 of IFD0, read as PIL reads it) is 5-8; None for anything this small
    reader does not handle (the caller then asks PIL).

    Hand-written rather than ``imagesize.get`` (which gives the same answers, checked in
    tests/test_converters_hostile.py): importing imagesize pulls urllib and http.client for its
    URL reader, ~130 ms on the shared machine, about a sixth of a whole WIDER val conversion;
    reading the header costs the same either way (the ``open`` dominates).
    """
    orientation = 1
    # One os.read of the first 4 KiB usually holds every marker up to the SOF (raw fd reads, no
    # buffered file object: the open dominates on 3k small files); more is read only as needed.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        buf = os.read(fd, 4096)

        def need(end):  # make buf hold bytes [0, end); False at the end of the file
            nonlocal buf
            while len(buf) < end:
                more = os.read(fd, max(end - len(buf), 65536))
                if not more:
                    return False
                buf += more
            return True

        if buf[:2] != b"\xff\xd8":
            return None
        pos = 2
        while True:
            if not need(pos + 4) or buf[pos] != 0xFF:
                return None  # truncated, or fill bytes / a marker without length: PIL decides
            marker, length = buf[pos + 1], (buf[pos + 2] << 8) | buf[pos + 3]
            if length < 2:
                return None
            if 0xC0 <= marker <= 0xCF and marker not in _JPEG_NOT_SOF:
                if not need(pos + 9):
                    return None
                height, width = (buf[pos + 5] << 8) | buf[pos + 6], (buf[pos + 7] << 8) | buf[pos + 8]
                if height == 0 or width == 0:  # height given later by a DNL marker
                    return None
                return (width, height) if orientation in (5, 6, 7, 8) else (height, width)
            if marker == 0xE1 and orientation == 1:
                need(pos + 2 + length)
                payload = buf[pos + 4:pos + 2 + length]
                if payload.startswith(b"Exif\x00\x00"):
                    orientation = _exif_orientation(payload[6:])
                    if orientation is None:
                        return None
                    if orientation == 1:
                        orientation = 0  # the first EXIF block decides, as in PIL
            elif marker == 0xDA or marker == 0xD9:  # scan data or end before any SOF
                return None
            pos += 2 + length
    finally:
        os.close(fd)


def _exif_orientation(tiff: bytes) -> Optional[int]:
    """The orientation tag of IFD0 in a TIFF-structured EXIF block (1 when absent), None when
    the block is malformed or the tag is not a SHORT (PIL then decides)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    big = tiff[:2] == b"MM"

    def u16(i):
        return (tiff[i] << 8 | tiff[i + 1]) if big else (tiff[i + 1] << 8 | tiff[i])

    def u32(i):
        return int.from_bytes(tiff[i:i + 4], "big" if big else "little")

    if u16(2) != 42:
        return None
    ifd = u32(4)
    if ifd + 2 > len(tiff):
        return None
    for k in range(u16(ifd)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return None
        if u16(entry) == 0x0112:
            return u16(entry + 8) if u16(entry + 2) == 3 else None
    return 1


def _read_image_size_pil(path, fmt: str = "common") -> Tuple[int, int]:
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
    except IsADirectoryError:
        raise ConversionError(path, None, "is a folder, not an image", fmt=fmt) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConversionError(path, None, f"not a readable image ({e.__class__.__name__})", fmt=fmt) from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return int(h), int(w)


# --------------------------------------------------------------------------------------------
# values checked where they enter
# --------------------------------------------------------------------------------------------
#: Largest absolute pixel coordinate accepted from a file. Real images are far smaller (the
#: largest camera sensors are ~20k px a side); anything beyond is a corrupt or hostile value
#: (``1e300``) that would survive as a huge box or overflow float32 arithmetic downstream.
MAX_COORDINATE = float(1 << 20)


def bad_number(value) -> Optional[str]:
    """Why ``value`` is not a usable coordinate (None when it is one): not a number (strings
    and bools are not: parse text first), not finite, or beyond +-:data:`MAX_COORDINATE`."""
    if isinstance(value, (bool, str)):
        return f"{value!r} is not a number"
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            return f"{value!r} is not a number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} is not finite"
    if not -MAX_COORDINATE <= value <= MAX_COORDINATE:
        return f"{value:g} is out of range (|v| <= {MAX_COORDINATE:g})"
    return None


def bad_numbers(values, names: Optional[Sequence[str]] = None) -> Optional[str]:
    """The first problem among ``values`` (see :func:`bad_number`), naming the value's position
    or name, or None when all are usable."""
    for i, v in enumerate(values):
        why = bad_number(v)
        if why is not None:
            return f"{names[i] if names is not None else f'value {i}'} {why}"
    return None


class ImagePaths:
    """Image paths named by an annotation file, kept inside their image folder.

    ``resolve(relative)`` gives ``root/relative`` as a string, or None when the path is
    absolute or leaves ``root`` (``..``, a symlinked folder or file pointing outside): the caller
    reports the skip. The check is :func:`d2ext.core.is_inside` (realpath based); its
    folder part is cached, so 3k images in 61 folders cost 61 realpath calls, not 3k.
    ``root=None`` keeps relative paths as given and refuses absolute and ``..`` paths
    lexically."""

    def __init__(self, root):
        self.root = None if root is None else os.fspath(root)
        # root + os.sep (os.path.join(root, "")): prefix + relative == os.path.join(root, relative)
        # for the relative paths the fast path below accepts
        self._prefix = None if root is None else os.path.join(self.root, "")
        self._dirs: Dict[str, bool] = {}
        self._symlinks: Dict[str, set] = {}

    def resolve(self, relative: str) -> Optional[str]:
        # The next file of a folder the full check below already accepted (its lexical checks
        # passed, _dirs is True, its symlinks are listed) needs only a look at its own name.
        folder, sep, base = relative.rpartition("/")
        if sep and self._dirs.get(folder) and folder in self._symlinks and "\\" not in relative \
                and base not in ("", ".", "..") and base not in self._symlinks[folder]:
            return self._prefix + relative
        rel = relative.replace("\\", "/")
        if not rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":") or \
                ".." in rel.split("/"):
            return None
        if self.root is None:
            return relative
        folder, base = os.path.split(rel)
        ok = self._dirs.get(folder)
        if ok is None:
            ok = self._dirs[folder] = is_inside(self.root, folder or ".")
        if not ok:
            return None
        path = os.path.join(self.root, relative)
        if base in self._links(folder) and not is_inside(self.root, rel):
            return None
        return path

    def _links(self, folder: str) -> set:
        """Names of the symlinks in ``root/folder`` (one listing per folder, not a stat per file)."""
        links = self._symlinks.get(folder)
        if links is None:
            try:
                with os.scandir(os.path.join(self.root, folder)) as it:
                    links = {e.name for e in it if e.is_symlink()}
            except OSError:  # a missing folder: its images are reported when they are read
                links = set()
            self._symlinks[folder] = links
        return links


def require_dir(path, what: str = "folder", fmt: str = "common") -> None:
    if not os.path.isdir(path):
        raise ConversionError(path, None, f"{what} not found (not a directory)", fmt=fmt)


def progress(iterable, enabled: bool = False, desc: str = "", total=None, unit: str = "it"):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)




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


_EXTRA_TYPES = (str, int, float, bool, type(None), list, tuple, dict)
_EXTRA_TYPE_SET = set(_EXTRA_TYPES)  # exact types (a subclass takes the general path)


def _coco_annotation(ann: dict, ann_id: int, image_id) -> dict:
    mode = ann.get("bbox_mode", BOX_MODE_XYXY_ABS)
    bbox = ann["bbox"] if mode == BOX_MODE_XYWH_ABS else _xywh(ann)  # only serialised: no copy
    coco = {"id": ann_id, "image_id": image_id, "category_id": int(ann["category_id"]) + 1,
            "bbox": bbox, "iscrowd": int(ann.get("iscrowd", 0))}
    extra = ann.keys() - _PLAIN_BOX_KEYS
    if extra.isdisjoint(_GEOMETRY_KEYS):  # the common case (WIDER: 40k faces per file): a box
        coco["area"] = bbox[2] * bbox[3]
        for key in extra:
            value = ann[key]
            if key not in coco and isinstance(value, _EXTRA_TYPES):
                coco[key] = value
        return coco
    segm = ann.get("segmentation")
    if segm:
        area = _segmentation_area(segm)
        coco["area"] = area if area is not None else bbox[2] * bbox[3]
        coco["segmentation"] = _json_segmentation(segm)
    else:
        coco["area"] = bbox[2] * bbox[3]
    if ann.get("keypoints") is not None:
        kp = [float(v) for v in ann["keypoints"]]
        # Detectron2 adds 0.5 to COCO keypoint x/y when loading; undo it here.
        kp = [v - 0.5 if i % 3 != 2 else int(v) for i, v in enumerate(kp)]
        coco["keypoints"] = kp
        coco["num_keypoints"] = sum(1 for v in kp[2::3] if v > 0)
    for key in extra - _STANDARD_ANN_KEYS:
        value = ann[key]
        if key not in coco and isinstance(value, _EXTRA_TYPES):
            coco[key] = value
    return coco


class BoxColumns:
    """The boxes of one image as columns, for :func:`export_coco_json`: ``x, y, w, h`` (XYWH_ABS),
    ``iscrowd`` (ints, one per box) and optionally one extra field ``extra_key`` with a JSON
    value per box (``extra``; WIDER's ``"attributes"`` dicts); every box has ``category_id``.

    A converter that builds its boxes column-wise and checks them as it goes (WIDER: 40k faces
    per file) hands this to the exporter, which writes the COCO annotations straight from the
    columns -- no Detectron2 dict per box is built and no per-box layout check is made.
    :meth:`to_records` gives the Detectron2 annotation dicts (the same contents) for the other
    consumers. Extra values may be shared between boxes (the exporter only serialises them);
    :meth:`to_records` copies dict values so every record owns its own.
    """

    __slots__ = ("x", "y", "w", "h", "iscrowd", "category_id", "extra_key", "extra")

    def __init__(self, x, y, w, h, iscrowd, *, category_id: int = 0, extra_key: Optional[str] = None,
                 extra: Optional[Sequence] = None):
        if not len(x) == len(y) == len(w) == len(h) == len(iscrowd) or \
                (extra_key is not None and (extra is None or len(extra) != len(x))):
            raise ValueError("BoxColumns: columns of different lengths")
        if extra_key in _COCO_BOX_KEYS:
            raise ValueError(f"BoxColumns: extra field {extra_key!r} is a COCO annotation key")
        self.x, self.y, self.w, self.h, self.iscrowd = x, y, w, h, iscrowd
        self.category_id, self.extra_key, self.extra = int(category_id), extra_key, extra

    def __len__(self) -> int:
        return len(self.x)

    def to_records(self) -> List[dict]:
        """Detectron2 annotation dicts (``bbox_mode`` XYWH_ABS), one per box, in order."""
        cat, key = self.category_id, self.extra_key
        if key is None:
            return [{"bbox": [x, y, w, h], "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": cat, "iscrowd": c}
                    for x, y, w, h, c in zip(self.x, self.y, self.w, self.h, self.iscrowd)]
        return [{"bbox": [x, y, w, h], "bbox_mode": BOX_MODE_XYWH_ABS, "category_id": cat, "iscrowd": c,
                 key: dict(e) if type(e) is dict else e}
                for x, y, w, h, c, e in zip(self.x, self.y, self.w, self.h, self.iscrowd, self.extra)]

    def to_coco(self, first_id: int, image_id) -> List[dict]:
        """COCO annotation dicts with ids ``first_id, first_id + 1, ...`` (the keys and order of
        :func:`_coco_annotation` for a box: id, image_id, category_id, bbox, iscrowd, area, extra)."""
        cat, key = self.category_id + 1, self.extra_key
        if key is None:
            return [{"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": c,
                     "area": w * h} for i, x, y, w, h, c in
                    zip(count(first_id), self.x, self.y, self.w, self.h, self.iscrowd)]
        return [{"id": i, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h], "iscrowd": c,
                 "area": w * h, key: e} for i, x, y, w, h, c, e in
                zip(count(first_id), self.x, self.y, self.w, self.h, self.iscrowd, self.extra)]


_COCO_BOX_KEYS = {"id", "image_id", "category_id", "bbox", "iscrowd", "area", "segmentation", "keypoints"}


def _coco_box_annotations(anns: Sequence[dict], first_id: int, image_id) -> Optional[List[dict]]:
    """:func:`_coco_annotation` of every annotation of one image at once, when all are XYWH boxes
    with the same keys and at most one extra field (WIDER: ``attributes``); None otherwise. The
    same dicts, built in one comprehension (40k faces per WIDER file)."""
    ids = range(first_id, first_id + len(anns))
    keys = anns[0].keys()
    extra = keys - _PLAIN_BOX_KEYS
    # the checks run as C-level map/set passes (tuple(dict) is its keys in order: one key layout)
    if len(extra) > 1 or not extra.isdisjoint(_GEOMETRY_KEYS) or len(keys) - len(extra) != 4 or \
            len(set(map(tuple, anns))) != 1 or \
            set(map(itemgetter("bbox_mode"), anns)) != {BOX_MODE_XYWH_ABS}:
        return None
    if not extra:
        return [{"id": i, "image_id": image_id, "category_id": int(a["category_id"]) + 1, "bbox": b,
                 "iscrowd": int(a["iscrowd"]), "area": b[2] * b[3]} for i, a, b in
                zip(ids, anns, map(itemgetter("bbox"), anns))]
    (key,) = extra
    if key in ("id", "image_id", "area") or \
            not set(map(type, map(itemgetter(key), anns))) <= _EXTRA_TYPE_SET:
        return None
    return [{"id": i, "image_id": image_id, "category_id": int(a["category_id"]) + 1, "bbox": b,
             "iscrowd": int(a["iscrowd"]), "area": b[2] * b[3], key: a[key]} for i, a, b in
            zip(ids, anns, map(itemgetter("bbox"), anns))]


_PLAIN_BOX_KEYS = {"bbox", "bbox_mode", "category_id", "iscrowd"}
_GEOMETRY_KEYS = {"segmentation", "keypoints"}


def _dump_annotations(coco_anns: List[dict], file_name, fmt: str) -> bytes:
    """JSON of a list of COCO annotations. An extra field JSON cannot hold (a type it does not
    know) is left out; a non-finite number anywhere is an error naming the image (values are
    checked where they enter, so this only catches a converter bug)."""
    try:
        return dumps_json(coco_anns)
    except TypeError:
        cleaned = []
        for a in coco_anns:
            keep = {}
            for k, v in a.items():
                try:
                    dumps_json(v)
                except TypeError:
                    if k in _STANDARD_ANN_KEYS or k in ("id", "image_id", "area"):
                        raise
                    continue
                keep[k] = v
            cleaned.append(keep)
        return _dump_annotations(cleaned, file_name, fmt)
    except ValueError as e:
        raise ConversionError(file_name, None, f"annotation with a non-finite number: {e}", fmt=fmt) from None


def coco_image_root(json_path, image_root) -> str:
    """The ``"d2ext": {"image_root": ...}`` value a COCO file at ``json_path`` records for
    ``image_root``: relative to the JSON's folder when the images lie under it or under its
    parent (``ds/train.json`` + ``ds/images``, or COCO's ``ds/annotations/`` + ``ds/train2017/``:
    the dataset folder can be moved or copied whole), absolute otherwise (a JSON written
    elsewhere can be moved alone)."""
    json_dir = os.path.dirname(os.path.abspath(os.fspath(json_path)))
    root = os.path.abspath(os.fspath(image_root))
    for base in (json_dir, os.path.dirname(json_dir)):
        if base != os.path.dirname(base) and (root == base or root.startswith(base.rstrip(os.sep) + os.sep)):
            return os.path.relpath(root, json_dir).replace(os.sep, "/")
    return root.replace(os.sep, "/")


def _maybe_unnormal(rel: str) -> bool:
    """False when ``os.path.normpath(rel)`` is ``rel`` for sure (a relative POSIX path without
    empty, "." or ".." parts); True when it may differ."""
    return (not rel or rel[0] in "./" or rel[-1] in "./" or "//" in rel or "/." in rel
            or (os.altsep is not None and os.altsep in rel))


_CHUNK = 256  # images per encoder call in export_coco_json (memory: one chunk of dicts)
_SPOOL_MEMORY = 16 << 20  # annotation JSON kept in memory before export_coco_json spools to disk


def export_coco_json(records: Iterable[dict], thing_classes: Sequence[str], path, *,
                     image_root=None, info: Optional[dict] = None,
                     keypoint_names: Optional[Sequence[str]] = None,
                     skeleton: Optional[Sequence[Sequence[int]]] = None,
                     fmt: str = "common", batch: Optional[OutputBatch] = None,
                     require_sizes: bool = True) -> Dict[str, int]:
    """Stream Detectron2 records into a COCO JSON file (written atomically). A record's
    ``annotations`` may also be a :class:`BoxColumns` (a converter's checked boxes, written from
    the columns).

    Categories are 1-based (``id = category_id + 1``). Image ids are the records' ``image_id``
    when they are ints, else 1, 2, ... in order. Annotation ids are 1, 2, .... ``skeleton``
    (for keypoints) is 1-based, as in COCO.

    ``image_root``: image ``file_name`` s are written relative to it and the file records it in
    a top-level ``"d2ext": {"image_root": ...}`` entry (see :func:`coco_image_root`), so the
    file finds its images wherever it is kept; a reader joins ``image_root`` (relative to the
    JSON's folder unless absolute) and ``file_name``.

    ``require_sizes``: each image needs ``height`` and ``width`` (COCO requires them). With
    False, images without them are written without the two keys and ``"d2ext"`` gets
    ``"image_sizes": false`` (Detectron2's ``load_coco_json`` needs sizes; d2ext's loaders
    tolerate their absence).

    ``batch``: write into this :class:`d2ext.core.OutputBatch` (committed with the run's other
    outputs) instead of replacing ``path`` at once. JSON is encoded with orjson when installed.
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
    d2ext_key = {}
    if image_root is not None:
        d2ext_key["image_root"] = coco_image_root(path, image_root)
    num_images = num_anns = 0
    missing_sizes = 0
    seen_ids = set()
    root = os.path.abspath(image_root) if image_root is not None else None
    # records name their images root + relative path (as given, or absolute)
    root_prefix = os.path.join(os.fspath(image_root), "") if image_root is not None else None
    opened = open(batch.path(path), "wb") if batch is not None else atomic_open(path, "wb")
    # Images and annotations are encoded in chunks of _CHUNK images: few encoder calls, and
    # memory bounded by one chunk (annotations are spooled meanwhile: in memory up to
    # _SPOOL_MEMORY bytes of JSON, e.g. WIDER val's 6 MB; in a temp file beyond).
    images_chunk: List[dict] = []
    anns_chunk: List[Tuple[str, List[dict]]] = []
    written = {"images": False, "annotations": False}

    def flush(out, spool):
        if images_chunk:
            out.write((b"," if written["images"] else b"") + dumps_json(images_chunk)[1:-1])
            written["images"] = True
        flat = [a for _, anns in anns_chunk for a in anns]
        if flat:
            try:
                text = dumps_json(flat)
            except (TypeError, ValueError):  # find the image, drop unknown extra types
                text = b"[" + b",".join(_dump_annotations(anns, name, fmt)[1:-1]
                                        for name, anns in anns_chunk if anns) + b"]"
            spool.write((b"," if written["annotations"] else b"") + text[1:-1])
            written["annotations"] = True
        images_chunk.clear()
        anns_chunk.clear()

    with opened as out, tempfile.SpooledTemporaryFile(_SPOOL_MEMORY, "w+b") as spool:
        out.write(dumps_json(head)[:-1] + b',"images":[')
        for index, rec in enumerate(records, 1):
            has_size = "height" in rec and "width" in rec
            if not has_size:
                if require_sizes:
                    raise ConversionError(rec.get("file_name", "?"), None,
                                          "image size unknown: COCO export needs height and width",
                                          fmt=fmt)
                missing_sizes += 1
            image_id = rec.get("image_id")
            if not isinstance(image_id, int) or isinstance(image_id, bool):
                image_id = index
            if image_id in seen_ids:
                raise ConversionError(rec["file_name"], None, f"duplicate image id {image_id}", fmt=fmt)
            seen_ids.add(image_id)
            file_name = rec["file_name"]
            if root is not None:
                if file_name.startswith(root_prefix):  # the common case, without relpath's cost
                    file_name = file_name[len(root_prefix):]
                    if _maybe_unnormal(file_name):  # normpath only where it can change something
                        file_name = os.path.normpath(file_name)
                else:
                    file_name = os.path.relpath(os.path.abspath(file_name), root)
            img = {"id": image_id, "file_name": file_name.replace(os.sep, "/")}
            if has_size:
                img["height"] = int(rec["height"])
                img["width"] = int(rec["width"])
            images_chunk.append(img)
            num_images += 1
            anns = rec.get("annotations", ())
            if type(anns) is BoxColumns:  # a converter's checked columns: written as they are
                coco_anns = anns.to_coco(num_anns + 1, image_id)
                num_anns += len(coco_anns)
                anns_chunk.append((rec["file_name"], coco_anns))
            elif anns:
                coco_anns = (_coco_box_annotations(anns, num_anns + 1, image_id)
                             or [_coco_annotation(ann, num_anns + k, image_id) for k, ann in enumerate(anns, 1)])
                num_anns += len(coco_anns)
                anns_chunk.append((rec["file_name"], coco_anns))
            if len(images_chunk) >= _CHUNK:
                flush(out, spool)
        flush(out, spool)
        out.write(b'],"annotations":[')
        spool.seek(0)
        shutil.copyfileobj(spool, out)
        out.write(b"]")
        if missing_sizes:
            d2ext_key["image_sizes"] = False
        if d2ext_key:
            out.write(b',"d2ext":' + dumps_json(d2ext_key))
        out.write(b"}")
    counts = {"num_images": num_images, "num_annotations": num_anns}
    if missing_sizes:
        counts["num_images_without_size"] = missing_sizes
    return counts


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
