"""WIDER Face evaluation: the official easy / medium / hard AP protocol, vectorised with NumPy.

The protocol is the one of the official MATLAB toolkit (``eval_tools/wider_eval.m``, Yang et al.,
"WIDER FACE: A Face Detection Benchmark", CVPR 2016) and of its widely used Python port:

- Ground truth per image: every face box ``x y w h`` (``wider_face_val.mat``) and, per setting, the
  1-based indices of the faces that count (``wider_{easy,medium,hard}_val.mat``). The other faces
  of the image are *ignore* faces: a detection on one is neither a true nor a false positive.
- Scores are normalised over all predictions of the whole set, ``(s - min) / (max - min)``, with
  the running min starting at 1 and the running max at 0 (as the toolkit's Python port does), so
  scores inside [0, 1] are stretched to it. Predictions of an image are sorted by descending score
  (stable, as MATLAB's ``sort``) before matching; the toolkit sorts them when it reads the files.
- Boxes become ``x1 y1 x2 y2`` with ``x2 = x + w`` and IoU uses pixel-inclusive areas
  ``(x2 - x1 + 1) * (y2 - y1 + 1)``; a pair whose inclusive intersection width or height is <= 0
  has IoU 0 (so the val .mat's face with width -2, ``39_Ice_Skating_iceskiing_39_583`` row 7,
  can never be matched, while a width-0 face still can).
- Per image, in score order, each prediction takes its best-overlapping face (first on ties). If
  IoU >= 0.5 and the face is an ignore face, the prediction is dropped from the proposals; if it
  is a setting face not yet recalled, the face becomes recalled (a later prediction on it is a
  false positive). Images without faces or without predictions only add their setting faces to
  the recall denominator (their predictions are not counted at all, as in the toolkit).
- Thresholds ``t_k = 1 - k/1000``, ``k = 1..1000``: proposals and recalled faces of the
  predictions with normalised score >= t_k are summed over images; precision = recalled /
  proposals, recall = recalled / (all setting faces). AP is the VOC area under the curve with
  precision made non-increasing from the right.

Vectorisation: since predictions of an image are sorted, "the counts at the last prediction with
score >= t" equal sums over all predictions with score >= t, so the whole set reduces to one
IoU pass over (prediction, face) pairs of the same image, a first-hit per face, and a histogram of
the threshold index each prediction first passes. No Python loop runs per box or per threshold.

Ground truth comes from the official .mat files (:func:`load_widerface_gt`). Predictions are read
and written in the official ``<event>/<image>.txt`` layout (:func:`read_widerface_predictions`,
:func:`write_widerface_predictions`); a file that cannot be used (not UTF-8, a folder or a symlink
loop named ``<image>.txt``, a bad line, a non-finite or out-of-range number) raises
:class:`PredictionFileError` naming the file (and line).

This module imports only the standard library and NumPy (matplotlib inside
:func:`plot_widerface_pr`; the .mat files are read by :mod:`d2ext.evaluation.matfile`, not SciPy,
whose import alone costs more than an evaluation): ``tools/eval_widerface.py`` never loads torch
or Detectron2. The Detectron2 side (ground truth from dataset dicts, :class:`WiderFaceEvaluator` for
``evaluator_type: "widerface"``) is :mod:`d2ext.evaluation.widerface`.
"""
import errno
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core import atomic_path, atomic_write_text
from .matfile import read_mat

__all__ = [
    "WIDERFACE_SETTINGS",
    "WiderFaceGT",
    "PredictionReadReport",
    "PredictionFileError",
    "MAX_ABS_VALUE",
    "load_widerface_gt",
    "read_prediction_file",
    "read_widerface_predictions",
    "write_widerface_predictions",
    "normalize_scores",
    "evaluate_widerface",
    "voc_ap",
    "plot_widerface_pr",
]

logger = logging.getLogger(__name__)

