"""Atomic file writes: write to a temp file in the destination folder, then ``os.replace``."""
import json
import os
import tempfile

import numpy as np
from PIL import Image

__all__ = ["atomic_write_json", "atomic_save_png"]


def _tmp_beside(path: str, suffix: str):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)


def atomic_write_json(obj, path: str, **kwargs) -> None:
    fd, tmp = _tmp_beside(path, ".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, **kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_png(rgb: np.ndarray, path: str) -> None:
    """Save an (H, W, 3) uint8 RGB or (H, W) array as PNG."""
    fd, tmp = _tmp_beside(path, ".png")
    os.close(fd)
    try:
        Image.fromarray(np.ascontiguousarray(rgb)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
