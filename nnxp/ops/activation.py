"""Elementwise activations: forward and backward, generic over NumPy / CuPy.

Each activation is a pair of functions that write into a caller-owned ``out``
(which may alias the input) so the training loop allocates nothing per batch.
Backward works from the layer output ``y`` where the derivative can be written
in terms of it (ReLU, sigmoid, tanh, ...), which saves keeping the
pre-activation ``z``; only GELU and SiLU need ``z`` (``needs_z``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..backend import xp_of

LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
_GELU_C = math.sqrt(2.0 / math.pi)  # tanh approximation of GELU (as PyTorch approximate="tanh")


# --- forward: out = f(z) -----------------------------------------------------------------------


def _linear_fwd(z, out):
    if out is not z:
        out[...] = z
    return out


def _relu_fwd(z, out):
    return xp_of(z).maximum(z, 0, out=out)


def _leaky_relu_fwd(z, out):
    xp = xp_of(z)
    # max(z, a*z) is leaky ReLU for 0 < a < 1
    return xp.maximum(z, xp.multiply(z, LEAKY_RELU_SLOPE), out=out)


def _elu_fwd(z, out):
    xp = xp_of(z)
    # max(z, 0) + alpha * expm1(min(z, 0)); min first so expm1 never overflows
    neg = xp.minimum(z, 0)
    xp.expm1(neg, out=neg)
    neg *= ELU_ALPHA
    xp.maximum(z, 0, out=out)
    out += neg
    return out


def _sigmoid_fwd(z, out):
    xp = xp_of(z)
    # 0.5 * (1 + tanh(z/2)) equals 1/(1+exp(-z)) and cannot overflow
    xp.multiply(z, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def _tanh_fwd(z, out):
    return xp_of(z).tanh(z, out=out)


def _softplus_fwd(z, out):
    xp = xp_of(z)
    # log(1 + e^z) = max(z, 0) + log1p(e^-|z|), stable for any z
    t = xp.abs(z)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)
    xp.maximum(z, 0, out=out)
    out += t
    return out


def _gelu_fwd(z, out):
    xp = xp_of(z)
    # 0.5 z (1 + tanh(c (z + 0.044715 z^3)))
    t = z * z
    t *= 0.044715 * _GELU_C
    t += _GELU_C
    t *= z
    xp.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    return xp.multiply(z, t, out=out)


def _silu_fwd(z, out):
    xp = xp_of(z)
    # z * sigmoid(z), the sigmoid as 0.5 * (1 + tanh(z/2)) so it cannot overflow; out may alias z
    s = xp.multiply(z, 0.5)
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return xp.multiply(z, s, out=out)


def _softmax_fwd(z, out):
    xp = xp_of(z)
    # subtract the row max so exp cannot overflow
    m = z.max(axis=-1, keepdims=True)
    xp.subtract(z, m, out=out)
    xp.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


# --- backward: out = dL/dz given dy = dL/dy, y = f(z) and (only for GELU) z ---------------------


def _linear_bwd(dy, y, z, out):
    return _linear_fwd(dy, out)


def _relu_bwd(dy, y, z, out):
    xp = xp_of(dy)
    return xp.multiply(dy, y > 0, out=out)


def _leaky_relu_bwd(dy, y, z, out):
    xp = xp_of(dy)
    slope = xp.where(y > 0, 1.0, LEAKY_RELU_SLOPE).astype(dy.dtype, copy=False)
    return xp.multiply(dy, slope, out=out)


def _elu_bwd(dy, y, z, out):
    xp = xp_of(dy)
    # f'(z) = 1 for z > 0, else alpha e^z = y + alpha
    slope = xp.where(y > 0, 1.0, y + ELU_ALPHA).astype(dy.dtype, copy=False)
    return xp.multiply(dy, slope, out=out)


def _sigmoid_bwd(dy, y, z, out):
    xp = xp_of(dy)
    t = xp.subtract(1.0, y)  # (B, n)
    t *= y
    return xp.multiply(dy, t, out=out)


def _tanh_bwd(dy, y, z, out):
    xp = xp_of(dy)
    t = xp.multiply(y, y)
    xp.subtract(1.0, t, out=t)
    return xp.multiply(dy, t, out=out)


def _softplus_bwd(dy, y, z, out):
    xp = xp_of(dy)
    # f'(z) = sigmoid(z) = 1 - e^-y = -expm1(-y)
    t = xp.negative(y)
    xp.expm1(t, out=t)
    xp.negative(t, out=t)
    return xp.multiply(dy, t, out=out)


def _gelu_bwd(dy, y, z, out):
    xp = xp_of(dy)
    z2 = z * z
    u = z2 * (0.044715 * _GELU_C)
    u += _GELU_C
    u *= z  # u = c (z + 0.044715 z^3)
    th = xp.tanh(u)  # (B, n)
    # d/dz = 0.5 (1 + th) + 0.5 z (1 - th^2) c (1 + 3*0.044715 z^2)
    du = z2 * (3 * 0.044715 * _GELU_C)
    du += _GELU_C
    du *= z
    sech2 = xp.multiply(th, th)
    xp.subtract(1.0, sech2, out=sech2)
    du *= sech2
    th += 1.0
    th += du
    th *= 0.5
    return xp.multiply(dy, th, out=out)


def _silu_bwd(dy, y, z, out):
    xp = xp_of(dy)
    # f'(z) = s (1 + z (1 - s)) with s = sigmoid(z): not a function of y alone, so backward needs z
    s = xp.multiply(z, 0.5)  # (B, n)
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    t = xp.subtract(1.0, s)
    t *= z
    t += 1.0
    t *= s
    return xp.multiply(dy, t, out=out)


def _softmax_bwd(dy, y, z, out):
    xp = xp_of(dy)
    # full Jacobian-vector product: dz = y * (dy - sum(dy * y, axis=-1))
    s = (dy * y).sum(axis=-1, keepdims=True)  # (B, 1)
    xp.subtract(dy, s, out=out)
    out *= y
    return out


@dataclass(frozen=True)
class ActivationOps:
    """The forward/backward pair of one activation and what backward needs."""

    name: str
    forward: Callable[[Any, Any], Any]
    backward: Callable[[Any, Any, Any, Any], Any]
    needs_z: bool = False


ACTIVATION_OPS: dict[str, ActivationOps] = {
    op.name: op
    for op in (
        ActivationOps("linear", _linear_fwd, _linear_bwd),
        ActivationOps("relu", _relu_fwd, _relu_bwd),
        ActivationOps("leaky_relu", _leaky_relu_fwd, _leaky_relu_bwd),
        ActivationOps("elu", _elu_fwd, _elu_bwd),
        ActivationOps("gelu", _gelu_fwd, _gelu_bwd, needs_z=True),
        ActivationOps("sigmoid", _sigmoid_fwd, _sigmoid_bwd),
        ActivationOps("tanh", _tanh_fwd, _tanh_bwd),
        ActivationOps("softplus", _softplus_fwd, _softplus_bwd),
        ActivationOps("silu", _silu_fwd, _silu_bwd, needs_z=True),
        ActivationOps("softmax", _softmax_fwd, _softmax_bwd),
    )
}


def activation_forward(name: str, z: Any, out: Any = None) -> Any:
    """``f(z)`` into `out` (a new array when None; may be `z` itself)."""
    if out is None:
        out = xp_of(z).empty_like(z)
    return ACTIVATION_OPS[name].forward(z, out)


def activation_backward(name: str, dy: Any, y: Any, z: Any = None, out: Any = None) -> Any:
    """``dL/dz`` from ``dL/dy`` into `out` (may alias `dy`)."""
    if out is None:
        out = xp_of(dy).empty_like(dy)
    return ACTIVATION_OPS[name].backward(dy, y, z, out)
