"""Dropout with a counter-based mask: the mask is a hash of (seed, element index), so backward regenerates it.

`seed` is either a Python int (the mask's seed itself) or a device "state": a C-contiguous (2,) uint64 array
holding (layer seed, step counter). With a state the kernels use nx_hash(seed, step) as the mask's seed, read
on the device, so a captured CUDA graph that bumps the counter draws a new mask on every replay.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import cupy_module, xp_of
from . import _cuda
from ._cuda import Op

_U64 = np.uint64
_M64 = 2**64 - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def step_seed(seed: int, step: int) -> int:
    """nx_hash(seed, step) of kernels.cu in Python integers: the mask seed of a state (seed, step)."""
    z = (seed + (step + 1) * _GAMMA) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def _hash(xp: Any, seed: Any, offset: Any) -> Any:
    """nx_hash over uint64 arrays (wrapping arithmetic; arrays, so NumPy warns of no scalar overflow)."""
    z = seed + (offset + _U64(1)) * _U64(_GAMMA)
    z = (z ^ (z >> _U64(30))) * _U64(_MIX1)
    z = (z ^ (z >> _U64(27))) * _U64(_MIX2)
    return z ^ (z >> _U64(31))


def _is_state(seed: Any) -> bool:
    return hasattr(seed, "dtype") and hasattr(seed, "shape")


def dropout_mask_ref(xp: Any, n: int, rate: float, seed: Any, dtype: Any) -> Any:
    """The kernels' mask, generic over NumPy / CuPy: scale where splitmix64(seed, i) gives u >= rate, else 0.

    `seed` is an int or a (2,) uint64 state (seed, step) on `xp`'s device; the state is hashed there, with no
    host read, so this reference also runs inside a CUDA graph capture. The hash is integer arithmetic and u
    takes the top 24 (float32) or 53 (float64) bits exactly, so this equals the device mask bit for bit.
    """
    dtype = np.dtype(dtype)
    if _is_state(seed):
        base = _hash(xp, seed[0:1], seed[1:2])  # (1,): broadcasts over the offsets
    else:
        base = xp.asarray(np.full(1, int(seed) % 2**64, dtype=np.uint64))
    z = _hash(xp, base, xp.arange(n, dtype=np.uint64))
    if dtype == np.float32:
        u = (z >> _U64(40)).astype(np.float32) * np.float32(2.0**-24)
    else:
        u = (z >> _U64(11)).astype(np.float64) * (2.0**-53)
    keep = u >= dtype.type(rate)
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def dropout_forward_ref(x: Any, rate: float, seed: Any, out: Any = None, mask_out: Any = None) -> tuple[Any, Any]:
    """``y = x * mask`` with :func:`dropout_mask_ref`; returns ``(y, mask)``."""
    xp = xp_of(x)
    mask = dropout_mask_ref(xp, x.size, rate, seed, x.dtype).reshape(x.shape)
    if mask_out is not None:
        mask_out[...] = mask
        mask = mask_out
    return xp.multiply(x, mask, out=out), mask


def dropout_backward_ref(dy: Any, rate: float, seed: Any, out: Any = None) -> Any:
    """``dx = dy * mask`` with the mask regenerated from (seed, offset)."""
    xp = xp_of(dy)
    return xp.multiply(dy, dropout_mask_ref(xp, dy.size, rate, seed, dy.dtype).reshape(dy.shape), out=out)


# The ops the Dropout layer calls: the kernels for the CuPy arrays they take (below), else the references.
dropout_forward = Op(dropout_forward_ref)
dropout_backward = Op(dropout_backward_ref)


# --- CUDA: hash, compare, scale and multiply in one pass (kernels.cu) ----------------------------------------


def _dropout_args_fit(x: Any, rate: float, seed: Any, out: Any) -> np.dtype | None:
    dtype = _cuda._dtype_of(x)
    if dtype is None or x.size == 0 or not (0.0 <= rate < 1.0):
        return None
    dev = x.device.id
    if not _cuda._fits(x, dtype, x.shape, dev) or (out is not None and not _cuda._fits(out, dtype, x.shape, dev)):
        return None
    if _is_state(seed) and not _cuda._fits(seed, np.dtype(np.uint64), (2,), dev):
        return None
    return dtype


def _seed_args(seed: Any) -> tuple[Any, Any]:
    """(by-value seed, state pointer) for the kernels: the state wins when given."""
    if _is_state(seed):
        return _U64(0), seed
    return _U64(int(seed) % 2**64), None


@dropout_forward.override
def _dropout_forward_cuda(x: Any, rate: float, seed: Any, out: Any = None, mask_out: Any = None) -> Any:
    """Fused :func:`dropout_forward_ref`: hash, compare, scale and multiply in one pass.

    `seed` must change every step (an int: e.g. base seed + iteration; a state: bump its counter); the mask is
    stored only when `mask_out` is given, since :data:`dropout_backward` regenerates it from (seed, offset).
    """
    dtype = _dropout_args_fit(x, rate, seed, out)
    if dtype is None or (mask_out is not None and not _cuda._fits(mask_out, dtype, x.shape, x.device.id)):
        return NotImplemented
    dev = x.device.id
    cp = cupy_module()
    with _cuda._current(dev):
        y = cp.empty_like(x) if out is None else out
    t = dtype.type
    value, state = _seed_args(seed)
    args = (x, y, mask_out if mask_out is not None else y, np.int64(x.size), value, t(rate),
            t(1.0 / (1.0 - rate)), np.int32(mask_out is not None), state)
    _cuda._launch("nnxp_dropout_forward", dtype, dev, (_cuda._grid(x.size, dev),), (_cuda._BLOCK,), args)
    return y, mask_out


@dropout_backward.override
def _dropout_backward_cuda(dy: Any, rate: float, seed: Any, out: Any = None) -> Any:
    """Fused :func:`dropout_backward_ref`; `out` may be `dy` itself."""
    dtype = _dropout_args_fit(dy, rate, seed, out)
    if dtype is None:
        return NotImplemented
    dev = dy.device.id
    cp = cupy_module()
    with _cuda._current(dev):
        dx = cp.empty_like(dy) if out is None else out
    t = dtype.type
    value, state = _seed_args(seed)
    args = (dy, dx, np.int64(dy.size), value, t(rate), t(1.0 / (1.0 - rate)), state)
    _cuda._launch("nnxp_dropout_backward", dtype, dev, (_cuda._grid(dy.size, dev),), (_cuda._BLOCK,), args)
    return dx


# --- inputs `nnxp selftest` runs each override on (against its reference, on the user's GPU) --------------------
# the seed as a graph step passes it: device state (the layer's seed, its step count)
dropout_forward.example(lambda rng, dtype: {"": (  # with an out and a mask buffer: both are compared
    rng.normal(size=(67, 33)).astype(dtype), 0.3, np.array([20_261_201, 7], dtype=np.uint64),
    np.zeros((67, 33), dtype), np.zeros((67, 33), dtype))})
dropout_backward.example(lambda rng, dtype: {"": (
    rng.normal(size=(67, 33)).astype(dtype), 0.3, np.array([20_261_201, 7], dtype=np.uint64))})
