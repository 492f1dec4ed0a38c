"""A replayed training step's bookkeeping on the device: the batch gather and the step's record.

A captured CUDA graph (nnxp/_graph.py) replays the same launches every step, so what changes from one batch to
the next is read on the device from a step counter, `cursor` (a (1,) int64 device array: the batch's index in
its epoch), never from the host:

- :data:`gather_rows`: ``out[r] = src[perm[starts[cursor] + r]]``, the batch's rows in the epoch's order (also
  the row ``table[cursor]`` of the optimizer's per-step scalars, with ``perm`` and ``starts`` None);
- :data:`record_step`: the batch's loss and metric sums into column ``cursor`` of the epoch's record, then
  ``cursor += 1``.

Both references are generic over NumPy / CuPy and read the cursor on the device (no host read), so they too
could be captured; the kernels (kernels.cu) do each in one launch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import xp_of
from . import _cuda
from ._cuda import Op


def _first_row(xp: Any, starts: Any, cursor: Any) -> Any:
    """(1,) int64: where the batch's rows begin in `perm` (``starts[cursor]``, or the cursor itself)."""
    return cursor if starts is None else xp.take(starts, cursor)


def gather_rows_ref(src: Any, perm: Any, starts: Any, cursor: Any, out: Any) -> Any:
    """``out[r] = src[perm[starts[cursor] + r]]`` for every row r of `out` (``perm`` None: the identity;
    ``starts`` None: the rows begin at ``cursor`` itself). `cursor` is a (1,) int64 array; returns `out`."""
    xp = xp_of(src)
    index = _first_row(xp, starts, cursor) + xp.arange(out.shape[0], dtype=np.int64)
    if perm is not None:
        index = xp.take(perm, index)
    xp.take(src, index, axis=0, out=out)
    return out


def record_step_ref(loss: Any, sums: Any, record: Any, cursor: Any) -> tuple[Any, Any]:
    """``record[0, c] = loss``, ``record[1 + k, c] = sums[k]`` at ``c = cursor[0]``, then ``cursor += 1``.

    `loss`: a 0-d array (any float dtype); `sums`: (k,) float64; `record`: (1 + k, batches) float64."""
    xp = xp_of(record)
    column = xp.concatenate([loss.reshape(1).astype(np.float64), sums])
    record[:, cursor] = column[:, None]
    cursor += 1
    return record, cursor


gather_rows = Op(gather_rows_ref)
record_step = Op(record_step_ref)


# --- CUDA: one launch each (kernels.cu) ----------------------------------------------------------------------

# the kernel copies T elements bit for bit: other dtypes of the same width travel as a view
_AS = {4: np.dtype(np.float32), 8: np.dtype(np.float64)}


def _index_fits(a: Any, dev: int) -> bool:
    return a is None or (_cuda._fits(a, np.dtype(np.int64), a.shape, dev) and a.ndim == 1 and a.size > 0)


@gather_rows.override
def _gather_rows_cuda(src: Any, perm: Any, starts: Any, cursor: Any, out: Any) -> Any:
    """Fused :func:`gather_rows_ref`: one launch over the batch's elements; any 4- or 8-byte dtype (int64 labels
    are copied through a float64 view, bit for bit)."""
    dtype = _AS.get(src.dtype.itemsize)
    if (dtype is None or src.ndim == 0 or src.shape[0] == 0 or out.dtype != src.dtype
            or out.shape[1:] != src.shape[1:] or out.size == 0):
        return NotImplemented
    dev = src.device.id
    if not (_cuda._fits(src, src.dtype, src.shape, dev) and _cuda._fits(out, src.dtype, out.shape, dev)
            and _index_fits(perm, dev) and _index_fits(starts, dev)
            and _cuda._fits(cursor, np.dtype(np.int64), (1,), dev)):
        return NotImplemented
    cols = src.size // src.shape[0]
    rows = out.shape[0]
    args = (src.view(dtype), out.view(dtype), perm, starts, cursor, np.int64(rows), np.int64(cols),
            np.int64(src.shape[0]))
    _cuda._launch("nnxp_gather_rows", dtype, dev, (_cuda._grid(rows * cols, dev),), (_cuda._BLOCK,), args)
    return out


@record_step.override
def _record_step_cuda(loss: Any, sums: Any, record: Any, cursor: Any) -> Any:
    """Fused :func:`record_step_ref`: one single-thread launch (a handful of values)."""
    dtype = _cuda._dtype_of(loss)
    f64 = np.dtype(np.float64)
    if dtype is None or loss.shape != () or record.ndim != 2 or record.shape[1] == 0:
        return NotImplemented
    dev = loss.device.id
    if not (_cuda._fits(sums, f64, (record.shape[0] - 1,), dev) and _cuda._fits(record, f64, record.shape, dev)
            and _cuda._fits(cursor, np.dtype(np.int64), (1,), dev)):
        return NotImplemented
    args = (loss, sums if sums.size else record,  # (n_sums = 0: a valid pointer the kernel never reads)
            np.int64(record.shape[0] - 1), record, np.int64(record.shape[1]), cursor)
    _cuda._launch("nnxp_record_step", dtype, dev, (1,), (32,), args)
    return record, cursor


# --- inputs `nnxp selftest` runs each override on (against its reference, on the user's GPU) --------------------
gather_rows.example(lambda rng, dtype: {
    "": (rng.normal(size=(37, 13)).astype(dtype), rng.permutation(37).astype(np.int64),
         np.array([0, 9, 18, 27], dtype=np.int64), np.array([2], dtype=np.int64), np.zeros((9, 13), dtype)),
    "labels": (rng.integers(0, 10, 37).astype(np.int64), rng.permutation(37).astype(np.int64),
               np.array([0, 9, 18, 27], dtype=np.int64), np.array([3], dtype=np.int64), np.zeros(9, np.int64)),
    "table row": (rng.normal(size=(5, 8)).astype(dtype), None, None, np.array([4], dtype=np.int64),
                  np.zeros((1, 8), dtype)),
})
record_step.example(lambda rng, dtype: {"": (
    np.asarray(rng.normal(), dtype=dtype), rng.normal(size=2), np.zeros((3, 6)), np.array([4], dtype=np.int64))})
