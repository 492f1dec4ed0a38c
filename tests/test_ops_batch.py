"""nnxp/ops/batch.py: a replayed step's gather and record, their references and their kernels on the CPU emulator.

The kernels' parity over many shapes and both dtypes is in tests/test_ops_cuda.py (PAIRS gather_rows/*,
record_step); here: the references against plain NumPy indexing, a whole epoch gathered batch by batch through
the device cursor as the replayed graph does it, and the inputs the kernels decline.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnxp.backend import to_numpy
from nnxp.ops import batch as B


def _epoch(n=23, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n).astype(np.int64)
    starts = np.arange(0, n, batch, dtype=np.int64)
    return rng, perm, starts


def test_gather_reference_is_indexing_by_the_epochs_order():
    rng, perm, starts = _epoch()
    x = rng.normal(size=(23, 4))
    out = np.empty((5, 4))
    for c in range(4):  # the full batches
        B.gather_rows_ref(x, perm, starts, np.array([c]), out)
        np.testing.assert_array_equal(out, x[perm[5 * c : 5 * c + 5]])
    table = rng.normal(size=(4, 8))
    row = np.empty((1, 8))
    B.gather_rows_ref(table, None, None, np.array([3]), row)
    np.testing.assert_array_equal(row[0], table[3])


def test_record_reference_writes_the_cursors_column_and_advances_it():
    record, cursor = np.zeros((3, 4)), np.array([2])
    B.record_step_ref(np.float32(1.5) * np.ones((), np.float32), np.array([7.0, 0.25]), record, cursor)
    np.testing.assert_array_equal(record[:, 2], [1.5, 7.0, 0.25])
    assert cursor[0] == 3 and not record[:, [0, 1, 3]].any()


@pytest.mark.parametrize("what", ["float32 rows", "float64 rows", "int64 labels", "float32 one-hot", "float32 weights"])
def test_gather_kernel_walks_an_epoch_through_the_cursor_as_the_reference(fake_cupy, what):
    rng, perm, starts = _epoch()
    src = {"float32 rows": rng.normal(size=(23, 7)).astype(np.float32),
           "float64 rows": rng.normal(size=(23, 3)),
           "int64 labels": rng.integers(0, 10, 23),
           "float32 one-hot": np.eye(4, dtype=np.float32)[rng.integers(0, 4, 23)],
           "float32 weights": rng.uniform(0.1, 2, 23).astype(np.float32)}[what]
    dev_src, dev_perm, dev_starts = (fake_cupy.asarray(a) for a in (src, perm, starts))
    cursor = fake_cupy.zeros(1, dtype=np.int64)
    out = fake_cupy.empty((5, *src.shape[1:]), dtype=src.dtype)
    for c in range(4):
        cursor[...] = c
        assert B.gather_rows.fused(dev_src, dev_perm, dev_starts, cursor, out) is out
        want = np.empty_like(to_numpy(out))
        B.gather_rows_ref(src, perm, starts, np.array([c]), want)
        np.testing.assert_array_equal(to_numpy(out), want)  # bit for bit: a copy
        np.testing.assert_array_equal(want, src[perm[5 * c : 5 * c + 5]])


def test_gather_kernel_leaves_rows_outside_the_source_untouched(fake_cupy):
    src = fake_cupy.asarray(np.arange(12, dtype=np.float32).reshape(6, 2))
    out = fake_cupy.asarray(np.full((3, 2), -1, dtype=np.float32))
    perm = fake_cupy.asarray(np.array([5, 9, 0], dtype=np.int64))  # 9 is past the source's 6 rows
    B.gather_rows.fused(src, perm, None, fake_cupy.zeros(1, dtype=np.int64), out)
    np.testing.assert_array_equal(to_numpy(out), [[10, 11], [-1, -1], [0, 1]])


def test_kernels_decline_what_they_cannot_take(fake_cupy):
    cursor = fake_cupy.zeros(1, dtype=np.int64)
    half = fake_cupy.zeros((4, 2), dtype=np.float16)  # 2-byte elements: the reference's
    assert B.gather_rows.fused(half, None, None, cursor, fake_cupy.zeros((1, 2), np.float16)) is NotImplemented
    x = fake_cupy.zeros((4, 6), dtype=np.float32)
    assert B.gather_rows.fused(x[:, ::2], None, None, cursor, fake_cupy.zeros((1, 3), np.float32)) is NotImplemented
    assert B.gather_rows.fused(x, None, None, cursor.astype(np.int32), x[:1]) is NotImplemented
    record = fake_cupy.zeros((2, 3))
    assert B.record_step.fused(x[0, 0], fake_cupy.zeros(2), record, cursor) is NotImplemented  # 2 sums, 1 row
    # and the dispatcher then runs the reference
    B.gather_rows(half, None, None, cursor, half[:1])


def test_record_kernel_without_metrics(fake_cupy):
    record, cursor = fake_cupy.zeros((1, 3)), fake_cupy.asarray(np.array([1], dtype=np.int64))
    loss = fake_cupy.asarray(np.array(0.75, dtype=np.float32))
    assert B.record_step.fused(loss, fake_cupy.zeros(0), record, cursor) is not NotImplemented
    np.testing.assert_array_equal(to_numpy(record), [[0, 0.75, 0]])
    assert int(cursor[0]) == 2
