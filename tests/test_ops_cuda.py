"""CUDA fused kernels against their references (DESIGN point 1), plus the dispatchers' NumPy fallback.

A registry of (CUDA op, reference) pairs, each compared on float32 and float64, on shapes built from the sizes
1, 7 and 1031 (none a multiple of a block), with 0, -0, +-inf and NaN in the inputs where they mean something.
Every pair runs the fused op and the reference on the GPU from the same inputs (so cuBLAS and CuPy's
ufuncs are common to both and only the kernel differs), and the kernel-level pairs are also compared with the
reference run by NumPy on the host. Output buffers handed to the fused op are poisoned with NaN first, so an
element it fails to write shows up. Each fused op runs twice and must give the same bits (a race would not).

Tolerances are conftest's per-dtype table; sums over many terms (bias gradients, matmuls, loss means) get
an extra 4 eps sqrt(n) sum|terms| since their order differs, and GELU gets the ulp slack its cancelling
1 + tanh(u) needs (see test_ops_cuda_compile.py). Everything but the fallback tests needs a GPU.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from conftest import require_tool, tol

from nnxp.backend import cupy_module, to_numpy
from nnxp.ops import _cublas, _cuda
from nnxp.ops import batch as B
from nnxp.ops import dense as D
from nnxp.ops import dropout as DR
from nnxp.ops import loss as L
from nnxp.ops import optim as O
from nnxp.ops import reduce as R
from nnxp.ops.activation import ACTIVATION_OPS

gpu = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
# (rows, cols) from the sizes 1, 7 and 1031: square, tall-narrow (cols < 32 threads) and short-wide
SHAPES = [(1, 1), (7, 7), (1031, 7), (7, 1031), (1031, 1031)]
SPECIALS = (0.0, -0.0, np.inf, -np.inf, np.nan)
K_IN = 13  # input features of the dense cases
GELU_C, GELU_C3 = 0.7978845608028654, 0.10703222440890037


# --- inputs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Out:
    """An output buffer: NaN-poisoned for the fused op, zeros for the reference."""

    shape: tuple
    dtype: Any


def _with_specials(rng, a: np.ndarray, specials: bool) -> np.ndarray:
    if specials:
        flat = a.reshape(-1)
        k = min(flat.size, 3 * len(SPECIALS))
        where = rng.choice(flat.size, size=k, replace=False)
        flat[where] = np.resize(np.array(SPECIALS, dtype=a.dtype), k)
    return a


def _normal(rng, shape, dtype, scale=1.0, specials=False) -> np.ndarray:
    return _with_specials(rng, (rng.normal(size=shape) * scale).astype(dtype), specials)


def _materialize(args: tuple, xp: Any, poison: bool) -> list:
    out = []
    for a in args:
        if isinstance(a, Out):
            buf = xp.empty(a.shape, dtype=a.dtype)
            buf.fill(np.nan if poison else 0)
            out.append(buf)
        elif isinstance(a, np.ndarray):
            out.append(xp.asarray(a.copy()))
        else:
            out.append(a)
    return out


# --- tolerances ----------------------------------------------------------------------------------------------


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _finite(a: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.nan_to_num(np.asarray(a, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _sum_slack(abs_terms_sum: np.ndarray, n_terms: int, dtype) -> np.ndarray:
    """Room for a different summation order: 4 eps sqrt(n) sum|terms|."""
    return 4 * _eps(dtype) * np.sqrt(max(n_terms, 1)) * _finite(abs_terms_sum)


def _act_slack(act: str, z: np.ndarray, y: np.ndarray, dy: np.ndarray | None, dtype) -> tuple:
    """(forward, backward) per-element slack of one activation (None where the table suffices)."""
    eps = _eps(dtype)
    zf, yf = _finite(z), _finite(y)
    if act == "gelu":
        fwd = 2 * eps * np.abs(zf)
        bwd = None
        if dy is not None:
            bwd = 2 * eps * np.abs(_finite(dy)) * (1 + 2 * np.abs(zf) * (GELU_C + GELU_C3 * zf * zf))
        return fwd, bwd
    if act == "softmax":
        n = z.shape[-1]
        fwd = 4 * eps * np.sqrt(n) * np.abs(yf)
        bwd = None
        if dy is not None:
            row = np.abs(_finite(dy) * yf).sum(axis=-1, keepdims=True)
            bwd = 4 * eps * np.sqrt(n) * np.abs(yf) * row
        return fwd, bwd
    return None, None


def _assert_close(actual, expected, dtype, slack=None, what=""):
    """Within conftest's tolerance plus `slack`; NaN and +-inf must sit at the same places."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    t = tol(dtype)
    a64, e64 = actual.astype(np.float64), expected.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(e64)
    finite = np.isfinite(a64) & np.isfinite(e64)
    with np.errstate(all="ignore"):
        room = t["atol"] + t["rtol"] * np.abs(e64) + (0.0 if slack is None else slack)
        close = finite & (np.abs(a64 - e64) <= room)
    ok = both_nan | close | (a64 == e64)
    if not ok.all():
        bad = np.flatnonzero(~ok.reshape(-1))[:5]
        raise AssertionError(
            f"{what}: {(~ok).sum()} of {ok.size} differ; at {bad.tolist()} got {a64.reshape(-1)[bad]} "
            f"expected {e64.reshape(-1)[bad]}"
        )


# --- the registry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A fused op and its reference. Both take the same arguments and return a tuple of output arrays."""

    cuda: Callable[..., tuple]
    ref: Callable[..., tuple]
    make: Callable[..., tuple]  # (rng, shape, dtype, specials) -> host args (arrays, Out, scalars)
    slack: Callable[..., tuple] = field(default=lambda args, ref_out, dtype: (None,) * len(ref_out))
    specials: bool = True  # also run with 0, +-inf, NaN in the inputs
    host: bool = True  # also compare with the reference run by NumPy (False: it contains a matmul)


def _drop_none(*xs) -> tuple:
    return tuple(x for x in xs if x is not None)


def _fused(result: Any) -> Any:
    """A fused op's result, which must not be NotImplemented: every registry input is one it handles."""
    assert result is not NotImplemented, "the fused op declined inputs it should handle"
    return result


def _pair_bias_act(act: str, use_bias: bool) -> Pair:
    needs_z = ACTIVATION_OPS[act].needs_z

    def make(rng, shape, dtype, specials):
        z = _normal(rng, shape, dtype, 3.0, specials)
        b = _normal(rng, shape[1:], dtype, 1.0, specials) if use_bias else None
        return z, b, (Out(shape, dtype) if needs_z else None)

    def slack(args, ref_out, dtype):
        z, b, _ = args
        with np.errstate(all="ignore"):
            zb = z + b if b is not None else z
        fwd, _ = _act_slack(act, zb, to_numpy(ref_out[0]), None, dtype)
        return (fwd, None) if needs_z else (fwd,)

    return Pair(
        cuda=lambda z, b, z_out: _drop_none(*_fused(D.bias_activation_forward.fused(z, b, act, z_out))),
        ref=lambda z, b, z_out: _drop_none(*D.bias_activation_forward.ref(z, b, act, z_out)),
        make=make,
        slack=slack,
    )


