"""Sequential: a stack of layers trained with mini-batch gradient descent.

The model owns the device and one flat parameter buffer (and one flat
gradient buffer) that its layers view into. ``fit`` checks its arguments and
moves the data to the device once; the epoch loop (batches gathered in a seeded
order, one matrix forward/backward per mini-batch, rollback of a diverged or
interrupted epoch) is :mod:`nnxp.training`. Losses and metrics accumulate on the
device and are read once per epoch.
"""

from __future__ import annotations

import inspect
import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from . import distributed, initializers, io, training
from . import losses as losses_mod
from . import optimizers as optimizers_mod
from ._validation import (
    as_array,
    check_features,
    check_finite,
    check_same_length,
    check_sample_weight,
    check_targets,
    class_weight_to_sample_weight,
    fraction,
    non_negative_int,
    positive_int,
    verbosity,
)
from .backend import Device, get_device, is_out_of_memory, to_numpy, xp_of
from .callbacks import Callback, History, ProgbarLogger
from .errors import (
    DeviceMemoryError,
    NnxpError,
    NnxpTypeError,
    NotCompiledError,
    did_you_mean,
    reject_unknown_arguments,
)
from .head import OutputHead, make_head
from .layers import Dense, Layer, as_rows
from .ops._cuda import forget_plans, recorded

_DTYPES = ("float32", "float64")
_PRECISIONS = ("highest", "tf32")
# makes each model's check-and-claim of `_busy` atomic (one lock for all models: it is held for microseconds)
_BUSY_LOCK = threading.Lock()
_METRIC_ALIASES = {"acc": "accuracy", "accuracy": "accuracy", "mse": "mse", "mean_squared_error": "mse",
                   "mae": "mae", "mean_absolute_error": "mae"}


