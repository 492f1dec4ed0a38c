"""Loss functions: value and gradient in one pass, generic over NumPy / CuPy.

Every function takes the network output (B, k) and targets, writes
``dL/d(output)`` into `grad` and returns the mean loss over the batch as a
0-d array on the same device (no host sync). The fused pairs take *logits*:
softmax + cross-entropy (one-hot or sparse labels) and sigmoid + binary
cross-entropy, both through log-sum-exp so no exp can overflow.

``sample_weight`` (B,) weighs each row's loss as Keras's "sum_over_batch_size" does:
``sum_i w_i l_i / B``, where ``l_i`` is row i's loss (averaged over its outputs for
the elementwise losses); the gradient's rows are scaled by ``w_i`` to match. Without
weights every function runs exactly the operations it always ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import cupy_module, xp_of
from . import _cpu, _cuda
from ._cuda import Op

# Probabilities are clipped to [EPS, 1 - EPS] before a log (as Keras does).
EPS = 1e-7


def _grad_buffer(xp: Any, like: Any, grad: Any) -> Any:
    return xp.empty_like(like) if grad is None else grad


def _weighted_sum(elementwise: Any, w: Any) -> Any:
    """Sum of a (B, k) array; with weights, each row's sum times its weight."""
    return elementwise.sum() if w is None else (elementwise.sum(axis=1) * w).sum()


def _into(loss: Any, loss_out: Any) -> Any:
    """`loss` written into the caller's 0-d `loss_out` (returned) when given, so a step allocates nothing for it."""
    if loss_out is None:
        return loss
    loss_out[...] = loss
    return loss_out


def _weigh_rows(g: Any, w: Any) -> None:
    if w is not None:
        g *= w[:, None]  # row i of dL/d(output) scales with w_i


def softmax_cross_entropy_ref(logits: Any, target: Any, grad: Any = None,
                              sample_weight: Any = None, loss_out: Any = None) -> tuple[Any, Any]:
    """Softmax + categorical cross-entropy on logits (B, C) and one-hot (or soft) targets (B, C)."""
    xp = xp_of(logits)
    n = logits.shape[0]
    g = _grad_buffer(xp, logits, grad)
    m = logits.max(axis=1, keepdims=True)  # (B, 1); subtract it so exp cannot overflow
    xp.subtract(logits, m, out=g)  # shifted logits
    # loss_i = sum_j t_ij (lse_i - s_ij) = lse_i * sum_j t_ij - sum_j t_ij s_ij
    t_dot_s = (target * g).sum(axis=1)  # (B,)
    xp.exp(g, out=g)
    sums = g.sum(axis=1, keepdims=True)  # (B, 1)
    t_sum = target.sum(axis=1, keepdims=True)  # (B, 1), 1 for one-hot rows
    per_row = xp.log(sums[:, 0]) * t_sum[:, 0] - t_dot_s  # (B,)
    loss = (per_row if sample_weight is None else per_row * sample_weight).sum() / n
    # dL/dz = softmax * sum(t) - t, averaged over the batch
    g /= sums
    g *= t_sum
    g -= target
    g *= 1.0 / n
    _weigh_rows(g, sample_weight)
    return _into(loss, loss_out), g


def sparse_softmax_cross_entropy_ref(logits: Any, labels: Any, grad: Any = None,
                                     sample_weight: Any = None, loss_out: Any = None) -> tuple[Any, Any]:
    """Softmax + cross-entropy on logits (B, C) and integer labels (B,) in [-C, C).

    A negative label counts from the end, as NumPy indexing does (-1 is class C-1); the CUDA kernel wraps
    the same way. The model refuses negative labels before they get here (check_targets), so the wrap is
    the ops' contract for direct callers, tested on both paths.
    """
    xp = xp_of(logits)
    n = logits.shape[0]
    rows = xp.arange(n)
    g = _grad_buffer(xp, logits, grad)
    m = logits.max(axis=1, keepdims=True)  # (B, 1)
    xp.subtract(logits, m, out=g)
    picked = g[rows, labels]  # (B,) shifted logit of the true class (a copy)
    xp.exp(g, out=g)
    sums = g.sum(axis=1, keepdims=True)
    per_row = xp.log(sums[:, 0]) - picked  # (B,)
    loss = (per_row if sample_weight is None else per_row * sample_weight).sum() / n
    g /= sums
    g[rows, labels] -= 1.0
    g *= 1.0 / n
    _weigh_rows(g, sample_weight)
    return _into(loss, loss_out), g


