"""Optimizer updates over one flat parameter buffer, in place.

Each step takes the whole model's parameters ``p`` and gradients ``g`` as two
1-D arrays, the optimizer's state arrays of the same size, a scratch buffer
``tmp`` and hyper-parameters as Python floats (so float32 buffers stay float32).
A step is then a handful of whole-buffer ufunc calls whatever the model's
depth; on the GPU each is one fused kernel. Update rules follow Keras.
On the CPU, ``adam`` runs adam_ref's arithmetic as one compiled loop where
Numba is importable (bit-identical results; see the end of this module).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..backend import is_cupy_array, sum_of_squares, xp_of
from . import _cuda


def sgd_ref(p: Any, g: Any, velocity: Any | None, tmp: Any, lr: float, momentum: float, nesterov: bool) -> None:
    """v = momentum v - lr g;  p += v  (Nesterov: p += momentum v - lr g)."""
    xp = xp_of(p)
    xp.multiply(g, lr, out=tmp)  # lr g
    if velocity is None:
        p -= tmp
        return
    velocity *= momentum
    velocity -= tmp
    if nesterov:
        p -= tmp
        xp.multiply(velocity, momentum, out=tmp)
        p += tmp
    else:
        p += velocity


def rmsprop_ref(
    p: Any,
    g: Any,
    avg_sq: Any,
    mom: Any | None,
    avg_g: Any | None,
    tmp: Any,
    lr: float,
    rho: float,
    momentum: float,
    epsilon: float,
) -> None:
    """s = rho s + (1-rho) g^2;  step = lr g / sqrt(s - mg^2 + eps) (centered uses mg)."""
    xp = xp_of(p)
    avg_sq *= rho
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - rho
    avg_sq += tmp
    if avg_g is not None:  # centered: subtract the square of the running mean gradient
        avg_g *= rho
        xp.multiply(g, 1.0 - rho, out=tmp)
        avg_g += tmp
        xp.multiply(avg_g, avg_g, out=tmp)
        xp.subtract(avg_sq, tmp, out=tmp)
        tmp += epsilon
    else:
        xp.add(avg_sq, epsilon, out=tmp)
    xp.sqrt(tmp, out=tmp)
    xp.divide(g, tmp, out=tmp)
    tmp *= lr  # the increment
    if mom is None:
        p -= tmp
    else:
        mom *= momentum
        mom += tmp
        p -= mom


def adagrad_ref(p: Any, g: Any, acc: Any, tmp: Any, lr: float, epsilon: float) -> None:
    """acc += g^2;  p -= lr g / sqrt(acc + eps)."""
    xp = xp_of(p)
    xp.multiply(g, g, out=tmp)
    acc += tmp
    xp.add(acc, epsilon, out=tmp)
    xp.sqrt(tmp, out=tmp)
    xp.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp


def adadelta_ref(p: Any, g: Any, acc_g: Any, acc_dx: Any, tmp: Any, lr: float, rho: float, epsilon: float) -> None:
    """E[g^2] = rho E[g^2] + (1-rho) g^2;  dx = -sqrt(E[dx^2]+eps)/sqrt(E[g^2]+eps) g;  p += lr dx."""
    xp = xp_of(p)
    acc_g *= rho
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - rho
    acc_g += tmp
    # tmp = sqrt((acc_dx + eps) / (acc_g + eps)) * g = -dx
    xp.add(acc_g, epsilon, out=tmp)
    xp.divide(acc_dx + epsilon, tmp, out=tmp)
    xp.sqrt(tmp, out=tmp)
    tmp *= g
    acc_dx *= rho
    acc_dx += (1.0 - rho) * (tmp * tmp)
    tmp *= lr
    p -= tmp


def adam_ref(
    p: Any, g: Any, m: Any, v: Any, tmp: Any, lr: float, beta_1: float, beta_2: float, epsilon: float, step: int
) -> None:
    """Adam (Keras form): m, v moments; p -= lr sqrt(1-b2^t)/(1-b1^t) m / (sqrt(v) + eps)."""
    xp = xp_of(p)
    alpha = lr * (1.0 - beta_2**step) ** 0.5 / (1.0 - beta_1**step)
    xp.subtract(g, m, out=tmp)  # m += (g - m)(1 - b1)
    tmp *= 1.0 - beta_1
    m += tmp
    xp.multiply(g, g, out=tmp)  # v += (g^2 - v)(1 - b2)
    tmp -= v
    tmp *= 1.0 - beta_2
    v += tmp
    xp.sqrt(v, out=tmp)
    tmp += epsilon
    tmp *= _cuda.inverse_step_size(alpha)  # inf at lr 0: a zero step
    xp.divide(m, tmp, out=tmp)
    p -= tmp


def adamax_ref(
    p: Any, g: Any, m: Any, u: Any, tmp: Any, lr: float, beta_1: float, beta_2: float, epsilon: float, step: int
) -> None:
    """m = b1 m + (1-b1) g;  u = max(b2 u, |g|);  p -= lr/(1-b1^t) m / (u + eps)."""
    xp = xp_of(p)
    alpha = lr / (1.0 - beta_1**step)
    xp.subtract(g, m, out=tmp)
    tmp *= 1.0 - beta_1
    m += tmp
    u *= beta_2
    xp.abs(g, out=tmp)
    xp.maximum(u, tmp, out=u)
    xp.add(u, epsilon, out=tmp)
    tmp *= _cuda.inverse_step_size(alpha)  # inf at lr 0: a zero step
    xp.divide(m, tmp, out=tmp)
    p -= tmp


def weight_decay_ref(p: Any, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay: p -= lr wd p (as Keras's ``weight_decay`` and AdamW)."""
    p *= 1.0 - lr * weight_decay


