"""IDX reader and writer: exact round trips, byte layout, and clear errors on damaged files."""

from __future__ import annotations

import numpy as np
import pytest

from nnxp.datasets import read_idx, write_idx
from nnxp.errors import DatasetError, NnxpError, NnxpTypeError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (0, 2)])
def test_round_trip_is_exact(tmp_path, dtype, name, shape):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    a = (rng.integers(info.min, info.max, shape, endpoint=True) if info else rng.normal(size=shape)).astype(dtype)
    write_idx(tmp_path / name, a)
    b = read_idx(tmp_path / name)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.shape == shape
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable


def test_byte_layout_is_big_endian(tmp_path):
    write_idx(tmp_path / "u8", np.array([1, 2, 3], np.uint8))
    assert (tmp_path / "u8").read_bytes() == b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03" + b"\x01\x02\x03"
    write_idx(tmp_path / "i4", np.array([[1, -2]], np.int32))
    expected = b"\x00\x00\x0c\x02" + b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x00\x00\x00\x01\xff\xff\xff\xfe"
    assert (tmp_path / "i4").read_bytes() == expected


def test_gzip_output_is_reproducible_and_detected_by_content(tmp_path):
    a = np.arange(100, dtype=np.uint8).reshape(10, 10)
    write_idx(tmp_path / "one.gz", a)
    write_idx(tmp_path / "two.gz", a)
    data = (tmp_path / "one.gz").read_bytes()
    assert data[:2] == b"\x1f\x8b" and data == (tmp_path / "two.gz").read_bytes()
    (tmp_path / "no-suffix").write_bytes(data)  # gzipped content under a plain name
    np.testing.assert_array_equal(read_idx(tmp_path / "no-suffix"), a)


def _idx_bytes(array: np.ndarray, tmp_path) -> bytes:
    write_idx(tmp_path / "tmp.idx", array)
    return (tmp_path / "tmp.idx").read_bytes()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x07" + b[3:], "dtype code 0x07"),
        (lambda b: b[:3] + b"\x00" + b[4:], "at least one dimension"),
        (lambda b: b[:6], "header needs 12 bytes"),
        (lambda b: b[:-1], "needs 24 data bytes, the file holds 23"),
        (lambda b: b + b"\x00", "the file holds 25"),
        (lambda b: b"", "magic"),
    ],
)
def test_damaged_raw_files_raise_naming_the_file(tmp_path, mangle, message):
    path = tmp_path / "broken-file.idx"
    path.write_bytes(mangle(_idx_bytes(np.zeros((2, 3), np.int32), tmp_path)))
    with pytest.raises(DatasetError, match=message) as info:
        read_idx(path)
    assert "broken-file.idx" in str(info.value)


def test_truncated_and_corrupt_gzip_raise_naming_the_file(tmp_path):
    write_idx(tmp_path / "full.gz", np.random.default_rng(1).integers(0, 255, (50, 28, 28), dtype=np.uint8))
    data = (tmp_path / "full.gz").read_bytes()
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    (tmp_path / "corrupt.gz").write_bytes(bytes(corrupt))
    for name in ("cut.gz", "corrupt.gz"):
        with pytest.raises(DatasetError, match="truncated or corrupt") as info:
            read_idx(tmp_path / name)
        assert name in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "nothing.idx")


def test_writer_rejects_what_idx_cannot_hold(tmp_path):
    with pytest.raises(NnxpTypeError, match="dtype=int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
    with pytest.raises(NnxpError, match=r"shape=\(\)"):
        write_idx(tmp_path / "x", np.uint8(3))