def sigmoid_binary_cross_entropy_ref(logits: Any, target: Any, grad: Any = None,
                                     sample_weight: Any = None, loss_out: Any = None) -> tuple[Any, Any]:
    """Sigmoid + binary cross-entropy on logits (B, k) and targets in [0, 1] (B, k)."""
    xp = xp_of(logits)
    size = logits.size
    g = _grad_buffer(xp, logits, grad)
    # loss = max(z, 0) - z t + log1p(exp(-|z|)), stable for any z
    xp.abs(logits, out=g)
    xp.negative(g, out=g)
    xp.exp(g, out=g)
    xp.log1p(g, out=g)
    elementwise = xp.maximum(logits, 0) - logits * target + g  # (B, k)
    loss = _weighted_sum(elementwise, sample_weight) / size
    # dL/dz = sigmoid(z) - t, with sigmoid = 0.5 (1 + tanh(z / 2))
    xp.multiply(logits, 0.5, out=g)
    xp.tanh(g, out=g)
    g *= 0.5
    g += 0.5
    g -= target
    g *= 1.0 / size
    _weigh_rows(g, sample_weight)
    return _into(loss, loss_out), g


def categorical_cross_entropy_ref(probs: Any, target: Any, grad: Any = None,
                                  sample_weight: Any = None) -> tuple[Any, Any]:
    """Cross-entropy on probabilities (B, C) that did not come from a fused softmax."""
    xp = xp_of(probs)
    n = probs.shape[0]
    g = _grad_buffer(xp, probs, grad)
    xp.clip(probs, EPS, 1.0 - EPS, out=g)
    loss = -_weighted_sum(target * xp.log(g), sample_weight) / n
    # d/dp of -sum t log p is -t / p (zero where p was clipped)
    xp.divide(target, g, out=g)
    g *= -1.0 / n
    g *= (probs >= EPS) & (probs <= 1.0 - EPS)
    _weigh_rows(g, sample_weight)
    return loss, g


def sparse_categorical_cross_entropy_ref(probs: Any, labels: Any, grad: Any = None,
                                         sample_weight: Any = None) -> tuple[Any, Any]:
    """Cross-entropy on probabilities (B, C) and integer labels (B,)."""
    xp = xp_of(probs)
    n = probs.shape[0]
    rows = xp.arange(n)
    g = _grad_buffer(xp, probs, grad)
    p = xp.clip(probs[rows, labels], EPS, 1.0 - EPS)  # (B,)
    per_row = -xp.log(p)  # (B,)
    loss = (per_row if sample_weight is None else per_row * sample_weight).sum() / n
    g[...] = 0
    inside = (probs[rows, labels] >= EPS) & (probs[rows, labels] <= 1.0 - EPS)
    g[rows, labels] = (-1.0 / n) / p * inside
    _weigh_rows(g, sample_weight)
    return loss, g


def binary_cross_entropy_ref(probs: Any, target: Any, grad: Any = None,
                             sample_weight: Any = None) -> tuple[Any, Any]:
    """Binary cross-entropy on probabilities (B, k) that did not come from a fused sigmoid."""
    xp = xp_of(probs)
    size = probs.size
    g = _grad_buffer(xp, probs, grad)
    p = xp.clip(probs, EPS, 1.0 - EPS)
    loss = -_weighted_sum(target * xp.log(p) + (1.0 - target) * xp.log1p(-p), sample_weight) / size
    # d/dp = (p - t) / (p (1 - p)), zero where p was clipped
    xp.subtract(p, target, out=g)
    g /= p * (1.0 - p)
    g *= ((probs >= EPS) & (probs <= 1.0 - EPS)) / size
    _weigh_rows(g, sample_weight)
    return loss, g


def mean_squared_error_ref(pred: Any, target: Any, grad: Any = None,
                           sample_weight: Any = None) -> tuple[Any, Any]:
    """Mean over all elements of (pred - target)^2."""
    xp = xp_of(pred)
    g = _grad_buffer(xp, pred, grad)
    xp.subtract(pred, target, out=g)
    if sample_weight is None:
        flat = g.reshape(-1)
        loss = xp.dot(flat, flat) / pred.size
    else:
        loss = _weighted_sum(g * g, sample_weight) / pred.size
    g *= 2.0 / pred.size
    _weigh_rows(g, sample_weight)
    return loss, g