def _pair_softmax_forward(in_place: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        return (_normal(rng, shape, dtype, 3.0, specials), None if in_place else Out(shape, dtype))

    def slack(args, ref_out, dtype):
        return (_act_slack("softmax", args[0], to_numpy(ref_out[0]), None, dtype)[0],)

    return Pair(
        cuda=lambda z, out: (_fused(D.softmax_forward.fused(z, z if out is None else out)),),
        ref=lambda z, out: (D.softmax_forward.ref(z, z if out is None else out),),
        make=make,
        slack=slack,
    )


def _backward_inputs(rng, shape, dtype, act, specials):
    """z (with specials), y = f(z) by the NumPy reference, dy (with specials)."""
    z = _normal(rng, shape, dtype, 3.0, specials)
    with np.errstate(all="ignore"):
        y = ACTIVATION_OPS[act].forward(z, np.empty_like(z))
    return z, y, _normal(rng, shape, dtype, 1.0, specials)


def _dz_slacks(act, z, y, dy, dz_ref, dtype):
    """(slack of dz, slack of its column sums)."""
    _, dz_slack = _act_slack(act, z, y, dy, dtype)
    col = _sum_slack(np.abs(_finite(dz_ref)).sum(axis=0), dz_ref.shape[0], dtype)
    if dz_slack is not None:
        col = col + dz_slack.sum(axis=0)
    return dz_slack, col


def _pair_act_backward(act: str, use_bias: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        z, y, dy = _backward_inputs(rng, shape, dtype, act, specials)
        return dy, y, z, (Out(shape[1:], dtype) if use_bias else None)

    def slack(args, ref_out, dtype):
        dy, y, z, _ = args
        dz_slack, col = _dz_slacks(act, z, y, dy, to_numpy(ref_out[0]), dtype)
        return (dz_slack, col) if use_bias else (dz_slack,)

    return Pair(
        cuda=lambda dy, y, z, db: _drop_none(_fused(D.activation_backward_bias.fused(dy, y, z, act, db)), db),
        ref=lambda dy, y, z, db: _drop_none(D.activation_backward_bias.ref(dy, y, z, act, db), db),
        make=make,
        slack=slack,
    )


def _pair_dense_forward(act: str, use_bias: bool) -> Pair:
    needs_z = ACTIVATION_OPS[act].needs_z

    def make(rng, shape, dtype, specials):
        rows, cols = shape
        x, w = _normal(rng, (rows, K_IN), dtype), _normal(rng, (K_IN, cols), dtype, 0.5)
        b = _normal(rng, (cols,), dtype) if use_bias else None
        return x, w, b, Out(shape, dtype), (Out(shape, dtype) if needs_z else None)

    def slack(args, ref_out, dtype):
        x, w, b = args[:3]
        z = x.astype(np.float64) @ w + (0 if b is None else b)
        fwd, _ = _act_slack(act, z, to_numpy(ref_out[0]), None, dtype)
        return (fwd, None) if needs_z else (fwd,)

    return Pair(
        cuda=lambda x, w, b, out, z_out: _drop_none(*_fused(D.dense_forward.fused(x, w, b, act, out, z_out))),
        ref=lambda x, w, b, out, z_out: _drop_none(*D.dense_forward_ref(x, w, b, act, out, z_out)),
        make=make,
        slack=slack,
        specials=False,  # specials through a matmul only smear NaN over rows; the kernel pairs cover them
        host=False,
    )


def _pair_dense_backward(act: str, use_bias: bool, need_dx: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        rows, cols = shape
        x, w = _normal(rng, (rows, K_IN), dtype), _normal(rng, (K_IN, cols), dtype, 0.5)
        z, y, dy = _backward_inputs(rng, shape, dtype, act, False)
        db = Out((cols,), dtype) if use_bias else None
        dx_out = Out((rows, K_IN), dtype) if need_dx else None
        return dy, x, w, y, z, Out((K_IN, cols), dtype), db, dx_out

    def run(fn):
        def call(dy, x, w, y, z, dw, db, dx_out):
            dx = _fused(fn(dy, x, w, y, z, act, dw, db, dx_out, need_dx))
            return _drop_none(dy, dw, db, dx)

        return call

    def slack(args, ref_out, dtype):
        dy, x, w, y, z = args[:5]
        dz = to_numpy(ref_out[0])
        dz_slack, col = _dz_slacks(act, z, y, dy, dz, dtype)
        dz_slack = np.zeros(dz.shape) if dz_slack is None else dz_slack
        adz, ax, aw = np.abs(_finite(dz)), np.abs(x.astype(np.float64)), np.abs(w.astype(np.float64))
        dw = _sum_slack(ax.T @ adz, dz.shape[0], dtype) + ax.T @ dz_slack  # (K_IN, cols)
        dx = _sum_slack(adz @ aw.T, dz.shape[1], dtype) + dz_slack @ aw.T  # (rows, K_IN)
        return _drop_none(dz_slack, dw, col if use_bias else None, dx if need_dx else None)

    return Pair(cuda=run(D.dense_backward.fused), ref=run(D.dense_backward_ref), make=make, slack=slack,
                specials=False, host=False)


def _loss_slack(n_terms_of):
    def slack(args, ref_out, dtype):
        loss = to_numpy(ref_out[0])
        return _sum_slack(np.abs(loss), n_terms_of(args), dtype), None  # non-negative terms: sum|t| = |loss|

    return slack


def _pair_softmax_xent(soft: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        logits = _normal(rng, shape, dtype, 3.0, specials)
        if soft:
            t = rng.uniform(size=shape)
            target = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
        else:
            target = np.eye(shape[1], dtype=dtype)[rng.integers(0, shape[1], shape[0])]
        return logits, target, Out(shape, dtype)

    return Pair(
        cuda=lambda lg, t, g: _fused(L.softmax_cross_entropy.fused(lg, t, g)),
        ref=lambda lg, t, g: L.softmax_cross_entropy_ref(lg, t, g),
        make=make,
        slack=_loss_slack(lambda args: args[0].size),
    )


def _pair_sparse_softmax_xent(wrapped: bool = False) -> Pair:
    """Labels in [0, cols), or with `wrapped` in [-cols, cols): negative labels count from the end (documented)."""
    def make(rng, shape, dtype, specials):
        logits = _normal(rng, shape, dtype, 3.0, specials)
        low = -shape[1] if wrapped else 0
        return logits, rng.integers(low, shape[1], shape[0]).astype(np.int64), Out(shape, dtype)

    return Pair(
        cuda=lambda lg, lab, g: _fused(L.sparse_softmax_cross_entropy.fused(lg, lab, g)),
        ref=lambda lg, lab, g: L.sparse_softmax_cross_entropy_ref(lg, lab, g),
        make=make,
        slack=_loss_slack(lambda args: args[0].size),
    )


def _pair_sigmoid_bce() -> Pair:
    def make(rng, shape, dtype, specials):
        logits = _normal(rng, shape, dtype, 3.0, specials)
        target = rng.uniform(size=shape).astype(dtype)
        target.reshape(-1)[::3] = np.round(target.reshape(-1)[::3])  # some hard 0 / 1 labels too
        return logits, target, Out(shape, dtype)

    return Pair(
        cuda=lambda lg, t, g: _fused(L.sigmoid_binary_cross_entropy.fused(lg, t, g)),
        ref=lambda lg, t, g: L.sigmoid_binary_cross_entropy_ref(lg, t, g),
        make=make,
        slack=_loss_slack(lambda args: args[0].size),
    )


# optimizer name -> (its state buffers, hyper-parameters in the reference's argument order). A state is None
# (absent), "any" (normal), "pos" (|normal|: a running mean of squares) or "small" (0.1 normal: centered RMSprop's
# mean gradient, small enough that avg_sq - avg_g^2 + eps stays positive mostly).
OPTIMIZERS = {
    "sgd": ([None], dict(lr=0.01, momentum=0.0, nesterov=False)),
    "sgd_momentum": (["any"], dict(lr=0.01, momentum=0.9, nesterov=False)),
    "sgd_nesterov": (["any"], dict(lr=0.01, momentum=0.9, nesterov=True)),
    "rmsprop": (["pos", None, None], dict(lr=0.001, rho=0.9, momentum=0.0, epsilon=1e-7)),
    "rmsprop_momentum": (["pos", "any", None], dict(lr=0.001, rho=0.9, momentum=0.9, epsilon=1e-7)),
    "rmsprop_centered": (["pos", None, "small"], dict(lr=0.001, rho=0.9, momentum=0.0, epsilon=1e-7)),
    "rmsprop_momentum_centered": (["pos", "any", "small"], dict(lr=0.001, rho=0.9, momentum=0.5, epsilon=1e-7)),
    "adagrad": (["pos"], dict(lr=0.01, epsilon=1e-7)),
    "adadelta": (["pos", "pos"], dict(lr=1.0, rho=0.95, epsilon=1e-7)),
    "adam": (["any", "pos"], dict(lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)),
    "adamax": (["any", "pos"], dict(lr=0.002, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)),
    "lion": (["any"], dict(lr=0.001, beta_1=0.9, beta_2=0.99)),
}


def _state(rng, kind, n, dtype):
    if kind is None:
        return None
    a = _normal(rng, (n,), dtype)
    return np.abs(a) if kind == "pos" else (a * dtype(0.1) if kind == "small" else a)


def _pair_optimizer(name: str, weight_decay: float) -> Pair:
    kind = name.split("_")[0]
    state_kinds, hyper = OPTIMIZERS[name]
    ref_fn, cuda_fn = getattr(O, f"{kind}_ref"), getattr(O, kind).fused

    def make(rng, shape, dtype, specials):
        n = shape[0] * shape[1]  # the flat buffer: 1 ... 1031^2 elements
        p, g = _normal(rng, (n,), dtype), _normal(rng, (n,), dtype, 1.0, specials)
        return (p, g, *(_state(rng, k, n, dtype) for k in state_kinds))

    def call(fn, extra):
        def run(p, g, *states):
            tmp = np.empty_like(p) if isinstance(p, np.ndarray) else cupy_module().empty_like(p)
            result = fn(p, g, *states, tmp, *hyper.values(), **extra)
            assert result is None, f"{name} returned {result!r}"  # NotImplemented: it declined
            return _drop_none(p, *states)

        return run

    def ref(p, g, *states):
        if weight_decay:
            O.weight_decay_ref(p, hyper["lr"], weight_decay)  # first, as Optimizer.apply does
        return call(ref_fn, {})(p, g, *states)

    return Pair(cuda=call(cuda_fn, {"weight_decay": weight_decay}), ref=ref, make=make)


def _kernel_scalars(kind: str, dtype, hyper: dict, states: tuple, weight_decay: float) -> tuple:
    """The T scalars the kernel of `kind` reads from `hp` for these hyper-parameters (by name, as the rule declares)."""
    return getattr(O, kind).device_scalars(dtype, states, hyper, weight_decay)


def _pair_optimizer_hp(name: str, weight_decay: float) -> Pair:
    """The kernel reading its scalars from a device buffer (a CUDA-graph step): the by-value ones are wrong."""
    kind = name.split("_")[0]
    state_kinds, hyper = OPTIMIZERS[name]
    base = _pair_optimizer(name, weight_decay)
    wrong = {k: (v + 5 if k == "step" else v if isinstance(v, bool) else v * 0.5) for k, v in hyper.items()}

    def cuda(p, g, *states):
        hp = cupy_module().asarray(np.array(_kernel_scalars(kind, p.dtype, hyper, states, weight_decay)))
        tmp = cupy_module().empty_like(p)
        result = getattr(O, kind).fused(p, g, *states, tmp, *wrong.values(), weight_decay=0.25, hp=hp)
        assert result is None, f"{name} declined hp={hp!r}"
        return _drop_none(p, *states)

    return Pair(cuda=cuda, ref=base.ref, make=base.make)


DROPOUT_RATE, DROPOUT_SEED = 0.3, 20_261_123


def _pair_dropout_forward(store_mask: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        return _normal(rng, shape, dtype, 1.0, specials), Out(shape, dtype), (Out(shape, dtype) if store_mask else None)

    return Pair(
        cuda=lambda x, out, m: _drop_none(*_fused(DR.dropout_forward.fused(x, DROPOUT_RATE, DROPOUT_SEED, out, m))),
        ref=lambda x, out, m: _drop_none(*DR.dropout_forward_ref(x, DROPOUT_RATE, DROPOUT_SEED, out, m))[
            : 2 if store_mask else 1
        ],
        make=make,
    )


def _pair_dropout_backward() -> Pair:
    def make(rng, shape, dtype, specials):
        return _normal(rng, shape, dtype, 1.0, specials), Out(shape, dtype)

    return Pair(
        cuda=lambda dy, out: (_fused(DR.dropout_backward.fused(dy, DROPOUT_RATE, DROPOUT_SEED, out)),),
        ref=lambda dy, out: (DR.dropout_backward_ref(dy, DROPOUT_RATE, DROPOUT_SEED, out),),
        make=make,
    )


def _pair_gather_rows(kind: str) -> Pair:
    """A replayed step's gather (nnxp/ops/batch.py): rows of x, int64 labels, or one row of a table."""

    def make(rng, shape, dtype, specials):
        rows, cols = shape
        n = rows + 5
        cursor = np.array([2], dtype=np.int64)
        if kind == "table":  # the optimizer's scalars: row `cursor` of a (batches, width) table
            return _normal(rng, (n, cols), dtype, 1.0, specials), None, None, cursor, Out((1, cols), dtype)
        starts = np.sort(rng.integers(0, 6, 3)).astype(np.int64)  # each batch's first row: starts + rows <= n
        perm = rng.permutation(n).astype(np.int64)
        if kind == "labels":
            return rng.integers(-9, 10, n).astype(np.int64), perm, starts, cursor, np.zeros(rows, np.int64)
        return _normal(rng, (n, cols), dtype, 1.0, specials), perm, starts, cursor, Out(shape, dtype)

    return Pair(cuda=lambda *a: (_fused(B.gather_rows.fused(*a)),), ref=lambda *a: (B.gather_rows_ref(*a),),
                make=make, specials=kind != "labels")


def _pair_record_step() -> Pair:
    """A replayed step's entry in the epoch's record: loss and sums into column `cursor`, then cursor + 1."""

    def make(rng, shape, dtype, specials):
        k, cols = min(shape[1], 4), shape[0]
        return (np.asarray(rng.normal(), dtype=dtype), rng.normal(size=k), rng.normal(size=(1 + k, cols)),
                np.array([cols - 1], dtype=np.int64))

    return Pair(cuda=lambda *a: _fused(B.record_step.fused(*a)), ref=lambda *a: B.record_step_ref(*a), make=make,
                specials=False)


def _pair_count_correct(sparse: bool) -> Pair:
    """Accuracy's count (nnxp/ops/reduce.py): argmax of each row against its label, into a 0-d float64."""

    def make(rng, shape, dtype, specials):
        pred = _normal(rng, shape, dtype, 1.0, specials)
        if shape[1] > 1:  # ties: a row whose maximum appears twice (the first one counts)
            pred[0, -1] = pred[0, 0] = np.abs(pred[0]).max() + 1
        labels = rng.integers(0, shape[1], shape[0]).astype(np.int64)
        pred[1::3, :] = 0  # a third of the rows all ties: argmax 0
        if not sparse:
            labels = np.eye(shape[1], dtype=dtype)[labels]
        return pred, labels, Out((), np.float64)

    return Pair(cuda=lambda *a: (_fused(R.count_correct.fused(*a)),), ref=lambda *a: (R.count_correct_ref(*a),),
                make=make)


PAIRS: dict[str, Pair] = {}
for _act in sorted(ACTIVATION_OPS):
    for _bias in (True, False):
        _b = "bias" if _bias else "nobias"
        PAIRS[f"bias_act/{_act}/{_b}"] = _pair_bias_act(_act, _bias)
        PAIRS[f"act_backward/{_act}/{_b}"] = _pair_act_backward(_act, _bias)
        PAIRS[f"dense_forward/{_act}/{_b}"] = _pair_dense_forward(_act, _bias)
        PAIRS[f"dense_backward/{_act}/{_b}"] = _pair_dense_backward(_act, _bias, True)
    PAIRS[f"dense_backward/{_act}/bias/no_dx"] = _pair_dense_backward(_act, True, False)
PAIRS["softmax_xent/onehot"] = _pair_softmax_xent(False)
PAIRS["softmax_xent/soft"] = _pair_softmax_xent(True)
PAIRS["sparse_softmax_xent"] = _pair_sparse_softmax_xent()
PAIRS["sparse_softmax_xent/wrapped"] = _pair_sparse_softmax_xent(wrapped=True)
PAIRS["sigmoid_bce"] = _pair_sigmoid_bce()
for _name in OPTIMIZERS:
    for _wd in (0.0, 0.004):
        PAIRS[f"optim/{_name}/wd={_wd}"] = _pair_optimizer(_name, _wd)
        PAIRS[f"optim/{_name}/wd={_wd}/hp"] = _pair_optimizer_hp(_name, _wd)
PAIRS["dropout_forward/mask"] = _pair_dropout_forward(True)
PAIRS["dropout_forward/nomask"] = _pair_dropout_forward(False)
PAIRS["dropout_backward"] = _pair_dropout_backward()
PAIRS["softmax_forward"] = _pair_softmax_forward(False)
PAIRS["softmax_forward/in_place"] = _pair_softmax_forward(True)
for _kind in ("rows", "labels", "table"):
    PAIRS[f"gather_rows/{_kind}"] = _pair_gather_rows(_kind)
PAIRS["record_step"] = _pair_record_step()
PAIRS["count_correct/sparse"] = _pair_count_correct(True)
PAIRS["count_correct/onehot"] = _pair_count_correct(False)

# the registered op (nnxp.ops._cuda.OPS) each pair checks, by the pair's first name part (optim/<rule>_...: <rule>)
PAIR_OPS = {"bias_act": "bias_activation_forward", "act_backward": "activation_backward_bias",
            "dense_forward": "dense_forward", "dense_backward": "dense_backward",
            "softmax_xent": "softmax_cross_entropy", "sparse_softmax_xent": "sparse_softmax_cross_entropy",
            "sigmoid_bce": "sigmoid_binary_cross_entropy", "dropout_forward": "dropout_forward",
            "dropout_backward": "dropout_backward", "softmax_forward": "softmax_forward",
            "gather_rows": "gather_rows", "record_step": "record_step", "count_correct": "count_correct"}


def _pair_op(key: str) -> str:
    head, *rest = key.split("/")
    return rest[0].split("_")[0] if head == "optim" else PAIR_OPS[head]


def test_every_registered_op_has_an_override_and_a_parity_pair():
    """Adding a fused op is the kernel, its override beside the reference (an Op), and a pair here."""
    assert {_pair_op(key) for key in PAIRS} == set(_cuda.OPS)
    for name, op in _cuda.OPS.items():
        assert op.fused is not None and callable(op.ref), name
        assert op.ref is not op.fused and op.__name__ == name


PARAMS = [
    pytest.param(name, specials, id=f"{name}{'/specials' if specials else ''}")
    for name, pair in PAIRS.items()
    for specials in ((False, True) if pair.specials else (False,))
]


# --- the parity test -----------------------------------------------------------------------------------------


@gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name, specials", PARAMS)
def test_fused_op_matches_reference(name, specials, dtype, shape):
    _check_pair(name, specials, dtype, shape)


def _check_pair(name, specials, dtype, shape):
    cp = cupy_module()
    pair = PAIRS[name]
    seed = zlib.crc32(f"{name}|{specials}|{np.dtype(dtype).name}|{shape}".encode())
    args = pair.make(np.random.default_rng(seed), shape, dtype, specials)
    with np.errstate(all="ignore"):
        fused = [to_numpy(a) for a in pair.cuda(*_materialize(args, cp, poison=True))]
        again = [to_numpy(a) for a in pair.cuda(*_materialize(args, cp, poison=True))]
        ref_dev = [to_numpy(a) for a in pair.ref(*_materialize(args, cp, poison=False))]
        ref_host = [np.asarray(a) for a in pair.ref(*_materialize(args, np, poison=False))] if pair.host else None
        slack = pair.slack(args, ref_dev, dtype)
    assert len(fused) == len(ref_dev) == len(slack)
    for i, (a, b) in enumerate(zip(fused, again, strict=True)):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} output {i} changed between two runs (a race?)")
    for i, (a, e, s) in enumerate(zip(fused, ref_dev, slack, strict=True)):
        _assert_close(a, e, dtype, s, f"{name} output {i} vs the reference on the GPU")
    if ref_host is not None:
        for i, (a, e, s) in enumerate(zip(fused, ref_host, slack, strict=True)):
            _assert_close(a, e, dtype, s, f"{name} output {i} vs the reference on the host")


# --- fallbacks and the loader on the GPU ---------------------------------------------------------------------


@gpu
def test_unhandled_inputs_fall_back_to_the_reference():
    cp = cupy_module()
    x16 = cp.ones((4, 3), dtype=cp.float16)
    assert D.dense_forward.fused(x16, cp.ones((3, 2), cp.float16), None, "relu") is NotImplemented
    x = cp.asarray(np.random.default_rng(0).normal(size=(6, 4)))
    assert D.bias_activation_forward.fused(x[:, ::2], None, "relu") is NotImplemented  # not C-contiguous
    assert L.softmax_cross_entropy.fused(x, x.astype(cp.float32)) is NotImplemented  # mixed dtypes
    labels32 = cp.zeros(6, dtype=cp.int32)
    assert L.sparse_softmax_cross_entropy.fused(x, labels32) is NotImplemented  # int64 labels only
    assert O.adam.fused(x[:, 0], x[:, 1], x[:, 2], x[:, 3], None, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
    # the dispatchers then give the reference's result
    loss, g = L.sparse_softmax_cross_entropy(x, labels32)
    ref_loss, ref_g = L.sparse_softmax_cross_entropy_ref(x, labels32)
    np.testing.assert_array_equal(to_numpy(g), to_numpy(ref_g))
    assert float(loss) == float(ref_loss)


@gpu
def test_loss_is_a_device_scalar_and_repeats_exactly():
    cp = cupy_module()
    rng = np.random.default_rng(3)
    logits = cp.asarray(rng.normal(size=(300, 10)).astype(np.float32))
    target = cp.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 300)])
    first, _ = L.softmax_cross_entropy.fused(logits, target)
    assert isinstance(first, cp.ndarray) and first.shape == () and first.dtype == cp.float32
    for _ in range(3):  # the ticket counter re-arms itself: every launch finishes the same way
        again, _ = L.softmax_cross_entropy.fused(logits, target)
        assert float(again) == float(first)


@gpu
def test_compile_time_is_recorded_once_per_device_and_dtype():
    cp = cupy_module()
    x = cp.ones((2, 3), dtype=cp.float64)
    D.bias_activation_forward.fused(x, None, "relu")
    seconds = _cuda.compile_seconds()
    key = f"cuda:{x.device.id}/float64"
    assert key in seconds and seconds[key] > 0
    D.bias_activation_forward.fused(x, None, "tanh")
    assert _cuda.compile_seconds()[key] == seconds[key]


@gpu
def test_dropout_keeps_the_expected_fraction():
    cp = cupy_module()
    x = cp.ones(1_000_003, dtype=cp.float32)
    y, _ = DR.dropout_forward.fused(x, 0.25, seed=7)
    kept = float((y != 0).mean())
    assert abs(kept - 0.75) < 5 * np.sqrt(0.25 * 0.75 / x.size)
    assert float(y.max()) == np.float32(1.0 / 0.75)
    y2, _ = DR.dropout_forward.fused(x, 0.25, seed=8)
    assert float((y != y2).mean()) > 0.2  # a new seed, a new mask


# --- model-level parity: the same seeded model trained on the CPU and on CUDA --------------------------------


def _train(device: str, dtype: str, hidden: list[str], last: str, loss: str, optimizer: Any, x, y, epochs=3):
    from nnxp import Dense, Sequential, optimizers

    layers = [Dense(16, hidden[0], input_dim=x.shape[1])] + [Dense(16, a) for a in hidden[1:]]
    layers.append(Dense(y.shape[1] if y.ndim == 2 else int(y.max()) + 1, last))
    model = Sequential(layers, device=device, seed=0, dtype=dtype)
    model.compile(optimizer=optimizers.get(optimizer), loss=loss)
    history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return to_numpy(model.params), np.array(history.history["loss"])


# float64 trains with Adam and the kinked activations (a kink flips only for |z| < 1e-15); float32 with SGD and
# smooth ones, since Adam's first steps move every weight by +-lr whatever its gradient's size, so a float32
# rounding that flips the sign of a near-zero gradient would move a weight by 2 lr.
_SGD = {"name": "sgd", "learning_rate": 0.05, "momentum": 0.9}
MODEL_CASES = {
    "float64/categorical": ("float64", ["relu", "leaky_relu", "elu"], "softmax", "categorical_crossentropy", "adam"),
    "float64/sparse": ("float64", ["softplus", "gelu"], "softmax", "sparse_categorical_crossentropy", "adam"),
    "float64/binary": ("float64", ["tanh", "relu"], "sigmoid", "binary_crossentropy", "adam"),
    "float32/categorical": ("float32", ["tanh", "gelu"], "softmax", "categorical_crossentropy", _SGD),
    "float32/sparse": ("float32", ["sigmoid", "softplus"], "softmax", "sparse_categorical_crossentropy", _SGD),
    "float32/binary": ("float32", ["gelu", "tanh"], "sigmoid", "binary_crossentropy", _SGD),
    "float32/silu": ("float32", ["silu", "elu"], "softmax", "categorical_crossentropy", _SGD),
}
# after 3 epochs of 8 steps: parameters and per-epoch losses, CPU vs CUDA
MODEL_TOL = {"float64": dict(rtol=1e-9, atol=1e-11), "float32": dict(rtol=2e-3, atol=2e-4)}


@gpu
@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_trains_the_same_on_cpu_and_cuda(case, monkeypatch):
    _check_model_case(case, monkeypatch)


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_trains_the_same_through_the_kernels_on_the_emulator(fake_cupy, case, monkeypatch):
    # the whole device="cuda" training path (fit, layers, fused kernels, optimizer kernel) on the stand-in CuPy
    _check_model_case(case, monkeypatch)


def _check_model_case(case, monkeypatch):
    dtype, hidden, last, loss, optimizer = MODEL_CASES[case]
    fused = set()  # which CUDA overrides did the work (rather than declining to the reference)

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            if result is not NotImplemented:
                fused.add(name)
            return result

        return wrapper

    for name in ("dense_forward", "dense_backward", "softmax_cross_entropy", "sparse_softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy"):
        op = getattr(D if name.startswith("dense") else L, name)
        monkeypatch.setattr(op, "fused", spy(name, op.fused))
    rng = np.random.default_rng(11)
    x = rng.normal(size=(256, 9))
    labels = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 0.5)
    if loss == "binary_crossentropy":
        y = np.stack([labels > 0, x[:, 4] > 0], axis=1).astype(np.float64)
    elif loss == "sparse_categorical_crossentropy":
        y = labels
    else:
        y = np.eye(3)[labels]
    p_cpu, loss_cpu = _train("cpu", dtype, hidden, last, loss, optimizer, x, y)
    assert not fused
    p_gpu, loss_gpu = _train("cuda", dtype, hidden, last, loss, optimizer, x, y)
    assert {"dense_forward", "dense_backward"} <= fused and len(fused) == 3, fused
    np.testing.assert_allclose(loss_gpu, loss_cpu, **MODEL_TOL[dtype])
    np.testing.assert_allclose(p_gpu, p_cpu, **MODEL_TOL[dtype])


# --- without a GPU: the dispatchers are the references on NumPy ----------------------------------------------


def _poisoned_cuda(monkeypatch):
    """Make every CUDA override fail loudly, proving the NumPy path never reaches it.

    The fast extra's compiled CPU loops are switched off here: they agree with the references to rounding
    (tests/test_ops_dense.py, test_ops_loss.py), and these tests compare bit for bit.
    """
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", False)

    def boom(*args, **kwargs):
        raise AssertionError("a NumPy input reached the CUDA wrapper")

    for name in ("dense_forward", "dense_backward", "softmax_cross_entropy", "sparse_softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy"):
        monkeypatch.setattr(getattr(D if name.startswith("dense") else L, name), "fused", boom)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
def test_dense_dispatchers_are_the_references_on_numpy(monkeypatch, act, dtype):
    _poisoned_cuda(monkeypatch)
    rng = np.random.default_rng(5)
    x, w, b = _normal(rng, (7, K_IN), dtype), _normal(rng, (K_IN, 5), dtype), _normal(rng, (5,), dtype)
    y1, z1 = D.dense_forward(x, w, b, act, np.empty((7, 5), dtype), np.empty((7, 5), dtype))
    y2, z2 = D.dense_forward_ref(x, w, b, act, np.empty((7, 5), dtype), np.empty((7, 5), dtype))
    np.testing.assert_array_equal(y1, y2)
    assert (z1 is None) == (z2 is None)
    dy = _normal(rng, (7, 5), dtype)
    dw1, db1, dw2, db2 = (np.empty_like(w), np.empty_like(b), np.empty_like(w), np.empty_like(b))
    dz1, dz2 = dy.copy(), dy.copy()
    dx1 = D.dense_backward(dz1, x, w, y1, z1, act, dw1, db1)
    dx2 = D.dense_backward_ref(dz2, x, w, y2, z2, act, dw2, db2)
    for a, e in ((dz1, dz2), (dw1, dw2), (db1, db2), (dx1, dx2)):
        np.testing.assert_array_equal(a, e)
    assert D.dense_backward(dy.copy(), x, w, y1, z1, act, dw1, None, need_dx=False) is None


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_loss_dispatchers_are_the_references_on_numpy(monkeypatch, dtype):
    _poisoned_cuda(monkeypatch)
    rng = np.random.default_rng(6)
    logits = _normal(rng, (9, 4), dtype, 3.0)
    labels = rng.integers(0, 4, 9)
    onehot = np.eye(4, dtype=dtype)[labels]
    target = rng.uniform(size=(9, 4)).astype(dtype)
    for fn, ref, t in (
        (L.softmax_cross_entropy, L.softmax_cross_entropy_ref, onehot),
        (L.sparse_softmax_cross_entropy, L.sparse_softmax_cross_entropy_ref, labels),
        (L.sigmoid_binary_cross_entropy, L.sigmoid_binary_cross_entropy_ref, target),
    ):
        loss1, g1 = fn(logits, t)
        loss2, g2 = ref(logits, t)
        assert loss1 == loss2 and np.asarray(loss1).dtype == np.asarray(loss2).dtype
        np.testing.assert_array_equal(g1, g2)


def test_cuda_wrappers_decline_numpy_arrays():
    x = np.ones((3, 4))
    assert D.dense_forward.fused(x, np.ones((4, 2)), None, "relu") is NotImplemented
    assert D.dense_backward.fused(x, x, x, x, None, "linear", x, None) is NotImplemented
    assert D.bias_activation_forward.fused(x, None, "tanh") is NotImplemented
    assert D.activation_backward_bias.fused(x, x, None, "tanh") is NotImplemented
    assert L.softmax_cross_entropy.fused(x, x) is NotImplemented
    assert L.sparse_softmax_cross_entropy.fused(x, np.zeros(3, dtype=np.int64)) is NotImplemented
    assert L.sigmoid_binary_cross_entropy.fused(x, x) is NotImplemented
    p = np.ones(5)
    assert O.sgd.fused(p, p, None, p, 0.1, 0.0, False) is NotImplemented
    assert O.rmsprop.fused(p, p, p, None, None, p, 0.1, 0.9, 0.0, 1e-7) is NotImplemented
    assert O.adagrad.fused(p, p, p, p, 0.1, 1e-7) is NotImplemented
    assert O.adadelta.fused(p, p, p, p, p, 1.0, 0.95, 1e-7) is NotImplemented
    assert O.adam.fused(p, p, p, p, p, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
    assert O.adamax.fused(p, p, p, p, p, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
    assert DR.dropout_forward.fused(x, 0.5, 1) is NotImplemented
    assert DR.dropout_backward.fused(x, 0.5, 1) is NotImplemented


def test_dropout_reference_is_generic_and_consistent():
    rng = np.random.default_rng(8)
    x = _normal(rng, (31, 7), np.float32)
    y, mask = DR.dropout_forward_ref(x, 0.4, 99)
    np.testing.assert_array_equal(y, x * mask)
    assert set(np.unique(mask)) <= {np.float32(0), np.float32(1 / 0.6)}
    dx = DR.dropout_backward_ref(np.ones_like(x), 0.4, 99)
    np.testing.assert_array_equal(dx, mask)


# --- without a GPU: the real kernels on a CPU emulator of CUDA, behind a stand-in CuPy ----------------------
#
# tests/cuda_emu builds kernels.cu unchanged against a CPU model of CUDA (each thread a fiber, __syncthreads and
# warp shuffles real barriers, blocks in a chosen order). A stand-in `cupy` (NumPy arrays of a subclass, each
# allocation fenced by guard bytes, and a RawModule whose kernels are the emulator's) then runs the whole
# registry above on the CPU: the kernel bodies, the wrappers' launch shapes, argument types and buffer sizes.
# Every launch of a kernel takes the next schedule (forward, reverse, shuffled blocks and threads), so the two
# runs of each fused op in _check_pair differ in order and must still agree bit for bit. A write outside any
# buffer trips the guard check after the launch. What only a GPU shows: NVRTC, CUDA's math ulps, races
# between blocks, speed.

@pytest.mark.parametrize("name", sorted(PAIRS))
def test_wrappers_against_a_fake_cupy(fake_cupy, name):
    for dtype in DTYPES:
        for shape in ((1, 1), (7, 7), (1031, 7), (9, 200)):
            for specials in (False, True) if PAIRS[name].specials else (False,):
                _check_pair(name, specials, dtype, shape)
    assert set(_cuda.compile_seconds()) <= {"cuda:0/float32", "cuda:0/float64"}


# --- Dropout's CUDA path on the stand-in + emulator: the layer, the model, and the (seed, step) device state ---


def _cuda_dropout(rate: float, seed: int):
    from nnxp import Dropout
    from nnxp.backend import get_device

    layer = Dropout(rate)
    layer.rng = get_device("cuda").random_generator(seed)
    return layer


def test_cuda_dropout_layer_draws_an_elementwise_mask_per_step(fake_cupy):
    layer = _cuda_dropout(0.3, 4)
    x = fake_cupy.asarray(np.random.default_rng(0).normal(size=(200, 50)).astype(np.float32))
    y1 = to_numpy(layer.forward(x, training=True)).copy()
    kept = y1 != 0
    assert abs(kept.mean() - 0.7) < 5 * np.sqrt(0.3 * 0.7 / kept.size)  # not all-or-nothing
    state = to_numpy(layer._state).copy()
    assert state[1] == 1  # the step counter was bumped on the device before the forward
    mask = DR.dropout_mask_ref(np, x.size, 0.3, state, np.float32).reshape(x.shape)
    np.testing.assert_array_equal(y1, np.asarray(x) * mask)
    dy = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    dx = to_numpy(layer.backward(fake_cupy.asarray(dy)))
    np.testing.assert_array_equal(dx, dy * mask)  # backward regenerates the forward's mask
    y2 = to_numpy(layer.forward(x, training=True))
    assert float(((y1 != 0) != (y2 != 0)).mean()) > 0.3  # the next step draws a new mask
    layer.rng = fake_cupy.random.default_rng(5)  # a new epoch's generator reseeds the same buffer in place
    assert to_numpy(layer._state)[1] == 0 and to_numpy(layer._state)[0] != state[0]


def test_cuda_dropout_state_hash_matches_the_host_twin():
    seed, step = 0xDEADBEEFCAFEF00D, 41
    state = np.array([seed, step], dtype=np.uint64)
    a = DR.dropout_mask_ref(np, 97, 0.5, state, np.float64)
    b = DR.dropout_mask_ref(np, 97, 0.5, DR.step_seed(seed, step), np.float64)
    np.testing.assert_array_equal(a, b)


def test_cuda_dropout_in_a_model_keeps_the_rate_every_step(fake_cupy, monkeypatch):
    from nnxp import Dense, Dropout, Sequential

    fractions = []
    forward = Dropout.forward

    def spy(self, x, training=False):
        y = forward(self, x, training)
        if training:
            fractions.append(float((to_numpy(y) != 0).mean()))
        return y

    monkeypatch.setattr(Dropout, "forward", spy)
    model = Sequential([Dense(64, input_dim=5), Dropout(0.5), Dense(1)], device="cuda", seed=0)
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(128, 5))
    history = model.fit(x, x[:, :1], epochs=2, batch_size=32, verbose=0)
    assert len(fractions) == 8
    assert all(0.35 < f < 0.65 for f in fractions), fractions  # CuPy's random(out=) would give 0 or 1
    assert np.isfinite(history.history["loss"]).all()


def test_each_loss_launch_takes_its_own_zeroed_ticket_counter(fake_cupy, monkeypatch):
    # A ticket taken by another launch in flight (or left by an aborted one) in the first call must not reach
    # the second: with one counter per device the second call's last block never saw ticket grid - 1.
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(64, 10))  # 64 rows: 8 blocks of 8 warps on the stand-in's one SM
    target = np.eye(10)[rng.integers(0, 10, size=64)]
    expected, _ = L.softmax_cross_entropy_ref(logits, target)
    launch, counters = _cuda._launch, []

    def another_launch_takes_a_ticket(name, dtype, dev, grid, block, args):
        if name == "nnxp_softmax_xent":
            counter = args[4]
            assert int(counter[0]) == 0, "a loss launch started from a non-zero ticket counter"
            counters.append(counter)
            if len(counters) == 1:
                counter[0] += 1
        launch(name, dtype, dev, grid, block, args)

    monkeypatch.setattr(_cuda, "_launch", another_launch_takes_a_ticket)
    L.softmax_cross_entropy.fused(fake_cupy.asarray(logits), fake_cupy.asarray(target))
    loss, _ = L.softmax_cross_entropy.fused(fake_cupy.asarray(logits), fake_cupy.asarray(target))
    assert len(counters) == 2 and not np.shares_memory(counters[0], counters[1])
    np.testing.assert_allclose(float(to_numpy(loss)), expected, rtol=1e-12)


def test_loss_launches_into_loss_out_reuse_this_streams_partials_and_counter(fake_cupy):
    # The training step's head passes its own 0-d loss_out: partials and the ticket counter are then this
    # stream's (launches on one stream run in order), made once, the counter zeroed once and re-armed to 0 by
    # each launch's last block; no memset, no allocation. Several launches of several sizes still give the mean.
    rng = np.random.default_rng(5)
    launch, seen = _cuda._launch, []

    def spy(name, dtype, dev, grid, block, args):
        if name == "nnxp_sparse_softmax_xent":
            assert int(args[4][0]) == 0, "a loss launch started from a non-zero ticket counter"
            seen.append((args[3], args[4]))
        launch(name, dtype, dev, grid, block, args)

    _cuda._launch = spy
    try:
        out = fake_cupy.empty((), dtype=np.float64)
        for rows in (64, 64, 9, 64):
            z, y = rng.normal(size=(rows, 10)), rng.integers(0, 10, rows)
            want, want_g = L.sparse_softmax_cross_entropy_ref(z, y)
            got, g = L.sparse_softmax_cross_entropy.fused(fake_cupy.asarray(z), fake_cupy.asarray(y),
                                                           loss_out=out)
            assert got is out
            np.testing.assert_allclose(float(to_numpy(got)), want, rtol=1e-12)
            np.testing.assert_allclose(to_numpy(g), want_g, rtol=1e-12, atol=1e-15)
    finally:
        _cuda._launch = launch
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1] and seen[0][1] is seen[3][1]  # kept, not remade
    assert int(seen[0][1][0]) == 0  # re-armed by the last block