@io.register_model_class
class Sequential:
    """A linear stack of layers with a Keras-like API.

    >>> model = Sequential([Dense(64, "relu", input_dim=8), Dense(3, "softmax")], seed=0)
    >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    Besides the Keras methods, a compiled model has a small step interface, which nnxp's own loop
    (nnxp/training.py), its MPI step and a hand-written loop use: :meth:`forward` (the output head's outputs),
    :meth:`loss_and_grad`, :meth:`backprop` (forward, loss and backward into ``grads``, no optimizer step),
    :meth:`metric_sums`, and the flat ``params`` / ``grads`` buffers the optimizer steps.
    """

    def __init__(
        self,
        layers: list[Layer] | tuple[Layer, ...] | None = None,
        device: str | Device | None = None,
        seed: int | None = None,
        dtype: str = "float32",
        name: str | None = None,
        precision: str = "highest",
    ) -> None:
        if layers is not None and not isinstance(layers, (list, tuple)):
            hint = f" Sequential([{type(layers).__name__}(...)])" if isinstance(layers, Layer) else ""
            raise NnxpTypeError(f"`layers` must be a list of layers, e.g.{hint or ' Sequential([Dense(10)])'}. "
                                f"Received: layers={layers!r}")
        self.device = get_device(device)
        if precision not in _PRECISIONS:
            hint = did_you_mean(str(precision), _PRECISIONS) if isinstance(precision, str) else ""
            raise NnxpError(f"`precision` must be one of {_PRECISIONS}.{hint} Received: precision={precision!r}")
        # "tf32": float32 matmuls on CUDA tensor cores (TF32 inputs, float32 sums); no effect on the CPU
        self.precision = precision
        try:  # "float32", np.float32 and np.dtype("float32") all work; None is refused (NumPy reads it as float64)
            dtype_name = None if dtype is None else np.dtype(dtype).name
        except TypeError:
            dtype_name = None
        if dtype_name not in _DTYPES:
            raise NnxpError(f"`dtype` must be one of {_DTYPES}. Received: dtype={dtype!r}")
        self.dtype = np.dtype(dtype_name)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self.seed = non_negative_int("seed", seed)
        self.name = name or "sequential"
        self.layers: list[Layer] = []
        self.params: Any = None  # flat parameter buffer (device)
        self.grads: Any = None  # flat gradient buffer (device)
        self._slices: list[tuple[Layer, str, int, tuple]] = []  # (layer, param, offset, shape)
        self.optimizer: optimizers_mod.Optimizer | None = None
        self.loss: losses_mod.Loss | None = None
        self.metrics: list[str] = []
        self._head: OutputHead | None = None  # the final activation and the loss, set by compile
        self.stop_training = False
        # epochs completed over the model's life, across fit calls and model files: it seeds each epoch's shuffle
        # and dropout, so fit(5) then fit(5) trains exactly like fit(10)
        self.epochs_trained = 0
        self.history: History | None = None
        self._fit_step: training.Step | None = None  # the latest fit's step (a graphed one counts its replays)
        self._busy: tuple[int, str] | None = None  # (thread id, "fit", "evaluate", "get_state", ...) while one runs
        for layer in layers or []:
            self.add(layer)

    # --- building ------------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Append a layer (before the model is built)."""
        if not isinstance(layer, Layer):
            raise NnxpTypeError(f"`layer` must be an nnxp layer such as Dense(10). Received: {layer!r}")
        if self.built:
            raise NnxpError("cannot add a layer to a model that is already built (its weights exist); "
                            "create a new Sequential instead")
        if layer._owner is not None and layer._owner() is self:
            raise NnxpError(f"`layer` {layer.name!r} is already in this model; create a new layer instead")
        if layer._owner is not None and layer._owner() is not None:
            raise NnxpError(f"`layer` {layer.name!r} already belongs to another model (a layer's weights live in its "
                            "model's buffer); create a new layer instead")
        # names so far and the next free suffix per class: adding n layers costs O(n), not O(n^2)
        taken, suffixes = self.__dict__.setdefault("_names", set()), self.__dict__.setdefault("_suffixes", {})
        if layer.name is not None and layer.name in taken:  # summary and messages name layers: keep them apart
            raise NnxpError(f"all layers of a Sequential model must have unique names (as in Keras); {layer.name!r} "
                            f"is already the name of a layer in this model. Received: name={layer.name!r}")
        layer._owner = weakref.ref(self)
        if layer.name is None:
            base = type(layer).__name__.lower()
            i = suffixes.get(base, 0)
            while (base if i == 0 else f"{base}_{i}") in taken:
                i += 1
            layer.name, suffixes[base] = (base if i == 0 else f"{base}_{i}"), i + 1
        taken.add(layer.name)
        self.layers.append(layer)
        if self.loss is not None:
            self._configure_output()

    @property
    def built(self) -> bool:
        return self.params is not None

    @property
    def input_dim(self) -> int | None:
        if self.layers and self.layers[0].input_dim is not None:
            return self.layers[0].input_dim
        first = self.layers[0] if self.layers else None
        return getattr(first, "declared_input_dim", None)

    @property
    def output_dim(self) -> int | None:
        for layer in reversed(self.layers):
            if isinstance(layer, Dense):
                return layer.units
        return self.input_dim

    @property
    def metrics_names(self) -> list[str]:
        """``["loss", *metrics]`` once compiled (the names of :meth:`evaluate`'s list, in its order, as the metrics
        were spelt in ``compile``); [] before."""
        return [] if self.loss is None else ["loss", *self.metrics]

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """The layer called `name`, or at position `index` (negative counts from the end), as Keras's get_layer."""
        if name is not None and index is not None:
            raise NnxpError(f"Provide only a layer name or a layer index. Received: index={index!r}, name={name!r}")
        names = [layer.name for layer in self.layers]
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise NnxpTypeError(f"`index` must be an integer. Received: index={index!r}")
            if not -len(self.layers) <= index < len(self.layers):
                raise NnxpError(f"`index` must be within the model's {len(self.layers)} layers "
                                f"({-len(self.layers)} to {len(self.layers) - 1}). Received: index={index}")
            return self.layers[int(index)]
        if name is not None:
            if not isinstance(name, str):
                raise NnxpTypeError(f"`name` must be a string. Received: name={name!r}")
            for layer in self.layers:
                if layer.name == name:
                    return layer
            raise NnxpError(f"No such layer: {name!r}. Existing layers are: {names}.{did_you_mean(name, names)} "
                            f"Received: name={name!r}")
        raise NnxpError("Provide either a layer name or layer index at `get_layer`. Received: name=None, index=None")

    def _require_layers(self) -> None:
        if not self.layers:
            raise NotCompiledError("the model has no layers; add some with model.add(Dense(...)) first")

    def build(self, input_dim: int) -> None:
        """Create all parameters in one flat buffer on the model's device."""
        self._require_layers()
        input_dim = positive_int("input_dim", input_dim)
        specs = self._size_layers(input_dim)
        total = sum(int(np.prod(shape)) for _, _, shape, _ in specs)
        need, limit = 2 * total * self.dtype.itemsize, _memory_limit()  # weights and gradients
        if limit is not None and need > limit:  # refused before a MemoryError (or swapping) can happen
            for layer in self.layers:
                layer.input_dim = layer.output_dim = None
            sizes = {}
            for layer, _, shape, _ in specs:
                sizes[layer.name] = sizes.get(layer.name, 0) + int(np.prod(shape))
            largest = max(sizes, key=sizes.get)
            raise NnxpError(f"the model needs {_format_bytes(need)} for its {total:,} parameters ({self.dtype} "
                            f"weights and gradients; layer {largest!r} has {sizes[largest]:,}), more than the "
                            f"{_format_bytes(limit)} of memory available. Use fewer units or smaller inputs")
        host = np.empty(total, dtype=self.dtype)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))  # stream 0: initial weights
        self._slices, offset = [], 0
        for layer, name, shape, init in specs:
            size = int(np.prod(shape))
            host[offset : offset + size] = initializers.INITIALIZERS[init](shape, rng, self.dtype).ravel()
            self._slices.append((layer, name, offset, shape))
            offset += size
        with self._use():
            self._bind(self.device.asarray(host))

    def _size_layers(self, input_dim: int) -> list[tuple[Layer, str, tuple, str]]:
        """Fix every layer's sizes from `input_dim` (allocating nothing); (layer, weight, shape, initializer) of
        each weight in flat-buffer order. On a size conflict every layer is left unsized, as before the call."""
        dim, specs = input_dim, []
        try:
            for layer in self.layers:
                dim = layer.build(dim)
                specs.extend((layer, name, tuple(int(s) for s in shape), init)
                             for name, shape, init in layer.param_specs())
        except NnxpError:
            for layer in self.layers:
                layer.input_dim = layer.output_dim = None
            raise
        return specs

    def weight_layout(self) -> list[tuple[str, str, int, tuple]]:
        """(layer name, weight name, offset, shape) of each weight in the flat buffer, in :meth:`get_weights`
        order; from the layers' sizes, so it is known before the weights exist (e.g. after :meth:`from_config`)."""
        if self.built:
            return [(layer.name, name, offset, shape) for layer, name, offset, shape in self._slices]
        if self.input_dim is None:
            raise NotCompiledError("the model's input size is not known yet: give the first layer `input_dim`")
        layout, offset = [], 0
        for layer, name, shape, _ in self._size_layers(self.input_dim):
            layout.append((layer.name, name, offset, shape))
            offset += int(np.prod(shape))
        return layout

    def scratch_arrays(self) -> list[Any]:
        """The per-batch-shape arrays the layers and the output head hold now: what a captured CUDA graph
        reads or writes besides the weights, so it keeps them alive."""
        arrays = [a for layer in self.layers for a in layer.scratch_arrays()]
        return arrays if self._head is None else arrays + self._head.buffers()

    def set_flat_weights(self, flat: Any) -> None:
        """Make `flat` (every weight, in :meth:`weight_layout` order, as one 1-D array) the weights of an unbuilt
        model, which is built around it: for loaders that read a file straight into one buffer."""
        if self.built:
            raise NnxpError("set_flat_weights is for unbuilt models; use set_weights on a built one")
        if self.input_dim is None:
            raise NotCompiledError("the model's input size is not known yet: give the first layer `input_dim`")
        sized = all(layer.built for layer in self.layers)
        specs = self._size_layers(self.input_dim)
        slices, offset = [], 0
        for layer, name, shape, _ in specs:
            slices.append((layer, name, offset, shape))
            offset += int(np.prod(shape))
        if tuple(np.shape(flat)) != (offset,):
            if not sized:  # an error leaves the model as it was
                for layer in self.layers:
                    layer.input_dim = layer.output_dim = None
            raise NnxpError(f"`flat` must have shape ({offset},) for this model. Received: {tuple(np.shape(flat))}")
        with self._use():
            self._slices = slices
            self._bind(self.device.asarray(flat, dtype=self.dtype))

    def _unbuild(self) -> None:
        """Back to the unbuilt state (no weights, input size free), for a fit that failed before training."""
        self.params = self.grads = self.grad_buffer = None
        self._slices = []
        for layer in self.layers:
            layer.input_dim = layer.output_dim = None
            layer.params, layer.grads = {}, {}
            layer._buffers.clear()

    def _bind(self, params: Any) -> None:
        """Adopt `params` as the flat buffer and give every layer its views."""
        xp = xp_of(params)
        self.params = params
        # two spare slots after the gradients: a distributed step sums its loss and Ctrl-C flag in the same
        # all-reduce as the gradients (nnxp.distributed); single-process training never touches them
        self.grad_buffer = xp.zeros(params.size + 2, dtype=params.dtype)
        self.grads = self.grad_buffer[: params.size]
        views: dict[int, tuple[dict, dict]] = {id(layer): ({}, {}) for layer in self.layers}
        for layer, name, offset, shape in self._slices:
            size = int(np.prod(shape))
            views[id(layer)][0][name] = params[offset : offset + size].reshape(shape)
            views[id(layer)][1][name] = self.grads[offset : offset + size].reshape(shape)
        for layer in self.layers:
            layer.bind(*views[id(layer)])
        if self.optimizer is not None:
            self.optimizer.set_segments(self._weight_segments())

    def _weight_segments(self) -> list[tuple[int, int]]:
        """(start, stop) of each weight in the flat buffer: what the optimizer's clipnorm clips one by one."""
        return [(offset, offset + int(np.prod(shape))) for _, _, offset, shape in self._slices]

    def count_params(self) -> int:
        """The number of weights; before the model is built, what :meth:`summary` counts (its total)."""
        if self.built:
            return int(self.params.size)
        return sum(count or 0 for _, count in self._layer_shapes())

    def _layer_shapes(self) -> list[tuple[int | None, int | None]]:
        """(output width, parameter count) per layer from the declared sizes; None where not known yet."""
        rows, dim = [], self.input_dim
        for layer in self.layers:
            if isinstance(layer, Dense):
                count = (dim * layer.units + (layer.units if layer.use_bias else 0)) if dim else None
                dim = layer.units
            else:
                count = 0
            rows.append((dim, count))
        return rows

    def to(self, device: str | Device) -> Sequential:
        """Move the model (weights and optimizer state) to `device`; returns self."""
        device = get_device(device)
        if device == self.device:
            return self
        if self.built:
            old_params = self.params
            # (an optimizer shared with another model that holds that model's state stays as it is)
            opt = self.optimizer if self._owns_optimizer_state() else None
            state = opt.get_state() if opt is not None else {}
            try:
                with device.use():
                    self._bind(device.asarray(to_numpy(old_params)))
                    if opt is not None:
                        opt.to(self.params, state)
            except BaseException:  # e.g. out of memory on the new device: stay whole on the old one
                with self.device.use():
                    self._bind(old_params)
                    if opt is not None:
                        opt.to(old_params, state)
                raise
        self.device = device
        return self

    def _owns_optimizer_state(self) -> bool:
        """False when the optimizer, shared with another model of another size, holds that model's state."""
        return self.optimizer is not None and all(
            tuple(v.shape) == tuple(self.params.shape) for v in self.optimizer.state.values())

    # --- weights -------------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Every parameter as a host NumPy copy, in layer order (kernel, bias, ...)."""
        if not self.built and self.input_dim is not None:
            self.build(self.input_dim)
        if not self.built:
            return []
        host = to_numpy(self.params).copy()
        return [host[o : o + int(np.prod(s))].reshape(s) for _, _, o, s in self._slices]

    def set_weights(self, weights: list[Any]) -> None:
        """Replace every parameter; shapes must match :meth:`get_weights`. Nothing changes on error."""
        with self._exclusive("set_weights"):
            self._set_weights(weights)

    def _set_weights(self, weights: list[Any]) -> None:
        self._require_built()
        checked = _checked_weights(weights, [(f"{layer.name}.{name}", shape) for layer, name, _, shape in self._slices],
                                   self.dtype)
        host = np.empty(self.params.size, dtype=self.dtype)
        for (_, _, offset, _), w in zip(self._slices, checked, strict=True):
            host[offset : offset + w.size] = w.ravel()
        with self.device.use():  # the copy runs on the params' device (CuPy refuses it elsewhere without P2P)
            self.params[...] = self.device.asarray(host)

    def _layer_weights(self, layer: Layer) -> list[np.ndarray]:
        """`layer`'s weights as host copies (:meth:`Layer.get_weights`); builds the model when its input size is
        known, as :meth:`get_weights` does."""
        if not self.built and self.input_dim is not None:
            self.build(self.input_dim)
        return [np.array(to_numpy(v), copy=True) for v in layer.params.values()]

    def _set_layer_weights(self, layer: Layer, weights: list[Any]) -> None:
        """Write `weights` into `layer`'s views of the flat buffer (:meth:`Layer.set_weights`). Everything is
        checked before anything is built or written: an error leaves the model as it was."""
        with self._exclusive("set_weights"):
            sized = all(each.built for each in self.layers)
            if not self.built and self.input_dim is not None:
                self._size_layers(self.input_dim)  # the weights' shapes, nothing allocated yet
            specs = layer.param_specs()
            try:
                if specs and not layer.built:
                    raise NotCompiledError(f"layer {layer.name!r} has no weights yet (its model's input size is not "
                                           "known): give the first layer `input_dim` or call fit first")
                checked = _checked_weights(weights, [(f"{layer.name}.{name}", shape) for name, shape, _ in specs],
                                           self.dtype)
            except NnxpError:
                if not sized and not self.built:  # as it was: unsized
                    for each in self.layers:
                        each.input_dim = each.output_dim = None
                raise
            if not checked:
                return
            self._require_built()
            with self.device.use():
                for (name, _, _), w in zip(specs, checked, strict=True):
                    layer.params[name][...] = self.device.asarray(w, dtype=self.dtype)

    # --- compile -------------------------------------------------------------------------------
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: list[str] | None = None) -> None:
        """Choose the optimizer (name or instance), the loss (name) and metrics ("accuracy", "mse", "mae")."""
        with self._exclusive("compile"):
            self._compile(optimizer, loss, metrics)

    def _compile(self, optimizer: Any, loss: Any, metrics: list[str] | None) -> None:
        if loss is None:
            raise NnxpError("`loss` must be given, e.g. loss='categorical_crossentropy'. Received: loss=None")
        opt = optimizers_mod.get(optimizer)
        loss_obj = losses_mod.get(loss)
        if metrics is not None and not isinstance(metrics, (list, tuple)):
            raise NnxpTypeError(
                f"`metrics` must be a list of names such as ['accuracy']. Received: metrics={metrics!r}"
            )
        names = []
        for m in metrics or []:
            key = _METRIC_ALIASES.get(str(m).lower()) if isinstance(m, str) else None
            if key is None:
                choices = sorted(set(_METRIC_ALIASES))
                raise NnxpError(f"`metrics` entries must be one of {choices}. Received: {m!r}."
                                + did_you_mean(m, choices))
            if key == "accuracy" and loss_obj.task == "regression":
                raise NnxpError(f"metric 'accuracy' needs a classification loss. Received: loss={loss!r}")
            if key in ("mse", "mae") and loss_obj.sparse:
                raise NnxpError(f"metric {m!r} needs one-hot targets, not the integer labels of loss={loss!r}")
            if m not in names:  # logged under the name given, as Keras does ("acc" -> "acc", "val_acc")
                names.append(m)
        self.optimizer, self.loss, self.metrics = opt, loss_obj, names
        if self.built:
            opt.set_segments(self._weight_segments())
        self._configure_output()
        last = self.layers[-1] if self.layers else None
        if getattr(last, "activation", None) == "softmax" and self.output_dim == 1:
            warnings.warn("the output has 1 unit and softmax, whose output is always 1.0, so the loss cannot "
                          "change; for a binary output use Dense(1, activation='sigmoid') with "
                          "'binary_crossentropy', or one unit per class with softmax", UserWarning, stacklevel=2)

    def _configure_output(self) -> None:
        """The output head for the loss and the last layer: fused (softmax+CE, sigmoid+BCE) when they pair."""
        last = self.layers[-1] if self.layers else None
        self._head = None if self.loss is None else make_head(self.loss, last)

    @contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        """One fit / evaluate / predict at a time per model: they share the layers' scratch buffers and the
        activations kept for backward. A callback inside fit (same thread) may evaluate, predict, save or
        set_weights, not fit or compile. From another thread, save and set_weights wait for no one: they are
        refused too, as a save would record a partial epoch and set_weights would change the weights mid-step."""
        me = threading.get_ident()
        with _BUSY_LOCK:
            owner = self._busy
            if owner is not None and (what in ("fit", "compile") or owner[0] != me):
                where = "in another thread" if owner[0] != me else "(this call comes from inside it, e.g. a callback)"
                raise NnxpError(f"{owner[1]} is already running on this model {where}; `{what}` must wait for it "
                                "to finish (one model runs one fit, evaluate or predict at a time), or use a "
                                "separate model per thread")
            nested = owner is not None
            if not nested:
                self._busy = (me, what)
        try:
            yield
        finally:
            if not nested:
                with _BUSY_LOCK:
                    self._busy = None
                # the CUDA ops' launch plans hold the arrays they ran on (nnxp.ops._cuda.LaunchPlan): dropped when a
                # fit, evaluate or predict ends, so none keeps a model's GPU memory alive after it
                forget_plans()

    def _use(self) -> Any:
        """The model's device made current, with its matmul precision."""
        return self.device.use(tf32=self.precision == "tf32")

    def _require_compiled(self) -> None:
        self._require_layers()
        if self.loss is None:
            raise NotCompiledError("the model must be compiled first: model.compile(optimizer, loss)")

    # --- forward / backward --------------------------------------------------------------------
    def forward(self, x: Any, training: bool) -> Any:
        """The output head's outputs for batch `x`: logits when it fuses the final activation with the loss,
        else the network's activations (also before compile, when there is no head)."""
        if self._head is not None:
            return self._head.forward(self.layers, x, training)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def loss_and_grad(self, out: Any, y: Any, w: Any = None) -> tuple[Any, Any]:
        """Batch loss (with the regularizers' penalties) and dL/d(out) for the head's outputs `out`."""
        loss, grad = self._head.loss_and_grad(out, y, w)
        for layer in self.layers:
            penalty = layer.regularization_penalty()
            if penalty is not None:
                loss = loss + penalty
        return loss, grad

    def backprop(self, x: Any, y: Any, w: Any = None) -> tuple[Any, Any]:
        """Forward, loss and backward for one batch: fills ``grads`` (no optimizer step); returns the batch loss
        (a device scalar) and the head's outputs."""
        out = self.forward(x, training=True)
        loss, dy = self.loss_and_grad(out, y, w)
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=i > 0)
        return loss, out

    def metric_kinds(self) -> list[str]:
        """What each compiled metric computes ("accuracy", "mse", "mae"), in the order of ``metrics``."""
        return [_METRIC_ALIASES[name.lower()] for name in self.metrics]

    def metric_sums(self, out: Any, y: Any, w: Any = None, into: dict | None = None) -> dict[str, Any]:
        """Per-batch sums (device scalars) for each metric; with weights, sums of w_i times row i's value
        (Keras's weighted mean divides them by the sum of the weights). `into` (name -> 0-d float64): where a
        count (accuracy's) may go straight, exactly (the training loop's record of the batch)."""
        sums = {}
        for name in self.metrics:
            kind = _METRIC_ALIASES[name.lower()]
            if kind == "accuracy" and w is None and into is not None:  # a count, straight into the record (exact)
                count = self._head.count_correct(out, y, into[name])
                if count is not None:
                    sums[name] = count
                    continue
            if kind == "accuracy":
                per_sample = self._correct(out, y)
            else:
                xp = xp_of(out)
                diff = self._head.predictions(out) - y
                per_sample = (diff * diff if kind == "mse" else xp.abs(diff)).mean(axis=1)
            if w is None and into is not None and per_sample.dtype == np.bool_:  # a count: exact in float64
                sums[name] = recorded(per_sample.sum, out=into[name])
            elif w is None:  # into a buffer kept per metric (of sum's own dtype): no allocation per step
                dtype = np.int64 if per_sample.dtype == np.bool_ else per_sample.dtype
                sums[name] = per_sample.sum(out=self._head.buffer(f"sum {name}", per_sample, (), dtype))
            else:
                sums[name] = (per_sample * w).sum()
        return sums

    def _correct(self, out: Any, y: Any) -> Any:
        """Per-row accuracy (B,): 1/0 per row, the fraction of right outputs for a binary loss."""
        return self._head.correct(out, y)

    # --- data -----------------------------------------------------------------------------------
    def _prepare(self, x: Any, y: Any, xname: str = "x", yname: str = "y",
                 n_features: int | None = None) -> tuple[Any, Any]:
        """Validate, cast and move one (x, y) pair to the device (`n_features`: the width x must have, when the
        model's input size is not fixed yet)."""
        x = check_features(as_rows(self.layers, x, xname), xname, self.input_dim or n_features, self.dtype)
        y = check_targets(y, yname, self.loss.task, self.loss.sparse, self.output_dim or 1, self.dtype)
        check_same_length(x, y, xname, yname)
        x = self.device.asarray(x, dtype=self.dtype)
        y = self.device.asarray(y, dtype=None if self.loss.sparse else self.dtype)
        return x, y

    def _prepare_weights(self, w: Any, name: str, n: int) -> Any:
        """Validated per-row weights (N,) on the device in the model's dtype, or None."""
        if w is None:
            return None
        return self.device.asarray(check_sample_weight(w, name, n, self.dtype), dtype=self.dtype)

    # --- fit / evaluate / predict -------------------------------------------------------------
    def _out_of_memory(self, exc: BaseException, batch_size: int, what: str) -> DeviceMemoryError:
        """Free CuPy's pools and explain; the model stays usable (e.g. model.to("cpu"))."""
        self.device.free_memory()
        return DeviceMemoryError(
            f"{self.device.name} ran out of memory during {what} with batch_size={batch_size}. Try a smaller "
            f"`batch_size` (e.g. {max(1, batch_size // 4)}) or device='cpu'. ({exc})"
        )

    def fit(
        self,
        x: Any,
        y: Any,
        epochs: int = 1,
        batch_size: int | None = 32,
        validation_split: float = 0.0,
        validation_data: tuple | None = None,
        shuffle: bool = True,
        verbose: int = 1,
        callbacks: list[Callback] | None = None,
        initial_epoch: int = 0,
        cuda_graph: bool = False,
        sample_weight: Any = None,
        class_weight: dict | None = None,
        **kwargs: Any,
    ) -> History:
        """Train up to epoch `epochs` (from `initial_epoch`, as Keras counts); returns a History of per-epoch logs.

        A second call continues the first: each epoch's shuffle and dropout masks are seeded by the model's
        `epochs_trained` (kept in model files too), so fit(epochs=5) twice, or save, load and fit(epochs=5),
        trains bit for bit like fit(epochs=10). `initial_epoch` only numbers the epochs the callbacks see.

        ``cuda_graph=True`` (CUDA only) captures the training step once and replays it for every full batch,
        which removes most launch overhead at small batch sizes; the last, partial batch runs as usual.

        ``sample_weight`` (N,) and ``class_weight`` ({class: weight}) weigh each row's loss as Keras does: a
        batch's loss is ``sum_i w_i l_i / batch_size``, and the metrics are weighted means. Given both, a row's
        weight is their product. ``validation_data`` may be ``(x_val, y_val, sample_weight_val)``; with
        ``validation_split`` the validation rows keep their ``sample_weight`` (class weights apply to training).

        Ctrl-C stops after the current batch and rolls the model back to the start of that epoch. One fit runs
        per model at a time: a second one (another thread, or a callback) raises NnxpError, as do predict and
        evaluate from another thread while it runs; callbacks may predict and evaluate.
        """
        if kwargs:  # e.g. Keras 1's nb_epoch: name what replaced it
            reject_unknown_arguments("fit", kwargs, list(inspect.signature(Sequential.fit).parameters)[3:-1],
                                     {"nb_epoch": "epochs", "nb_val_samples": "validation_data or validation_split"})
        comm = distributed.current()
        try:
            # every allocation lands on the model's GPU, not the current one; under MPI only the main rank
            # prints (progress, callbacks' messages), errors still reach stderr
            with self._exclusive("fit"), self._use(), distributed.quiet_unless_main(comm):
                return self._fit(x, y, epochs, batch_size, validation_split, validation_data, shuffle, verbose,
                                 callbacks, initial_epoch, cuda_graph, sample_weight, class_weight)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise self._out_of_memory(exc, batch_size, "fit") from None
            raise

    def _fit(self, x, y, epochs, batch_size, validation_split, validation_data, shuffle, verbose, callbacks,
             initial_epoch, cuda_graph, sample_weight, class_weight) -> History:
        self._require_compiled()
        self._check_cuda_graph(cuda_graph)
        epochs = positive_int("epochs", epochs)
        verbose = verbosity(verbose)
        batch_size = 32 if batch_size is None else positive_int("batch_size", batch_size)  # Keras: None means 32
        validation_split = fraction("validation_split", validation_split)
        initial_epoch = non_negative_int("initial_epoch", initial_epoch)
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):
            raise NnxpTypeError(f"`callbacks` must be a list of Callback instances. Received: callbacks={callbacks!r}")
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if not isinstance(cb, Callback):
                raise NnxpTypeError(f"`callbacks` entries must be nnxp Callback instances. Received: {cb!r}")
        x, y = self._prepare(x, y)
        sw = w = self._prepare_weights(sample_weight, "sample_weight", x.shape[0])
        if class_weight is not None:
            cw = class_weight_to_sample_weight(class_weight, y, self.loss.sparse, self.loss.task, self.output_dim or 1,
                                               self.dtype)
            cw = cw.astype(self.dtype)
            w = cw if sw is None else sw * cw
        # everything is checked before the model is built: an error leaves an unbuilt model unbuilt
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise NnxpError("`validation_data` must be a tuple (x_val, y_val) or (x_val, y_val, "
                                f"sample_weight_val). Received: {type(validation_data).__name__}")
            xv, yv = self._prepare(*validation_data[:2], xname="validation_data[0]", yname="validation_data[1]",
                                   n_features=x.shape[1])
            wv = None
            if len(validation_data) == 3:
                wv = self._prepare_weights(validation_data[2], "validation_data[2]", xv.shape[0])
            val = (xv, yv, wv)
        elif validation_split > 0:
            n_val = int(round(x.shape[0] * validation_split))
            if n_val == 0 or n_val == x.shape[0]:
                raise NnxpError(f"`validation_split`={validation_split} leaves an empty training or validation set "
                                f"for {x.shape[0]} samples")
            # the last fraction, taken before shuffling (as Keras does); class weights apply to training only
            wv = None if sw is None else sw[-n_val:]
            val = (x[-n_val:], y[-n_val:], wv)
            x, y = x[:-n_val], y[:-n_val]
            w = None if w is None else w[:-n_val]
        else:
            val = None
        built_here = not self.built
        if built_here:
            self.build(x.shape[1])

        n = x.shape[0]
        comm = distributed.current()
        if comm.size > 1:
            verbose = 0 if not comm.is_main else verbose
            distributed.start_fit(comm, self, (x, y, w), val, epochs=epochs, batch_size=batch_size,
                                  shuffle=bool(shuffle), initial_epoch=initial_epoch,
                                  callbacks=[type(cb).__name__ for cb in callbacks])
        history, previous_history = History(), self.history
        # every key from the start: a run stopped in its first epoch still has history["loss"] (an empty list)
        keys = ["loss", *self.metrics]
        history.history = {k: [] for k in keys + ([f"val_{k}" for k in keys] if val is not None else [])}
        self.history = history
        # user callbacks first, so what they add to the logs (e.g. "lr") reaches the history and the progress line
        cbs = callbacks + [history] + ([ProgbarLogger(verbose)] if verbose else [])
        logged = ["loss", *self.metrics]
        logged += [f"val_{k}" for k in logged] if val is not None else []
        logged += [k for cb in callbacks for k in getattr(cb, "log_keys", ()) if k not in logged]
        samples = sum(comm.rank_rows) if comm.size > 1 and comm.data == "sharded" else n  # (every rank's rows)
        params = {"epochs": epochs, "steps": len(comm.batches(n, batch_size)), "samples": samples,
                  "batch_size": batch_size, "verbose": verbose, "metrics": logged}  # metrics: the log keys, as Keras
        for cb in cbs:
            cb.set_model(self)
            cb.set_params(params)
        self.stop_training = False
        plan = training.FitPlan(
            data=(x, y, w), val=val, epochs=epochs, initial_epoch=initial_epoch, batch_size=batch_size,
            shuffle=bool(shuffle), callbacks=cbs, history=history, comm=comm, cuda_graph=bool(cuda_graph))
        # overflow inside a diverging step is reported once, as a NumericalError, not as NumPy warnings
        with training.GracefulInterrupt() as interrupt, np.errstate(over="ignore", invalid="ignore"):
            try:
                for cb in cbs:
                    cb.on_train_begin()
            except BaseException:  # a callback refused to start: nothing has trained, so undo this call's build
                self.history = previous_history
                if built_here:
                    self._unbuild()
                raise
            try:
                training.run_epochs(self, plan, interrupt)
            finally:  # close progress bars and the like even when training stops with an error
                self._fit_step = plan.step  # kept without the plan: the model must not hold on to the data
                if plan.step is not None:  # nor through the step (a graphed one's batches and graph)
                    plan.step.release()
                for layer in self.layers:  # nor may its layers, through the last (unshuffled: a view) batch
                    layer.forget_batch()
                for cb in cbs:
                    cb.on_train_end()
        return history

    def _check_cuda_graph(self, cuda_graph: Any) -> None:
        if not isinstance(cuda_graph, (bool, np.bool_)):
            raise NnxpTypeError(f"`cuda_graph` must be True or False. Received: cuda_graph={cuda_graph!r}")
        if not cuda_graph:
            return
        if not self.device.is_cuda:
            raise NnxpError(f"`cuda_graph=True` needs a CUDA device; this model is on {self.device.name}. "
                            "Create it with device=\"cuda\" or leave cuda_graph=False")
        # Dropout is fine: on CUDA its mask is a hash of a (seed, step) pair in device memory (layers.Dropout)

    def evaluate(self, x: Any, y: Any, batch_size: int | None = None, verbose: int | str = 1,
                 sample_weight: Any = None, return_dict: bool = False) -> float | list[float] | dict[str, float]:
        """Loss and metrics on (x, y), as Keras returns them.

        A float (the loss) when the model has no metrics, else the list ``[loss, *metrics]`` in the order of
        ``compile(metrics=...)``; with ``return_dict=True`` a dict ``{"loss": ..., "accuracy": ...}``.
        `sample_weight` (N,) weighs rows as in :meth:`fit`. ``verbose`` 1 or 2 prints one line, 0 nothing.
        """
        self._require_compiled()
        verbose = verbosity(verbose)
        if not isinstance(return_dict, (bool, np.bool_)):
            raise NnxpTypeError(f"`return_dict` must be True or False. Received: return_dict={return_dict!r}")
        self._require_built()
        batch_size = 1024 if batch_size is None else positive_int("batch_size", batch_size)
        with self._exclusive("evaluate"), self._use():
            x, y = self._prepare(x, y)
            w = self._prepare_weights(sample_weight, "sample_weight", x.shape[0])
            comm = distributed.current()
            if comm.size > 1:  # collective: each rank evaluates its part of the same rows (or its own shard)
                distributed.check_same(comm, {"evaluate": distributed.data_fingerprint(comm, x, y, w)})
            logs = training.evaluate_arrays(self, x, y, w, batch_size)
        if verbose and distributed.current().is_main:  # (under MPI every rank has the same, reduced logs)
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        return logs["loss"] if not self.metrics else [logs["loss"], *(logs[name] for name in self.metrics)]

    def _require_built(self) -> None:
        self._require_layers()
        if not self.built:
            if self.input_dim is None:
                raise NotCompiledError("the model has no weights yet: give the first layer `input_dim` or call fit")
            self.build(self.input_dim)

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = 0) -> np.ndarray:
        """Model outputs (after the final activation) for `x` as a host NumPy array.

        `x` stays where it is and moves to the device one batch at a time, so data larger than
        the device's memory is fine. ``verbose`` is accepted for Keras programs (0, 1, 2 or "auto") and
        prints nothing: prediction has no progress bar.

        Not concurrent: predict shares the layers' scratch buffers with fit, evaluate and other predicts, so a
        call while one of them runs in another thread raises NnxpError (use one model per thread). A callback
        inside fit may call it.
        """
        verbosity(verbose)
        try:
            with self._exclusive("predict"), self._use():
                return self._predict(x, batch_size)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise self._out_of_memory(exc, batch_size or 1024, "predict") from None
            raise

    def _predict(self, x: Any, batch_size: int | None) -> np.ndarray:
        self._require_built()
        batch_size = 1024 if batch_size is None else positive_int("batch_size", batch_size)
        x = check_features(as_rows(self.layers, x, "x"), "x", self.input_dim, self.dtype)
        n = x.shape[0]
        result = np.empty((n, self.output_dim), dtype=self.dtype)
        for start in range(0, n, batch_size):
            xb = self.device.asarray(x[start : start + batch_size], dtype=self.dtype)
            out = xb
            for layer in self.layers:  # every layer's own forward: the final activation included, no head needed
                out = layer.forward(out, training=False)
            result[start : start + xb.shape[0]] = to_numpy(out)
        return result

    # --- summary, config, files ----------------------------------------------------------------
    def summary(self, print_fn: Any = print) -> str:
        """A table of layers, output shapes, activations and parameter counts; printed and returned."""
        rows = [("Layer (type)", "Output shape", "Activation", "Params")]
        total = 0
        for layer, (out_dim, count) in zip(self.layers, self._layer_shapes(), strict=True):
            total += count or 0
            rows.append((f"{layer.name} ({type(layer).__name__})", f"(None, {out_dim if out_dim else '?'})",
                         layer.describe_activation() or "-", "?" if count is None else f"{count:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "-" * (sum(widths) + 6)
        fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}"  # noqa: E731
        text = "\n".join([f'Model: "{self.name}" on {self.device.name}, {self.dtype}', line, fmt(rows[0]),
                          "=" * len(line)] + [fmt(r) for r in rows[1:]]
                         + ["=" * len(line), f"Total params: {total:,}"])
        if print_fn is not None:
            print_fn(text)
        return text

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype),
            "precision": self.precision,
            "seed": self.seed,
            "input_dim": self.input_dim,
            "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in self.layers],
        }

    @classmethod
    def from_config(cls, config: dict, device: str | Device | None = None) -> Sequential:
        """A new, unbuilt model from :meth:`get_config` (as Keras's ``from_config``): the same layers, name, dtype,
        precision and seed. With ``input_dim`` in the config the layers' sizes are fixed; the weights are made on
        first use (build, fit, get_weights), from the seed, or taken from a file by :func:`nnxp.load_model`."""
        from .layers import from_config as layer_from_config

        if not isinstance(config, dict):
            raise NnxpTypeError(f"`config` must be a dict from Sequential.get_config(). Received: {config!r:.80}")
        entries = config.get("layers") or []
        if not isinstance(entries, (list, tuple)):
            raise NnxpTypeError(f"`layers` must be a list of layer configs. Received: layers={entries!r:.80}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) or not isinstance(
                    entry.get("config"), dict):
                raise NnxpError(f"`layers[{i}]` must be a dict with 'class_name' (a string) and 'config' (a dict). "
                                f"Received: {entry!r:.80}")
        if config.get("input_dim") is not None:
            positive_int("input_dim", config["input_dim"])
        layers = []
        for i, entry in enumerate(entries):
            try:
                layers.append(layer_from_config(entry["class_name"], entry["config"]))
            except (NnxpError, TypeError) as exc:  # TypeError: a key the layer does not take
                raise NnxpError(f"`layers[{i}]` ({entry['class_name']}) is invalid: {exc}") from None
        model = cls(layers, device=device, seed=config.get("seed"), dtype=config.get("dtype", "float32"),
                    name=config.get("name"), precision=config.get("precision", "highest"))
        if config.get("input_dim") is not None:
            try:
                model._size_layers(config["input_dim"])
            except NnxpError as exc:
                raise NnxpError(f"`layers` do not fit `input_dim`={config['input_dim']}: {exc}") from None
        return model

    def get_state(self) -> dict:
        """Everything a model file holds, as host copies read in one go: ``config`` (:meth:`get_config`),
        ``weights`` (:meth:`get_weights`), ``epochs_trained``, and ``compile``: None before compile, else
        ``loss``, ``metrics``, ``optimizer`` (its config), ``optimizer_iterations`` and ``optimizer_state``
        (slot -> flat array; empty before the first step). Builds the model first when its input size is known."""
        with self._exclusive("get_state"):  # not mid-step from another thread: that would be a partial epoch
            self._require_built()
            state = {"config": self.get_config(), "weights": self.get_weights(), "epochs_trained": self.epochs_trained,
                     "compile": None}
            if self.loss is not None:
                opt = self.optimizer
                if self._owns_optimizer_state():
                    opt_state = opt.get_state()
                else:  # this model's next step starts afresh (Optimizer.apply rebuilds it): that is its state
                    fresh = optimizers_mod.get(opt.get_config())
                    fresh.build(self.params)
                    opt_state = fresh.get_state()
                state["compile"] = {"loss": self.loss.name, "metrics": list(self.metrics),
                                    "optimizer": opt.get_config(), "optimizer_iterations": opt.iterations,
                                    "optimizer_state": opt_state}
        return state

    def save(self, path: Any) -> None:
        """Write the model (config, weights, optimizer state) to one file, atomically (:func:`nnxp.io.save_model`).

        Under MPI (:func:`nnxp.distributed.init`) only the main rank writes; the others' weights are the same."""
        if distributed.current().is_main:
            io.save_model(self, path)

    def export_onnx(self, path: Any) -> str:
        """Write the model as an ONNX graph (needs ``nnxp[onnx]``); returns the path."""
        from .onnx_export import export_onnx

        self._require_built()
        return export_onnx(self, path)

    # --- methods Keras removed: an error that names the replacement instead of an AttributeError -------------
    def predict_classes(self, *args: Any, **kwargs: Any) -> None:
        """Removed from Keras (2.6); raises an error naming the replacement."""
        raise NnxpError("predict_classes was removed from Keras: use np.argmax(model.predict(x), axis=-1) for a "
                        "softmax output, or (model.predict(x) > 0.5).astype('int32') for a sigmoid one")

    def predict_proba(self, *args: Any, **kwargs: Any) -> None:
        """Removed from Keras (2.6); raises an error naming the replacement."""
        raise NnxpError("predict_proba was removed from Keras: use model.predict(x), which returns the output "
                        "layer's probabilities")

    def fit_generator(self, *args: Any, **kwargs: Any) -> None:
        """Removed from Keras (2.1); raises an error naming the replacement."""
        raise NnxpError("fit_generator was removed from Keras: use model.fit(x, y, ...) with arrays")

    def __repr__(self) -> str:
        return f"Sequential(layers={len(self.layers)}, params={self.count_params():,}, device={self.device.name!r})"