def mean_absolute_error_ref(pred: Any, target: Any, grad: Any = None,
                            sample_weight: Any = None) -> tuple[Any, Any]:
    """Mean over all elements of |pred - target|."""
    xp = xp_of(pred)
    g = _grad_buffer(xp, pred, grad)
    xp.subtract(pred, target, out=g)
    loss = _weighted_sum(xp.abs(g), sample_weight) / pred.size
    xp.sign(g, out=g)
    g *= 1.0 / pred.size
    _weigh_rows(g, sample_weight)
    return loss, g


# --- CPU: the fused logit losses as one compiled pass (the ``fast`` extra) -----------------------------------
# The references make five to eight passes over the (B, k) logits plus fancy indexing; where Numba is importable
# each row is done in one loop that computes the loss and writes the gradient. The loops follow the references'
# operations and the arrays' dtype; the loss is summed in float64 (the reference sums rows in the arrays' dtype),
# so the two agree to rounding (parity tested in tests/test_ops_loss.py). Labels outside [0, C) make the loop
# stop untouched and the reference run, which raises (or wraps negative labels) as it always did.


def _sparse_softmax_xent_loop(z, labels, g, w, use_w, inv_n, c):  # pragma: no cover - runs compiled by Numba
    rows, k = z.shape
    for i in range(rows):  # labels first: a bad one leaves every buffer untouched
        if labels[i] < 0 or labels[i] >= k:
            return np.nan, False
    zero, one = c[0], c[1]  # in the arrays' dtype
    total = 0.0
    for i in range(rows):
        zr, gr = z[i], g[i]
        m = zr[0]
        for j in range(1, k):
            if zr[j] > m or zr[j] != zr[j]:
                m = zr[j]
        s = zero
        for j in range(k):
            e = np.exp(zr[j] - m)
            gr[j] = e
            s += e
        lab = labels[i]
        row_loss = np.log(s) - (zr[lab] - m)
        wi = w[i] if use_w else one
        total += row_loss * wi if use_w else row_loss
        for j in range(k):
            gr[j] = gr[j] / s
        gr[lab] -= one
        for j in range(k):
            gr[j] = gr[j] * inv_n
            if use_w:
                gr[j] = gr[j] * wi
    return total, True


def _softmax_xent_loop(z, t, g, w, use_w, inv_n, c):  # pragma: no cover - runs compiled by Numba
    rows, k = z.shape
    zero = c[0]
    total = 0.0
    for i in range(rows):
        zr, tr, gr = z[i], t[i], g[i]
        m = zr[0]
        for j in range(1, k):
            if zr[j] > m or zr[j] != zr[j]:
                m = zr[j]
        s = zero
        t_dot_s = s
        t_sum = s
        for j in range(k):
            sh = zr[j] - m
            t_dot_s += tr[j] * sh
            t_sum += tr[j]
            e = np.exp(sh)
            gr[j] = e
            s += e
        row_loss = np.log(s) * t_sum - t_dot_s
        total += row_loss * w[i] if use_w else row_loss
        for j in range(k):
            v = (gr[j] / s) * t_sum - tr[j]
            v = v * inv_n
            gr[j] = v * w[i] if use_w else v
    return total, True


def _sigmoid_bce_loop(z, t, g, w, use_w, inv_size, c):  # pragma: no cover - runs compiled by Numba
    rows, k = z.shape
    zero, half = c[0], c[2]
    total = 0.0
    for i in range(rows):
        zr, tr, gr = z[i], t[i], g[i]
        row = 0.0
        for j in range(k):
            v = zr[j]
            pos = v if not (v <= zero) else zero  # maximum(z, 0), NaN kept
            row += (pos - v * tr[j]) + np.log1p(np.exp(-abs(v)))
            d = (np.tanh(v * half) * half + half) - tr[j]
            d = d * inv_size
            gr[j] = d * w[i] if use_w else d
        total += row * w[i] if use_w else row
    return total, True


_LOSS_LOOPS = {"sparse_softmax_xent": _sparse_softmax_xent_loop, "softmax_xent": _softmax_xent_loop,
               "sigmoid_bce": _sigmoid_bce_loop}