@pytest.mark.parametrize("cols", [7, 40])
def test_sparse_softmax_xent_may_overwrite_its_logits(fake_cupy, cols):
    # grad aliasing logits: every lane used to read lr[label] after the warp's last shuffle, while the lane
    # owning column `label` may already have overwritten it with its gradient (the emulator's reverse and
    # shuffled thread orders run that lane first). The kernel now reads each logit only in the lane that owns it.
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(50, cols))
    labels = rng.integers(0, cols, size=50).astype(np.int64)
    want_loss, want_grad = L.sparse_softmax_cross_entropy_ref(logits.copy(), labels)
    for _ in range(3):  # forward, reverse and shuffled schedules
        z = fake_cupy.asarray(logits.copy())
        loss, grad = L.sparse_softmax_cross_entropy.fused(z, fake_cupy.asarray(labels), z)
        assert grad is z
        np.testing.assert_allclose(float(to_numpy(loss)), want_loss, rtol=1e-13)
        np.testing.assert_allclose(to_numpy(grad), want_grad, rtol=1e-13, atol=1e-16)


# --- the captured matmul's cuBLAS seam, without libcublas -------------------------------------------------------
#
# A stand-in libcublas (four C functions with cuBLAS's signatures, compiled here) is "the copy CuPy loaded":
# stand-in arrays live in host memory, so its GemmEx really multiplies, column-major, and the transposition and
# leading-dimension logic of _gemm is checked by numbers. It records the compute type, algorithm and workspace.