def clip_by_value_ref(g: Any, clipvalue: float) -> None:
    """Clip every gradient entry into [-clipvalue, clipvalue]."""
    xp_of(g).clip(g, -clipvalue, clipvalue, out=g)


def clip_by_global_norm_ref(g: Any, clipnorm: float) -> None:
    """Scale the whole gradient down so its L2 norm is at most `clipnorm`."""
    xp = xp_of(g)
    wide = g.astype(xp.float64)  # a float32 sum of squares overflows for entries near 1e19
    norm = xp.sqrt(sum_of_squares(wide))
    # scale = min(1, clipnorm / norm), computed on the device (no host sync)
    scale = xp.minimum(1.0, clipnorm / xp.maximum(norm, 1e-30)).astype(g.dtype)
    g *= scale


def clip_by_norm_per_segment_ref(g: Any, clipnorm: float, segments: Any) -> None:
    """Scale each segment ``g[start:stop]`` (one weight) down so its own L2 norm is at most `clipnorm`.

    Keras's ``clipnorm``; one scale per weight, each computed on the device from a float64 sum of squares.
    """
    xp = xp_of(g)
    for start, stop in segments:
        seg = g[start:stop]
        norm = xp.sqrt(sum_of_squares(seg.astype(xp.float64)))
        seg *= xp.minimum(1.0, clipnorm / xp.maximum(norm, 1e-30)).astype(g.dtype)


# --- CPU: Adam in one pass -----------------------------------------------------------------------
# adam_ref makes twelve passes over five buffers; with a model's worth of parameters they no longer
# fit in cache, and the update costs about 4x a single fused loop (0.75 vs 0.18 ms warm, 1.0 vs
# 0.35 ms cold, for 536k float32 parameters on a 2-core EPYC; bench/train_cpu.py). Where Numba is
# importable, ``adam`` runs the same operations in the same order on each element, in the buffers'
# dtype and without FMA contraction, so its results are bit-identical to adam_ref's; anywhere else it
# is adam_ref. Numba is imported and the loop compiled on first use, never at import (the compiled
# loop is cached on disk). The loop is serial on purpose: a parallel one fights OpenBLAS's spinning
# threads and made training slower.

