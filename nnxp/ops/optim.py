"""Optimizer updates over one flat parameter buffer, in place.

Each step takes the whole model's parameters ``p`` and gradients ``g`` as two
1-D arrays, the optimizer's state arrays of the same size, a scratch buffer
``tmp`` and hyper-parameters as Python floats (so float32 buffers stay float32).
A step is then a handful of whole-buffer ufunc calls whatever the model's
depth; on the GPU each is one fused kernel. Update rules follow Keras.
On the CPU every optimizer runs its reference's arithmetic as one compiled loop
where Numba is importable, else the reference cache-blocked (both bit-identical;
see the end of this module).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..backend import cupy_module, is_cupy_array, xp_of
from ..errors import NnxpError
from . import _cpu, _cuda
from ._cuda import Op
from .reduce import sum_of_squares


def inverse_step_size(alpha: float) -> float:
    """1 / alpha for the Adam-style ``p -= m / ((denominator) * (1 / alpha))``; inf when a schedule reaches a
    learning rate of 0, which makes the step exactly 0 (m / inf) instead of dividing by zero."""
    return 1.0 / alpha if alpha else math.inf


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
    tmp *= inverse_step_size(alpha)  # inf at lr 0: a zero step
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
    tmp *= inverse_step_size(alpha)  # inf at lr 0: a zero step
    xp.divide(m, tmp, out=tmp)
    p -= tmp


def lion_ref(p: Any, g: Any, m: Any, tmp: Any, lr: float, beta_1: float, beta_2: float) -> None:
    """Lion (Chen et al. 2023, Keras's ``Lion``): p -= lr sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g.

    Both interpolations are written as Adam's ``m + (g - m)(1 - b)`` so no second scratch buffer is needed.
    """
    xp = xp_of(p)
    xp.subtract(g, m, out=tmp)  # c = m + (g - m)(1 - b1)
    tmp *= 1.0 - beta_1
    tmp += m
    xp.sign(tmp, out=tmp)  # NaN stays NaN, 0 moves nothing
    tmp *= lr
    p -= tmp
    xp.subtract(g, m, out=tmp)  # m += (g - m)(1 - b2)
    tmp *= 1.0 - beta_2
    m += tmp


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


# --- CPU: every optimizer's step in one pass -----------------------------------------------------
# A reference makes up to a dozen passes over up to five buffers; with a model's worth of parameters they no
# longer fit in cache, and the update costs about 4x a single fused loop (0.75 vs 0.18 ms warm, 1.0 vs
# 0.35 ms cold, Adam over 536k float32 parameters on a 2-core EPYC; bench/train_cpu.py). Where Numba is
# importable (the ``fast`` extra) each optimizer runs its reference's operations in the same order on each
# element, in the buffers' dtype and without FMA contraction, so its results are bit-identical to the
# reference's. Numba is imported and a loop compiled on first use, never at import, and the machine code is
# cached on disk. Buffers of PARALLEL_MIN_SIZE elements and more would be split into blocks over Numba's
# threads (elementwise, so still bit-identical); measured slower on 2 cores, so off by default.
# (Running a reference block by block instead, to keep
# the buffers in L2, measured slower than its whole-buffer passes, 1.3-1.8 vs 1.1-1.5 ms for Adam: the extra
# ufunc calls cost more than the memory traffic they save.)

NUMBA_MIN_SIZE = 1 << 16  # below this, a reference's passes stay in cache and a compile would not pay
PARALLEL_MIN_SIZE = 1 << 62  # threaded blocks from here on: off, as measured (serial steps were faster)
PARALLEL_CHUNK = 1 << 16  # elements per block of a threaded step (5 float32 buffers: 1.25 MiB)
_numba_kernels: dict[str, Any] = {}  # kept for callers that look: "adam" -> compiled loop once it ran


def _adam_loop(p_, g_, m_, v_, c1, c2, inv_alpha, eps, chunk):  # pragma: no cover - runs compiled by Numba
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, m, v = p_[lo:hi], g_[lo:hi], m_[lo:hi], v_[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * c1  # adam_ref: tmp = g - m; tmp *= 1 - b1; m += tmp
            vi = v[i] + (gi * gi - v[i]) * c2  # tmp = g * g; tmp -= v; tmp *= 1 - b2; v += tmp
            m[i] = mi
            v[i] = vi
            p[i] -= mi / ((np.sqrt(vi) + eps) * inv_alpha)  # tmp = sqrt(v) + eps; tmp *= 1/alpha; p -= m / tmp


def _adamax_loop(p_, g_, m_, u_, c1, b2, inv_alpha, eps, chunk):  # pragma: no cover - runs compiled by Numba
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, m, u = p_[lo:hi], g_[lo:hi], m_[lo:hi], u_[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            mi = m[i] + (gi - m[i]) * c1  # adamax_ref: tmp = g - m; tmp *= 1 - b1; m += tmp
            ui = u[i] * b2  # u *= b2
            ai = abs(gi)  # tmp = |g|
            if not (ui != ui or ui >= ai):  # u = maximum(u, tmp), NaN from either side as np.maximum
                ui = ai
            m[i] = mi
            u[i] = ui
            p[i] -= mi / ((ui + eps) * inv_alpha)  # tmp = u + eps; tmp *= 1/alpha; p -= m / tmp


def _sgd_loop(p_, g_, velocity_, lr, momentum, mode, chunk):  # pragma: no cover - runs compiled by Numba
    # mode 0: plain; 1: momentum; 2: Nesterov momentum (velocity is a dummy in mode 0)
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, velocity = p_[lo:hi], g_[lo:hi], velocity_[lo:hi]
        for i in range(hi - lo):
            t = g[i] * lr  # tmp = lr g
            if mode == 0:
                p[i] -= t
            else:
                vi = velocity[i] * momentum - t  # v *= momentum; v -= tmp
                velocity[i] = vi
                if mode == 2:
                    p[i] = (p[i] - t) + vi * momentum  # p -= tmp; tmp = momentum v; p += tmp
                else:
                    p[i] += vi


def _rmsprop_loop(p_, g_, avg_sq_, mom_, avg_g_, lr, rho, one_minus_rho, momentum, eps, centered, use_mom, chunk):
    # pragma: no cover - runs compiled by Numba; mom / avg_g are dummies when unused
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, avg_sq, mom, avg_g = p_[lo:hi], g_[lo:hi], avg_sq_[lo:hi], mom_[lo:hi], avg_g_[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            s = avg_sq[i] * rho + (gi * gi) * one_minus_rho  # avg_sq *= rho; tmp = g g (1 - rho); avg_sq += tmp
            avg_sq[i] = s
            if centered:
                a = avg_g[i] * rho + gi * one_minus_rho  # avg_g *= rho; tmp = g (1 - rho); avg_g += tmp
                avg_g[i] = a
                d = (s - a * a) + eps  # tmp = avg_g^2; tmp = avg_sq - tmp; tmp += eps
            else:
                d = s + eps
            t = (gi / np.sqrt(d)) * lr  # sqrt; g / tmp; tmp *= lr
            if use_mom:
                mi = mom[i] * momentum + t  # mom *= momentum; mom += tmp; p -= mom
                mom[i] = mi
                p[i] -= mi
            else:
                p[i] -= t


def _adagrad_loop(p_, g_, acc_, lr, eps, chunk):  # pragma: no cover - runs compiled by Numba
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, acc = p_[lo:hi], g_[lo:hi], acc_[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            a = acc[i] + gi * gi  # tmp = g g; acc += tmp
            acc[i] = a
            p[i] -= (gi / np.sqrt(a + eps)) * lr  # tmp = acc + eps; sqrt; g / tmp; tmp *= lr; p -= tmp


def _adadelta_loop(p_, g_, acc_g_, acc_dx_, lr, rho, one_minus_rho, eps, chunk):  # pragma: no cover - Numba runs it
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, acc_g, acc_dx = p_[lo:hi], g_[lo:hi], acc_g_[lo:hi], acc_dx_[lo:hi]
        for i in range(hi - lo):
            gi = g[i]
            ag = acc_g[i] * rho + (gi * gi) * one_minus_rho  # acc_g *= rho; tmp = g g (1 - rho); acc_g += tmp
            acc_g[i] = ag
            t = np.sqrt((acc_dx[i] + eps) / (ag + eps)) * gi  # tmp = sqrt((acc_dx + eps) / (acc_g + eps)) * g
            acc_dx[i] = acc_dx[i] * rho + one_minus_rho * (t * t)  # acc_dx *= rho; acc_dx += (1 - rho) (tmp tmp)
            p[i] -= t * lr  # tmp *= lr; p -= tmp


def _lion_loop(p_, g_, m_, lr, c1, c2, one, zero, chunk):  # pragma: no cover - runs compiled by Numba
    n = p_.shape[0]
    for blk in prange((n + chunk - 1) // chunk):  # one block when serial
        lo, hi = blk * chunk, min(n, (blk + 1) * chunk)
        p, g, m = p_[lo:hi], g_[lo:hi], m_[lo:hi]
        for i in range(hi - lo):
            gi, mi = g[i], m[i]
            c = (gi - mi) * c1 + mi  # lion_ref: tmp = g - m; tmp *= 1 - b1; tmp += m
            # np.sign: 1, -1, 0 for either zero, NaN kept
            s = one if c > zero else (-one if c < zero else (zero if c == zero else c))
            p[i] -= s * lr  # tmp *= lr; p -= tmp
            m[i] = mi + (gi - mi) * c2  # tmp = g - m; tmp *= 1 - b2; m += tmp


def _fusable(*arrays: Any) -> bool:
    """Host float32/float64 1-D C-contiguous buffers of one size and dtype (None entries skipped), large enough
    to pay."""
    first = arrays[0]
    if type(first) is not np.ndarray or first.ndim != 1 or first.size < NUMBA_MIN_SIZE:
        return False
    return _cpu.host_float(*arrays) and all(a is None or a.shape == first.shape for a in arrays)


def _cpu_step(name: str, loop: Any, ref: Any, buffers: tuple, ref_scalars: tuple, loop_args: Any) -> None:
    """One optimizer step on host buffers: the compiled loop where it runs, else the reference.

    `buffers` are (p, g, *state, tmp) as `ref` takes them; `loop_args()` gives the loop's arguments.
    """
    if _cpu.numba_enabled() and _fusable(*buffers):
        n = buffers[0].shape[0]
        threaded = n >= PARALLEL_MIN_SIZE and _cpu.threads() > 1
        if _cpu.call(name, loop, *loop_args(), PARALLEL_CHUNK if threaded else n, parallel=threaded):
            if name not in _numba_kernels:
                _numba_kernels[name] = _cpu.kernel(name, loop, threaded)
            return
    ref(*buffers, *ref_scalars)


prange = range  # Numba compiles the loops with numba.prange in its place (nnxp.ops._cpu.kernel)


def _numba_adam() -> Any | None:
    """The compiled Adam loop, or None where Numba is missing, broken or disabled (NNXP_NUMBA=0)."""
    return _cpu.kernel("adam", _adam_loop)


def _sgd_cpu(p: Any, g: Any, velocity: Any | None, tmp: Any, lr: float, momentum: float, nesterov: bool) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    mode = 0 if velocity is None else 2 if nesterov else 1
    _cpu_step("sgd", _sgd_loop, sgd_ref, (p, g, velocity, tmp), (lr, momentum, nesterov),
              lambda: (p, g, p if velocity is None else velocity, f(lr), f(momentum), mode))


def _rmsprop_cpu(p, g, avg_sq, mom, avg_g, tmp, lr, rho, momentum, epsilon) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    _cpu_step("rmsprop", _rmsprop_loop, rmsprop_ref, (p, g, avg_sq, mom, avg_g, tmp), (lr, rho, momentum, epsilon),
              lambda: (p, g, avg_sq, p if mom is None else mom, p if avg_g is None else avg_g, f(lr), f(rho),
                       f(1.0 - rho), f(momentum), f(epsilon), avg_g is not None, mom is not None))


def _adagrad_cpu(p, g, acc, tmp, lr, epsilon) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    _cpu_step("adagrad", _adagrad_loop, adagrad_ref, (p, g, acc, tmp), (lr, epsilon),
              lambda: (p, g, acc, f(lr), f(epsilon)))


def _adadelta_cpu(p, g, acc_g, acc_dx, tmp, lr, rho, epsilon) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    _cpu_step("adadelta", _adadelta_loop, adadelta_ref, (p, g, acc_g, acc_dx, tmp), (lr, rho, epsilon),
              lambda: (p, g, acc_g, acc_dx, f(lr), f(rho), f(1.0 - rho), f(epsilon)))


def _adamax_cpu(p, g, m, u, tmp, lr, beta_1, beta_2, epsilon, step) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    alpha = lr / (1.0 - beta_1**step)  # exactly as adamax_ref
    _cpu_step("adamax", _adamax_loop, adamax_ref, (p, g, m, u, tmp), (lr, beta_1, beta_2, epsilon, step),
              lambda: (p, g, m, u, f(1.0 - beta_1), f(beta_2), f(inverse_step_size(alpha)), f(epsilon)))


def _lion_cpu(p, g, m, tmp, lr, beta_1, beta_2) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    _cpu_step("lion", _lion_loop, lion_ref, (p, g, m, tmp), (lr, beta_1, beta_2),
              lambda: (p, g, m, f(lr), f(1.0 - beta_1), f(1.0 - beta_2), f(1.0), f(0.0)))


def _adam_cpu(p, g, m, v, tmp, lr, beta_1, beta_2, epsilon, step) -> None:
    f = p.dtype.type if hasattr(p, "dtype") else float
    alpha = lr * (1.0 - beta_2**step) ** 0.5 / (1.0 - beta_1**step)  # exactly as adam_ref
    # the scalars adam_ref's ufuncs see: Python floats cast to the buffers' dtype
    _cpu_step("adam", _adam_loop, adam_ref, (p, g, m, v, tmp), (lr, beta_1, beta_2, epsilon, step),
              lambda: (p, g, m, v, f(1.0 - beta_1), f(1.0 - beta_2), f(inverse_step_size(alpha)), f(epsilon)))


class Update(Op):
    """An optimizer's rule as an op over one flat buffer: ``rule(p, g, *state, tmp, *scalars)``.

    The one declaration of a rule, read by its optimizer class (nnxp/optimizers.py), the CUDA graph and the tests:

    - `state`: its state buffers' names, in the reference's order. They are the optimizer's slot names, which
      model files store (``optimizer/<slot>``), so they never change.
    - `optional`: the slots a configuration may lack (passed as None), each with the optimizer attribute that
      turns it on (``{"velocity": "momentum"}``: SGD keeps a velocity only with momentum).
    - `scalars`: its named scalars, in the reference's order; the optimizer supplies each from its same-named
      attribute (``lr`` and ``step`` from the schedule and the step count).
    - `kernel_scalars`: the kernel's scalars, called by keyword with the named scalars, ``has_<slot>`` for each
      optional slot and ``weight_decay``; it returns them by the kernel's parameter names, in its order
      (tests/test_ops_cuda_compile.py checks the names against kernels.cu).
    - `host`: the CPU path (a compiled loop); the reference itself when omitted.

    :func:`update` is the one way a step runs, eager or replayed in a CUDA graph.
    """

    def __init__(self, ref: Callable, host: Callable | None = None, *, state: tuple[str, ...],
                 scalars: tuple[str, ...], kernel_scalars: Callable[..., dict[str, Any]],
                 optional: Mapping[str, str] | None = None) -> None:
        super().__init__(ref, host)
        self.state, self.scalars, self._kernel_scalars = tuple(state), tuple(scalars), kernel_scalars
        # the last eager launch, kept for the same buffers as nnxp.ops._cuda.LaunchPlan keeps an op's (the scalars
        # change every step, so only they are computed again): (buffers, kernels, kernel, grid, flags, device)
        self._kept: tuple | None = None
        self.optional: dict[str, str] = dict(optional or {})
        unknown = set(self.optional) - set(self.state)
        if unknown:
            raise ValueError(f"{self.__name__}: optional slots {sorted(unknown)} are not in state {self.state}")
        self.override(self._cuda_step)  # one CUDA wrapper for every rule: its kernel is nnxp_<name>

    def forget(self) -> None:
        super().forget()
        self._kept = None

    def _cuda_step(self, p: Any, g: Any, *args: Any, weight_decay: float = 0.0, hp: Any = None) -> Any:
        """The override of every rule: kernel ``nnxp_<name>`` over (p, g, *state, n, *kernel scalars, hp).

        Takes the reference's arguments (`tmp` unused) plus the decay to fold in and `hp`: None, or the device
        array the kernel reads its floating-point scalars from (a step replayed in a CUDA graph). A missing
        optional slot is passed as `p`, which the kernel never touches then; NotImplemented for what it declines.
        """
        n_state = len(self.state)
        state, values = args[:n_state], args[n_state + 1:]
        kept = self._kept
        if (hp is None and kept is not None and kept[1] is _cuda._KERNELS and not _cuda.recording()
                and len(args) == len(self.state) + 1 + len(self.scalars)
                and all(map(operator.is_, (p, g, *state), kept[0]))
                and cupy_module().cuda.runtime.getDevice() == kept[5]):
            _, _, kernel, grid, has, _ = kept  # the same buffers as the last step: only the scalars are new
            scalars = self._kernel_scalars(p.dtype, **dict(zip(self.scalars, values)), **has,
                                           weight_decay=weight_decay).values()
            kernel(grid, (_cuda._BLOCK,), (p, g, *[p if buf is None else buf for buf in state], np.int64(p.size),
                                           *scalars, None))
            return None
        dtype = _flat_fit(p, g, *state)
        missing = any(buf is None and slot not in self.optional for slot, buf in zip(self.state, state, strict=True))
        if dtype is None or missing:
            return NotImplemented
        scalars = self.kernel_scalars(dtype, state, dict(zip(self.scalars, values, strict=True)), weight_decay)
        if not _hp_fits(hp, p, scalars):
            return NotImplemented
        dev = p.device.id
        buffers = (p if buf is None else buf for buf in state)
        kernel, grid = _cuda._launch(f"nnxp_{self.__name__}", p.dtype, dev, (_cuda._grid(p.size, dev),),
                                     (_cuda._BLOCK,), (p, g, *buffers, np.int64(p.size), *scalars, hp))
        if hp is None:
            has = {f"has_{slot}": buf is not None for slot, buf in zip(self.state, state, strict=True)
                   if slot in self.optional}
            self._kept = ((p, g, *state), _cuda._KERNELS, kernel, grid, has, dev)
        return None

    def kernel_arguments(self, dtype: Any, state: tuple, scalars: Mapping[str, Any],
                         weight_decay: float = 0.0) -> dict[str, Any]:
        """The kernel's scalars by its parameter names, in its order (floating point, then int flags)."""
        named = {name: scalars[name] for name in self.scalars}
        return self._kernel_scalars(np.dtype(dtype), **named, **self.optional_flags(state), weight_decay=weight_decay)

    def optional_flags(self, state: tuple) -> dict[str, bool]:
        """``has_<slot>`` for each optional slot: whether its buffer is in `state` (the kernel's int flags)."""
        return {f"has_{slot}": buf is not None for slot, buf in zip(self.state, state, strict=True)
                if slot in self.optional}

    def floats_of(self, dtype: np.dtype, named: Mapping[str, Any], flags: dict[str, bool],
                  weight_decay: float) -> list:
        """:meth:`device_scalars` from the named scalars (exactly `self.scalars`) and :meth:`optional_flags`, as a
        list: one row of a replayed epoch's table (nnxp.optimizers.Optimizer.graph_table)."""
        values = self._kernel_scalars(dtype, **named, **flags, weight_decay=weight_decay).values()
        return [x for x in values if isinstance(x, np.floating)]

    def kernel_scalars(self, dtype: Any, state: tuple, scalars: Mapping[str, Any], weight_decay: float = 0.0) -> tuple:
        """The kernel's scalars (floating point, then int flags) for these named scalars and state buffers."""
        return tuple(self.kernel_arguments(dtype, state, scalars, weight_decay).values())

    def device_scalars(self, dtype: Any, state: tuple, scalars: Mapping[str, Any], weight_decay: float = 0.0) -> tuple:
        """What the kernel reads from `hp` (its floating-point scalars, in order) when a graph replays it."""
        return _floats(self.kernel_scalars(dtype, state, scalars, weight_decay))


def update(rule: Update, p: Any, g: Any, state: tuple, tmp: Any, scalars: Mapping[str, Any],
           weight_decay: float = 0.0, hp: Any = None) -> None:
    """One optimizer step in place: decoupled weight decay (``p *= 1 - lr * weight_decay``), then `rule`.

    On CuPy buffers its kernel does both in one pass (the decay folded in, the same rounding as the separate
    pass); elsewhere :func:`weight_decay_ref` runs first, then the rule's host path. `hp` (a step captured in a
    CUDA graph) is the device buffer the kernel reads its floating-point scalars from; then the kernel must run.
    """
    values = [scalars[name] for name in rule.scalars]
    if rule.fused is not None and is_cupy_array(p):
        if rule.fused(p, g, *state, tmp, *values, weight_decay=weight_decay, hp=hp) is not NotImplemented:
            return
    if hp is not None:
        raise NnxpError(f"the fused {rule.__name__} kernel cannot run on these buffers, so this step cannot be "
                        "captured")
    if weight_decay:
        weight_decay_ref(p, scalars["lr"], weight_decay)
    rule.host(p, g, *state, tmp, *values)


# --- CUDA: one kernel per step, the references' arguments plus the decoupled weight decay, folded in --------
#
# Hyper-parameters reach the kernels as T scalars computed in double exactly as the references compute the
# Python floats they multiply by (`tmp *= 1.0 - rho` is T(1.0 - rho)); `decay` = 1 - lr * weight_decay is
# weight_decay_ref's factor (1.0, an exact no-op, without decay). Each *_scalars function takes its rule's named
# scalars (and ``has_<slot>`` for its optional slots) by keyword and returns the kernel's scalars by the kernel's
# parameter names in kernels.cu, in its order: floating point (what `hp` holds, hp[0], hp[1], ...), then int flags.
# tests/test_ops_cuda_compile.py checks those names and that order against kernels.cu, and runs the element
# math through them.


def sgd_scalars(dtype, *, lr, momentum, nesterov, has_velocity, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    mode = 0 if not has_velocity else (2 if nesterov else 1)
    return {"lr": t(lr), "momentum": t(momentum), "decay": t(1.0 - lr * weight_decay), "mode": np.int32(mode)}


def rmsprop_scalars(dtype, *, lr, rho, momentum, epsilon, has_momentum, has_avg_grad,
                    weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    return {"lr": t(lr), "rho": t(rho), "one_minus_rho": t(1.0 - rho), "momentum": t(momentum), "eps": t(epsilon),
            "decay": t(1.0 - lr * weight_decay), "has_mom": np.int32(has_momentum),
            "centered": np.int32(has_avg_grad)}


def adagrad_scalars(dtype, *, lr, epsilon, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    return {"lr": t(lr), "eps": t(epsilon), "decay": t(1.0 - lr * weight_decay)}


def adadelta_scalars(dtype, *, lr, rho, epsilon, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    return {"lr": t(lr), "rho": t(rho), "one_minus_rho": t(1.0 - rho), "eps": t(epsilon),
            "decay": t(1.0 - lr * weight_decay)}


def adam_scalars(dtype, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    alpha = lr * (1.0 - beta_2**step) ** 0.5 / (1.0 - beta_1**step)  # exactly as adam_ref, on the host
    return {"one_minus_b1": t(1.0 - beta_1), "one_minus_b2": t(1.0 - beta_2), "eps": t(epsilon),
            "inv_alpha": t(inverse_step_size(alpha)), "decay": t(1.0 - lr * weight_decay)}


def adamax_scalars(dtype, *, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    alpha = lr / (1.0 - beta_1**step)  # exactly as adamax_ref
    return {"one_minus_b1": t(1.0 - beta_1), "b2": t(beta_2), "eps": t(epsilon),
            "inv_alpha": t(inverse_step_size(alpha)), "decay": t(1.0 - lr * weight_decay)}


def lion_scalars(dtype, *, lr, beta_1, beta_2, weight_decay=0.0) -> dict[str, Any]:
    t = np.dtype(dtype).type
    return {"lr": t(lr), "one_minus_b1": t(1.0 - beta_1), "one_minus_b2": t(1.0 - beta_2),
            "decay": t(1.0 - lr * weight_decay)}


# --- the public entry points: one fused CUDA kernel for the CuPy buffers it handles, else the CPU path -------

sgd = Update(sgd_ref, _sgd_cpu, state=("velocity",), optional={"velocity": "momentum"},
             scalars=("lr", "momentum", "nesterov"), kernel_scalars=sgd_scalars)
rmsprop = Update(rmsprop_ref, _rmsprop_cpu, state=("avg_sq", "momentum", "avg_grad"),
                 optional={"momentum": "momentum", "avg_grad": "centered"},
                 scalars=("lr", "rho", "momentum", "epsilon"), kernel_scalars=rmsprop_scalars)
adagrad = Update(adagrad_ref, _adagrad_cpu, state=("accumulator",), scalars=("lr", "epsilon"),
                 kernel_scalars=adagrad_scalars)
adadelta = Update(adadelta_ref, _adadelta_cpu, state=("accumulated_grad", "accumulated_delta"),
                  scalars=("lr", "rho", "epsilon"), kernel_scalars=adadelta_scalars)
adam = Update(adam_ref, _adam_cpu, state=("m", "v"), scalars=("lr", "beta_1", "beta_2", "epsilon", "step"),
              kernel_scalars=adam_scalars)
adamax = Update(adamax_ref, _adamax_cpu, state=("m", "u"), scalars=("lr", "beta_1", "beta_2", "epsilon", "step"),
                kernel_scalars=adamax_scalars)
lion = Update(lion_ref, _lion_cpu, state=("m",), scalars=("lr", "beta_1", "beta_2"),
              kernel_scalars=lion_scalars)
weight_decay = weight_decay_ref
clip_by_value = clip_by_value_ref
clip_by_global_norm = clip_by_global_norm_ref
clip_by_norm_per_segment = clip_by_norm_per_segment_ref


def _flat_fit(p: Any, *others: Any) -> np.dtype | None:
    """p and every non-None other: C-contiguous CuPy arrays of one float dtype, size and device."""
    dtype = _cuda._dtype_of(p)
    if dtype is None or p.size == 0:
        return None
    dev = p.device.id
    for a in (p, *others):
        if a is not None and not _cuda._fits(a, dtype, p.shape, dev):
            return None
    return dtype


def _floats(scalars: tuple) -> tuple:
    """The floating-point entries of a ``*_scalars`` tuple: what a kernel reads from `hp` when it is given."""
    return tuple(x for x in scalars if isinstance(x, np.floating))


def _hp_fits(hp: Any, p: Any, scalars: tuple) -> bool:
    return hp is None or (
        is_cupy_array(hp) and hp.dtype == p.dtype and hp.ndim == 1 and hp.size >= len(_floats(scalars))
        and hp.flags.c_contiguous and hp.device.id == p.device.id
    )

