"""Layers: Dense, Dropout, Activation, Flatten and Input.

A layer is four short methods: ``__init__`` validates and stores its config,
``build`` declares its parameters (the model allocates them as views into one
flat buffer), ``forward`` keeps only what backward needs, and ``backward``
fills the parameter gradients and returns the input gradient.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import numpy as np

from . import activations, initializers, regularizers
from ._validation import as_array, positive_int
from .backend import device_of, is_cupy_array, to_numpy, xp_of
from .errors import NnxpError, NnxpTypeError, reject_unknown_arguments
from .ops import activation as A
from .ops import dense as D
from .ops import dropout as _dropout
from .ops._cuda import recorded


class _Buffers:
    """Per-batch-size scratch arrays, so a fixed batch size allocates nothing after the first step."""

    def __init__(self) -> None:
        self._cache: dict[tuple, Any] = {}

    def get(self, key: str, like: Any, shape: tuple, dtype: Any) -> Any:
        """The buffer `key` of this shape and dtype in the array module of array `like` (NumPy or CuPy)."""
        # keyed by the objects themselves (hashable, and each caller passes one form of its dtype) and by the type
        # of `like`, which tells NumPy's arrays from CuPy's: a step asks several times, and normalising the dtype
        # or finding the array module each time was a measurable part of nnxp's Python per step
        full = (key, shape, dtype, type(like))
        buf = self._cache.get(full)
        if buf is None:
            if len(self._cache) > 8:  # a few distinct batch sizes at most (full, last, eval)
                self._cache.clear()
            buf = self._cache[full] = xp_of(like).empty(shape, dtype)
        return buf

    def clear(self) -> None:
        self._cache.clear()

    def arrays(self) -> list[Any]:
        return list(self._cache.values())


# [version]: bumped whenever any layer's public attribute is set (Layer.__setattr__); a step kept whole
# (nnxp._graph) compares it before each run
SETTINGS = [0]


class Layer:
    """Base class. Subclasses set ``params``/``grads`` (name -> array view) when bound."""

    # True where the layer's CUDA forward and backward reach the device only through nnxp's ops and
    # nnxp.ops._cuda.recorded, so an eager training step can be kept as its launch list (nnxp._graph.LaunchedStep)
    launch_list = False

    def __setattr__(self, name: str, value: Any) -> None:
        # a public setting changed (an activation, a Dropout rate, ...): a step kept whole (a CUDA graph or a
        # launch list) holds the old one in its kernels' arguments, and is made again (SETTINGS)
        if name[0] != "_" and name != "rng":  # (Dropout's generator: new each epoch, read on the device)
            SETTINGS[0] += 1
        object.__setattr__(self, name, value)

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.input_dim: int | None = None
        self.output_dim: int | None = None
        self.params: dict[str, Any] = {}
        self.grads: dict[str, Any] = {}
        self._buffers = _Buffers()
        self._owner: Any = None  # weak reference to the model holding this layer

    @property
    def built(self) -> bool:
        return self.output_dim is not None

    def build(self, input_dim: int) -> int:
        """Fix the input size; return the output size."""
        self.input_dim = self.output_dim = input_dim
        return input_dim

    def param_specs(self) -> list[tuple[str, tuple, str]]:
        """(name, shape, initializer name) of each parameter; empty when none."""
        return []

    def bind(self, params: dict[str, Any], grads: dict[str, Any]) -> None:
        """Take views into the model's flat parameter and gradient buffers."""
        self.params, self.grads = params, grads
        self._buffers.clear()

    def scratch_arrays(self) -> list[Any]:
        """The scratch arrays this layer holds now (outputs, masks, gradients kept per batch shape): what a
        captured CUDA graph (nnxp._graph) must keep alive."""
        return self._buffers.arrays()

    def forward(self, x: Any, training: bool = False) -> Any:
        raise NotImplementedError

    def forget_batch(self) -> None:
        """Drop the arrays the last training forward kept for ``backward`` that are not this layer's own buffers:
        fit calls it when it ends, as an unshuffled batch is a view of (and keeps alive) the whole data set."""

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        raise NotImplementedError

    def regularization_penalty(self) -> Any | None:
        return None

    def get_weights(self) -> list[np.ndarray]:
        """This layer's weights as host NumPy copies, in Keras's order (kernel, bias); [] for a layer without
        weights, or while its model cannot make them yet (input size unknown). As ``Sequential.get_weights``, it
        builds the model when the input size is known."""
        model = None if self._owner is None else self._owner()
        if model is not None:
            return model._layer_weights(self)
        return [np.array(to_numpy(v), copy=True) for v in self.params.values()]

    def set_weights(self, weights: list[Any]) -> None:
        """Replace this layer's weights (a list shaped as :meth:`get_weights` returns), in place in its model's flat
        buffer. Lengths, shapes and finiteness are checked first: on an error nothing changes."""
        model = None if self._owner is None else self._owner()
        if model is not None:
            model._set_layer_weights(self, weights)
        elif self.param_specs() or not isinstance(weights, (list, tuple)) or len(weights):
            got = f"{len(weights)} arrays" if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise NnxpError(f"layer {self.name!r} is in no model: its weights live in a model's flat buffer, so add it "
                            f"to a Sequential (with `input_dim` on the first layer) first. Received: {got}")

    def count_params(self) -> int:
        return sum(int(_prod(shape)) for _, shape, _ in self.param_specs())

    def get_config(self) -> dict:
        return {"name": self.name}

    def describe_activation(self) -> str:
        return ""

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if v is not None)
        return f"{type(self).__name__}({cfg})"


