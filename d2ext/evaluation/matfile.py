"""A minimal reader of MATLAB 5 ``.mat`` files: numeric, logical, char and cell arrays.

Why not ``scipy.io.loadmat``: importing ``scipy.io`` (it pulls in ``scipy.sparse``) takes 0.3-0.6 s,
more than the whole WIDER Face evaluation, and loadmat decodes every variable of a file. The
official WIDER ground truth is four small MATLAB 5 files of cell arrays of char and double
matrices; this reader decodes exactly those element types (``tests/test_widerface_eval.py`` checks
it against loadmat on the real files) and skips unwanted variables without decompressing them.
Anything else (structs, sparse, objects, v7.3 HDF5 files) raises ``ValueError`` naming the file.

Format: MATLAB 5.0 MAT-file reference (MathWorks, "MAT-File Format", 2021), chapter 1.
"""
import struct
import zlib
from typing import Dict, Iterable, Optional

import numpy as np

__all__ = ["read_mat"]

# data element types (miXXX) -> numpy dtype
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
              16: "u1", 17: "u2", 18: "u4"}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
# array classes (mxXXX_CLASS) of numeric arrays -> numpy dtype of the result
_MX_NUMERIC = {6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8"}
_MX_CELL, _MX_CHAR = 1, 4
_MX_LOGICAL_FLAG = 0x0200
_MX_COMPLEX_FLAG = 0x0800


class _Reader:
    def __init__(self, buf: bytes, order: str, path: str):
        self.buf, self.order, self.path = buf, order, path
        self._ii = struct.Struct(order + "II")

    def tag(self, pos: int):
        """(type, nbytes, data start, next element position) of the element at ``pos``."""
        first, second = self._ii.unpack_from(self.buf, pos)
        if first >> 16:  # small data element: type and size packed into 4 bytes, data in the next 4
            return first & 0xFFFF, first >> 16, pos + 4, pos + 8
        end = pos + 8 + second
        return first, second, pos + 8, end if first == _MI_COMPRESSED else end + (-end % 8)

    def data(self, pos: int):
        """(ndarray of the element at ``pos``, next element position)."""
        mi, n, start, nxt = self.tag(pos)
        if mi not in _MI_DTYPES:
            raise ValueError(f"{self.path}: unsupported MAT data type {mi}")
        dt = np.dtype(_MI_DTYPES[mi]).newbyteorder(self.order)
        return np.frombuffer(self.buf, dtype=dt, count=n // dt.itemsize, offset=start), nxt

    def matrix(self, start: int, end: int):
        """Decode one miMATRIX body ``buf[start:end]`` -> (name, value). Per-element Python work
        is kept to struct unpacking: the WIDER files hold ~20,000 small matrices."""
        if start == end:  # an empty element stands for an empty array
            return "", np.zeros((0, 0))
        buf, order = self.buf, self.order
        _, _, fstart, pos = self.tag(start)  # array flags (miUINT32 x 2)
        word = struct.unpack_from(order + "I", buf, fstart)[0]
        mx, is_logical, is_complex = word & 0xFF, word & _MX_LOGICAL_FLAG, word & _MX_COMPLEX_FLAG
        _, n, dstart, pos = self.tag(pos)  # dimensions (miINT32)
        dims = struct.unpack_from(f"{order}{n // 4}i", buf, dstart)
        _, n, nstart, pos = self.tag(pos)  # name (miINT8)
        name = buf[nstart:nstart + n].decode("ascii")
        if mx == _MX_CELL:
            count = 1
            for d in dims:
                count *= d
            out = np.empty(count, dtype=object)
            for k in range(count):
                _, n, s, pos = self.tag(pos)
                out[k] = self.matrix(s, s + n)[1]
            return name, out.reshape(dims, order="F")
        if mx == _MX_CHAR:
            mi, n, s, _ = self.tag(pos)
            codec = {2: "latin-1", 16: "utf-8", 4: "utf-16-le" if order == "<" else "utf-16-be",
                     17: "utf-16-le" if order == "<" else "utf-16-be"}.get(mi)
            if codec is None:
                chars, _ = self.data(pos)
                return name, "".join(map(chr, chars.tolist()))
            return name, buf[s:s + n].decode(codec)
        if mx in _MX_NUMERIC and not is_complex:
            real, _ = self.data(pos)
            value = real.astype(bool if is_logical else _MX_NUMERIC[mx]).reshape(dims, order="F")
            return name, value
        raise ValueError(f"{self.path}: variable {name!r}: unsupported MAT array class {mx}"
                         f"{' (complex)' if is_complex else ''}; only numeric, char and cell arrays are read")


def read_mat(path: str, variable_names: Optional[Iterable[str]] = None) -> Dict[str, object]:
    """Variables of a MATLAB 5 ``.mat`` file (all, or ``variable_names``): cell arrays as object
    arrays of their MATLAB shape, char arrays as ``str``, numeric / logical arrays as ndarrays of
    their MATLAB shape and class. Raises ``ValueError`` naming the file for anything else."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 128:
        raise ValueError(f"{path}: too short for a MAT-file ({len(buf)} bytes)")
    if buf[:19] == b"MATLAB 7.3 MAT-file" or buf[:8] == b"\x89HDF\r\n\x1a\n":
        raise ValueError(f"{path}: a MATLAB 7.3 (HDF5) file; save it with -v7 or -v6")
    order = {b"IM": "<", b"MI": ">"}.get(buf[126:128])
    if order is None or not buf.startswith(b"MATLAB 5.0 MAT-file"):
        raise ValueError(f"{path}: not a MATLAB 5 MAT-file")
    wanted = set(variable_names) if variable_names is not None else None
    out: Dict[str, object] = {}
    reader = _Reader(buf, order, path)
    pos = 128
    try:
        while pos + 8 <= len(buf) and (wanted is None or len(out) < len(wanted)):
            mi, n, start, nxt = reader.tag(pos)
            if mi == _MI_COMPRESSED:
                stream = buf[start:start + n]
                if wanted is not None:  # the name sits in the first bytes: peek before inflating
                    head = zlib.decompressobj().decompress(stream, 256)
                    if _peek_name(head, order) not in wanted:
                        pos = nxt
                        continue
                inner = _Reader(zlib.decompress(stream), order, path)
                mi2, n2, s2, _ = inner.tag(0)
                if mi2 == _MI_MATRIX:
                    name, value = inner.matrix(s2, s2 + n2)
                    if wanted is None or name in wanted:
                        out[name] = value
            elif mi == _MI_MATRIX:
                name, value = reader.matrix(start, start + n)
                if wanted is None or name in wanted:
                    out[name] = value
            pos = nxt
    except (struct.error, zlib.error, IndexError) as e:
        raise ValueError(f"{path}: corrupt MAT-file ({type(e).__name__}: {e})") from None
    return out


def _peek_name(head: bytes, order: str) -> Optional[str]:
    """Name of the miMATRIX at the start of ``head`` (flags, dims, then the name element)."""
    r = _Reader(head, order, "")
    try:
        _, _, start, _ = r.tag(0)
        _, pos = r.data(start)  # flags
        _, pos = r.data(pos)  # dims
        name, _ = r.data(pos)
        return name.tobytes().decode("ascii")
    except (struct.error, ValueError):
        return None
