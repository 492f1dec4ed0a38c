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

import inspect
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from conftest import tol

from nnxp.backend import cupy_module, to_numpy
from nnxp.ops import _cuda
from nnxp.ops import dense as D
from nnxp.ops import loss as L
from nnxp.ops import optim as O
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


def _bias_act_ref(z, b, act, z_out):
    """The tail of dense_forward_ref after its matmul (the same lines)."""
    op = ACTIVATION_OPS[act]
    if b is not None:
        z += b
    if not op.needs_z:
        return op.forward(z, z), None
    z_out[...] = z
    return op.forward(z_out, z), z_out


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
        cuda=lambda z, b, z_out: _drop_none(*_fused(_cuda.bias_activation_forward(z, b, act, z_out))),
        ref=lambda z, b, z_out: _drop_none(*_bias_act_ref(z, b, act, z_out)),
        make=make,
        slack=slack,
    )


def _act_backward_ref(dy, y, z, act, db):
    """activation backward and bias gradient: the first lines of dense_backward_ref."""
    dz = ACTIVATION_OPS[act].backward(dy, y, z, dy)
    if db is not None:
        dz.sum(axis=0, out=db)
    return dz, db


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
        cuda=lambda dy, y, z, db: _drop_none(_fused(_cuda.activation_backward_bias(dy, y, z, act, db)), db),
        ref=lambda dy, y, z, db: _drop_none(*_act_backward_ref(dy, y, z, act, db)),
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
        cuda=lambda x, w, b, out, z_out: _drop_none(*_fused(_cuda.dense_forward(x, w, b, act, out, z_out))),
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

    return Pair(cuda=run(_cuda.dense_backward), ref=run(D.dense_backward_ref), make=make, slack=slack,
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
        cuda=lambda lg, t, g: _fused(_cuda.softmax_cross_entropy(lg, t, g)),
        ref=lambda lg, t, g: L.softmax_cross_entropy_ref(lg, t, g),
        make=make,
        slack=_loss_slack(lambda args: args[0].size),
    )


def _pair_sparse_softmax_xent() -> Pair:
    def make(rng, shape, dtype, specials):
        logits = _normal(rng, shape, dtype, 3.0, specials)
        return logits, rng.integers(0, shape[1], shape[0]).astype(np.int64), Out(shape, dtype)

    return Pair(
        cuda=lambda lg, lab, g: _fused(_cuda.sparse_softmax_cross_entropy(lg, lab, g)),
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
        cuda=lambda lg, t, g: _fused(_cuda.sigmoid_binary_cross_entropy(lg, t, g)),
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
}


def _state(rng, kind, n, dtype):
    if kind is None:
        return None
    a = _normal(rng, (n,), dtype)
    return np.abs(a) if kind == "pos" else (a * dtype(0.1) if kind == "small" else a)


def _pair_optimizer(name: str, weight_decay: float) -> Pair:
    kind = name.split("_")[0]
    state_kinds, hyper = OPTIMIZERS[name]
    ref_fn, cuda_fn = getattr(O, f"{kind}_ref"), getattr(_cuda, kind)

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
    """The T scalars the kernel of `kind` gets for these hyper-parameters (its *_scalars, by parameter name)."""
    fn = getattr(_cuda, f"{kind}_scalars")
    present = [state is not None for state in states] + [False, False]
    known = {**hyper, "dtype": dtype, "weight_decay": weight_decay, "has_velocity": present[0],
             "has_mom": present[1], "centered": present[2]}
    return _cuda.device_scalars(fn(*(known[name] for name in inspect.signature(fn).parameters)))


def _pair_optimizer_hp(name: str, weight_decay: float) -> Pair:
    """The kernel reading its scalars from a device buffer (a CUDA-graph step): the by-value ones are wrong."""
    kind = name.split("_")[0]
    state_kinds, hyper = OPTIMIZERS[name]
    base = _pair_optimizer(name, weight_decay)
    wrong = {k: (v + 5 if k == "step" else v if isinstance(v, bool) else v * 0.5) for k, v in hyper.items()}

    def cuda(p, g, *states):
        hp = cupy_module().asarray(np.array(_kernel_scalars(kind, p.dtype, hyper, states, weight_decay)))
        tmp = cupy_module().empty_like(p)
        result = getattr(_cuda, kind)(p, g, *states, tmp, *wrong.values(), weight_decay=0.25, hp=hp)
        assert result is None, f"{name} declined hp={hp!r}"
        return _drop_none(p, *states)

    return Pair(cuda=cuda, ref=base.ref, make=base.make)


DROPOUT_RATE, DROPOUT_SEED = 0.3, 20_261_123


def _pair_dropout_forward(store_mask: bool) -> Pair:
    def make(rng, shape, dtype, specials):
        return _normal(rng, shape, dtype, 1.0, specials), Out(shape, dtype), (Out(shape, dtype) if store_mask else None)

    return Pair(
        cuda=lambda x, out, m: _drop_none(*_fused(_cuda.dropout_forward(x, DROPOUT_RATE, DROPOUT_SEED, out, m))),
        ref=lambda x, out, m: _drop_none(*_cuda.dropout_forward_ref(x, DROPOUT_RATE, DROPOUT_SEED, out, m))[
            : 2 if store_mask else 1
        ],
        make=make,
    )