WIDERFACE_SETTINGS = ("easy", "medium", "hard")
IOU_THRESH = 0.5  # the toolkit's overlap threshold
NUM_THRESHOLDS = 1000  # the toolkit's score thresholds t_k = 1 - k/1000
_PAIR_CHUNK = 1 << 17  # (prediction, face) pairs per IoU chunk: bounds its memory (~15 MB)


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------
@dataclass
class WiderFaceGT:
    """Ground truth of a set of images, stored flat so the evaluation can vectorise.

    ``boxes``: (G, 4) float64 ``x y w h`` of all faces of all images, image after image;
    ``offsets``: (N + 1,) int64, faces of image ``i`` are ``boxes[offsets[i]:offsets[i + 1]]``;
    ``keep``: setting name -> (G,) bool, True for the faces that count in that setting (the
    others are ignore faces); ``events`` / ``names``: per image, event folder and file stem.
    """

    events: List[str]
    names: List[str]
    boxes: np.ndarray
    offsets: np.ndarray
    keep: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        if len(self.events) != len(self.names) or len(self.offsets) != len(self.names) + 1:
            raise ValueError("WiderFaceGT: events, names and offsets (N + 1) must agree in length")
        if self.offsets[-1] != len(self.boxes):
            raise ValueError(f"WiderFaceGT: offsets end at {self.offsets[-1]}, boxes has {len(self.boxes)}")
        for k, v in self.keep.items():
            v = np.asarray(v, dtype=bool)
            if v.shape != (len(self.boxes),):
                raise ValueError(f"WiderFaceGT: keep[{k!r}] has shape {v.shape}, expected ({len(self.boxes)},)")
            self.keep[k] = v
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})[:5]
            raise ValueError(f"WiderFaceGT: image names must be unique, repeated: {dup}")
        self._index = {n: i for i, n in enumerate(self.names)}

    @property
    def num_images(self) -> int:
        return len(self.names)

    @property
    def settings(self) -> List[str]:
        return list(self.keep)

    def index(self, name: str) -> int:
        return self._index[name]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def image_boxes(self, i: int) -> np.ndarray:
        return self.boxes[self.offsets[i]:self.offsets[i + 1]]

    def num_faces(self, setting: str) -> int:
        return int(self.keep[setting].sum())

    def select(self, names: Iterable[str]) -> "WiderFaceGT":
        """The ground truth of the images ``names`` only (in that order); KeyError if unknown."""
        idx = [self._index[n] for n in names]
        counts = np.diff(self.offsets)[idx] if idx else np.zeros(0, np.int64)
        face_idx = np.concatenate(
            [np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx] or [np.zeros(0, np.int64)]
        ).astype(np.int64)
        return WiderFaceGT(
            events=[self.events[i] for i in idx],
            names=[self.names[i] for i in idx],
            boxes=self.boxes[face_idx],
            offsets=np.concatenate([[0], np.cumsum(counts)]),
            keep={k: v[face_idx] for k, v in self.keep.items()},
        )


def _mat_str(cell) -> str:
    """A MATLAB char array inside 1-element cell arrays (as read_mat or scipy give it) -> str."""
    while isinstance(cell, np.ndarray):
        cell = cell.flat[0] if cell.size else ""
    return str(cell)


_GT_CACHE_VERSION = 1  # bump when the parsed layout changes


def load_widerface_gt(gt_dir: str, split: str = "val",
                      settings: Sequence[str] = WIDERFACE_SETTINGS, cache: bool = True) -> WiderFaceGT:
    """Read the official ground truth ``wider_face_<split>.mat`` + ``wider_<setting>_<split>.mat``.

    Boxes are taken verbatim (the val file's ``39_Ice_Skating_iceskiing_39_583`` row 7 keeps its
    width of -2); setting indices are 1-based in the files. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file, event and image on a missing file or an index out of range.

    With ``cache``, the parsed result is kept in ``cache_root()/widerface_gt/<sha256>.npz``, keyed
    by the bytes of the four files (so an edited file is parsed again): decoding ~20,000 small
    MATLAB matrices costs more than the evaluation, loading the .npz a few milliseconds. A cache
    that cannot be read or written is ignored (logged at debug level).
    """
    gt_dir = Path(gt_dir)
    face_path = gt_dir / f"wider_face_{split}.mat"
    if not face_path.is_file():
        raise FileNotFoundError(f"WIDER Face ground truth {face_path} not found")
    paths = [face_path] + [gt_dir / f"wider_{s}_{split}.mat" for s in settings]
    for setting, path in zip(settings, paths[1:]):
        if not path.is_file():
            raise FileNotFoundError(f"WIDER Face {setting} ground truth {path} not found")
    if not cache:
        return _parse_widerface_gt(gt_dir, face_path, split, settings)
    import hashlib

    from ..core import cache_root

    key = hashlib.sha256(repr((_GT_CACHE_VERSION, split, tuple(settings))).encode())
    for path in paths:
        key.update(path.read_bytes())
    cached = cache_root() / "widerface_gt" / f"{key.hexdigest()}.npz"
    try:
        with np.load(cached, allow_pickle=False) as z:
            return WiderFaceGT(events=z["events"].tolist(), names=z["names"].tolist(), boxes=z["boxes"],
                               offsets=z["offsets"], keep={s: z[f"keep_{s}"] for s in settings})
    except (OSError, KeyError, ValueError) as e:
        if not isinstance(e, FileNotFoundError):
            logger.debug("WIDER Face ground-truth cache %s not used: %s", cached, e)
    gt = _parse_widerface_gt(gt_dir, face_path, split, settings)
    try:
        with atomic_path(cached) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, events=np.array(gt.events), names=np.array(gt.names), boxes=gt.boxes,
                         offsets=gt.offsets, **{f"keep_{s}": gt.keep[s] for s in settings})
    except OSError as e:
        logger.debug("WIDER Face ground-truth cache %s not written: %s", cached, e)
    return gt


