"""The dense (fully connected) layer's numerics: forward and backward.

``dense_forward`` is matmul + bias + activation; ``dense_backward`` is the
activation gradient, the bias gradient (column sums) and the two matmuls for
the weight and input gradients. Both write into caller-owned buffers. The
``*_ref`` functions are the definition; a device may override the public ones
with fused kernels that must return the same numbers (tests compare them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import cupy_module, is_cupy_array, xp_of
from . import _cpu, _cuda
from ._cuda import Op
from .activation import _GELU_C, ACTIVATION_OPS, ELU_ALPHA, LEAKY_RELU_SLOPE, activation_forward


def dense_forward_ref(
    x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None
) -> tuple[Any, Any | None]:
    """``y = f(x @ w + b)`` into `out`; returns ``(y, z)``.

    x: (B, n_in), w: (n_in, n_out), b: (n_out,) or None. ``z`` (the
    pre-activation) is kept in `z_out` only when the activation's backward
    needs it (GELU); otherwise it is None.
    """
    z = xp_of(x).matmul(x, w, out=out)  # (B, n_out)
    return bias_activation_forward_ref(z, b, activation, z_out)


def bias_activation_forward_ref(
    z: Any, b: Any | None, activation: str, z_out: Any = None
) -> tuple[Any, Any | None]:
    """The forward epilogue: ``f(z + b)`` in place on the GEMM output `z`; returns ``(y, z kept or None)``."""
    op = ACTIVATION_OPS[activation]
    if b is not None:
        z += b
    if not op.needs_z:
        return op.forward(z, z), None
    if z_out is None:
        z_out = z.copy()
    else:
        z_out[...] = z
    return op.forward(z_out, z), z_out


def softmax_forward_ref(z: Any, out: Any = None) -> Any:
    """Softmax of each row of `z` (B, N) into `out` (a new array when None; may be `z`): the output head's
    probabilities from its logits, by the kernel predict's softmax Dense layer runs on a GPU."""
    return activation_forward("softmax", z, out)


def activation_backward_bias_ref(dy: Any, y: Any, z: Any | None, activation: str, db: Any | None = None) -> Any:
    """``dy <- dL/dz`` in place and ``db <- dz.sum(axis=0)``; returns dz (= dy): dense_backward_ref before its
    matmuls."""
    dz = ACTIVATION_OPS[activation].backward(dy, y, z, dy)  # (B, n_out), in place
    if db is not None:
        dz.sum(axis=0, out=db)
    return dz


def dense_backward_ref(
    dy: Any,
    x: Any,
    w: Any,
    y: Any,
    z: Any | None,
    activation: str,
    dw: Any,
    db: Any | None,
    dx_out: Any = None,
    need_dx: bool = True,
) -> Any | None:
    """Fill `dw` (n_in, n_out) and `db` (n_out,) in place; return ``dx`` (B, n_in).

    `dy` (B, n_out) is dL/dy and is overwritten with dL/dz. No ``dx`` is
    computed when `need_dx` is False (the first layer needs none).
    """
    xp = xp_of(dy)
    dz = activation_backward_bias_ref(dy, y, z, activation, db)  # (B, n_out), in place
    xp.matmul(x.T, dz, out=dw)  # (n_in, n_out)
    if not need_dx:
        return None
    return xp.matmul(dz, w.T, out=dx_out)  # (B, n_in)


# --- CPU: the epilogues around the GEMMs as one compiled pass each (the ``fast`` extra) -------------------------
# On the CPU a step is its GEMMs plus everything between them; the references spend 2-4 passes over each
# (B, n) activation on bias, activation and their gradients. Where Numba is importable, forward runs the GEMM
# (BLAS) and then one loop that adds the bias and applies the activation in place on its output, and backward
# one loop that turns dL/dy into dL/dz in place and sums the bias gradient in the same pass, then the two
# GEMMs. The loops do the references' operations in the same order (so ReLU, linear and leaky ReLU agree bit
# for bit; the transcendental ones within an ulp or two of NumPy's own exp/tanh); parity is tested in
# tests/test_ops_dense.py. Large batches split the rows (forward) or the columns (backward, so each bias sum
# keeps its sequential order) over Numba's threads; small ones stay serial, where waking threads costs more
# than it saves and would contend with OpenBLAS's own spinning threads.

