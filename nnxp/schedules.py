"""Learning-rate schedules: callables from the optimizer's step count to a rate.

Pass one as ``learning_rate`` to any optimizer. Each has ``get_config`` so a
saved model keeps its schedule.
"""

from __future__ import annotations

import math

from .errors import NnxpError


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise NnxpError(f"`{name}` must be a finite number {rule}. Received: {name}={value!r}")
    return float(value)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise NnxpError(f"`{name}` must be a positive integer (a number of steps). Received: {name}={value!r}")
    return value


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": type(self).__name__, **vars(self)}


class ExponentialDecay(LearningRateSchedule):
    """``initial * decay_rate ** (step / decay_steps)`` (floored ratio when `staircase`)."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, decay_rate: float, staircase: bool = False):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
        self.decay_steps = _positive_int("decay_steps", decay_steps)
        self.decay_rate = _positive("decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def __call__(self, step: int) -> float:
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate**p


class StepDecay(LearningRateSchedule):
    """Multiply the rate by `gamma` every `step_size` steps."""

    def __init__(self, initial_learning_rate: float, step_size: int, gamma: float = 0.1):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
        self.step_size = _positive_int("step_size", step_size)
        self.gamma = _positive("gamma", gamma)

    def __call__(self, step: int) -> float:
        return self.initial_learning_rate * self.gamma ** (step // self.step_size)


class CosineDecay(LearningRateSchedule):
    """Cosine from `initial_learning_rate` down to ``alpha * initial`` over `decay_steps`, then flat."""

    def __init__(self, initial_learning_rate: float, decay_steps: int, alpha: float = 0.0):
        self.initial_learning_rate = _positive("initial_learning_rate", initial_learning_rate, allow_zero=True)
        self.decay_steps = _positive_int("decay_steps", decay_steps)
        self.alpha = _positive("alpha", alpha, allow_zero=True)

    def __call__(self, step: int) -> float:
        t = min(step, self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * t))
        return self.initial_learning_rate * ((1.0 - self.alpha) * cosine + self.alpha)


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, StepDecay, CosineDecay)}


def from_config(config: dict) -> LearningRateSchedule:
    """Rebuild a schedule from :meth:`LearningRateSchedule.get_config`."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in SCHEDULES:
        raise NnxpError(f"`learning_rate` schedule must be one of {sorted(SCHEDULES)}. Received: name={name!r}")
    return SCHEDULES[name](**config)