def _checked_weights(weights: Any, expected: list[tuple[str, tuple]], dtype: np.dtype) -> list[np.ndarray]:
    """`weights` as host arrays after checking them against `expected` ((label, shape) per weight): a list of
    that length, each of that shape, finite in `dtype`. Raises before returning anything, so nothing is half set."""
    if not isinstance(weights, (list, tuple)) or len(weights) != len(expected):
        got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        names = ", ".join(f"{label} {tuple(shape)}" for label, shape in expected) or "none"
        raise NnxpError(f"`weights` must be a list of {len(expected)} arrays. Received: {got}; expected, in order: "
                        f"{names}")
    checked = []
    for i, ((label, shape), w) in enumerate(zip(expected, weights, strict=True)):
        w = to_numpy(as_array(w, f"weights[{i}]"))
        if tuple(w.shape) != tuple(shape):
            raise NnxpError(f"`weights[{i}]` ({label}) must have shape {tuple(shape)}. Received: {tuple(w.shape)}")
        if w.dtype.kind == "f" and not np.isfinite(w).all():
            raise NnxpError(f"`weights[{i}]` ({label}) must be finite. Received NaN or inf values")
        check_finite(w, f"weights[{i}]", dtype)
        checked.append(w)
    return checked


def _memory_limit() -> int | None:
    """Bytes a model's weights and gradients may take: the memory available now (psutil, when installed), else
    the machine's physical memory, else None (no check)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _format_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.1f} {unit}"
