"""The dense (fully connected) layer's numerics: forward and backward.

``dense_forward`` is matmul + bias + activation; ``dense_backward`` is the
activation gradient, the bias gradient (column sums) and the two matmuls for
the weight and input gradients. Both write into caller-owned buffers. The
``*_ref`` functions are the definition; a device may override the public ones
with fused kernels that must return the same numbers (tests compare them).
"""

from __future__ import annotations

from typing import Any

from ..backend import xp_of
from . import _cuda
from .activation import ACTIVATION_OPS


def dense_forward_ref(
    x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None
) -> tuple[Any, Any | None]:
    """``y = f(x @ w + b)`` into `out`; returns ``(y, z)``.

    x: (B, n_in), w: (n_in, n_out), b: (n_out,) or None. ``z`` (the
    pre-activation) is kept in `z_out` only when the activation's backward
    needs it (GELU); otherwise it is None.
    """
    xp = xp_of(x)
    op = ACTIVATION_OPS[activation]
    z = xp.matmul(x, w, out=out)  # (B, n_out)
    if b is not None:
        z += b
    if not op.needs_z:
        return op.forward(z, z), None
    if z_out is None:
        z_out = z.copy()
    else:
        z_out[...] = z
    return op.forward(z_out, z), z_out


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
    dz = ACTIVATION_OPS[activation].backward(dy, y, z, dy)  # (B, n_out), in place
    xp.matmul(x.T, dz, out=dw)  # (n_in, n_out)
    if db is not None:
        dz.sum(axis=0, out=db)
    if not need_dx:
        return None
    return xp.matmul(dz, w.T, out=dx_out)  # (B, n_in)


# The public entry points: the fused CUDA kernels (nnxp.ops._cuda) for the CuPy arrays they handle, the
# reference for everything else.
dense_forward = _cuda.override("dense_forward", dense_forward_ref)
dense_backward = _cuda.override("dense_backward", dense_backward_ref)