def _parse_widerface_gt(gt_dir: Path, face_path: Path, split: str, settings: Sequence[str]) -> WiderFaceGT:
    face = read_mat(str(face_path), ("event_list", "file_list", "face_bbx_list"))
    for key in ("event_list", "file_list", "face_bbx_list"):
        if key not in face:
            raise ValueError(f"{face_path}: no variable {key!r} (is this wider_face_{split}.mat?)")
    events, names, boxes, counts = [], [], [], []
    for i in range(len(face["event_list"])):
        event = _mat_str(face["event_list"][i])
        files = face["file_list"][i][0]
        bbx = face["face_bbx_list"][i][0]
        for j in range(len(files)):
            b = np.asarray(bbx[j][0], dtype=np.float64).reshape(-1, 4)
            events.append(event)
            names.append(_mat_str(files[j]))
            boxes.append(b)
            counts.append(len(b))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    all_boxes = np.concatenate(boxes) if boxes else np.zeros((0, 4))

    keep = {}
    for setting in settings:
        path = gt_dir / f"wider_{setting}_{split}.mat"
        if not path.is_file():
            raise FileNotFoundError(f"WIDER Face {setting} ground truth {path} not found")
        sub = read_mat(str(path), ("gt_list", "file_list"))
        if "gt_list" not in sub:
            raise ValueError(f"{path}: no variable 'gt_list' (is this wider_{setting}_{split}.mat?)")
        mask = np.zeros(len(all_boxes), dtype=bool)
        img = 0
        for i in range(len(sub["gt_list"])):
            lists = sub["gt_list"][i][0]
            files = sub["file_list"][i][0] if "file_list" in sub else None
            for j in range(len(lists)):
                if img >= len(names):
                    raise ValueError(f"{path}: more images than {face_path.name} ({len(names)})")
                if files is not None and _mat_str(files[j]) != names[img]:
                    raise ValueError(f"{path}: image {img} is {_mat_str(files[j])!r}, "
                                     f"{face_path.name} has {names[img]!r}")
                # uint8/uint16 in the files: widen before subtracting 1
                idx = np.asarray(lists[j][0], dtype=np.int64).ravel() - 1
                n = counts[img]
                if idx.size and (idx.min() < 0 or idx.max() >= n):
                    raise ValueError(f"{path}: {events[img]}/{names[img]}: face index "
                                     f"{int(idx.max()) + 1 if idx.max() >= n else int(idx.min()) + 1}"
                                     f" out of range 1..{n}")
                mask[offsets[img] + idx] = True
                img += 1
        if img != len(names):
            raise ValueError(f"{path}: {img} images, {face_path.name} has {len(names)}")
        keep[setting] = mask
    return WiderFaceGT(events=events, names=names, boxes=all_boxes, offsets=offsets, keep=keep)


# ---------------------------------------------------------------------------------------------
# Prediction files: <event>/<image>.txt = image name, count, then "x y w h score" per line
# ---------------------------------------------------------------------------------------------
class PredictionFileError(ValueError):
    """A prediction file that cannot be used (unreadable, not UTF-8, malformed); the message is one
    line naming the file and, where there is one, the line."""


# Largest |value| accepted for a box coordinate or a score. No detector writes pixel coordinates
# or scores near it, and beyond it the protocol's arithmetic breaks: inclusive areas and the score
# range (max - min) of the normalisation overflow to inf, so AP would come from NaNs.
MAX_ABS_VALUE = 1e9


