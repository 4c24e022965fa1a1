"""The light core every layer shares: atomic outputs, input/output guards, data roots, logging.

Imports only the standard library at module level (PIL, numpy and orjson are imported inside
the functions that need them), so converters, the WIDER evaluation protocol and every tool's
``--help`` can use it without paying for torch or Detectron2. Nothing here has side effects on
import.

Atomic outputs
--------------
Every file d2ext writes goes to a temp file beside the target and is ``os.replace``-d into
place: a killed run leaves the old file (or none), never a partial one, and no temp file is left
behind on failure. Files are created with mode ``0o666 & ~umask`` like ``open()`` does (not
``mkstemp``'s 0600), so outputs look like Detectron2's own.

- ``atomic_open(path, mode="w")``: context manager; the file appears on success only.
- ``atomic_path(path)``: context manager yielding a temp path for writers that take a file name.
- ``atomic_write_bytes(path, data)``, ``atomic_write_text(path, text)``,
  ``atomic_write_json(path, obj, indent=None)`` (refuses NaN/Infinity: not JSON),
  ``atomic_save_image(path, array_or_pil)`` (format from the suffix).
- ``atomic_dir(path)``: context manager yielding a fresh temp folder beside ``path``; on success
  it replaces ``path`` whole (the old folder stays untouched until then).
- ``OutputBatch``: several outputs committed together, only after all of them are ready.

Guards and paths
----------------
- ``check_outputs(inputs, outputs, tool)``: refuse an output that is an input, lies inside an input
  folder, contains an input, or equals another output (``UnsafeOutputError``).
- ``resolve_inside(root, relative)``: the path, or None when it leaves ``root``;
  ``is_inside(root, relative)``: the same test as a bool.
- ``data_root()``: ``$D2EXT_SHARED_DATA`` or ``<checkout>/../shared/data``;
  ``cache_root()``: ``$D2EXT_CACHE`` or ``~/.cache/d2ext``; ``repo_root()``.
- ``missing_data_message(what, folder)``: the one wording for "a built-in dataset is absent".

Logging
-------
``setup_logger(name="d2ext")``: Detectron2's logger format on stderr; uses Detectron2's own
``setup_logger`` when Detectron2 is already imported, else a plain handler with the same format
(so torch is not imported just to log).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys

# typing and pathlib stay off the start-up path of tools/convert.py (typing alone is ~3 ms of a
# ~0.3 s run): the annotations are never evaluated (``from __future__ import annotations``).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Iterable, List, Optional, Tuple, Union

    PathLike = Union[str, os.PathLike]

__all__ = [
    "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
    "atomic_save_image", "atomic_dir", "OutputBatch", "dumps_json",
    "UnsafeOutputError", "check_outputs", "resolve_inside", "is_inside",
    "repo_root", "data_root", "cache_root", "missing_data_message", "DATA_GUIDE",
    "setup_logger",
]

# README section that says where to get each dataset and how its folder must look.
DATA_GUIDE = "README.md, section 'Datasets: where to get them'"


# --------------------------------------------------------------------------------------------
# atomic outputs
# --------------------------------------------------------------------------------------------
def _temp_path(target: str, kind: str = "tmp") -> str:
    folder, base = os.path.split(target)
    return os.path.join(folder, f".{base}.{kind}-{os.urandom(4).hex()}")


def _open_new(tmp: str) -> int:
    """Create ``tmp`` exclusively with mode 0o666: the kernel applies the umask, as open() does."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666)


@contextlib.contextmanager
def atomic_path(path: PathLike):
    """Yield a temp file path beside ``path`` for writers that take a file name
    (``fig.savefig``, ``torch.save``, ``PIL.Image.save``); it is moved onto ``path`` when the block
    ends without an exception, removed otherwise. Parent folders are created."""
    target = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = _temp_path(target)
    os.close(_open_new(tmp))
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", **kwargs):
    """Open a temp file beside ``path`` for writing (:func:`atomic_path`); it replaces ``path``
    when the block ends without an exception and is removed otherwise."""
    if "r" in mode or "a" in mode or "+" in mode:
        raise ValueError(f"atomic_open writes whole files; mode {mode!r} is not supported")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def dumps_json(obj, indent: Optional[int] = None) -> bytes:
    """JSON bytes of ``obj``; NaN and Infinity are refused (``ValueError``), as they are not JSON.

    orjson (fast, exact float round trip) when installed and no ``indent`` other than 2 is asked
    for; it only writes NaN as ``null`` silently, so finiteness is checked first. Falls back to the
    standard library with ``allow_nan=False``.
    """
    if indent in (None, 2):
        try:
            import orjson
        except ImportError:
            orjson = None
        if orjson is not None:
            try:
                option = orjson.OPT_SERIALIZE_NUMPY | (orjson.OPT_INDENT_2 if indent else 0)
                out = orjson.dumps(obj, option=option)
            except TypeError:
                pass  # a type orjson does not know (e.g. a Path): let json report it
            else:
                if b"null" in out and _has_non_finite(obj):
                    raise ValueError("Out of range float values are not JSON compliant (NaN or Infinity)")
                return out
    separators = (",", ":") if indent is None else None
    return json.dumps(obj, indent=indent, allow_nan=False, separators=separators).encode("utf-8")