_FAKE_CUBLAS = r"""
#include <stddef.h>
int last_compute = -1, last_algo = 0, last_type = -1, gemms = 0;
void* workspace = 0; size_t workspace_bytes = 0; void* stream = 0;
int cublasSetStream_v2(void* h, void* s) { (void)h; stream = s; return 0; }
int cublasSetPointerMode_v2(void* h, int m) { (void)h; return m == 0 ? 0 : 7; }
int cublasSetWorkspace_v2(void* h, void* w, size_t n) { (void)h; workspace = w; workspace_bytes = n; return 0; }
#define AT(p, op, i, l, ld) ((op) ? (p)[(l) + (size_t)(i) * (ld)] : (p)[(i) + (size_t)(l) * (ld)])
#define GEMM(T) { const T *a = (const T*)A, *b = (const T*)B; T *c = (T*)C; \
    for (int j = 0; j < n; ++j) for (int i = 0; i < m; ++i) { double acc = 0; \
        for (int l = 0; l < k; ++l) acc += (double)AT(a, ta, i, l, lda) * (double)AT(b, tb, l, j, ldb); \
        c[i + (size_t)j * ldc] = (T)(acc * (double)*(const T*)alpha); } }
int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute, int algo) {
    (void)h; (void)beta;
    if (at != ct || bt != ct) return 7;
    if ((ct == 0) != (compute == 68 || compute == 69 || compute == 77)) return 7;  /* float needs a 32F type */
    last_compute = compute; last_algo = algo; last_type = ct; ++gemms;
    if (ct == 0) GEMM(float) else GEMM(double)
    return 0;
}
"""


