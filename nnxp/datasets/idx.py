"""Read and write IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number (two zero bytes, a dtype code, the number
of dimensions), one big-endian uint32 per dimension, then the values, row-major
and big-endian. Files may be gzip-compressed; the reader detects it by content.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from nnxp.errors import DatasetError, NnxpError, NnxpTypeError

# IDX dtype code -> big-endian NumPy dtype.
_CODES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Return the array stored in the IDX file at `path` (raw or gzip), in native byte order."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == _GZIP_MAGIC
        # Read everything rather than trusting the header's sizes, so a corrupt
        # header cannot make us allocate gigabytes; sizes are checked below.
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise DatasetError(f"IDX file not found: {path}") from err
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"Cannot read IDX file {path}: the file is truncated or corrupt ({err}).") from err

    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(
            f"{path} is not an IDX file: the magic number must start with two zero bytes. Received: {data[:4]!r}"
        )
    code, ndim = data[2], data[3]
    if code not in _CODES:
        known = ", ".join(f"0x{c:02X}" for c in _CODES)
        raise DatasetError(f"{path}: unknown IDX dtype code 0x{code:02X}; expected one of {known}.")
    if ndim == 0:
        raise DatasetError(f"{path}: an IDX file must have at least one dimension. Received: 0")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DatasetError(f"{path} is truncated: its header needs {offset} bytes, the file has {len(data)}.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DatasetError(
            f"{path} is truncated or corrupt: shape {shape} of {dtype.name} needs {expected} data bytes, "
            f"the file holds {len(data) - offset}."
        )
    # astype copies into a writable, native-endian array (frombuffer alone is read-only).
    return np.frombuffer(data, dtype=dtype, offset=offset).astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` to `path` as IDX; gzip-compressed when the name ends in ``.gz``."""
    array = np.asarray(array)
    by_kind = {dt.newbyteorder("="): code for code, dt in _CODES.items()}
    code = by_kind.get(array.dtype.newbyteorder("="))
    if code is None:
        names = ", ".join(sorted(dt.name for dt in by_kind))
        raise NnxpTypeError(f"`array` must have one of the IDX dtypes {names}. Received: dtype={array.dtype}")
    if array.ndim == 0 or array.ndim > 255 or any(d >= 2**32 for d in array.shape):
        raise NnxpError(f"`array` must have 1 to 255 dimensions, each below 2**32. Received: shape={array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # No name and mtime=0 keep the bytes (and so their checksum) reproducible.
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(header + payload)
    else:
        path.write_bytes(header + payload)