def _fused_cpu(name: str, ref: Any, logits: Any, target: Any, grad: Any, sample_weight: Any, scale: int,
               loss_out: Any = None) -> Any:
    """(loss, grad) from the compiled loop `name`, or None where it cannot run (the caller runs `ref`)."""
    if not _cpu.numba_enabled() or type(logits) is not np.ndarray or logits.ndim != 2 or logits.size == 0:
        return None
    g = np.empty_like(logits) if grad is None else grad
    if name == "sparse_softmax_xent":
        if type(target) is not np.ndarray or target.ndim != 1 or target.dtype.kind not in "iu" \
                or not target.flags.c_contiguous or target.shape[0] != logits.shape[0]:
            return None
        arrays = (logits, g)
    else:
        arrays = (logits, target, g)
        if type(target) is not np.ndarray or target.shape != logits.shape:
            return None
    w = sample_weight
    if w is not None:
        if type(w) is not np.ndarray or w.shape != (logits.shape[0],):
            return None
        arrays += (w,)
    if not _cpu.host_float(*arrays) or g.shape != logits.shape:
        return None
    out: list = []
    ran = _cpu.call(name, _LOSS_LOOPS[name], logits, target, g, logits[:, 0] if w is None else w, w is not None,
                    logits.dtype.type(1.0 / scale), np.array([0.0, 1.0, 0.5], logits.dtype), result=out)
    if not ran or not out[0][1]:
        return None
    return _into(logits.dtype.type(out[0][0] / scale), loss_out), g


def _softmax_cross_entropy_cpu(logits: Any, target: Any, grad: Any = None, sample_weight: Any = None,
                               loss_out: Any = None):
    r = _fused_cpu("softmax_xent", softmax_cross_entropy_ref, logits, target, grad, sample_weight,
                   logits.shape[0], loss_out)
    return softmax_cross_entropy_ref(logits, target, grad, sample_weight, loss_out) if r is None else r


def _sparse_softmax_cross_entropy_cpu(logits: Any, labels: Any, grad: Any = None, sample_weight: Any = None,
                                      loss_out: Any = None):
    r = _fused_cpu("sparse_softmax_xent", sparse_softmax_cross_entropy_ref, logits, labels, grad, sample_weight,
                   logits.shape[0], loss_out)
    return sparse_softmax_cross_entropy_ref(logits, labels, grad, sample_weight, loss_out) if r is None else r


def _sigmoid_binary_cross_entropy_cpu(logits: Any, target: Any, grad: Any = None, sample_weight: Any = None,
                                      loss_out: Any = None):
    r = _fused_cpu("sigmoid_bce", sigmoid_binary_cross_entropy_ref, logits, target, grad, sample_weight,
                   logits.size, loss_out)
    return sigmoid_binary_cross_entropy_ref(logits, target, grad, sample_weight, loss_out) if r is None else r


# Public entry points. The fused logit losses run one CUDA kernel (below) on the CuPy arrays it
# handles, the compiled CPU loop above on the NumPy arrays it handles, and the reference otherwise; the rest
# are the references.
softmax_cross_entropy = Op(softmax_cross_entropy_ref, _softmax_cross_entropy_cpu)
sparse_softmax_cross_entropy = Op(sparse_softmax_cross_entropy_ref, _sparse_softmax_cross_entropy_cpu)
sigmoid_binary_cross_entropy = Op(sigmoid_binary_cross_entropy_ref, _sigmoid_binary_cross_entropy_cpu)
# their CUDA launches are kept per set of arrays (nnxp.ops._cuda.LaunchPlan); the targets (argument 1) are a new
# array each batch, checked for the same dtype, shape and layout and passed in the old one's place
for _op in (softmax_cross_entropy, sparse_softmax_cross_entropy, sigmoid_binary_cross_entropy):
    _op.plan(per_call=(1,))
categorical_cross_entropy = categorical_cross_entropy_ref
sparse_categorical_cross_entropy = sparse_categorical_cross_entropy_ref
binary_cross_entropy = binary_cross_entropy_ref
mean_squared_error = mean_squared_error_ref
mean_absolute_error = mean_absolute_error_ref


# --- CUDA: the fused logit losses (kernels.cu), each taking its reference's arguments -----------------------