@pytest.fixture
def fake_cublas(tmp_path, fake_cupy, monkeypatch):
    import ctypes
    import shutil
    import subprocess
    from types import SimpleNamespace

    cc = shutil.which("gcc") or shutil.which("cc")
    require_tool(cc is not None, "no C compiler")
    src, lib_path = tmp_path / "fake_cublas.c", tmp_path / "libcublas.so.12"
    src.write_text(_FAKE_CUBLAS)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(src), "-o", str(lib_path)], check=True)
    with pytest.raises(OSError):  # RTLD_NOLOAD: a library not loaded yet is not loaded by the lookup
        _cublas._open_loaded(str(lib_path))
    lib = ctypes.CDLL(str(lib_path))  # "CuPy loaded it"

    class CUBLASError(RuntimeError):  # cupy_backends/cuda/libs/cublas.pyx CUBLASError(status)
        def __init__(self, status):
            self.status = status
            super().__init__(f"status {status}")

    class Memory:  # cupy/cuda/memory.pyx Memory(size): a plain allocation with .ptr and .size
        def __init__(self, size):
            self._buf = np.empty(size, dtype=np.uint8)
            self.ptr, self.size = self._buf.ctypes.data, size

    cuda = _pathfinder_or_skip()

    monkeypatch.setattr(cuda.pathfinder, "load_nvidia_dynamic_lib",
                        lambda name: SimpleNamespace(abs_path=str(lib_path)) if name == "cublas" else None)
    monkeypatch.setattr(fake_cupy.cuda, "cublas", SimpleNamespace(getVersion=lambda h: 120905,
                                                                  CUBLASError=CUBLASError), raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "memory", SimpleNamespace(Memory=Memory), raising=False)
    monkeypatch.setattr(fake_cupy.cuda.device, "get_cublas_handle", lambda: 1234, raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "get_current_stream", lambda: SimpleNamespace(ptr=77), raising=False)
    monkeypatch.setattr(_cublas, "_CUBLAS_DEVICES", {})
    return lib