def _prod(shape: tuple) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def sample_shape(name: str, shape: Any) -> tuple[int, ...]:
    """A per-sample shape such as (28, 28) or (784,): a non-empty tuple of positive integers."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)  # Keras accepts input_shape=784 too
    if not isinstance(shape, (tuple, list)) or not shape:
        raise NnxpTypeError(f"`{name}` must be a tuple of positive integers such as (784,) or (28, 28), without the "
                            f"batch dimension. Received: {name}={shape!r}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise NnxpError(f"`{name}` must hold positive integers (no None: nnxp needs every size up front). "
                            f"Received: {name}={tuple(shape)!r}")
    return tuple(int(d) for d in shape)


# Dense arguments of Keras 1 that Keras itself renamed
_DENSE_REMOVED = {"init": "kernel_initializer", "output_dim": "units", "W_regularizer": "kernel_regularizer",
                  "b_regularizer": "bias_regularizer", "bias": "use_bias", "input_length": "input_shape"}


class Dense(Layer):
    """``y = activation(x @ kernel + bias)``; kernel is (input_dim, units)."""

    launch_list = True

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        input_dim: int | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        name: str | None = None,
        input_shape: tuple | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            reject_unknown_arguments("Dense", kwargs, list(inspect.signature(Dense.__init__).parameters)[1:-1],
                                     _DENSE_REMOVED)
        super().__init__(name)
        self.units = positive_int("units", units)
        self.activation = activations.get(activation)
        self.declared_input_dim = None if input_dim is None else positive_int("input_dim", input_dim)
        if input_shape is not None:  # Keras's other spelling of input_dim: a 1-tuple
            shape = sample_shape("input_shape", input_shape)
            if len(shape) != 1:
                raise NnxpError(f"`input_shape` of Dense must have one entry, (features,); for images put "
                                f"Flatten(input_shape={shape}) first. Received: input_shape={input_shape!r}")
            if self.declared_input_dim is not None and self.declared_input_dim != shape[0]:
                raise NnxpError(f"`input_dim` and `input_shape` disagree. Received: input_dim={input_dim}, "
                                f"input_shape={input_shape!r}")
            self.declared_input_dim = shape[0]
        if not isinstance(use_bias, bool):
            raise NnxpTypeError(f"`use_bias` must be True or False. Received: use_bias={use_bias!r}")
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer, "kernel_initializer")
        self.bias_initializer = initializers.get(bias_initializer, "bias_initializer")
        self.kernel_regularizer = regularizers.get(kernel_regularizer, "kernel_regularizer")
        self.bias_regularizer = regularizers.get(bias_regularizer, "bias_regularizer")
        # what the last training forward keeps for backward: (x, y, z, the activation it applied), one attribute
        # (set every step: Layer.__setattr__ is Python)
        self._batch: tuple = (None, None, None, self.activation)

    def build(self, input_dim: int) -> int:
        if self.declared_input_dim is not None and input_dim != self.declared_input_dim:
            raise NnxpError(
                f"`input_dim` of layer {self.name!r} is {self.declared_input_dim} but its input has "
                f"{input_dim} features. Received: input_dim={input_dim}"
            )
        self.input_dim, self.output_dim = input_dim, self.units
        return self.units

    def param_specs(self):
        specs = [("kernel", (self.input_dim, self.units), self.kernel_initializer)]
        if self.use_bias:
            specs.append(("bias", (self.units,), self.bias_initializer))
        return specs

    def forward(self, x: Any, training: bool = False) -> Any:
        """(B, input_dim) -> (B, units): ``activation(x @ kernel + bias)``."""
        return self._forward(x, training, self.activation)

    def forward_linear(self, x: Any, training: bool = False) -> Any:
        """(B, input_dim) -> (B, units): the pre-activation ``x @ kernel + bias``.

        For an output head that applies this layer's activation itself, fused with its loss (nnxp/head.py);
        after it, ``backward`` takes dL/d(pre-activation)."""
        return self._forward(x, training, "linear")

    def _forward(self, x: Any, training: bool, act: str) -> Any:
        out = self._buffers.get("y", x, (x.shape[0], self.units), x.dtype)
        z_buf = self._buffers.get("z", x, out.shape, x.dtype) if A.ACTIVATION_OPS[act].needs_z else None
        y, z = D.dense_forward(x, self.params["kernel"], self.params.get("bias"), act, out, z_buf)
        if training:
            self._batch = (x, y, z, act)
        return y

    def forget_batch(self) -> None:
        self._batch = (None, None, None, self._batch[3])

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        """dL/dy (B, units) -> dL/dx (B, input_dim); fills grads["kernel"], grads["bias"].

        `dy` is the gradient of what the last training forward returned: the activations after ``forward``,
        the pre-activation after ``forward_linear``."""
        x, y, z, act = self._batch
        dx_buf = self._buffers.get("dx", dy, x.shape, dy.dtype) if need_dx else None
        dx = D.dense_backward(
            dy, x, self.params["kernel"], y, z, act,
            self.grads["kernel"], self.grads.get("bias"), dx_buf, need_dx,
        )
        if self.kernel_regularizer is not None:
            self.kernel_regularizer.add_gradient(self.params["kernel"], self.grads["kernel"])
        if self.bias_regularizer is not None and self.use_bias:
            self.bias_regularizer.add_gradient(self.params["bias"], self.grads["bias"])
        return dx

    def regularization_penalty(self):
        if self.kernel_regularizer is None and self.bias_regularizer is None:
            return None  # (asked every step)
        total = None
        for reg, key in ((self.kernel_regularizer, "kernel"), (self.bias_regularizer, "bias")):
            if reg is not None and key in self.params:
                p = reg.penalty(self.params[key])
                total = p if total is None else total + p
        return total

    def describe_activation(self) -> str:
        return self.activation

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "units": self.units,
            "activation": self.activation,
            "input_dim": self.declared_input_dim,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": None if self.kernel_regularizer is None else self.kernel_regularizer.get_config(),
            "bias_regularizer": None if self.bias_regularizer is None else self.bias_regularizer.get_config(),
        }


class Dropout(Layer):
    """Zero a random fraction `rate` of inputs while training and scale the rest by 1/(1-rate).

    On the CPU the mask is drawn from `rng` (NumPy). On CUDA it is a counter hash (kernels.cu's dropout
    kernels) of a device-resident (seed, step) pair: the seed is drawn from `rng` whenever the model hands the
    layer a new generator (each epoch), the step is bumped on the device before each forward, and backward
    regenerates the same mask. Nothing about the mask then lives on the host, so a captured CUDA graph replays
    with a new mask every step. (CuPy's ``Generator.random(out=...)`` without a size would not do: it draws ONE
    value and broadcasts it into `out`, cupy/random/_generator_api.pyx.)
    """

    launch_list = True

    def __init__(self, rate: float, name: str | None = None) -> None:
        super().__init__(name)
        ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool) and 0.0 <= rate < 1.0
        if not ok:
            raise NnxpError(f"`rate` must be a number in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)
        self._rng: Any = None
        self._state: Any = None  # CUDA: (2,) uint64 (seed, step) on the device
        self._reseed = True
        self._mask = None

    @property
    def rng(self) -> Any:
        """The layer's generator (NumPy or CuPy), set by the model each epoch."""
        return self._rng

    @rng.setter
    def rng(self, generator: Any) -> None:
        self._rng = generator
        self._reseed = True
        if isinstance(generator, np.random.Generator):  # the layer runs on the CPU now: its draws stay untouched
            self._state = None
        elif self._state is not None:  # a captured graph reads this very buffer: reseed it in place, now
            self._write_seed()

    def _write_seed(self) -> None:
        if self._rng is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
        else:  # 2 x 53 random bits, read once per epoch; random(size) is in every Generator (NumPy, CuPy)
            u = to_numpy(self._rng.random(size=2))
            seed = ((int(u[0] * 2.0**53) << 11) ^ int(u[1] * 2.0**53)) % 2**64
        device = device_of(self._state)
        with device.use():
            self._state[...] = device.asarray(np.array([seed, 0], dtype=np.uint64))
        self._reseed = False

    def _device_state(self, x: Any) -> Any:
        if self._state is None or device_of(self._state) != device_of(x):
            self._state = device_of(x).asarray(np.zeros(2, dtype=np.uint64))
            self._reseed = True
        if self._reseed:
            self._write_seed()
        return self._state

    def forward(self, x: Any, training: bool = False) -> Any:
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        xp = xp_of(x)
        out = self._buffers.get("y", x, x.shape, x.dtype)
        if is_cupy_array(x):
            state = self._device_state(x)
            with device_of(x).use():  # next step, on the device (replays too)
                recorded(xp.add, state[1:], np.uint64(1), out=state[1:])
            self._mask = state
            return _dropout.dropout_forward(x, self.rate, state, out)[0]
        mask = self._buffers.get("mask", x, x.shape, x.dtype)
        self.rng.random(out=mask, dtype=mask.dtype)  # uniform [0, 1)
        # keep where u >= rate, scaled so the expected activation is unchanged
        xp.greater_equal(mask, self.rate, out=mask)
        mask *= 1.0 / (1.0 - self.rate)
        self._mask = mask
        return xp.multiply(x, mask, out=out)

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if self._mask is None:
            return dy
        if self._mask is self._state:  # CUDA: the same (seed, step) regenerates the forward's mask
            return _dropout.dropout_backward(dy, self.rate, self._state, dy)
        dy *= self._mask
        return dy

    def get_config(self) -> dict:
        return {"name": self.name, "rate": self.rate}