NUMBA_MIN_SIZE = 1 << 16  # below this, adam_ref's passes stay in cache and a compile would not pay
_numba_kernels: dict[str, Any] = {}  # "adam" -> compiled loop; empty before the first try


def _adam_loop(p, g, m, v, c1, c2, inv_alpha, eps):  # pragma: no cover - runs compiled by Numba
    for i in range(p.shape[0]):
        gi = g[i]
        mi = m[i] + (gi - m[i]) * c1  # adam_ref: tmp = g - m; tmp *= 1 - b1; m += tmp
        vi = v[i] + (gi * gi - v[i]) * c2  # tmp = g * g; tmp -= v; tmp *= 1 - b2; v += tmp
        m[i] = mi
        v[i] = vi
        p[i] -= mi / ((np.sqrt(vi) + eps) * inv_alpha)  # tmp = sqrt(v) + eps; tmp *= 1/alpha; p -= m / tmp


def _numba_adam() -> Any | None:
    """The compiled Adam loop, or None where Numba is missing, broken or disabled (NNXP_NUMBA=0)."""
    if "adam" not in _numba_kernels:
        kernel = None
        if os.environ.get("NNXP_NUMBA", "1") != "0":
            try:
                import numba

                kernel = numba.njit(cache=True, nogil=True, error_model="numpy")(_adam_loop)
            except Exception:  # not installed, or built for another NumPy: the reference serves
                kernel = None
        _numba_kernels["adam"] = kernel
    return _numba_kernels["adam"]


def _fusable(*arrays: Any) -> bool:
    """Host float32/float64 1-D C-contiguous buffers of one size and dtype, large enough to pay."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.dtype not in (np.float32, np.float64) or first.ndim != 1:
        return False
    if first.size < NUMBA_MIN_SIZE:
        return False
    return all(
        type(a) is np.ndarray and a.dtype == first.dtype and a.shape == first.shape and a.flags.c_contiguous
        for a in arrays
    )


def adam(
    p: Any, g: Any, m: Any, v: Any, tmp: Any, lr: float, beta_1: float, beta_2: float, epsilon: float, step: int
) -> None:
    """:func:`adam_ref`: one fused kernel on CUDA; one compiled pass on the CPU where Numba is importable."""
    if is_cupy_array(p):
        if _cuda.adam(p, g, m, v, tmp, lr, beta_1, beta_2, epsilon, step) is not NotImplemented:
            return
    elif _fusable(p, g, m, v):
        kernel = _numba_adam()
        if kernel is not None:
            alpha = lr * (1.0 - beta_2**step) ** 0.5 / (1.0 - beta_1**step)  # exactly as adam_ref
            f = p.dtype.type  # the scalars adam_ref's ufuncs see: Python floats cast to the buffers' dtype
            try:
                kernel(p, g, m, v, f(1.0 - beta_1), f(1.0 - beta_2), f(_cuda.inverse_step_size(alpha)), f(epsilon))
                return
            except Exception:  # a compile that fails here fails before touching the buffers
                _numba_kernels["adam"] = None
    adam_ref(p, g, m, v, tmp, lr, beta_1, beta_2, epsilon, step)


# --- the public entry points: one fused CUDA kernel for the CuPy buffers it handles, else the reference ------


sgd = _cuda.override("sgd", sgd_ref)
rmsprop = _cuda.override("rmsprop", rmsprop_ref)
adagrad = _cuda.override("adagrad", adagrad_ref)
adadelta = _cuda.override("adadelta", adadelta_ref)
adamax = _cuda.override("adamax", adamax_ref)
weight_decay = weight_decay_ref
clip_by_value = clip_by_value_ref
clip_by_global_norm = clip_by_global_norm_ref
clip_by_norm_per_segment = clip_by_norm_per_segment_ref