def _pathfinder_or_skip():
    try:
        import cuda.pathfinder  # comes with CuPy 14
    except ImportError:
        require_tool(False, "cuda-pathfinder is not installed")
    return cuda


def test_cublas_soname_follows_the_major_version():
    assert _cublas.cublas_soname(120905) == "libcublas.so.12"
    assert _cublas.cublas_soname(130100) == "libcublas.so.13"
    with pytest.raises(RuntimeError, match="cuBLAS 11 or later"):
        _cublas.cublas_soname(9020)


def test_cublas_lookup_names_what_it_tried_when_cupy_loaded_no_cublas(fake_cupy, monkeypatch):
    from types import SimpleNamespace

    cuda = _pathfinder_or_skip()

    def not_found(name):
        raise cuda.pathfinder.DynamicLibNotFoundError(f"no {name}")

    monkeypatch.setattr(cuda.pathfinder, "load_nvidia_dynamic_lib", not_found)
    monkeypatch.setattr(fake_cupy.cuda, "cublas", SimpleNamespace(getVersion=lambda h: 139901), raising=False)
    assert _cublas._cublas_candidates(fake_cupy, 1) == ["libcublas.so.13"]
    with pytest.raises(RuntimeError, match=r"libcublas\.so\.13.*cuda_graph=False"):
        _cublas._cublas_library(fake_cupy, 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_captured_matmul_calls_gemmex_as_cupys_eager_matmul_does(fake_cublas, fake_cupy, dtype):
    import nnxp.backend as backend

    rng = np.random.default_rng(2)
    a = fake_cupy.asarray(rng.normal(size=(5, 3)).astype(dtype))
    b = fake_cupy.asarray(rng.normal(size=(3, 4)).astype(dtype))
    bt = fake_cupy.asarray(np.asarray(b).T.copy()).T  # F-contiguous: cuBLAS op T
    want = np.asarray(a).astype(np.float64) @ np.asarray(b).astype(np.float64)
    with _cublas.capturing():
        for rhs in (b, bt):
            got = _cublas.matmul(a, rhs)
            np.testing.assert_allclose(np.asarray(got), want, **tol(dtype))
    assert ctypes_int(fake_cublas, "gemms") == 2
    float32 = np.dtype(dtype) == np.float32
    assert ctypes_int(fake_cublas, "last_compute") == (68 if float32 else 70)  # CUBLAS_COMPUTE_32F / 64F
    assert ctypes_int(fake_cublas, "last_algo") == 99  # CUBLAS_GEMM_DEFAULT_TENSOR_OP on sm_80, as CuPy
    assert ctypes_size(fake_cublas, "workspace_bytes") == 4 << 20  # set before the capture, once
    if float32:  # inside the model's TF32 scope the captured GEMM uses TF32 too, as CuPy's eager one would
        with backend.get_device("cuda").use(tf32=True), _cublas.capturing():
            _cublas.matmul(a, b)
        assert ctypes_int(fake_cublas, "last_compute") == 77  # CUBLAS_COMPUTE_32F_FAST_TF32


def test_a_cublas_alloc_failure_is_cupys_error_and_counts_as_out_of_memory(fake_cublas, fake_cupy):
    from nnxp.backend import is_out_of_memory

    with pytest.raises(fake_cupy.cuda.cublas.CUBLASError) as info:
        _cublas._check_cublas(fake_cupy, 3)  # CUBLAS_STATUS_ALLOC_FAILED
    assert is_out_of_memory(info.value)
    with pytest.raises(fake_cupy.cuda.cublas.CUBLASError) as info:
        _cublas._check_cublas(fake_cupy, 13)  # CUBLAS_STATUS_EXECUTION_FAILED
    assert not is_out_of_memory(info.value)


def ctypes_int(lib, name: str) -> int:
    import ctypes

    return ctypes.c_int.in_dll(lib, name).value


def ctypes_size(lib, name: str) -> int:
    import ctypes

    return ctypes.c_size_t.in_dll(lib, name).value


# --- the fallback: kernels that fail to build, and NNXP_KERNELS=reference, on the stand-in ----------------------


def _fallback_model(device: str, rate: float = 0.25):
    from nnxp import Dense, Dropout, Sequential

    model = Sequential([Dense(16, "gelu", input_dim=6), Dropout(rate), Dense(3, "softmax")], device=device, seed=2)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _fallback_data():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(96, 6))
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)