def _pair_dropout_backward() -> Pair:
    def make(rng, shape, dtype, specials):
        return _normal(rng, shape, dtype, 1.0, specials), Out(shape, dtype)

    return Pair(
        cuda=lambda dy, out: (_fused(_cuda.dropout_backward(dy, DROPOUT_RATE, DROPOUT_SEED, out)),),
        ref=lambda dy, out: (_cuda.dropout_backward_ref(dy, DROPOUT_RATE, DROPOUT_SEED, out),),
        make=make,
    )


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
PAIRS["sigmoid_bce"] = _pair_sigmoid_bce()
for _name in OPTIMIZERS:
    for _wd in (0.0, 0.004):
        PAIRS[f"optim/{_name}/wd={_wd}"] = _pair_optimizer(_name, _wd)
        PAIRS[f"optim/{_name}/wd={_wd}/hp"] = _pair_optimizer_hp(_name, _wd)
PAIRS["dropout_forward/mask"] = _pair_dropout_forward(True)
PAIRS["dropout_forward/nomask"] = _pair_dropout_forward(False)
PAIRS["dropout_backward"] = _pair_dropout_backward()

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
    assert _cuda.dense_forward(x16, cp.ones((3, 2), cp.float16), None, "relu") is NotImplemented
    x = cp.asarray(np.random.default_rng(0).normal(size=(6, 4)))
    assert _cuda.bias_activation_forward(x[:, ::2], None, "relu") is NotImplemented  # not C-contiguous
    assert _cuda.softmax_cross_entropy(x, x.astype(cp.float32)) is NotImplemented  # mixed dtypes
    labels32 = cp.zeros(6, dtype=cp.int32)
    assert _cuda.sparse_softmax_cross_entropy(x, labels32) is NotImplemented  # int64 labels only
    assert _cuda.adam(x[:, 0], x[:, 1], x[:, 2], x[:, 3], None, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
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
    first, _ = _cuda.softmax_cross_entropy(logits, target)
    assert isinstance(first, cp.ndarray) and first.shape == () and first.dtype == cp.float32
    for _ in range(3):  # the ticket counter re-arms itself: every launch finishes the same way
        again, _ = _cuda.softmax_cross_entropy(logits, target)
        assert float(again) == float(first)


@gpu
def test_compile_time_is_recorded_once_per_device_and_dtype():
    cp = cupy_module()
    x = cp.ones((2, 3), dtype=cp.float64)
    _cuda.bias_activation_forward(x, None, "relu")
    seconds = _cuda.compile_seconds()
    key = f"cuda:{x.device.id}/float64"
    assert key in seconds and seconds[key] > 0
    _cuda.bias_activation_forward(x, None, "tanh")
    assert _cuda.compile_seconds()[key] == seconds[key]


@gpu
def test_dropout_keeps_the_expected_fraction():
    cp = cupy_module()
    x = cp.ones(1_000_003, dtype=cp.float32)
    y, _ = _cuda.dropout_forward(x, 0.25, seed=7)
    kept = float((y != 0).mean())
    assert abs(kept - 0.75) < 5 * np.sqrt(0.25 * 0.75 / x.size)
    assert float(y.max()) == np.float32(1.0 / 0.75)
    y2, _ = _cuda.dropout_forward(x, 0.25, seed=8)
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
        monkeypatch.setattr(_cuda, name, spy(name, getattr(_cuda, name)))
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
    """Make every _cuda wrapper fail loudly, proving the NumPy path never reaches it.

    The fast extra's compiled CPU loops are switched off here: they agree with the references to rounding
    (tests/test_ops_dense.py, test_ops_loss.py), and these tests compare bit for bit.
    """
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", False)

    def boom(*args, **kwargs):
        raise AssertionError("a NumPy input reached the CUDA wrapper")

    for name in ("dense_forward", "dense_backward", "softmax_cross_entropy", "sparse_softmax_cross_entropy",
                 "sigmoid_binary_cross_entropy"):
        monkeypatch.setattr(_cuda, name, boom)


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
    assert _cuda.dense_forward(x, np.ones((4, 2)), None, "relu") is NotImplemented
    assert _cuda.dense_backward(x, x, x, x, None, "linear", x, None) is NotImplemented
    assert _cuda.bias_activation_forward(x, None, "tanh") is NotImplemented
    assert _cuda.activation_backward_bias(x, x, None, "tanh") is NotImplemented
    assert _cuda.softmax_cross_entropy(x, x) is NotImplemented
    assert _cuda.sparse_softmax_cross_entropy(x, np.zeros(3, dtype=np.int64)) is NotImplemented
    assert _cuda.sigmoid_binary_cross_entropy(x, x) is NotImplemented
    p = np.ones(5)
    assert _cuda.sgd(p, p, None, p, 0.1, 0.0, False) is NotImplemented
    assert _cuda.rmsprop(p, p, p, None, None, p, 0.1, 0.9, 0.0, 1e-7) is NotImplemented
    assert _cuda.adagrad(p, p, p, p, 0.1, 1e-7) is NotImplemented
    assert _cuda.adadelta(p, p, p, p, p, 1.0, 0.95, 1e-7) is NotImplemented
    assert _cuda.adam(p, p, p, p, p, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
    assert _cuda.adamax(p, p, p, p, p, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
    assert _cuda.dropout_forward(x, 0.5, 1) is NotImplemented
    assert _cuda.dropout_backward(x, 0.5, 1) is NotImplemented


def test_dropout_reference_is_generic_and_consistent():
    rng = np.random.default_rng(8)
    x = _normal(rng, (31, 7), np.float32)
    y, mask = _cuda.dropout_forward_ref(x, 0.4, 99)
    np.testing.assert_array_equal(y, x * mask)
    assert set(np.unique(mask)) <= {np.float32(0), np.float32(1 / 0.6)}
    dx = _cuda.dropout_backward_ref(np.ones_like(x), 0.4, 99)
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