# the activations the loops know, by code (softmax, a whole-row op, runs its reference)
# (the Numba loops' own codes, in the literals of the loops below; numbered apart from the CUDA kernels'
# _cuda.ACT_CODES, and kept apart: renumbering would mean editing every loop)
LOOP_ACT_CODES = {"linear": 0, "relu": 1, "leaky_relu": 2, "elu": 3, "sigmoid": 4, "tanh": 5, "softplus": 6,
                  "gelu": 7, "silu": 8}
# (B, n) sizes from here on would use the threaded loops: off, as measured (bench/results/train_cpu.json: with
# them a step at batch 8192 took 189 ms against 131 ms serial, at 1024 19.8 against 19.0 ms, on 2 cores)
PARALLEL_MIN_ELEMENTS = 1 << 62
PARALLEL_CHUNK = 64  # rows (forward) or columns (backward) per task of a threaded loop


_CONSTANTS: dict = {}


def _constants(dtype: Any) -> Any:
    """The references' Python-float constants as their ufuncs see them: cast to the arrays' dtype."""
    c = _CONSTANTS.get(dtype)
    if c is None:
        c = _CONSTANTS[dtype] = np.array([LEAKY_RELU_SLOPE, ELU_ALPHA, 0.5, 0.044715 * _GELU_C, _GELU_C,
                                          3 * 0.044715 * _GELU_C, 1.0, 0.0], dtype=dtype)
    return c