class Activation(Layer):
    """An activation on its own, e.g. ``Activation("softmax")`` after a linear Dense."""

    def __init__(self, activation: str, name: str | None = None) -> None:
        super().__init__(name)
        self.activation = activations.get(activation)
        self._y = self._z = None
        self._applied = self.activation  # the activation the last training forward applied (backward undoes it)

    def forward(self, x: Any, training: bool = False) -> Any:
        y = A.activation_forward(self.activation, x, self._buffers.get("y", x, x.shape, x.dtype))
        if training:
            self._y, self._applied = y, self.activation
            self._z = x if A.ACTIVATION_OPS[self.activation].needs_z else None
        return y

    def forward_linear(self, x: Any, training: bool = False) -> Any:
        """`x` itself, the pre-activation, for an output head that applies the activation fused with its loss
        (nnxp/head.py); ``backward`` then passes dL/dx through."""
        if training:
            self._y = self._z = None
            self._applied = "linear"
        return x

    def forget_batch(self) -> None:
        self._y = self._z = None

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        if self._applied == "linear":
            return dy
        return A.activation_backward(self.activation, dy, self._y, self._z, out=dy)

    def describe_activation(self) -> str:
        return self.activation

    def get_config(self) -> dict:
        return {"name": self.name, "activation": self.activation}


