"""The output head: the model's final activation and its loss, and whether they run fused.

``compile`` pairs the last layer's activation with the loss. Softmax with (sparse) categorical cross-entropy
and sigmoid with binary cross-entropy run as one fused op on the logits (:mod:`nnxp.ops.loss`): the head asks
the last layer for its pre-activation (``forward_linear``), takes the loss and dL/d(logits) in one call, and
turns logits into probabilities only where a metric needs them. Every other pair (linear + MSE, tanh + MAE,
softmax + MSE, ...) runs unfused: the layers apply every activation and the loss sees their outputs.

Layers never know about the head: ``Dense(10, activation="softmax")`` always returns probabilities from
``forward``; only ``forward_linear``, which the head calls, returns the pre-activation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .backend import is_cupy_array, xp_of
from .losses import Loss
from .ops import dense as D
from .ops import loss as L
from .ops import reduce as R
from .ops._cuda import recorded


class OutputHead:
    """The unfused head: the layers apply every activation and the loss takes their outputs.

    ``forward`` returns what the loss takes (the head's *outputs*), ``loss_and_grad`` gives the batch loss and
    dL/d(outputs), ``predictions`` turns outputs into what ``predict`` returns and ``correct`` scores them.
    """

    fused = False

    def __init__(self, loss: Loss, activation: str | None) -> None:
        self.loss = loss
        self.activation = activation  # the last layer's activation (None: the last layer has none, e.g. Dropout)
        self._grads: dict[tuple, Any] = {}  # reused buffers per (kind, shape, dtype, array module, device)
        self._like: Any = None  # the last array buffer() was given, and (is CuPy, its device) (an array keeps both)
        self._where: tuple = (False, -1)

    def forward(self, layers: list[Any], x: Any, training: bool) -> Any:
        """The head's outputs for batch `x` (B, in): here the network's activations (B, out)."""
        for layer in layers:
            x = layer.forward(x, training)
        return x

    def _fn(self) -> Any:
        return self.loss.fn

    def buffers(self) -> list[Any]:
        """The arrays the head writes during a step (a captured CUDA graph keeps them alive)."""
        return list(self._grads.values())

    def _grad_buffer(self, out: Any, kind: str = "grad") -> Any:
        """A (B, out) buffer of `out`'s shape, dtype and array module that the head reuses: "grad" for
        dL/d(outputs), "probs" for a fused head's probabilities."""
        return self.buffer(kind, out, out.shape, out.dtype)

    def buffer(self, kind: str, like: Any, shape: tuple, dtype: Any) -> Any:
        """An array of `kind` (shape, dtype) in `like`'s array module and on its device, kept for the next batch
        of the same shape, so a step allocates nothing here (the metrics write into theirs with ``out=``)."""
        if like is self._like:  # the same logits buffer every step: where it lives is known
            cupy, device = self._where
        else:
            cupy = is_cupy_array(like)
            device = int(like.device.id) if cupy else -1
            self._like, self._where = like, (cupy, device)
        key = (kind, shape, dtype, cupy, device)  # (dtype as each caller passes it)
        buf = self._grads.get(key)
        if buf is None:
            # a few batch sizes at most (full, last, eval), a few kinds each, on one device: after model.to(...)
            # the old device's buffers go (one made on cuda:0 must never reach cuda:1's kernels)
            if len(self._grads) > 32 or any(k[3:] != key[3:] for k in self._grads):
                self._grads.clear()
            buf = self._grads[key] = xp_of(like).empty(shape, dtype)
        return buf

    def loss_and_grad(self, out: Any, y: Any, w: Any = None) -> tuple[Any, Any]:
        """Mean batch loss (0-d, on the device) and dL/d(outputs) (B, out) in a buffer the head reuses.

        `w` (B,) weighs each row's loss (sum_i w_i l_i / B); the fused CUDA kernels take no weights, so weighted
        batches run the xp-generic reference of the same function."""
        fn = self._fn()
        grad = self._grad_buffer(out)
        if w is None:
            return fn(out, y, grad)
        return getattr(fn, "__wrapped__", fn)(out, y, grad, sample_weight=w)

    def predictions(self, out: Any) -> Any:
        """What ``predict`` returns for outputs `out`: the network's activations."""
        return out

    def count_correct(self, out: Any, y: Any, into: Any) -> Any:
        """How many rows of the batch are right, written into `into` (0-d float64) and returned; None for a
        binary loss (its accuracy is not an argmax: :meth:`correct`)."""
        if self.loss.task == "binary":
            return None
        return R.count_correct(self.predictions(out), y, into)

    def correct(self, out: Any, y: Any) -> Any:
        """Per-row accuracy (B,) of what ``predict`` returns: 1/0 per row, the fraction of right outputs for a
        binary loss (outputs > 0.5)."""
        pred = self.predictions(out)
        if self.loss.task == "binary":
            return ((pred > 0.5) == (y > 0.5)).mean(axis=1)
        # argmax (int64, its own output dtype) and == into kept buffers: no allocation per step (and calls a
        # recorded training step can repeat: nnxp.ops._cuda.recorded)
        xp, rows = xp_of(out), out.shape[0]
        true = y if self.loss.sparse else recorded(y.argmax, axis=1,
                                                   out=self.buffer("argmax y", y, (rows,), np.int64))
        guess = recorded(pred.argmax, axis=1, out=self.buffer("argmax", out, (rows,), np.int64))
        return recorded(xp.equal, guess, true, out=self.buffer("correct", out, (rows,), np.bool_))


# the fused losses that write into a caller's 0-d `loss_out`
TAKE_LOSS_OUT = (L.softmax_cross_entropy, L.sparse_softmax_cross_entropy, L.sigmoid_binary_cross_entropy)


class FusedHead(OutputHead):
    """Softmax + (sparse) categorical cross-entropy or sigmoid + binary cross-entropy, fused on the logits.

    The outputs are the last layer's pre-activation; the loss's fused function gives the loss and
    dL/d(logits) in one pass (log-sum-exp, so nothing overflows), and the layer's backward then starts from
    dL/d(logits), as its ``forward_linear`` applied no activation."""

    fused = True

    def forward(self, layers: list[Any], x: Any, training: bool) -> Any:
        """The logits (B, out): every layer's forward, then the last layer's ``forward_linear``."""
        last = len(layers) - 1
        for i in range(last):
            x = layers[i].forward(x, training)
        return layers[last].forward_linear(x, training)

    def _fn(self) -> Any:
        return self.loss.fused_fn

    def loss_and_grad(self, out: Any, y: Any, w: Any = None) -> tuple[Any, Any]:
        """As :meth:`OutputHead.loss_and_grad`; unweighted, the loss goes into a 0-d buffer the head reuses (the
        fused ops' `loss_out`), so a step allocates nothing for it."""
        fn = self._fn()
        if w is not None or fn not in TAKE_LOSS_OUT:  # (a wrapped loss, e.g. nnxp.sklearn's, may not take it)
            return super().loss_and_grad(out, y, w)
        return fn(out, y, self._grad_buffer(out), loss_out=self.buffer("loss", out, (), out.dtype))

    def predictions(self, out: Any) -> Any:
        """Probabilities from logits `out`: the activation the last layer would have applied, in a buffer the
        head reuses. Accuracy reads these, not the logits: in floating point sigmoid(z) rounds to exactly 0.5
        for a small z > 0 (float32: z < ~1.2e-7) and softmax can tie two close logits, so thresholding or
        argmax of the logits would disagree with predict's outputs and with the same network's unfused head.
        They come from the kernel predict's last Dense layer runs on a GPU (softmax_forward, or
        bias_activation_forward in place over a copy of the logits), the same arithmetic as predict's (1 launch
        for softmax; the reference's is 5 launches and 2 allocations); on the CPU the reference numbers of
        activation_forward."""
        probs = self._grad_buffer(out, "probs")
        if self.activation == "softmax":
            return D.softmax_forward(out, probs)
        probs[...] = out
        return D.bias_activation_forward(probs, None, self.activation)[0]


def make_head(loss: Loss, last_layer: Any) -> OutputHead:
    """The head for `loss` after `last_layer`: fused when the layer's activation is the one the loss fuses with
    and the layer can give its pre-activation (``forward_linear``: Dense, Activation), else unfused."""
    activation = getattr(last_layer, "activation", None)
    if (activation is not None and activation == loss.fused_activation and loss.fused_fn is not None
            and callable(getattr(last_layer, "forward_linear", None))):
        return FusedHead(loss, activation)
    return OutputHead(loss, activation)