def _loss_launch(name: str, logits: Any, second: Any, grad: Any, rows_or_total: int, cols: int | None,
                 count: int, grid: int, dev: int, loss_out: Any = None) -> tuple[Any, Any]:
    cp = cupy_module()
    dtype = logits.dtype
    scalar = dtype.type
    with _cuda._current(dev):
        g = cp.empty_like(logits) if grad is None else grad
        if loss_out is None or _cuda.capturing():
            # loss, partials and counter made for this launch alone (and while a graph is captured, from its
            # pool: the graph's own loss, which only its replays write): the loss is returned, and two launches in
            # flight must not share partials or tickets (tests/test_ops_cuda.py, the loss launches in flight).
            # The last-block ticket counter is zeroed by a memset on this launch's stream (cupy.zeros is
            # memset_async on the current stream, cupy/_creation/basic.py), so a capture records it as a memset
            # node and every replay starts from 0.
            _cuda.unplanned(allocation=True)  # (the counter's memset runs once: each launch re-arms it)
            loss = cp.empty((), dtype=dtype)
            partials = cp.empty(grid, dtype=dtype)
            counter = cp.zeros(1, dtype=np.uint32)
        else:
            # the caller owns the loss (a training step's head): partials and counter are this stream's, kept
            # per shape (launches on one stream run in order, so never two at a time), the counter zeroed once
            # when made and re-armed to 0 by each launch's last block (finish_mean in kernels.cu): no memset and
            # no allocation per step.
            loss = loss_out
            partials = _cuda._scratch("loss partials", (grid,), dtype, dev)
            counter = _cuda._scratch("loss counter", (1,), np.uint32, dev, zero=True)
    sizes = (np.int64(rows_or_total),) if cols is None else (np.int64(rows_or_total), np.int64(cols))
    # 1.0 / n in double, then cast (as `g *= 1.0 / n`); the mean divides by T(n) (as `.sum() / n`)
    args = (logits, second, g, partials, counter, loss, *sizes, scalar(1.0 / count), scalar(count))
    _cuda._launch(name, dtype, dev, (grid,), (_cuda._BLOCK,), args)
    return loss, g


def _loss_inputs_fit(logits: Any, grad: Any) -> np.dtype | None:
    dtype = _cuda._dtype_of(logits)
    if dtype is None or logits.ndim != 2 or logits.size == 0:
        return None
    dev = logits.device.id
    if not _cuda._fits(logits, dtype, logits.shape, dev):
        return None
    if grad is not None and not _cuda._fits(grad, dtype, logits.shape, dev):
        return None
    return dtype


@softmax_cross_entropy.override
def _softmax_cross_entropy_cuda(logits: Any, target: Any, grad: Any = None, loss_out: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.softmax_cross_entropy_ref` (one warp per row, one launch)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None or not _cuda._fits(target, dtype, logits.shape, logits.device.id):
        return NotImplemented
    rows, cols = logits.shape
    dev = logits.device.id
    grid = _cuda._grid(rows, dev, _cuda._BLOCK // 32)
    return _loss_launch("nnxp_softmax_xent", logits, target, grad, rows, cols, rows, grid, dev, loss_out)


@sparse_softmax_cross_entropy.override
def _sparse_softmax_cross_entropy_cuda(logits: Any, labels: Any, grad: Any = None, loss_out: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.sparse_softmax_cross_entropy_ref` for int64 labels (B,)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None:
        return NotImplemented
    rows, cols = logits.shape
    dev = logits.device.id
    if not _cuda._fits(labels, np.dtype(np.int64), (rows,), dev):
        return NotImplemented
    grid = _cuda._grid(rows, dev, _cuda._BLOCK // 32)
    return _loss_launch("nnxp_sparse_softmax_xent", logits, labels, grad, rows, cols, rows, grid, dev, loss_out)


@sigmoid_binary_cross_entropy.override
def _sigmoid_binary_cross_entropy_cuda(logits: Any, target: Any, grad: Any = None, loss_out: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.sigmoid_binary_cross_entropy_ref` (mean over all elements)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None or not _cuda._fits(target, dtype, logits.shape, logits.device.id):
        return NotImplemented
    dev = logits.device.id
    total = logits.size
    return _loss_launch("nnxp_sigmoid_bce", logits, target, grad, total, None, total, _cuda._grid(total, dev), dev,
                        loss_out)


# --- inputs `nnxp selftest` runs each override on (against its reference, on the user's GPU) --------------------


def _logits(rng: np.random.Generator, dtype: Any, rows: int = 67, cols: int = 33) -> np.ndarray:
    return (rng.normal(size=(rows, cols)) * 3.0).astype(dtype)


softmax_cross_entropy.example(lambda rng, dtype: {"": (
    _logits(rng, dtype), np.eye(33, dtype=dtype)[rng.integers(0, 33, 67)])})
sparse_softmax_cross_entropy.example(lambda rng, dtype: {"": (
    _logits(rng, dtype), rng.integers(0, 33, 67).astype(np.int64))})
sigmoid_binary_cross_entropy.example(lambda rng, dtype: {"": (
    _logits(rng, dtype), rng.integers(0, 2, (67, 33)).astype(dtype))})