def _fit_weights(model) -> list:
    x, y = _fallback_data()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model.get_weights()


class _CompileException(Exception):  # cupy/cuda/compiler.py CompileException: str() is NVRTC's log
    pass


def test_a_kernel_that_fails_to_compile_warns_once_and_runs_the_references(fake_cupy, monkeypatch):
    monkeypatch.setattr(_cuda, "_mode", None)
    monkeypatch.delenv("NNXP_KERNELS", raising=False)
    log = 'kernels.cu(321): error: identifier "nx_missing" is undefined\n1 error detected in the compilation.'

    def broken_module(code, options, name_expressions):
        raise _CompileException(log)

    monkeypatch.setattr(fake_cupy, "RawModule", broken_module)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        weights = _fit_weights(_fallback_model("cuda"))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages  # once, though every op of every step asked for a kernel
    assert "nnxp_" in messages[0] and "<float>" in messages[0]  # names the kernel first needed
    assert 'identifier "nx_missing" is undefined' in messages[0] and "nnxp selftest" in messages[0]
    assert set(_cuda._KERNELS.failures()) == {"cuda:0/float32"}

    # the same numbers as with the reference ops forced from the start
    monkeypatch.setenv("NNXP_KERNELS", "reference")
    monkeypatch.setattr(_cuda, "_mode", None)
    reference = _fit_weights(_fallback_model("cuda"))
    for a, b in zip(weights, reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nnxp_kernels_reference_never_builds_a_kernel(fake_cupy, monkeypatch):
    monkeypatch.setenv("NNXP_KERNELS", "reference")
    monkeypatch.setattr(_cuda, "_mode", None)

    def no_compile(code, options, name_expressions):
        raise AssertionError("NNXP_KERNELS=reference compiled kernels.cu")

    monkeypatch.setattr(fake_cupy, "RawModule", no_compile)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        weights = _fit_weights(_fallback_model("cuda", rate=0.0))
    cpu = _fit_weights(_fallback_model("cpu", rate=0.0))  # Dropout's masks differ by design between devices
    for a, b in zip(weights, cpu, strict=True):
        np.testing.assert_allclose(a, b, **MODEL_TOL["float32"])
    assert _cuda.compile_seconds() == {} and _cuda._KERNELS.failures() == {}


def test_nnxp_kernels_must_be_fused_or_reference(fake_cupy, monkeypatch):
    from nnxp.errors import NnxpError

    monkeypatch.setenv("NNXP_KERNELS", "fast")
    monkeypatch.setattr(_cuda, "_mode", None)
    with pytest.raises(NnxpError, match=r"`NNXP_KERNELS` must be one of \('fused', 'reference'\)\. "
                                        r"Received: NNXP_KERNELS='fast'"):
        _fit_weights(_fallback_model("cuda"))


def test_dropout_replayed_in_a_cuda_graph_matches_eager_steps(fake_cupy, monkeypatch):
    # the stand-in records captured work and runs it only at replay: a mask drawn on the host at capture time
    # would repeat every step; the device (seed, step) state draws a new one per replay, as the eager steps do
    import _stand_in_cupy

    from nnxp import Dense, Dropout, Sequential
    from nnxp.training import graph_replays

    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)
    x, y = _fallback_data()
    runs = []
    for graph in (False, True):
        model = Sequential([Dense(16, "relu", input_dim=6), Dropout(0.3), Dense(3, "softmax")], device="cuda",
                           seed=4)
        model.compile("adam", "sparse_categorical_crossentropy")
        history = model.fit(x, y, epochs=2, batch_size=16, verbose=0, cuda_graph=graph)
        runs.append((history.history["loss"], model.get_weights()))
        if graph:
            assert graph_replays(model) >= 2 * (96 // 16) - 2
    np.testing.assert_array_equal(runs[1][0], runs[0][0])
    for a, b in zip(runs[1][1], runs[0][1], strict=True):
        np.testing.assert_array_equal(a, b)


# --- real NVRTC, no GPU: what the CUDA Docker image runs at build time ----------------------------------------


def _real_nvrtc():
    cp = cupy_module()
    require_tool(cp is not None, "CuPy is not installed")
    try:
        cp.cuda.nvrtc.getVersion()
        from cuda import pathfinder

        found, why = pathfinder.find_nvidia_header_directory("cudart") is not None, "no CUDA runtime headers"
    except Exception as exc:
        found, why = False, f"NVRTC not usable here: {exc}"
    require_tool(found, why)


def test_nvrtc_compiles_the_kernels_and_finds_the_headers_without_a_gpu():
    _real_nvrtc()
    summary = _cuda.nvrtc_check("compute_90")
    assert f"compiled {2 * len(_cuda.KERNELS)} kernels" in summary and "compute_90" in summary


def test_nvrtc_check_quotes_the_compiler_log(monkeypatch):
    _real_nvrtc()
    source = _cuda._source().replace("return nx_max(z, T(0));", "return nx_not_declared(z);", 1)
    monkeypatch.setattr(_cuda, "_source", lambda: source)
    with pytest.raises(RuntimeError, match=r"(?s)NVRTC failed on kernels\.cu.*nx_not_declared"):
        _cuda.nvrtc_check()


def test_dropout_back_on_the_cpu_draws_exactly_as_a_fresh_cpu_layer(fake_cupy):
    from nnxp import Dropout

    moved = _cuda_dropout(0.4, 1)
    moved.forward(fake_cupy.asarray(np.ones((8, 5))), training=True)  # builds the device (seed, step) state
    fresh = Dropout(0.4)
    moved.rng, fresh.rng = np.random.default_rng(9), np.random.default_rng(9)  # the model moved to the CPU
    x = np.ones((30, 7))
    np.testing.assert_array_equal(moved.forward(x, training=True), fresh.forward(x, training=True))


def test_two_loss_launches_in_flight_each_finish_their_own_mean(fake_cupy, emulator, monkeypatch):
    # finding 4 on nnxp's own kernel: two nnxp_softmax_xent launches made by the wrapper run concurrently on the
    # emulator (as on two streams, blocks interleaving at atomics and fences). Each has its own zeroed counter,
    # so both means come out right under every schedule; the same two launches on one shared counter do not.
    rng = np.random.default_rng(6)
    inputs = [(rng.normal(size=(64, 10)), np.eye(10)[rng.integers(0, 10, size=64)]) for _ in range(2)]
    want = [L.softmax_cross_entropy_ref(z, t)[0] for z, t in inputs]
    recorded = []

    def record(name, dtype, dev, grid, block, args):  # the launch as the wrapper made it, run later
        recorded.append((f"{name}<{_cuda._CTYPES[dtype]}>", tuple(grid), tuple(block),
                         tuple(a.view(np.ndarray) if isinstance(a, np.ndarray) else a for a in args)))

    monkeypatch.setattr(_cuda, "_launch", record)
    schedules = [("forward", 0), ("reverse", 0)] + [("shuffled", s) for s in range(4)]
    mixed = 0
    for shared in (False, True):
        for schedule, seed in schedules:
            recorded.clear()
            losses = [L.softmax_cross_entropy.fused(fake_cupy.asarray(z), fake_cupy.asarray(t))[0] for z, t in inputs]
            assert recorded[0][1][0] > 1 and recorded[0][3][4] is not recorded[1][3][4]
            if shared:  # what one counter per device did
                second = recorded[1]
                recorded[1] = (*second[:3], (*second[3][:4], recorded[0][3][4], *second[3][5:]))
            emulator.launch_concurrent(recorded, schedule=schedule, seed=seed)
            got = [float(to_numpy(loss)) for loss in losses]
            if shared:
                mixed += not np.allclose(got, want, rtol=1e-12)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"{schedule} {seed}")
    assert mixed == len(schedules)  # the shared counter goes wrong every time: the test can tell them apart


# --- launch plans: a repeated call with the same arrays makes the same launches without the checks ---------------


def _dense_case(cp, rng, rows=9, n_in=5, n_out=7):
    x = cp.asarray(rng.normal(size=(rows, n_in)).astype(np.float32))
    w = cp.asarray(rng.normal(size=(n_in, n_out)).astype(np.float32))
    b = cp.asarray(rng.normal(size=n_out).astype(np.float32))
    return x, w, b, cp.empty((rows, n_out), np.float32)


def test_a_kept_plan_launches_what_the_full_override_launched(fake_cupy):
    import _stand_in_cupy as sic

    rng = np.random.default_rng(0)
    x, w, b, out = _dense_case(fake_cupy, rng)
    D.dense_forward(x, w, b, "relu", out, None)  # the first call runs every check, and keeps its launches
    assert D.dense_forward.plans[id(x)].args[0] is x
    for _ in range(2):  # new contents in the same arrays: the kept launches, with the same bits as the full path
        x[...] = fake_cupy.asarray(rng.normal(size=x.shape).astype(np.float32))
        with sic.count_step() as planned:
            y, _ = D.dense_forward(x, w, b, "relu", out, None)
        assert y is out and planned.names == ["gemm", "nnxp_bias_act_forward<float>"]
        kept = to_numpy(out).copy()
        with sic.count_step() as full:
            D.dense_forward.fused(x, w, b, "relu", out, None)
        assert full.names == planned.names and full.set_device == planned.set_device == 0
        np.testing.assert_array_equal(to_numpy(out), kept)
        np.testing.assert_array_equal(kept, np.maximum(to_numpy(x) @ to_numpy(w) + to_numpy(b), 0))