class Flatten(Layer):
    """(B, d1, d2, ...) -> (B, d1 * d2 * ...): lets a model take images, e.g. ``Flatten(input_shape=(28, 28))``.

    As the first layer the model flattens its input once, before it reaches the device, so the training loop
    sees rows; on rows (B, features) Flatten is the identity.
    """

    launch_list = True

    def __init__(self, input_shape: tuple | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.input_shape = None if input_shape is None else sample_shape("input_shape", input_shape)
        self.declared_input_dim = None if self.input_shape is None else _prod(self.input_shape)
        self._in_shape: tuple | None = None

    def build(self, input_dim: int) -> int:
        if self.declared_input_dim is not None and input_dim != self.declared_input_dim:
            raise NnxpError(f"Flatten {self.name!r} expects samples of shape {self.input_shape} "
                            f"({self.declared_input_dim} values) but its input has {input_dim}. "
                            f"Received: input_dim={input_dim}")
        return super().build(input_dim)

    def forward(self, x: Any, training: bool = False) -> Any:
        if training:
            self._in_shape = tuple(x.shape)
        return x if x.ndim == 2 else x.reshape(x.shape[0], _prod(x.shape[1:]))

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        return dy if self._in_shape is None or len(self._in_shape) == 2 else dy.reshape(self._in_shape)

    def get_config(self) -> dict:
        return {"name": self.name, "input_shape": None if self.input_shape is None else list(self.input_shape)}


class InputLayer(Layer):
    """What ``nnxp.Input(shape=...)`` makes: declares the model's per-sample input shape; the identity."""

    launch_list = True

    def __init__(self, shape: tuple, name: str | None = None) -> None:
        super().__init__(name)
        self.input_shape = sample_shape("shape", shape)
        self.declared_input_dim = _prod(self.input_shape)

    def build(self, input_dim: int) -> int:
        if input_dim != self.declared_input_dim:
            raise NnxpError(f"Input {self.name!r} declares samples of shape {self.input_shape} but the input has "
                            f"{input_dim} features. Received: input_dim={input_dim}")
        return super().build(input_dim)

    def forward(self, x: Any, training: bool = False) -> Any:
        return x

    def backward(self, dy: Any, need_dx: bool = True) -> Any:
        return dy

    def get_config(self) -> dict:
        return {"name": self.name, "shape": list(self.input_shape)}


def Input(shape: tuple, name: str | None = None) -> InputLayer:  # noqa: N802 - Keras's spelling
    """The model's input, Keras style: ``Sequential([nnxp.Input(shape=(784,)), Dense(10)])``."""
    return InputLayer(shape, name=name)


def as_rows(layers: list[Layer], x: Any, name: str) -> Any:
    """`x` as rows (N, features) when the first layer declares N-D samples (Flatten, Input); else `x` unchanged.

    Flattening here, once, keeps every batch 2-D on the device; the shape is checked against the declared one.
    """
    if not layers or not isinstance(layers[0], (Flatten, InputLayer)):
        return x
    first = layers[0]
    shape = first.input_shape
    if isinstance(first, InputLayer) and len(shape) > 1 and (len(layers) < 2 or not isinstance(layers[1], Flatten)):
        raise NnxpError(f"an Input of shape {shape} must be followed by a Flatten layer (nnxp's layers take rows). "
                        f"Received: {type(layers[1]).__name__ if len(layers) > 1 else 'nothing'} after it")
    x = as_array(x, name)
    if x.ndim < 2:
        return x  # check_features explains what a batch of samples looks like
    if shape is None or tuple(x.shape[1:]) == shape or (x.ndim == 2 and x.shape[1] == _prod(shape)):
        return x if x.ndim == 2 else x.reshape(x.shape[0], _prod(x.shape[1:]))
    if tuple(x.shape) == shape:  # one image passed without its batch axis
        raise NnxpError(f"`{name}` must be a batch of samples of shape (N, {', '.join(map(str, shape))}). Received: "
                        f"one sample of shape {shape}; add the batch axis: {name}[None]")
    raise NnxpError(f"`{name}` must hold samples of shape {shape} (the first layer's input shape). Received: an "
                    f"array of shape {tuple(x.shape)}")


LAYERS: dict[str, type[Layer]] = {cls.__name__: cls for cls in (Dense, Dropout, Activation, Flatten, InputLayer)}


def from_config(class_name: str, config: dict) -> Layer:
    """Rebuild a layer from its class name and :meth:`Layer.get_config`."""
    if class_name not in LAYERS:
        raise NnxpError(f"layer class must be one of {sorted(LAYERS)}. Received: {class_name!r}")
    return LAYERS[class_name](**config)