@dataclass
class PredictionReadReport:
    """What :func:`read_widerface_predictions` found: files read, missing (counted as no
    detections), files for images the ground truth does not list (not used), and box lines
    skipped for a non-finite or out-of-range number (``"<file>:<line>: why"``, not evaluated)."""

    num_read: int = 0
    num_boxes: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"read {self.num_read} prediction files ({self.num_boxes} boxes)"
        if self.missing:
            s += (f"; {len(self.missing)} missing (counted as no detections): "
                  + ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else ""))
        if self.unexpected:
            s += f"; {len(self.unexpected)} files for images not in the ground truth (ignored)"
        if self.skipped:
            s += (f"; {len(self.skipped)} box lines skipped for non-finite or out-of-range "
                  f"numbers (first: {self.skipped[0]})")
        return s


def _read_text(path: str) -> str:
    """The file as text; one-line :class:`PredictionFileError` for a folder, a symlink loop, an
    unreadable file or bytes that are not UTF-8 (a UTF-8 byte-order mark is accepted)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise PredictionFileError(f"{path}: is a folder, expected a prediction file") from None
    except OSError as e:
        why = "a symlink loop" if e.errno == errno.ELOOP else (e.strerror or type(e).__name__)
        raise PredictionFileError(f"{path}: cannot be read ({why})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise PredictionFileError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at "
                                  f"offset {e.start})") from None


def _parse_prediction_text(path: str, text: str) -> Tuple[str, List[int], List[str]]:
    """Structure of one file: (name line, line number of each box row, the 5 tokens of each row
    flattened). Blank lines and surrounding spaces are ignored."""
    lines = [(i, s) for i, s in enumerate((ln.strip() for ln in text.split("\n")), 1) if s]
    if not lines:
        raise PredictionFileError(f"{path}: empty file, expected an image name line and a count line")
    name = lines[0][1]
    if len(lines) < 2:
        raise PredictionFileError(f"{path}:{lines[0][0]}: expected a count line after the image name")
    lineno, text = lines[1]
    try:
        count = int(text)
        if count < 0:
            raise ValueError
    except ValueError:
        raise PredictionFileError(f"{path}:{lineno}: expected the number of boxes (an integer >= 0), "
                                  f"got {text!r}") from None
    rows = lines[2:]
    if count != len(rows):
        raise PredictionFileError(f"{path}:{lineno}: count line says {count} boxes, the file has {len(rows)}")
    tokens: List[str] = []
    for lineno, text in rows:
        t = text.split()
        if len(t) != 5:
            raise PredictionFileError(f"{path}:{lineno}: expected 5 numbers 'x y w h score', got {len(t)}")
        tokens += t
    return name, [ln for ln, _ in rows], tokens


def _to_boxes(path: str, linenos: List[int], tokens: List[str]) -> np.ndarray:
    try:  # one conversion for the whole file; on failure, find the line to name
        return np.array(tokens, dtype=np.float64).reshape(-1, 5)
    except ValueError:
        for k, lineno in enumerate(linenos):
            row = tokens[5 * k:5 * k + 5]
            try:
                [float(v) for v in row]
            except ValueError:
                raise PredictionFileError(f"{path}:{lineno}: expected 5 numbers 'x y w h score', "
                                          f"got {' '.join(row)!r}") from None
        raise


def _bad_rows(boxes: np.ndarray) -> np.ndarray:
    """Rows holding a non-finite value or one beyond ``MAX_ABS_VALUE``."""
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(~(np.abs(boxes) <= MAX_ABS_VALUE).all(axis=1))


def _describe_bad_row(row: np.ndarray) -> str:
    names = ("x", "y", "w", "h", "score")
    k = int(np.flatnonzero(~(np.abs(row) <= MAX_ABS_VALUE))[0])
    kind = "is not finite" if not np.isfinite(row[k]) else f"is beyond +-{MAX_ABS_VALUE:g}"
    return f"{names[k]} {row[k]!r} {kind}"


def read_prediction_file(path: str, skipped: Optional[List[str]] = None) -> Tuple[str, np.ndarray]:
    """One ``<image>.txt``: returns (name line, (P, 5) float64 ``x y w h score``).

    Blank lines and trailing spaces are ignored. Raises :class:`PredictionFileError` (a
    ``ValueError``) naming file and line on a bad count, a box line without 5 numbers, a file that
    is a folder / a symlink loop / not UTF-8. A box line with a non-finite number or one beyond
    ``MAX_ABS_VALUE`` (a score of 1e308 would make the score normalisation NaN) is an error too,
    unless a ``skipped`` list is given: then the line is left out and ``"<path>:<line>: why"`` is
    appended to it.
    """
    name, linenos, tokens = _parse_prediction_text(path, _read_text(path))
    boxes = _to_boxes(path, linenos, tokens)
    bad = _bad_rows(boxes)
    if bad.size:
        messages = [f"{path}:{linenos[i]}: {_describe_bad_row(boxes[i])}" for i in bad]
        if skipped is None:
            raise PredictionFileError(messages[0])
        skipped.extend(messages)
        boxes = np.delete(boxes, bad, axis=0)
    return name, boxes


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_BULK_BYTES = 1 << 21  # files are parsed in groups of about this much text (bounds the memory)


def _cumcount(mask: np.ndarray) -> np.ndarray:
    """Inclusive running count of ``mask`` (int32; the groups are < 2**31 bytes)."""
    return np.cumsum(mask, dtype=np.int32)


def _parse_numbers(text: str, n_tokens: int) -> Optional[np.ndarray]:
    """The ``n_tokens`` whitespace-separated numbers of ``text`` as float64 (C ``strtod``, as
    float() rounds); None when a token is not a number (the parser stops there: fewer values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy < 2: a partial read warns
        try:
            values = np.fromstring(text, dtype=np.float64, sep=" ")
        except ValueError:  # numpy >= 2: a partial read raises
            return None
    return values if values.size == n_tokens else None


def _parse_bulk(bodies: List[str], counts: List[int]) -> Optional[np.ndarray]:
    """The box rows of many files at once: ``bodies`` are the files' text after the count line.
    Returns the (sum(counts), 5) array when every non-blank line holds 5 tokens, each file has its
    count of rows and every token is a number; None otherwise (the caller then reads file by file
    to name the problem). One tokenising pass in NumPy over all bytes and one ``np.fromstring``
    instead of a Python split and float() per line and a NumPy call per file."""
    if not bodies:
        return np.zeros((0, 5))
    text = "\n".join(bodies)
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros((0, 5)) if sum(counts) == 0 else None
    is_ws = _WHITESPACE[raw]
    starts = ~is_ws
    starts[1:] &= is_ws[:-1]  # first byte of each token
    line_of_byte = _cumcount(raw == 10)
    n_lines = int(line_of_byte[-1]) + 1
    tokens_per_line = np.bincount(line_of_byte[starts], minlength=n_lines)
    used = tokens_per_line > 0
    if not (tokens_per_line[used] == 5).all():
        return None
    lines_per_body = np.array([b.count("\n") + 1 for b in bodies])
    file_of_line = np.repeat(np.arange(len(bodies)), lines_per_body)
    rows = np.bincount(file_of_line[used], minlength=len(bodies))
    if not np.array_equal(rows, counts):
        return None
    values = _parse_numbers(text, int(starts.sum()))
    return None if values is None else values.reshape(-1, 5)


def _read_many(files: Sequence[Tuple[str, str]], skipped: List[str]):
    """Yield (name, boxes) for [(name, path)]: files with a plain layout (name line, count line,
    then rows) are parsed in groups by :func:`_parse_bulk`, the rest (blank lines before the
    count, a problem to report, bad values to skip) one by one by :func:`read_prediction_file`."""
    group: List[Tuple[int, str, int]] = []  # (index in files, body, count)
    size = 0
    done: Dict[int, np.ndarray] = {}

    def flush():
        boxes = _parse_bulk([g[1] for g in group], [g[2] for g in group])
        if boxes is None:  # some file needs the line-by-line reader to name its problem
            return
        counts = [g[2] for g in group]
        parts = np.split(boxes, np.cumsum(counts)[:-1])
        bad = _bad_rows(boxes)
        bad_files = set()
        if bad.size:  # files with rows to skip: the line-by-line reader names the lines
            bad_files = set(np.repeat(np.arange(len(group)), counts)[bad].tolist())
        for j, (k, _, _) in enumerate(group):
            if j not in bad_files:
                done[k] = parts[j]

    for k, (name, path) in enumerate(files):
        text = _read_text(path)
        head = text.split("\n", 2)
        try:
            if len(head) < 2 or not head[0].strip():
                raise ValueError
            count = int(head[1])
            if count < 0:
                raise ValueError
        except ValueError:
            continue  # read line by line below
        body = head[2] if len(head) == 3 else ""
        group.append((k, body, count))
        size += len(body)
        if size >= _BULK_BYTES:
            flush()
            group, size = [], 0
    if group:
        flush()
    for k, (name, path) in enumerate(files):
        boxes = done.pop(k, None)
        yield name, boxes if boxes is not None else read_prediction_file(path, skipped=skipped)[1]


def read_widerface_predictions(pred_dir: str, gt: Optional[WiderFaceGT] = None
                               ) -> Tuple[Dict[str, np.ndarray], PredictionReadReport]:
    """Read a prediction folder in the official layout ``<event>/<image>.txt``.

    With ``gt``, exactly the files its images need are read; missing ones are reported (and count
    as no detections), other ``.txt`` files are reported as unexpected. Without ``gt``, every
    ``*/*.txt`` file is read. Box lines with non-finite or out-of-range numbers are left out and
    listed in ``report.skipped`` (file and line); any other problem raises
    :class:`PredictionFileError` naming the file. Returns ({image name: (P, 5) array}, report).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction folder {pred_dir} does not exist")
    report = PredictionReadReport()
    preds: Dict[str, np.ndarray] = {}
    found = {}
    for event in sorted(os.scandir(pred_dir), key=lambda e: e.name):
        try:
            if not event.is_dir():
                continue
            entries = sorted(os.scandir(event.path), key=lambda e: e.name)
        except OSError as e:  # a symlink loop or an unreadable folder
            raise PredictionFileError(f"{event.path}: cannot be read "
                                      f"({'a symlink loop' if e.errno == errno.ELOOP else e.strerror})") from None
        for entry in entries:
            if entry.name.endswith(".txt"):
                found[f"{event.name}/{entry.name}"] = entry.path
    if gt is None:
        wanted = [(rel, rel.rsplit("/", 1)[1][:-4]) for rel in found]
    else:
        wanted = [(f"{e}/{n}.txt", n) for e, n in zip(gt.events, gt.names)]
        expected = {rel for rel, _ in wanted}
        report.unexpected = sorted(set(found) - expected)
    files = []
    for rel, name in wanted:
        path = found.get(rel)
        if path is None:
            report.missing.append(rel)
        else:
            files.append((name, path))
    for name, boxes in _read_many(files, report.skipped):
        preds[name] = boxes
        report.num_read += 1
        report.num_boxes += len(boxes)
    if report.missing:
        logger.warning("%s: %d prediction files missing, counted as no detections (first: %s)",
                       pred_dir, len(report.missing), report.missing[0])
    if report.skipped:
        logger.warning("%s: %d box lines skipped for non-finite or out-of-range numbers (first: %s)",
                       pred_dir, len(report.skipped), report.skipped[0])
    return preds, report


def _fmt(v: float) -> str:
    v = float(v)
    return repr(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def write_widerface_predictions(pred_dir: str, predictions: Mapping[str, np.ndarray],
                                events: Mapping[str, str]) -> int:
    """Write ``{image name: (P, 5) x y w h score}`` as ``pred_dir/<event>/<image>.txt``.

    ``events`` maps each image name to its event folder. Numbers are written with Python's
    shortest round-trip ``repr``; each file is written to a temp file and ``os.replace``-d.
    Returns the number of files written.
    """
    n = 0
    for name, boxes in predictions.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        path = os.path.join(pred_dir, events[name], f"{name}.txt")
        lines = [name, str(len(boxes))] + [" ".join(_fmt(v) for v in row) for row in boxes]
        atomic_write_text(path, "\n".join(lines) + "\n")
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------------------------
def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """``(s - min) / (max - min)`` over all scores, min starting at 1 and max at 0 (the toolkit's
    Python port). If every score is the same (``max == min``, where the toolkit divides by zero),
    all become 1.0: one operating point, and a warning is logged."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores.copy()
    lo = min(1.0, float(scores.min()))
    hi = max(0.0, float(scores.max()))
    diff = hi - lo
    if diff <= 0:
        logger.warning("WIDER Face: all %d scores equal %g; every prediction gets score 1",
                       scores.size, hi)
        return np.ones_like(scores)
    return (scores - lo) / diff


def _thresholds(num_thresholds: int) -> np.ndarray:
    """(T,) t_k = 1 - k/T for k = 1..T, computed as the toolkit does (descending)."""
    return np.array([1 - (k + 1) / num_thresholds for k in range(num_thresholds)], dtype=np.float64)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC area under the PR curve: precision made non-increasing from the right, summed over
    the recall steps (``recall`` ascending, both (T,))."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _flatten_predictions(gt: WiderFaceGT, predictions: Mapping[str, np.ndarray]):
    """Concatenate per-image predictions in gt order, each image sorted by descending raw score
    (stable). Returns (boxes (P, 4), raw scores (P,), image index (P,))."""
    arrays, img_ids = [], []
    for i, name in enumerate(gt.names):
        p = predictions.get(name)
        if p is None:
            continue
        if not (isinstance(p, np.ndarray) and p.dtype == np.float64 and p.ndim == 2 and p.shape[1] == 5):
            p = np.asarray(p, dtype=np.float64).reshape(-1, 5)
        arrays.append(p)
        img_ids.append(i)
    if not arrays:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    p = np.concatenate(arrays)
    img = np.repeat(np.asarray(img_ids, dtype=np.int64), [len(a) for a in arrays])
    bad = _bad_rows(p)
    if bad.size:  # the file reader skips such rows; in-memory predictions must not hold them
        raise ValueError(f"WIDER Face predictions of image {gt.names[img[bad[0]]]!r}: "
                         f"{_describe_bad_row(p[bad[0]])}")
    order = np.lexsort((-p[:, 4], img))  # lexsort is stable: ties keep the file order
    return p[order, :4], p[order, 4], img[order]


def _candidate_ranges(pred_boxes: np.ndarray, pred_img: np.ndarray, gt: WiderFaceGT,
                      iou_thresh: float):
    """Per prediction, a range ``[start, end)`` into ``order`` (faces sorted by image, then by
    x centre) holding every face it could match.

    Pruning is exact for ``iou_thresh >= 0.5``: IoU >= t needs an inclusive intersection width
    ``iw >= t * W_gt`` (from ``(1 + t) iw ih >= t (W_p H_p + W_g H_g)`` and ``ih <= H_g``), and
    for t >= 1/2 that puts the face's x centre ``(x1 + x2 + 1) / 2`` inside the prediction's
    ``[x1, x2 + 1]`` (widened by 1 px against rounding). Below 0.5 every face of the image is a
    candidate. Returns (order (G,), start (P,), end (P,)).
    """
    n_img = gt.num_images
    gt_img = np.repeat(np.arange(n_img), np.diff(gt.offsets))
    if iou_thresh < 0.5:
        return np.arange(len(gt.boxes)), gt.offsets[pred_img], gt.offsets[pred_img + 1]
    g = gt.boxes
    g_cx = g[:, 0] + (g[:, 2] + 1) / 2  # x1 + (x2 - x1 + 1) / 2, x2 = x + w
    lo = pred_boxes[:, 0] - 1.0
    hi = pred_boxes[:, 0] + pred_boxes[:, 2] + 2.0
    lo = np.minimum(lo, hi)  # degenerate predictions: an empty (or tiny) window
    vmin = min(g_cx.min(initial=0.0), lo.min(initial=0.0))
    span = max(g_cx.max(initial=0.0), hi.max(initial=0.0)) - vmin + 1.0
    # one sorted key over all images: image index * span + shifted centre
    g_key = gt_img * span + (g_cx - vmin)
    order = np.lexsort((g_cx, gt_img))
    sorted_key = g_key[order]
    base = pred_img * span - vmin
    start = np.searchsorted(sorted_key, base + lo, side="left")
    end = np.searchsorted(sorted_key, base + hi, side="right")
    return order, start, np.maximum(end, start)


def _match_predictions(pred_boxes: np.ndarray, pred_img: np.ndarray, gt: WiderFaceGT,
                       iou_thresh: float) -> np.ndarray:
    """For each prediction (sorted by image), the global index of the face it matches
    (best IoU >= ``iou_thresh``, lowest face index on ties, as MATLAB's ``max``) or -1.

    Toolkit IoU: ``x2 = x + w``, pixel-inclusive areas and intersection (+1), 0 when the
    intersection width or height is <= 0. Computed over (prediction, candidate face) pairs in
    chunks of at most ``_PAIR_CHUNK`` pairs; see :func:`_candidate_ranges` for the pruning.
    """
    P = len(pred_boxes)
    match = np.full(P, -1, dtype=np.int64)
    if P == 0 or len(gt.boxes) == 0:
        return match
    order, cand_start, cand_end = _candidate_ranges(pred_boxes, pred_img, gt, iou_thresh)
    n_cand = cand_end - cand_start
    cum_pairs = np.concatenate([[0], np.cumsum(n_cand)])
    px1, py1 = pred_boxes[:, 0], pred_boxes[:, 1]
    px2, py2 = px1 + pred_boxes[:, 2], py1 + pred_boxes[:, 3]
    p_area = (px2 - px1 + 1) * (py2 - py1 + 1)
    gx1, gy1 = gt.boxes[order, 0], gt.boxes[order, 1]
    gx2, gy2 = gx1 + gt.boxes[order, 2], gy1 + gt.boxes[order, 3]
    g_area = (gx2 - gx1 + 1) * (gy2 - gy1 + 1)
    big = np.iinfo(np.int64).max
    start = 0
    while start < P:  # chunks of predictions holding at most _PAIR_CHUNK pairs (>= 1 prediction)
        stop = int(np.searchsorted(cum_pairs, cum_pairs[start] + _PAIR_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), P)
        sel = np.arange(start, stop)
        sel = sel[n_cand[sel] > 0]
        start = stop
        if sel.size == 0:
            continue
        counts = n_cand[sel]
        seg_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pp = np.repeat(sel, counts)  # (K,) prediction of each pair
        gg = np.arange(counts.sum()) - np.repeat(seg_start - cand_start[sel], counts)  # sorted face
        iw = np.minimum(px2[pp], gx2[gg]) - np.maximum(px1[pp], gx1[gg]) + 1
        ih = np.minimum(py2[pp], gy2[gg]) - np.maximum(py1[pp], gy1[gg]) + 1
        ok = (iw > 0) & (ih > 0)
        inter = iw * ih
        ua = p_area[pp] + g_area[gg] - inter
        iou = np.zeros(len(pp))
        iou[ok] = inter[ok] / ua[ok]
        best = np.maximum.reduceat(iou, seg_start)  # (S,) best IoU per prediction
        is_best = iou == np.repeat(best, counts)
        first = np.minimum.reduceat(np.where(is_best, order[gg], big), seg_start)
        hit = best >= iou_thresh
        match[sel[hit]] = first[hit]
    return match


def evaluate_widerface(predictions: Mapping[str, np.ndarray], gt: WiderFaceGT,
                       iou_thresh: float = IOU_THRESH, num_thresholds: int = NUM_THRESHOLDS,
                       settings: Optional[Sequence[str]] = None) -> Dict[str, Dict]:
    """The WIDER Face protocol on ``{image name: (P, 5) x y w h score}`` (missing images = no
    detections; names not in ``gt`` are not used and do not enter the score normalisation).

    Returns ``{setting: {"ap": float, "precision": (T,), "recall": (T,), "thresholds": (T,),
    "num_faces": int}}``; index k of the arrays is threshold ``t_{k+1} = 1 - (k+1)/T``.
    ``ap`` is NaN for a setting without faces.
    """
    settings = list(settings) if settings is not None else gt.settings
    boxes, raw, img = _flatten_predictions(gt, predictions)
    scores = normalize_scores(raw)
    # the toolkit skips images without faces entirely: their predictions are not proposals
    used = np.diff(gt.offsets)[img] > 0
    match = _match_predictions(boxes, img, gt, iou_thresh)

    thresholds = _thresholds(num_thresholds)
    # index k (0-based) of the first (highest) threshold each prediction passes; T = none
    passed = np.searchsorted(thresholds[::-1], scores, side="right")  # thresholds <= score
    first_k = num_thresholds - passed

    results = {}
    for setting in settings:
        keep = gt.keep[setting]
        matched = match >= 0
        on_ignore = matched & ~keep[np.where(matched, match, 0)]
        proposal = used & ~on_ignore
        recalls = matched & ~on_ignore  # on a setting face; only its first hit recalls it
        hit_pos = np.flatnonzero(recalls)
        _, first_idx = np.unique(match[hit_pos], return_index=True)
        is_first = np.zeros(len(match), dtype=bool)
        is_first[hit_pos[first_idx]] = True
        # proposals / recalled faces with score >= t_k, summed over images
        n_prop = np.cumsum(np.bincount(first_k[proposal], minlength=num_thresholds + 1))[:num_thresholds]
        n_rec = np.cumsum(np.bincount(first_k[is_first], minlength=num_thresholds + 1))[:num_thresholds]
        num_faces = gt.num_faces(setting)
        n_prop = n_prop.astype(np.float64)
        n_rec = n_rec.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(n_prop > 0, n_rec / n_prop, 0.0)
            recall = n_rec / num_faces if num_faces else np.zeros(num_thresholds)
        ap = voc_ap(recall, precision) if num_faces else float("nan")
        results[setting] = {"ap": ap, "precision": precision, "recall": recall,
                            "thresholds": thresholds, "num_faces": num_faces}
    return results


def plot_widerface_pr(results: Mapping[str, Mapping], path: str, title: str = "WIDER Face val") -> None:
    """Precision-recall curves of every setting in one PNG (matplotlib Agg), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for setting, r in results.items():
        defined = (r["recall"] > 0) | (r["precision"] > 0)  # no proposal yet: no point
        ax.plot(r["recall"][defined], r["precision"][defined], lw=1.8,
                label=f"{setting} (AP {r['ap']:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
