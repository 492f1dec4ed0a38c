"""Learning-rate schedules: callables from the optimizer's step count to a rate.

Pass one as ``learning_rate`` to any optimizer. Each has ``get_config`` so a
saved model keeps its schedule.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

from ._validation import number
from .errors import NnxpError, NnxpTypeError


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise NnxpError(f"`{name}` must be a positive integer (a number of steps). Received: {name}={value!r}")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise NnxpTypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate``.

    Subclasses implement ``_rate(step)``; calling the schedule checks the step and that the rate is a finite
    float, so parameters that overflow (``decay_rate=1e308``) give an NnxpError naming them, not an
    OverflowError or an infinite rate deep inside an optimizer step.
    """

    def __call__(self, step: int) -> float:
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise NnxpError(f"`step` must be an integer >= 0. Received: step={step!r}")
        try:
            rate = float(self._rate(int(step)))
        except OverflowError:
            rate = math.inf
        if not math.isfinite(rate) or rate < 0:
            params = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
            raise NnxpError(f"learning-rate schedule {type(self).__name__} gives {rate} at step {step}: its "
                            f"parameters overflow. Received: {params}")
        return rate

    def _rate(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": type(self).__name__, **vars(self)}


class ExponentialDecay(LearningRateSchedule):
    """``initial * decay_rate ** (step / decay_steps)`` (floored ratio when `staircase`)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        self.initial_learning_rate = number("initial_learning_rate", initial_learning_rate, ">= 0")
        self.decay_steps = _positive_int("decay_steps", decay_steps)
        self.decay_rate = number("decay_rate", decay_rate, "> 0")
        self.staircase = _flag("staircase", staircase)

    def _rate(self, step: int) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate**p


class StepDecay(LearningRateSchedule):
    """Multiply the rate by `gamma` every `step_size` steps."""

    def __init__(self, initial_learning_rate: float, step_size: int, gamma: float = 0.1):
        self.initial_learning_rate = number("initial_learning_rate", initial_learning_rate, ">= 0")
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = number("gamma", gamma, "> 0")

    def _rate(self, step: int) -> float:
        return self.initial_learning_rate * self.gamma ** (step // self.step_size)


class CosineDecay(LearningRateSchedule):
    """Cosine from `initial_learning_rate` down to ``alpha * initial`` over `decay_steps`, then flat."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        self.initial_learning_rate = number("initial_learning_rate", initial_learning_rate, ">= 0")
        self.decay_steps = _positive_int("decay_steps", decay_steps)
        self.alpha = number("alpha", alpha, ">= 0")

    def _rate(self, step: int) -> float:
        t = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * t))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, StepDecay, CosineDecay)}


def from_config(config: dict) -> LearningRateSchedule:
    """Rebuild a schedule from :meth:`LearningRateSchedule.get_config`; every argument checked and named."""
    if not isinstance(config, dict):
        raise NnxpTypeError(f"`learning_rate` schedule config must be a dict. Received: {config!r}")
    config = dict(config)
    name = config.pop("name", None)
    if not isinstance(name, str) or name not in SCHEDULES:
        raise NnxpError(f"`learning_rate` schedule must be one of {sorted(SCHEDULES)}. Received: name={name!r}")
    params = dict(inspect.signature(SCHEDULES[name].__init__).parameters)
    params.pop("self")
    unknown = sorted(k for k in config if k not in params)
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in config]
    if unknown or missing:
        what = "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                       f"unknown keys {unknown}" if unknown else ""]))
        raise NnxpError(f"`learning_rate` schedule {name} config is incomplete or wrong: {what}. It takes "
                        f"{list(params)}. Received: {config}")
    return SCHEDULES[name](**config)
