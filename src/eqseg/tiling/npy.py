"""Growable .npy arrays: allocate for the most tiles possible, write memory-mapped, then shrink in place.

Rewriting the header and truncating the file avoids copying gigabytes when tiles are dropped (nodata, background).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def open_for_write(path: Path, shape: tuple[int, ...], dtype) -> np.memmap:
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)


def shrink(path: Path, n: int) -> None:
    """Keep the first n rows of a C-ordered .npy file: same header length, file truncated."""
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        data_offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: cannot shrink a Fortran-ordered array")
        if n > shape[0]:
            raise ValueError(f"{path}: cannot grow from {shape[0]} to {n} rows")
        new_shape = (n, *shape[1:])
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": new_shape})
        prefix = 6 + 2 + (2 if version == (1, 0) else 4)  # magic, version, header-length field
        room = data_offset - prefix
        header = header.ljust(room - 1) + "\n"
        if len(header) != room:
            raise ValueError(f"{path}: new header does not fit")
        f.seek(prefix)
        f.write(header.encode("latin1"))
        f.truncate(data_offset + n * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