def _has_non_finite(obj) -> bool:
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, float):
            if x != x or x in (float("inf"), float("-inf")):
                return True
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif type(x).__module__ == "numpy":
            import numpy as np

            if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.isfinite(x).all():
                return True
    return False


def atomic_write_json(path: PathLike, obj, indent: Optional[int] = None) -> None:
    """Write ``obj`` as JSON (UTF-8) atomically. NaN/Infinity raise ``ValueError``."""
    atomic_write_bytes(path, dumps_json(obj, indent=indent))


def atomic_save_image(path: PathLike, image, format: Optional[str] = None) -> None:
    """Save an ``(H, W)`` / ``(H, W, 3)`` uint8 array (RGB) or a PIL image atomically; the format
    comes from ``path``'s suffix unless given."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        import numpy as np

        image = Image.fromarray(np.ascontiguousarray(image))
    fmt = format or Image.registered_extensions().get(os.path.splitext(os.fspath(path))[1].lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix; pass format=")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def _swap_in_dir(tmp: str, target: str) -> None:
    """Put folder ``tmp`` at ``target``, replacing a folder there. The old folder is renamed
    aside only once the new one is complete, and removed after the new one is in place."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise FileExistsError(f"{target}: exists and is not a folder")
    old = _temp_path(target, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: PathLike):
    """Yield a new empty temp folder beside ``path``; on success it replaces ``path`` whole
    (an existing folder there is removed only after the swap), on failure it is deleted and
    ``path`` is left as it was."""
    target = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = _temp_path(target, "new")
    os.mkdir(tmp)
    try:
        yield tmp
        _swap_in_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputBatch:
    """Several outputs committed together: each is written to a temp path beside its target,
    and all are moved into place only when the ``with`` block ends without an exception (else
    every temp is removed and no target is touched)::

        with OutputBatch() as out:
            out.write_json(coco_path, coco)
            out.write_json(report_path, report)   # a failure here leaves coco_path untouched
    """

    def __init__(self):
        self._pending: List[Tuple[str, str, bool]] = []  # (tmp, target, is_dir)

    def path(self, target: PathLike) -> str:
        """A temp file path to write the content of ``target`` to (any writer may use it)."""
        target = os.path.abspath(os.fspath(target))
        if any(t == target for _, t, _ in self._pending):
            raise ValueError(f"{target}: written twice in one batch")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = _temp_path(target)
        os.close(_open_new(tmp))
        self._pending.append((tmp, target, False))
        return tmp

    def dir(self, target: PathLike) -> str:
        """A new temp folder that replaces folder ``target`` whole on commit."""
        target = os.path.abspath(os.fspath(target))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = _temp_path(target, "new")
        os.mkdir(tmp)
        self._pending.append((tmp, target, True))
        return tmp

    def write_bytes(self, target: PathLike, data: bytes) -> None:
        with open(self.path(target), "wb") as f:
            f.write(data)

    def write_json(self, target: PathLike, obj, indent: Optional[int] = None) -> None:
        self.write_bytes(target, dumps_json(obj, indent=indent))

    def commit(self) -> None:
        for tmp, target, is_dir in self._pending:
            if is_dir:
                _swap_in_dir(tmp, target)
            else:
                os.replace(tmp, target)
        self._pending = []

    def discard(self) -> None:
        for tmp, _, is_dir in self._pending:
            if is_dir:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        self._pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


# --------------------------------------------------------------------------------------------
# input / output guards
# --------------------------------------------------------------------------------------------
class UnsafeOutputError(ValueError):
    """An output path that would overwrite or sit inside an input, or collide with another output."""