def test_a_plan_is_not_used_for_other_arrays_arguments_or_kernels(fake_cupy, monkeypatch):
    rng = np.random.default_rng(1)
    x, w, b, out = _dense_case(fake_cupy, rng)
    D.dense_forward(x, w, b, "relu", out, None)
    plan = D.dense_forward.plans[id(x)]
    assert plan.run((x, w, b, "tanh", out, None), {}) is _cuda._MISS  # another activation
    assert plan.run((x, w, b, "relu", fake_cupy.empty_like(out), None), {}) is _cuda._MISS  # another array
    y, _ = D.dense_forward(x, w, b, "tanh", out, None)  # runs in full: tanh, not the kept relu
    np.testing.assert_allclose(to_numpy(y), np.tanh(to_numpy(x) @ to_numpy(w) + to_numpy(b)), rtol=1e-5, atol=1e-6)
    # a new array of another layout is checked in full again: a strided input takes the reference
    wide = fake_cupy.asarray(rng.normal(size=(9, 10)).astype(np.float32))
    strided = wide[:, ::2]
    y, _ = D.dense_forward(strided, w, b, "relu", out, None)
    np.testing.assert_allclose(to_numpy(y), np.maximum(to_numpy(strided) @ to_numpy(w) + to_numpy(b), 0),
                               rtol=1e-5, atol=1e-6)
    # NNXP_KERNELS=reference after a plan was kept: the references run, not the kept kernels
    D.dense_forward(x, w, b, "relu", out, None)
    monkeypatch.setenv("NNXP_KERNELS", "reference")
    monkeypatch.setattr(_cuda, "_mode", None)
    import _stand_in_cupy as sic

    with sic.count_step() as c:
        D.dense_forward(x, w, b, "relu", out, None)
    assert "nnxp_bias_act_forward<float>" not in c.names
    # another device current: the kept launches would go there, so the override runs (and switches devices)
    monkeypatch.setattr(_cuda, "_mode", "fused")
    D.dense_forward(x, w, b, "relu", out, None)
    with fake_cupy.cuda.Device(1):
        assert D.dense_forward.plans[id(x)].run((x, w, b, "relu", out, None), {}) is _cuda._MISS
        y, _ = D.dense_forward(x, w, b, "relu", out, None)
    np.testing.assert_allclose(to_numpy(y), np.maximum(to_numpy(x) @ to_numpy(w) + to_numpy(b), 0), rtol=1e-5,
                               atol=1e-6)


def test_a_loss_plan_takes_each_batch_s_new_labels(fake_cupy):
    cp = fake_cupy
    rng = np.random.default_rng(2)
    logits = cp.asarray(rng.normal(size=(33, 10)).astype(np.float32))
    grad, loss_out = cp.empty_like(logits), cp.empty((), np.float32)
    L.sparse_softmax_cross_entropy(logits, cp.asarray(rng.integers(0, 10, 33)), grad, loss_out=loss_out)
    for _ in range(3):
        labels = cp.asarray(rng.integers(0, 10, 33))  # a new array each batch, as the training loop gives
        loss, g = L.sparse_softmax_cross_entropy(logits, labels, grad, loss_out=loss_out)
        assert loss is loss_out and g is grad and len(L.sparse_softmax_cross_entropy.plans) == 1
        ref_loss, ref_g = L.sparse_softmax_cross_entropy_ref(logits, labels)
        np.testing.assert_allclose(to_numpy(g), to_numpy(ref_g), rtol=1e-5, atol=1e-7)
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    # labels of another dtype are not taken in the old ones' place: the override declines, the reference runs
    labels32 = cp.asarray(rng.integers(0, 10, 33).astype(np.int32))
    loss, g = L.sparse_softmax_cross_entropy(logits, labels32, grad, loss_out=loss_out)
    ref_loss, ref_g = L.sparse_softmax_cross_entropy_ref(logits, labels32)
    np.testing.assert_allclose(to_numpy(g), to_numpy(ref_g), rtol=1e-5, atol=1e-7)


def test_a_fit_with_kept_plans_equals_one_that_runs_every_override_in_full(fake_cupy, monkeypatch):
    from nnxp import Dense, Sequential
    from nnxp.callbacks import Callback

    class Forget(Callback):  # every step runs each override in full (the path before plans)
        def on_train_batch_end(self, batch, logs=None):
            _cuda.forget_plans()

    full_runs = [0]
    override = D.dense_backward.fused

    def counted(*args, **kwargs):
        full_runs[0] += 1
        return override(*args, **kwargs)

    monkeypatch.setattr(D.dense_backward, "fused", counted)
    import nnxp.training

    monkeypatch.setattr(nnxp.training, "LAUNCH_LISTS", False)  # every step made call by call, through the plans
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(96, 12)).astype(np.float32), rng.integers(0, 3, 96)
    weights, histories, runs = [], [], []
    for callbacks in ([], [Forget()]):
        _cuda.forget_plans()
        full_runs[0] = 0
        model = Sequential([Dense(16, "relu", input_dim=12), Dense(3, "softmax")], device="cuda", seed=3)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        histories.append(model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=callbacks).history)
        weights.append([to_numpy(w) for w in model.get_weights()])
        runs.append(full_runs[0])
        # none kept once the fit is over: a plan holds the model's arrays (its GPU memory)
        assert not D.dense_forward.plans and not L.sparse_softmax_cross_entropy.plans and O.adam._kept is None
    assert runs == [2, 2 * 9]  # kept after the first step; without plans, each of the 9 steps' 2 layers
    assert histories[0] == histories[1]
    for kept, full in zip(*weights, strict=True):
        np.testing.assert_array_equal(kept, full)


def test_threads_on_one_stream_do_not_share_the_bias_gradient_s_partials(fake_cupy):
    # the bias gradient of more than _ONE_PASS_ROWS rows is two launches, partial column sums into a kept scratch
    # buffer and their sum; two threads (a model each) on CuPy's default stream must not write each other's
    # partials between them (on the stand-in the two threads' kernels even run at the same time)
    import threading

    cp, rows, cols = fake_cupy, 600, 48
    inputs = [np.random.default_rng(k).normal(size=(20, rows, cols)).astype(np.float32) * (k + 1) for k in range(2)]
    wrong, start = [], threading.Barrier(2)

    def train(k):
        db = cp.empty(cols, dtype=np.float32)
        start.wait()
        for i, host in enumerate(inputs[k]):
            D.activation_backward_bias(cp.asarray(host), cp.asarray(np.abs(host)), None, "relu", db)
            if not np.allclose(to_numpy(db), host.sum(axis=0), rtol=1e-4, atol=1e-3):
                wrong.append((k, i))

    threads = [threading.Thread(target=train, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


# --- a step recorded as its launch list (nnxp.ops._cuda.recording_step; nnxp._graph.LaunchedStep) ---------------


def test_a_recorded_step_runs_nothing_until_its_list_is_launched(fake_cupy):
    import _stand_in_cupy as sic

    cp = fake_cupy
    x = cp.asarray(np.arange(12, dtype=np.float32).reshape(3, 4) - 5)
    w = cp.asarray(np.eye(4, dtype=np.float32) * 2)
    out, mask = cp.empty((3, 4), dtype=np.float32), cp.empty((3, 4), dtype=np.bool_)
    out.fill(np.nan)
    launches = sic.COUNTS.launches
    with _cuda.recording_step() as (calls, whole):
        assert _cuda.recording() and _cuda.capturing() is False
        y, _ = D.dense_forward(x, w, None, "relu", out)  # a matmul and a bias + activation kernel
        assert _cuda.recorded(cp.greater, y, 0, out=mask) is mask
        _cuda.unplanned(allocation=True)  # an allocation alone: the list still holds the step
        with pytest.raises(RuntimeError, match="already being recorded"):
            with _cuda.recording_step():
                pass
    assert whole() and not _cuda.recording() and len(calls) == 3
    assert sic.COUNTS.launches == launches  # nothing ran
    assert np.isnan(to_numpy(out)).all()
    for fn, args, kwargs in calls:
        fn(*args, **kwargs)
    expected = np.maximum(2 * (np.arange(12, dtype=np.float32).reshape(3, 4) - 5), 0)
    np.testing.assert_array_equal(to_numpy(out), expected)
    np.testing.assert_array_equal(to_numpy(mask), expected > 0)


def test_device_work_a_list_cannot_repeat_voids_the_recording(fake_cupy):
    x = fake_cupy.ones((2, 3), dtype=np.float32)
    with _cuda.recording_step() as (_, whole):
        _cuda.matmul(x, x.T)  # no buffer to keep the product in
    assert not whole()
    with _cuda.recording_step() as (_, whole):
        _cuda.unplanned()  # (an op's CuPy reduction)
    assert not whole()
    assert _cuda.recorded(np.add, np.ones(2), 1.0, out=np.zeros(2)).tolist() == [2.0, 2.0]  # outside: it runs
