"""Optimizer updates over one flat parameter buffer, in place.

Each step takes the whole model's parameters ``p`` and gradients ``g`` as two
1-D arrays, the optimizer's state arrays of the same size, a scratch buffer
``tmp`` and hyper-parameters as Python floats (so float32 buffers stay float32).
A step is then a handful of whole-buffer ufunc calls whatever the model's
depth; on the GPU each is one fused kernel. Update rules follow Keras.
"""

from __future__ import annotations

from typing import Any

from ..backend import xp_of


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
    tmp *= 1.0 / alpha
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
    tmp *= 1.0 / alpha
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
    norm = xp.sqrt(xp.dot(wide, wide))
    # scale = min(1, clipnorm / norm), computed on the device (no host sync)
    scale = xp.minimum(1.0, clipnorm / xp.maximum(norm, 1e-30)).astype(g.dtype)
    g *= scale


# Public entry points; the CUDA backend overrides them with one fused kernel each.
sgd = sgd_ref
rmsprop = rmsprop_ref
adagrad = adagrad_ref
adadelta = adadelta_ref
adam = adam_ref
adamax = adamax_ref
weight_decay = weight_decay_ref
clip_by_value = clip_by_value_ref
clip_by_global_norm = clip_by_global_norm_ref
