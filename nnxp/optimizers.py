"""Optimizers: SGD, RMSprop, Adagrad, Adadelta, Adam, Adamax, AdamW, Lion.

An optimizer sees arrays, never layers: one flat parameter buffer and its
gradient. Its state (moments, accumulators) is allocated lazily as flat
buffers of the same size, so a step is a few whole-buffer operations
(:mod:`nnxp.ops.optim`) whatever the depth. Argument names follow Keras.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import numpy as np

from . import schedules
from ._validation import number
from .backend import device_of, to_numpy, xp_of
from .errors import NnxpError, NnxpTypeError, did_you_mean, reject_unknown_arguments
from .ops import optim as O
from .schedules import LearningRateSchedule

__all__ = ["Optimizer", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Adamax", "AdamW", "Lion", "get",
           "schedules"]


# optimizer arguments Keras itself removed or renamed, and what replaced them
_REMOVED = {
    "lr": "learning_rate",
    "decay": "a learning-rate schedule, e.g. learning_rate=nnxp.schedules.ExponentialDecay(0.01, 1000, 0.9)",
    "clip_norm": "clipnorm (each weight) or global_clipnorm (all weights together)",
}


def _keywords(cls: type) -> list[str]:
    """Every keyword some __init__ along the class chain accepts (AdamW passes beta_1 etc. on to Adam)."""
    names = {p for c in cls.__mro__ if c is not object and "__init__" in vars(c)
             for p in inspect.signature(c.__init__).parameters}
    return sorted(names - {"self", "kw", "kwargs"})


_KEY_GETTERS: dict = {}  # update rule -> the getter of Optimizer.scalars_key


class Optimizer:
    """Base class: learning rate (float or schedule), clipping, weight decay, lazy flat state."""

    name = "optimizer"
    # the update (nnxp.ops.optim): it declares its state slots and named scalars once; the scalars are read
    # here from the same-named attributes, an optional slot is kept when the attribute it names is set
    rule: O.Update | None = None

    def __init__(
        self,
        learning_rate: float | LearningRateSchedule = 0.001,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        weight_decay: float | None = None,
        global_clipnorm: float | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            reject_unknown_arguments(type(self).__name__, kwargs, _keywords(type(self)), _REMOVED)
        if isinstance(learning_rate, LearningRateSchedule):
            self.learning_rate: float | LearningRateSchedule = learning_rate
        else:
            self.learning_rate = number("learning_rate", learning_rate, "[0.0, inf)")
        # Keras's meanings: clipnorm clips each weight's gradient by its own norm, global_clipnorm all of them
        # together (nnxp before 0.2 clipped globally under clipnorm; see the README's changelog)
        self.clipnorm = None if clipnorm is None else number("clipnorm", clipnorm, "(0.0, inf)")
        self.global_clipnorm = (None if global_clipnorm is None
                                else number("global_clipnorm", global_clipnorm, "(0.0, inf)"))
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise NnxpError("only one of `clipnorm` (each weight by its own norm) and `global_clipnorm` (all weights "
                            f"together) can be set. Received: clipnorm={clipnorm}, global_clipnorm={global_clipnorm}")
        self.clipvalue = None if clipvalue is None else number("clipvalue", clipvalue, "(0.0, inf)")
        self.weight_decay = None if not weight_decay else number("weight_decay", weight_decay, "[0.0, inf)")
        self.iterations = 0
        self.state: dict[str, Any] = {}  # name -> flat array like the parameters
        self._tmp: Any = None
        # (start, stop) of each weight in the flat buffer, told by the model; None: the buffer is one weight
        self.segments: tuple[tuple[int, int], ...] | None = None

    # --- the step ---------------------------------------------------------------------------
    def current_learning_rate(self) -> float:
        """The rate the next step will use (a schedule is evaluated at ``iterations``)."""
        if isinstance(self.learning_rate, LearningRateSchedule):
            return float(self.learning_rate(self.iterations))
        return self.learning_rate

    def slot_names(self) -> list[str]:
        """Names of the state buffers this configuration needs: the rule's slots, less the optional ones it has
        turned off (these names are the model file's ``optimizer/<slot>`` entries)."""
        if self.rule is None:
            return []
        return [slot for slot in self.rule.state
                if slot not in self.rule.optional or getattr(self, self.rule.optional[slot])]

    def _initial_value(self, slot: str) -> float:
        return 0.0

    def set_segments(self, segments: list[tuple[int, int]] | None) -> None:
        """Where each weight (a kernel, a bias) lies in the flat buffer, as (start, stop) pairs: what
        ``clipnorm`` clips one at a time. The model calls this when it builds or compiles."""
        self.segments = None if segments is None else tuple((int(a), int(b)) for a, b in segments)

    def build(self, params: Any) -> None:
        """Allocate zeroed state buffers shaped like the flat `params`."""
        xp = xp_of(params)
        self.state = {}
        with device_of(params).use():  # CuPy allocates on the current device, not on that of `params`
            for slot in self.slot_names():
                buf = xp.zeros_like(params)
                if self._initial_value(slot):
                    buf.fill(self._initial_value(slot))
                self.state[slot] = buf
            self._tmp = xp.empty_like(params)

    def apply(self, params: Any, grads: Any) -> None:
        """One update of the flat `params` from the flat `grads` (which may be clipped in place)."""
        if self._tmp is None or self._tmp.shape != params.shape or xp_of(self._tmp) is not xp_of(params):
            self.build(params)
        self._clip(grads)
        self._update(params, grads, self._advance())

    def _advance(self) -> dict[str, Any]:
        """This step's named scalars, then one more step counted: the one place ``iterations`` moves."""
        if self.rule is None:
            raise NotImplementedError(f"{type(self).__name__} names no update rule (`rule`, from nnxp.ops.optim)")
        lr = self.current_learning_rate()  # a schedule is evaluated before the count moves
        self.iterations += 1
        return self._scalars(lr)

    def _scalars(self, lr: float) -> dict[str, Any]:
        """The named scalars `rule` declares: the learning rate, the step count and this optimizer's attributes."""
        named = {"lr": lr, "step": self.iterations}
        return {name: named[name] if name in named else getattr(self, name) for name in self.rule.scalars}

    def _buffers(self) -> tuple:
        """The state buffers in the order `rule` takes them (None for a slot this configuration lacks)."""
        return tuple(self.state.get(slot) for slot in self.rule.state)

    def _update(self, params: Any, grads: Any, scalars: dict[str, Any], hp: Any = None) -> None:
        O.update(self.rule, params, grads, self._buffers(), self._tmp, scalars, self.weight_decay or 0.0, hp=hp)

    def _clip(self, grads: Any) -> None:
        """Clip `grads` in place, on its device and without a host sync (so a CUDA graph can capture it too)."""
        if self.clipvalue is not None:
            O.clip_by_value(grads, self.clipvalue)
        if self.clipnorm is not None:
            segments = self.segments or ((0, grads.shape[0]),)  # a bare buffer is one weight
            if segments[-1][1] != grads.shape[0]:
                raise NnxpError(f"this optimizer's clipnorm was set up for a model of {segments[-1][1]} parameters "
                                f"but is stepping {grads.shape[0]}; give each model its own optimizer")
            O.clip_by_norm_per_segment(grads, self.clipnorm, segments)
        if self.global_clipnorm is not None:
            O.clip_by_global_norm(grads, self.global_clipnorm)

    def step_buffers(self) -> list[Any]:
        """Every device buffer a step writes besides the parameters and gradients (state and scratch): a captured
        step (nnxp._graph) must be captured again when one of them is replaced."""
        return [self._tmp, *self.state.values()]

    # --- a step replayed in a CUDA graph: the host half runs every step, the device half is captured once ----
    def graph_scalars(self, params: Any) -> np.ndarray:
        """Advance one step on the host and return the kernel's scalars for it (written to the graph's buffer)."""
        scalars = self._advance()
        floats = self.rule.device_scalars(params.dtype, self._buffers(), scalars, self.weight_decay or 0.0)
        return np.array(floats, dtype=params.dtype)

    def scalars_key(self) -> tuple:
        """Everything :meth:`graph_scalars` and :meth:`graph_constants` depend on besides ``iterations``: the
        learning rate (and a schedule's attributes: a schedule is a function of the step alone, as in Keras), the
        decay, the rule's other scalars and the clipping settings. A step kept whole (nnxp._graph) compares it
        with the key it last saw, once per step, so it is read with one C-level getter."""
        getter = _KEY_GETTERS.get(self.rule)
        if getter is None:
            names = [name for name in self.rule.scalars if name != "lr" and name != "step"]
            getter = _KEY_GETTERS[self.rule] = operator.attrgetter(
                "learning_rate", "weight_decay", "clipvalue", "clipnorm", "global_clipnorm", "segments", *names)
        key = getter(self)
        if isinstance(key[0], LearningRateSchedule):
            return (*key, tuple(vars(key[0]).values()))
        return key

    def graph_table(self, params: Any, steps: int) -> np.ndarray:
        """The scalars :meth:`graph_scalars` would return for each of the next `steps` steps, as rows, without
        counting a step (a replayed epoch uploads them at once; nnxp._graph.StepFeed): the same arithmetic, with
        what does not change from step to step worked out once."""
        rule, dtype = self.rule, np.dtype(params.dtype)
        if steps <= 0 or rule is None:
            return np.zeros((0, 0), dtype=dtype)
        schedule = self.learning_rate if isinstance(self.learning_rate, LearningRateSchedule) else None
        named = self._scalars(self.learning_rate if schedule is None else 0.0)
        flags = rule.optional_flags(self._buffers())
        decay = self.weight_decay or 0.0
        rows = []
        for iterations in range(self.iterations, self.iterations + steps):  # each step's count before it runs
            if schedule is not None and "lr" in named:
                named["lr"] = float(schedule(iterations))
            if "step" in named:
                named["step"] = iterations + 1
            rows.append(rule.floats_of(dtype, named, flags, decay))
        return np.array(rows, dtype=dtype)

    def graph_constants(self) -> tuple:
        """What a captured step holds fixed instead of reading it from its scalars' buffer: the clipping settings
        and the rule's other named arguments that are not floats (SGD's `nesterov`). A step captured under other
        values must be captured again (nnxp._graph.GraphedStep.still_bound)."""
        named = self._scalars(0.0)
        flags = tuple((k, v) for k, v in named.items() if k not in ("lr", "step") and not isinstance(v, float))
        return (self.clipvalue, self.clipnorm, self.global_clipnorm, self.segments, *flags)

    def graph_apply(self, params: Any, grads: Any, hp: Any) -> None:
        """The device half of :meth:`apply` for capture: clipping, then the one update, its kernel reading its
        scalars from `hp`. Needs built state (a step ran before) and CuPy buffers; counts no step."""
        self._clip(grads)
        self._update(params, grads, self._scalars(self.current_learning_rate()), hp=hp)

    # --- config and state (for save / load and device moves) ---------------------------------
    def get_config(self) -> dict:
        lr = self.learning_rate
        return {
            "name": self.name,
            "learning_rate": lr.get_config() if isinstance(lr, LearningRateSchedule) else lr,
            "clipnorm": self.clipnorm,
            "global_clipnorm": self.global_clipnorm,
            "clipvalue": self.clipvalue,
            "weight_decay": self.weight_decay,
            **self._hyper(),
        }

    def _hyper(self) -> dict:
        return {}

    def get_state(self) -> dict[str, Any]:
        """State as host NumPy arrays (for saving)."""
        return {k: to_numpy(v).copy() for k, v in self.state.items()}  # a snapshot, on every device

    def set_state(self, state: dict[str, Any], like: Any) -> None:
        """Restore state saved by :meth:`get_state` onto the device of `like`."""
        self.build(like)
        expected = set(self.slot_names())
        if set(state) != expected:
            raise NnxpError(f"optimizer state must hold {sorted(expected)}. Received: {sorted(state)}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(like.shape):
                raise NnxpError(f"optimizer state `{k}` must have shape {like.shape}. Received: {v.shape}")
        with device_of(like).use():
            for k, v in state.items():
                self.state[k][...] = xp_of(like).asarray(v, dtype=like.dtype)

    def to(self, like: Any, state: dict[str, Any] | None = None) -> None:
        """Move the state (or `state`, from :meth:`get_state`) next to `like`, the parameters after a move."""
        state = self.get_state() if state is None else state
        if state:
            self.set_state(state, like)
        else:
            self.state, self._tmp = {}, None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name" and v is not None)
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum."""

    name = "sgd"
    rule = O.sgd

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False, **kwargs) -> None:
        super().__init__(learning_rate, **kwargs)
        self.momentum = number("momentum", momentum, "[0.0, 1.0]")
        self.nesterov = bool(nesterov)

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """Divide the gradient by a running RMS of recent gradients."""

    name = "rmsprop"
    rule = O.rmsprop

    def __init__(
        self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.0, epsilon: float = 1e-7, centered=False, **kw
    ) -> None:
        super().__init__(learning_rate, **kw)
        self.rho = number("rho", rho, "[0.0, 1.0]")
        self.momentum = number("momentum", momentum, "[0.0, 1.0]")
        self.epsilon = number("epsilon", epsilon, "(0.0, inf)")
        self.centered = bool(centered)

    def _hyper(self):
        return {"rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon, "centered": self.centered}


class Adagrad(Optimizer):
    """Per-parameter rates from the sum of all past squared gradients."""

    name = "adagrad"
    rule = O.adagrad

    def __init__(self, learning_rate=0.001, initial_accumulator_value: float = 0.1, epsilon: float = 1e-7, **kw):
        super().__init__(learning_rate, **kw)
        self.initial_accumulator_value = number("initial_accumulator_value", initial_accumulator_value, "[0.0, inf)")
        self.epsilon = number("epsilon", epsilon, "(0.0, inf)")

    def _initial_value(self, slot):
        return self.initial_accumulator_value

    def _hyper(self):
        return {"initial_accumulator_value": self.initial_accumulator_value, "epsilon": self.epsilon}


class Adadelta(Optimizer):
    """Adagrad's successor: running averages of squared gradients and squared updates."""

    name = "adadelta"
    rule = O.adadelta

    def __init__(self, learning_rate=0.001, rho: float = 0.95, epsilon: float = 1e-7, **kw):
        super().__init__(learning_rate, **kw)
        self.rho = number("rho", rho, "[0.0, 1.0]")
        self.epsilon = number("epsilon", epsilon, "(0.0, inf)")

    def _hyper(self):
        return {"rho": self.rho, "epsilon": self.epsilon}


class Adam(Optimizer):
    """Adaptive moments (Kingma & Ba) with bias correction."""

    name = "adam"
    rule = O.adam

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7, **kw):
        super().__init__(learning_rate, **kw)
        self.beta_1 = number("beta_1", beta_1, "[0.0, 1.0]")
        self.beta_2 = number("beta_2", beta_2, "[0.0, 1.0]")
        self.epsilon = number("epsilon", epsilon, "(0.0, inf)")
        if self.beta_1 == 1.0 or self.beta_2 == 1.0:
            raise NnxpError(f"`beta_1` and `beta_2` must be < 1. Received: beta_1={beta_1}, beta_2={beta_2}")

    def _hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


class Adamax(Adam):
    """Adam with the infinity norm in place of the second moment."""

    name = "adamax"
    rule = O.adamax


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.004, as Keras)."""

    name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay: float = 0.004, **kw):
        super().__init__(learning_rate, weight_decay=weight_decay, **kw)


class Lion(Optimizer):
    """Evolved sign momentum (Chen et al. 2023): each step moves every weight by exactly ``learning_rate``.

    Keras's defaults; a rate 3-10x smaller than Adam's is the usual starting point.
    """

    name = "lion"
    rule = O.lion

    def __init__(self, learning_rate=0.001, beta_1: float = 0.9, beta_2: float = 0.99, **kw):
        super().__init__(learning_rate, **kw)
        # as Keras: beta_1 = 0 would make the step sign(g) alone, which Keras refuses
        self.beta_1 = number("beta_1", beta_1, "(0.0, 1.0]")
        self.beta_2 = number("beta_2", beta_2, "[0.0, 1.0]")

    def _hyper(self):
        return {"beta_1": self.beta_1, "beta_2": self.beta_2}


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, RMSprop, Adagrad, Adadelta, Adam, Adamax, AdamW, Lion)
}


def get(identifier: str | Optimizer | dict) -> Optimizer:
    """An optimizer from an instance, a name (``"adam"``) or a config dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, dict):
        config = dict(identifier)
        name = config.pop("name", None)
        cls = _lookup(name)
        lr = config.get("learning_rate")
        if isinstance(lr, dict):
            config["learning_rate"] = schedules.from_config(lr)
        config = {k: v for k, v in config.items() if v is not None}
        # every keyword some __init__ along the class chain accepts (AdamW passes beta_1 etc. on to Adam)
        allowed = set(_keywords(cls))
        unknown = sorted(set(config) - allowed)
        removed = [k for k in unknown if k in _REMOVED]
        if removed:
            reject_unknown_arguments(f"`optimizer` config for {cls.name!r}", {k: config[k] for k in removed},
                                     sorted(allowed), _REMOVED)
        if unknown:
            raise NnxpError(f"`optimizer` config for {cls.name!r} has unknown keys {unknown}; valid keys are "
                            f"{sorted(allowed)}." + did_you_mean(unknown[0], sorted(allowed)))
        if cls is AdamW:
            config.setdefault("weight_decay", 0.0)
        return cls(**config)
    if isinstance(identifier, str):
        return _lookup(identifier)()
    raise NnxpTypeError(
        f"`optimizer` must be a name such as 'adam' or an Optimizer instance. Received: optimizer={identifier!r}"
    )


def _lookup(name: Any) -> type[Optimizer]:
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise NnxpError(
            f"`optimizer` must be one of {sorted(OPTIMIZERS)}. Received: optimizer={name!r}."
            + did_you_mean(key, sorted(OPTIMIZERS))
        )
    return OPTIMIZERS[key]