def _bias_act_loop(z, b, use_bias, act, zkeep, c, chunk):  # pragma: no cover - runs compiled by Numba
    rows, n = z.shape
    slope, alpha, half, k1, k0, one, zero = c[0], c[1], c[2], c[3], c[4], c[6], c[7]
    # the bias is added in the activation's own loop (z + b rounded to the dtype, then the activation: the
    # reference's two ufuncs, in one pass over the row); a bias loop of its own before it measured 4.7x slower at
    # (1024, 512) (bench/train_cpu.py's step phases): the compiler left the second loop scalar
    for k in prange((rows + chunk - 1) // chunk):
        for i in range(k * chunk, min(rows, (k + 1) * chunk)):
            zr, zk = z[i], zkeep[i]  # row views: indices from 0, so no negative-index checks in the inner loops
            if act == 0:  # linear
                if use_bias:
                    for j in range(n):
                        zr[j] += b[j]
            elif act == 1:  # relu: maximum(z, 0), NaN kept
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    zr[j] = v if not (v <= zero) else zero
            elif act == 2:  # leaky relu: maximum(z, slope z)
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    a = v * slope
                    zr[j] = v if (v >= a or v != v) else a
            elif act == 3:  # elu: maximum(z, 0) + alpha expm1(minimum(z, 0))
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    neg = v if not (v >= zero) else zero
                    pos = v if not (v <= zero) else zero
                    zr[j] = pos + np.expm1(neg) * alpha
            elif act == 4:  # sigmoid: 0.5 tanh(0.5 z) + 0.5
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    zr[j] = np.tanh(v * half) * half + half
            elif act == 5:
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    zr[j] = np.tanh(v)
            elif act == 6:  # softplus: maximum(z, 0) + log1p(exp(-|z|))
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    pos = v if not (v <= zero) else zero
                    zr[j] = pos + np.log1p(np.exp(-abs(v)))
            elif act == 7:  # gelu (tanh form), keeping z for backward
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    zk[j] = v
                    t = np.tanh((v * v * k1 + k0) * v)
                    zr[j] = v * ((t + one) * half)
            elif act == 8:  # silu: z (0.5 tanh(0.5 z) + 0.5), keeping z for backward
                for j in range(n):
                    v = zr[j] + b[j] if use_bias else zr[j]
                    zk[j] = v
                    zr[j] = v * (np.tanh(v * half) * half + half)


def _act_grad_loop(dz, y, z, db, use_bias, act, c, chunk):  # pragma: no cover - runs compiled by Numba
    # (use_bias is not read: the sums go to `db` either way, scratch for a layer without a bias; it stays in the
    # signature that bench/epilogues_cpu.py calls across source trees)
    rows, cols = dz.shape
    slope, alpha, half, k1, k0, k3, one, zero = c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
    for k in prange((cols + chunk - 1) // chunk):  # whole columns per task: each bias sum in row order
        c0, c1 = k * chunk, min(cols, (k + 1) * chunk)
        w = c1 - c0
        dbc = db[c0:c1]  # (without a bias: sums into scratch, never read; no branch in the inner loops)
        for j in range(w):
            dbc[j] = zero
        # each gradient is added to its bias sum in the loop that makes it (one pass over the row; with a second
        # loop for the sums, 0.356 vs 0.323 ms at batch 1024: bench/results/epilogues_cpu-act-grad.json); the sums
        # still run in row order, as the reference's
        for i in range(rows):
            # views of this row's chunk: indices from 0, so no negative-index checks in the inner loops
            d, yr, zr = dz[i, c0:c1], y[i, c0:c1], z[i, c0:c1]
            if act == 0:  # linear: dy as it is
                for j in range(w):
                    dbc[j] += d[j]
            elif act == 1:  # relu: dy * (y > 0)
                for j in range(w):
                    g = d[j] * (one if yr[j] > zero else zero)
                    d[j] = g
                    dbc[j] += g
            elif act == 2:  # leaky relu: dy * where(y > 0, 1, slope)
                for j in range(w):
                    g = d[j] * (one if yr[j] > zero else slope)
                    d[j] = g
                    dbc[j] += g
            elif act == 3:  # elu: dy * where(y > 0, 1, y + alpha)
                for j in range(w):
                    v = yr[j]
                    g = d[j] * (one if v > zero else v + alpha)
                    d[j] = g
                    dbc[j] += g
            elif act == 4:  # sigmoid: dy * ((1 - y) y)
                for j in range(w):
                    v = yr[j]
                    g = d[j] * ((one - v) * v)
                    d[j] = g
                    dbc[j] += g
            elif act == 5:  # tanh: dy * (1 - y^2)
                for j in range(w):
                    v = yr[j]
                    g = d[j] * (one - v * v)
                    d[j] = g
                    dbc[j] += g
            elif act == 6:  # softplus: dy * -expm1(-y)
                for j in range(w):
                    g = d[j] * -np.expm1(-yr[j])
                    d[j] = g
                    dbc[j] += g
            elif act == 7:  # gelu, from z
                for j in range(w):
                    v = zr[j]
                    v2 = v * v
                    th = np.tanh((v2 * k1 + k0) * v)
                    du = ((v2 * k3 + k0) * v) * (one - th * th)
                    g = d[j] * (((th + one) + du) * half)
                    d[j] = g
                    dbc[j] += g
            elif act == 8:  # silu, from z: s (1 + z (1 - s)), s = sigmoid(z)
                for j in range(w):
                    v = zr[j]
                    s = np.tanh(v * half) * half + half
                    g = d[j] * (((one - s) * v + one) * s)
                    d[j] = g
                    dbc[j] += g


prange = range  # Numba compiles the loops with numba.prange in its place (nnxp.ops._cpu.kernel)


def _fusable(activation: str, *arrays: Any) -> bool:
    return activation in LOOP_ACT_CODES and _cpu.host_float(*arrays)


def _dense_forward_cpu(
    x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None
) -> tuple[Any, Any | None]:
    """dense_forward_ref, with the bias and activation as one compiled pass over the GEMM's output."""
    if not (_cpu.numba_enabled() and type(x) is np.ndarray and _fusable(activation, x, w, b, out, z_out)):
        return _dense_forward_numpy(x, w, b, activation, out, z_out)
    needs_z = ACTIVATION_OPS[activation].needs_z
    z = np.matmul(x, w, out=out)  # (B, n_out)
    if needs_z and z_out is None:
        z_out = np.empty_like(z)
    if not _cpu.call("bias_act", _bias_act_loop, z, z[0] if b is None else b, b is not None,
                     LOOP_ACT_CODES[activation], z_out if needs_z else z, _constants(z.dtype), PARALLEL_CHUNK,
                     parallel=_threaded(z)):
        return bias_activation_forward_ref(z, b, activation, z_out)
    return z, (z_out if needs_z else None)


def _threaded(a: Any) -> bool:
    return a.size >= PARALLEL_MIN_ELEMENTS and _cpu.threads() > 1


def _dense_backward_cpu(dy, x, w, y, z, activation, dw, db, dx_out=None, need_dx=True):
    """dense_backward_ref, with the activation gradient and the bias gradient as one compiled pass."""
    # one column: NumPy's dz.sum(axis=0) runs along contiguous memory there and sums pairwise, not in row order,
    # so the loop's sum goes to scratch and the bias gradient is the reference's sum (a pass over B numbers)
    column = db is not None and dy.ndim == 2 and dy.shape[1] == 1
    if not (_cpu.numba_enabled() and type(dy) is np.ndarray and _fusable(activation, dy, x, w, y, z, dw, db)
            and _cpu.call("act_grad", _act_grad_loop, dy, y, dy if z is None else z,
                          np.empty(dy.shape[1], dy.dtype) if db is None or column else db,
                          db is not None, LOOP_ACT_CODES[activation], _constants(dy.dtype),
                          PARALLEL_CHUNK if _threaded(dy) else max(dy.shape[1], 1), parallel=_threaded(dy))):
        return dense_backward_ref(dy, x, w, y, z, activation, dw, db, dx_out, need_dx)
    if column:
        dy.sum(axis=0, out=db)
    np.matmul(x.T, dy, out=dw)  # (n_in, n_out)
    if not need_dx:
        return None
    return np.matmul(dy, w.T, out=dx_out)  # (B, n_in)


# --- CPU with NumPy alone (no Numba): the references' operations, dispatched for speed ----------------------------
# ReLU as ``np.maximum(z, zero_row)`` against a zero row broadcast over z's rows is faster than the reference's
# ``np.maximum(z, 0)``, whose scalar operand takes a slow loop in NumPy 2.4; the same numbers bit for bit (NaN
# kept, -0.0 as the scalar form gives it), tested in tests/test_ops_dense.py. Bias + ReLU over the benchmark MLP's
# two hidden layers, timed inside training steps (thread CPU time, 2-core EPYC): 0.13 vs 0.18 ms at batch 128,
# 0.44 vs 0.84 ms at 1024; a zero array of z's whole shape is faster alone (0.06 vs 0.36 ms at (1024, 512)) but
# slower in a step (0.53-0.65 ms at 1024: its bytes compete for the cache). (Measured and not taken: the ReLU
# gradient as integer masks instead of ``dy * (y > 0)``, 0.18 vs 0.20 ms at (1024, 512) and not bit for bit at NaN;
# column-major activations, whose GEMMs at batch 128 with two BLAS threads are faster timed alone, 0.74 vs 0.87 ms
# for 128x784 @ 784x512, which did not show in a training step.)
_ZERO_ROWS: dict = {}  # (dtype, width) -> a read-only zero row


def _zero_row(z: np.ndarray) -> np.ndarray:
    """A read-only zero row as wide as z's last axis, in z's dtype (broadcast over its rows)."""
    key = (z.dtype, z.shape[-1])
    row = _ZERO_ROWS.get(key)
    if row is None:
        if len(_ZERO_ROWS) > 64:  # (a few layer widths at most)
            _ZERO_ROWS.clear()
        row = np.zeros(z.shape[-1], dtype=z.dtype)
        row.flags.writeable = False
        _ZERO_ROWS[key] = row
    return row


def _dense_forward_numpy(
    x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None
) -> tuple[Any, Any | None]:
    """dense_forward_ref on host arrays without Numba, ReLU against a zero row."""
    if activation != "relu" or type(x) is not np.ndarray or type(w) is not np.ndarray:
        return dense_forward_ref(x, w, b, activation, out, z_out)
    return bias_relu_numpy(np.matmul(x, w, out=out), b), None


def bias_relu_numpy(z: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``max(z + b, 0)`` in place on `z`: bias_activation_forward_ref's ReLU, the zero a row (bit for bit)."""
    if b is not None:
        z += b
    if z.dtype.kind == "f" and z.ndim >= 1:
        return np.maximum(z, _zero_row(z), out=z)
    return np.maximum(z, 0, out=z)


# The public entry points: the fused CUDA kernels (below) for the CuPy arrays they handle, the compiled CPU loops
# above for the NumPy arrays they handle, the reference for everything else.
dense_forward = Op(dense_forward_ref, _dense_forward_cpu)
dense_backward = Op(dense_backward_ref, _dense_backward_cpu)
# the epilogues on their own (the tail of dense_forward_ref after its matmul; the head of dense_backward_ref)
bias_activation_forward = Op(bias_activation_forward_ref)
activation_backward_bias = Op(activation_backward_bias_ref)
softmax_forward = Op(softmax_forward_ref)
# their CUDA launches are kept per set of arrays and made again (nnxp.ops._cuda.LaunchPlan): a step's Python
for _op in (dense_forward, dense_backward, bias_activation_forward, activation_backward_bias, softmax_forward):
    _op.plan()


# --- CUDA: the overrides (kernels.cu), each taking its reference's arguments --------------------------------


def _bias_activation(z: Any, b: Any | None, activation: str, z_keep: Any | None, device_id: int) -> None:
    """z (B, N) <- f(z + b) in place; z + b also into z_keep when given. Arguments already checked."""
    rows, cols = z.shape
    dtype = z.dtype
    has_bias = np.int32(b is not None)
    bias = b if b is not None else z  # any valid pointer; never read
    if activation == "softmax":
        block = min(_cuda._BLOCK, max(32, _cuda._next_pow2(cols)))
        args = (z, z, bias, np.int64(rows), np.int64(cols), has_bias)
        _cuda._launch("nnxp_softmax_forward", dtype, device_id, (_cuda._row_grid(rows, device_id),), (block,), args)
        return
    total = rows * cols
    zbuf = z_keep if z_keep is not None else z
    args = (z, bias, zbuf, np.int64(total), np.int64(cols), np.int32(_cuda.ACT_CODES[activation]), has_bias,
            np.int32(z_keep is not None))
    _cuda._launch("nnxp_bias_act_forward", dtype, device_id, (_cuda._grid(total, device_id),), (_cuda._BLOCK,), args)


@bias_activation_forward.override
def _bias_activation_forward_cuda(z: Any, b: Any | None, activation: str, z_out: Any = None) -> Any:
    """``y = f(z + b)`` in place over `z` (B, N); returns ``(y, z_kept)`` as :func:`dense_forward` does.

    The tail of ``dense_forward_ref`` after its matmul; ``z_kept`` (z + b) is filled only for GELU.
    """
    dtype = _cuda._dtype_of(z)
    if dtype is None or z.ndim != 2 or z.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = z.device.id
    if not _cuda._fits(z, dtype, z.shape, dev):
        return NotImplemented
    if b is not None and not _cuda._fits(b, dtype, (z.shape[1],), dev):
        return NotImplemented
    needs_z = ACTIVATION_OPS[activation].needs_z
    if needs_z and z_out is not None and not _cuda._fits(z_out, dtype, z.shape, dev):
        return NotImplemented
    if needs_z and z_out is None:
        _cuda.unplanned(allocation=True)
        z_out = cupy_module().empty_like(z)
    _bias_activation(z, b, activation, z_out if needs_z else None, dev)
    return z, (z_out if needs_z else None)


@softmax_forward.override
def _softmax_forward_cuda(z: Any, out: Any = None) -> Any:
    """Fused :func:`softmax_forward_ref`: one launch of nnxp_softmax_forward from `z` into `out`."""
    dtype = _cuda._dtype_of(z)
    if dtype is None or z.ndim != 2 or z.size == 0:
        return NotImplemented
    dev = z.device.id
    if not _cuda._fits(z, dtype, z.shape, dev) or (out is not None and not _cuda._fits(out, dtype, z.shape, dev)):
        return NotImplemented
    if out is None:
        _cuda.unplanned(allocation=True)
        with _cuda._current(dev):
            out = cupy_module().empty_like(z)
    rows, cols = z.shape
    block = min(_cuda._BLOCK, max(32, _cuda._next_pow2(cols)))
    args = (z, out, z, np.int64(rows), np.int64(cols), np.int32(0))
    _cuda._launch("nnxp_softmax_forward", dtype, dev, (_cuda._row_grid(rows, dev),), (block,), args)
    return out


@dense_forward.override
def _dense_forward_cuda(x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None) -> Any:
    """Fused :func:`nnxp.ops.dense.dense_forward_ref`: cuBLAS matmul, then one bias + activation kernel."""
    dtype = _cuda._dtype_of(x)
    if dtype is None or x.ndim != 2 or not is_cupy_array(w) or w.dtype != dtype or w.ndim != 2:
        return NotImplemented
    if x.shape[1] != w.shape[0] or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = x.device.id
    shape = (x.shape[0], w.shape[1])
    if shape[0] * shape[1] == 0 or w.device.id != dev:
        return NotImplemented
    if b is not None and not _cuda._fits(b, dtype, (shape[1],), dev):
        return NotImplemented
    if out is not None and not _cuda._fits(out, dtype, shape, dev):
        return NotImplemented
    needs_z = ACTIVATION_OPS[activation].needs_z
    if needs_z and z_out is not None and not _cuda._fits(z_out, dtype, shape, dev):
        return NotImplemented
    cp = cupy_module()
    with _cuda._current(dev):
        z = _cuda.matmul(x, w, out=out)  # (B, n_out)
        if needs_z and z_out is None:
            _cuda.unplanned(allocation=True)
            z_out = cp.empty_like(z)
    _bias_activation(z, b, activation, z_out if needs_z else None, dev)
    return z, (z_out if needs_z else None)


# Bias gradients of at most this many rows are summed in one pass (one block row per column tile, mode 1): at
# small batches a second launch (nnxp_column_sum) costs more than the extra rows each thread walks (<= 32 at 8
# rows of threads). Above it, two stages: per-block partial sums, then the column sum (issue 11, bias gradient;
# bench/results/launch-list.md compares them with a GEMV against a ones vector).
_ONE_PASS_ROWS = 256


def _activation_backward_bias(dy: Any, y: Any, z: Any | None, activation: str, db: Any | None, dev: int) -> None:
    rows, cols = dy.shape
    dtype = dy.dtype
    if activation == "softmax":
        block = min(_cuda._BLOCK, max(32, _cuda._next_pow2(cols)))
        args = (dy, y, np.int64(rows), np.int64(cols))
        _cuda._launch("nnxp_softmax_backward", dtype, dev, (_cuda._row_grid(rows, dev),), (block,), args)
        if db is not None:
            _cuda.unplanned()  # a CuPy reduction, not a launch a plan keeps
            with _cuda._current(dev):
                dy.sum(axis=0, out=db)
        return
    code = _cuda.ACT_CODES[activation]
    write_dz = code != _cuda.ACT_CODES["linear"]
    if not write_dz and db is None:
        return  # linear without bias: dz is dy, nothing to do
    # columns on threadIdx.x (coalesced), rows on threadIdx.y and blockIdx.y; >= 4 rows per thread
    bx = min(32, _cuda._next_pow2(cols))
    by = _cuda._BLOCK // bx
    gx = -(-cols // bx)
    gy_max = -(-rows // (by * 4))
    gy = max(1, min(gy_max, -(-_cuda._BLOCKS_PER_SM * _cuda._KERNELS.sm_count(dev) // gx), 1024))
    if db is not None and rows <= _ONE_PASS_ROWS:
        gy = 1
    mode = 0 if db is None else (1 if gy == 1 else 2)
    if mode == 2:
        with _cuda._current(dev):
            out = _cuda._scratch("bias partials", (gy, cols), dtype, dev)
    else:
        out = db if db is not None else dy
    args = (dy, y if y is not None else dy, z if z is not None else dy, out, np.int64(rows), np.int64(cols),
            np.int32(code), np.int32(write_dz), np.int32(mode))
    _cuda._launch("nnxp_act_backward_bias", dtype, dev, (gx, gy), (bx, by), args)
    if mode == 2:
        args = (out, db, np.int64(gy), np.int64(cols))
        _cuda._launch("nnxp_column_sum", dtype, dev, (-(-cols // _cuda._BLOCK),), (_cuda._BLOCK,), args)


@activation_backward_bias.override
def _activation_backward_bias_cuda(dy: Any, y: Any, z: Any | None, activation: str, db: Any | None = None) -> Any:
    """``dy <- dy * f'(.)`` in place and ``db <- dz.sum(axis=0)`` in the same pass; returns dz (= dy)."""
    dtype = _cuda._dtype_of(dy)
    if dtype is None or dy.ndim != 2 or dy.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = dy.device.id
    if not _cuda._fits(dy, dtype, dy.shape, dev) or not _backward_inputs_fit(dy, y, z, activation, db, dtype, dev):
        return NotImplemented
    _activation_backward_bias(dy, y, z, activation, db, dev)
    return dy


def _backward_inputs_fit(dy, y, z, activation, db, dtype, dev) -> bool:
    # backward reads z where the activation needs it (GELU, SiLU), else y (linear reads neither)
    needs_z = ACTIVATION_OPS[activation].needs_z
    if not needs_z and activation != "linear" and not _cuda._fits(y, dtype, dy.shape, dev):
        return False
    if needs_z and not _cuda._fits(z, dtype, dy.shape, dev):
        return False
    return db is None or _cuda._fits(db, dtype, (dy.shape[1],), dev)


@dense_backward.override
def _dense_backward_cuda(
    dy: Any,
    x: Any,
    w: Any,
    y: Any,
    z: Any | None,
    activation: str,
    dw: Any,
    db: Any | None,
    dx_out: Any = None,
    need_dx: bool = True,
) -> Any:
    """Fused :func:`nnxp.ops.dense.dense_backward_ref`: one kernel for dz and db, then the two matmuls."""
    dtype = _cuda._dtype_of(dy)
    if dtype is None or dy.ndim != 2 or dy.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = dy.device.id
    rows, cols = dy.shape
    if not _cuda._fits(dy, dtype, dy.shape, dev) or not _backward_inputs_fit(dy, y, z, activation, db, dtype, dev):
        return NotImplemented
    if not (is_cupy_array(x) and x.dtype == dtype and x.ndim == 2 and x.shape[0] == rows and x.device.id == dev):
        return NotImplemented
    n_in = x.shape[1]
    if not (is_cupy_array(w) and w.dtype == dtype and w.shape == (n_in, cols) and w.device.id == dev):
        return NotImplemented
    if not _cuda._fits(dw, dtype, (n_in, cols), dev):
        return NotImplemented
    if need_dx and dx_out is not None and not _cuda._fits(dx_out, dtype, (rows, n_in), dev):
        return NotImplemented
    _activation_backward_bias(dy, y, z, activation, db, dev)
    with _cuda._current(dev):
        _cuda.matmul(x.T, dy, out=dw)  # (n_in, n_out)
        if not need_dx:
            return None
        return _cuda.matmul(dy, w.T, out=dx_out)  # (B, n_in)


# --- inputs `nnxp selftest` runs each override on (against its reference, on the user's GPU) --------------------


def _normal(rng: np.random.Generator, dtype: Any, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(dtype)


@bias_activation_forward.example
def _bias_act_examples(rng, dtype, rows=67, cols=33):
    return {act: (_normal(rng, dtype, rows, cols, scale=3.0), _normal(rng, dtype, cols), act)
            for act in sorted(ACTIVATION_OPS)}


@activation_backward_bias.example
def _act_backward_examples(rng, dtype, rows=67, cols=33):
    def args(act):
        z = _normal(rng, dtype, rows, cols, scale=3.0)
        y = ACTIVATION_OPS[act].forward(z, np.empty_like(z))
        return _normal(rng, dtype, rows, cols), y, z, act, np.zeros(cols, dtype)
    return {act: args(act) for act in sorted(ACTIVATION_OPS)}


@dense_forward.example
def _dense_forward_examples(rng, dtype, rows=67, cols=33, k=19):
    return {act: (_normal(rng, dtype, rows, k), _normal(rng, dtype, k, cols, scale=0.3), _normal(rng, dtype, cols), act)
            for act in sorted(ACTIVATION_OPS)}


@dense_backward.example
def _dense_backward_examples(rng, dtype, rows=67, cols=33, k=19):
    def args(act):
        x, w = _normal(rng, dtype, rows, k), _normal(rng, dtype, k, cols, scale=0.3)
        y, z = dense_forward_ref(x, w, None, act)  # the forward both backwards start from
        return _normal(rng, dtype, rows, cols), x, w, y, z, act, np.zeros_like(w), np.zeros(cols, dtype)
    return {act: args(act) for act in sorted(ACTIVATION_OPS)}


@softmax_forward.example
def _softmax_forward_examples(rng, dtype, rows=67, cols=33):
    return {"": (_normal(rng, dtype, rows, cols, scale=3.0), np.zeros((rows, cols), dtype))}