# Paths are compared as strings (realpath'd, normcase'd): pathlib costs ~10 ms of import, a tenth
# of a converter's start-up, and these checks run before every conversion.
def _real(p: PathLike) -> str:
    return os.path.normcase(os.path.realpath(os.fspath(p)))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent if parent.endswith(os.sep) else parent + os.sep)


def check_outputs(inputs: Iterable[Optional[PathLike]], outputs: Iterable[Optional[PathLike]],
                  tool: str = "d2ext") -> None:
    """Refuse outputs that would destroy inputs: an output that is an input file, lies inside an
    input folder, contains an input (a folder output replaced whole), or is given twice.
    Symlinks are resolved. ``None`` entries are ignored. Raises :class:`UnsafeOutputError` with one
    line naming both paths."""
    ins = [(os.fspath(p), _real(p)) for p in inputs if p is not None]
    outs = [(os.fspath(p), _real(p)) for p in outputs if p is not None]
    for i, (name, out) in enumerate(outs):
        for in_name, inp in ins:
            if out == inp:
                raise UnsafeOutputError(f"{tool}: output {name} is the input {in_name}; "
                                        "choose another output path")
        for in_name, inp in ins:
            if os.path.isdir(inp) and _inside(out, inp):
                raise UnsafeOutputError(f"{tool}: output {name} lies inside the input folder {in_name}")
            if _inside(inp, out):
                raise UnsafeOutputError(f"{tool}: output {name} contains the input {in_name}")
        for other_name, other in outs[:i]:
            if out == other:
                raise UnsafeOutputError(f"{tool}: {name} is given as two different outputs "
                                        f"(also {other_name})")


def is_inside(root: PathLike, relative: str) -> bool:
    """Whether ``root / relative`` stays inside ``root`` (after ``..`` and symlinks); absolute
    ``relative`` paths are refused (False)."""
    if not relative or os.path.isabs(relative) or relative.startswith(("/", "\\")) or (
            len(relative) > 1 and relative[1] == ":"):
        return False
    return _inside(_real(os.path.join(os.fspath(root), relative)), _real(root))


def resolve_inside(root: PathLike, relative: str) -> Optional[Path]:
    """``root / relative`` when it stays inside ``root`` (:func:`is_inside`), else None."""
    from pathlib import Path

    return Path(os.path.join(os.fspath(root), relative)) if is_inside(root, relative) else None


# --------------------------------------------------------------------------------------------
# roots
# --------------------------------------------------------------------------------------------
def repo_root() -> Path:
    """The checkout d2ext runs from (holds ``configs/`` and ``tools/``)."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Where the real datasets live: ``$D2EXT_SHARED_DATA``, else ``<checkout>/../shared/data``."""
    from pathlib import Path

    env = os.environ.get("D2EXT_SHARED_DATA")
    if env:
        return Path(env)
    return repo_root().parent / "shared" / "data"


def cache_root() -> Path:
    """Where derived files (rendered labels, synthetic datasets) are cached: ``$D2EXT_CACHE``,
    else ``~/.cache/d2ext``."""
    from pathlib import Path

    env = os.environ.get("D2EXT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "d2ext"


def missing_data_message(what: str, folder: PathLike) -> str:
    """One sentence for a built-in dataset that is not on disk: names the variable, the folder
    searched and the README section."""
    where = "$D2EXT_SHARED_DATA" if os.environ.get("D2EXT_SHARED_DATA") else \
        "$D2EXT_SHARED_DATA (unset, so the default ../shared/data beside the checkout)"
    return (f"{what} not found: looked in {folder} (from {where}); set D2EXT_SHARED_DATA to the "
            f"folder that holds it, see {DATA_GUIDE}")


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------
_FORMAT = "[%(asctime)s %(name)s]: %(message)s"


def setup_logger(name: str = "d2ext", level: int = logging.INFO) -> logging.Logger:
    """A logger that prints like Detectron2's. Uses ``detectron2.utils.logger.setup_logger``
    when Detectron2 is already loaded (colour, file output), else a plain stderr handler, so a
    light tool does not import Detectron2 (and torch) only to log."""
    if "detectron2" in sys.modules:
        from detectron2.utils.logger import setup_logger as d2_setup_logger

        return d2_setup_logger(name=name)
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    if not any(getattr(h, "_d2ext", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%m/%d %H:%M:%S"))
        handler._d2ext = True
        logger.addHandler(handler)
    return logger
