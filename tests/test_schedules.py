"""Learning-rate schedules: values at chosen steps against hand-computed numbers, argument checks, config round trip.

The expected numbers are written out by hand (with the arithmetic beside them) so a change of formula, of the
staircase flooring or of the flat tail after ``decay_steps`` shows up as a plain mismatch.
"""

from __future__ import annotations

import json
import math

import pytest

from nnxp import NnxpError, schedules
from nnxp.schedules import CosineDecay, ExponentialDecay, LearningRateSchedule, StepDecay

REL = 1e-12


# --- ExponentialDecay -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),  # 0.1 * 0.5**0
        (5, 0.07071067811865475),  # 0.1 * 0.5**0.5 = 0.1 / sqrt(2)
        (10, 0.05),  # 0.1 * 0.5**1
        (15, 0.035355339059327376),  # 0.1 * 0.5**1.5
        (25, 0.017677669529663688),  # 0.1 * 0.5**2.5
        (40, 0.00625),  # 0.1 * 0.5**4
    ],
)
def test_exponential_decay_continuous(step, expected):
    s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert s(step) == pytest.approx(expected, rel=REL)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.1),
        (5, 0.1),  # floor(0.5) = 0
        (9, 0.1),  # floor(0.9) = 0
        (10, 0.05),  # floor(1.0) = 1
        (19, 0.05),
        (25, 0.025),  # floor(2.5) = 2
        (40, 0.00625),  # floor(4) = 4
    ],
)
def test_exponential_decay_staircase(step, expected):
    s = ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5, staircase=True)
    assert s(step) == pytest.approx(expected, rel=REL)


def test_exponential_decay_other_rate():
    s = ExponentialDecay(2.0, decay_steps=4, decay_rate=0.9)
    assert s(2) == pytest.approx(1.8973665961010275, rel=REL)  # 2 * 0.9**0.5
    assert s(8) == pytest.approx(1.62, rel=REL)  # 2 * 0.9**2


# --- StepDecay ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.2), (1, 0.2), (2, 0.2), (3, 0.1), (5, 0.1), (6, 0.05), (8, 0.05), (9, 0.025), (30, 0.2 / 1024)],
)
def test_step_decay(step, expected):
    s = StepDecay(0.2, step_size=3, gamma=0.5)
    assert s(step) == pytest.approx(expected, rel=REL)


def test_step_decay_default_gamma_is_a_tenth():
    s = StepDecay(1.0, step_size=2)
    assert [s(k) for k in (0, 1, 2, 3, 4)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01], rel=REL)


# --- CosineDecay ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1.0),  # cos(0) = 1 -> 0.9 * 1 + 0.1
        (25, 0.868198051533946),  # 0.5 (1 + cos(pi/4)) = 0.853553390593... -> 0.9 * that + 0.1
        (50, 0.55),  # cos(pi/2) = 0 -> 0.9 * 0.5 + 0.1
        (75, 0.23180194846605362),  # 0.5 (1 - 1/sqrt 2) = 0.146446609406... -> 0.9 * that + 0.1
        (100, 0.1),  # cos(pi) = -1 -> alpha
        (150, 0.1),  # flat after decay_steps
        (10_000, 0.1),
    ],
)
def test_cosine_decay_with_alpha(step, expected):
    s = CosineDecay(1.0, decay_steps=100, alpha=0.1)
    assert s(step) == pytest.approx(expected, rel=REL, abs=1e-15)


def test_cosine_decay_default_alpha_reaches_zero():
    s = CosineDecay(0.5, decay_steps=10)
    assert s(0) == pytest.approx(0.5, rel=REL)
    assert s(5) == pytest.approx(0.25, rel=REL)  # 0.5 * 0.5 (1 + cos(pi/2))
    assert s(10) == pytest.approx(0.0, abs=1e-15)
    assert s(20) == pytest.approx(0.0, abs=1e-15)


def test_schedules_return_python_floats():
    for s in (ExponentialDecay(0.1, 10, 0.5), StepDecay(0.1, 3), CosineDecay(0.1, 10)):
        assert isinstance(s(3), float)
        assert isinstance(s, LearningRateSchedule)


# --- invalid arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("factory", "kwargs", "argname", "shown"),
    [
        (
            ExponentialDecay,
            dict(initial_learning_rate=-0.1, decay_steps=10, decay_rate=0.5),
            "initial_learning_rate",
            "-0.1",
        ),
        (
            ExponentialDecay,
            dict(initial_learning_rate=math.nan, decay_steps=10, decay_rate=0.5),
            "initial_learning_rate",
            "nan",
        ),
        (
            ExponentialDecay,
            dict(initial_learning_rate=math.inf, decay_steps=10, decay_rate=0.5),
            "initial_learning_rate",
            "inf",
        ),
        (
            ExponentialDecay,
            dict(initial_learning_rate="0.1", decay_steps=10, decay_rate=0.5),
            "initial_learning_rate",
            "'0.1'",
        ),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.5), "decay_steps", "0"),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=-5, decay_rate=0.5), "decay_steps", "-5"),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=True, decay_rate=0.5), "decay_steps", "True"),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0), "decay_rate", "0"),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=-0.5), "decay_rate", "-0.5"),
        (ExponentialDecay, dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=math.nan), "decay_rate", "nan"),
        (StepDecay, dict(initial_learning_rate=-1.0, step_size=3), "initial_learning_rate", "-1.0"),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=0), "step_size", "0"),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=-2), "step_size", "-2"),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=3, gamma=0), "gamma", "0"),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=3, gamma=-0.1), "gamma", "-0.1"),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=3, gamma=math.inf), "gamma", "inf"),
        (CosineDecay, dict(initial_learning_rate=-0.1, decay_steps=10), "initial_learning_rate", "-0.1"),
        (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps", "0"),
        (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=-0.1), "alpha", "-0.1"),
        (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=10, alpha=math.nan), "alpha", "nan"),
    ],
)
def test_invalid_arguments_raise_naming_argument_and_value(factory, kwargs, argname, shown):
    with pytest.raises(NnxpError) as info:
        factory(**kwargs)
    msg = str(info.value)
    assert f"`{argname}`" in msg
    assert f"Received: {argname}={shown}" in msg


def test_zero_initial_rate_is_allowed():
    assert ExponentialDecay(0.0, 10, 0.5)(7) == 0.0
    assert StepDecay(0, 2)(5) == 0.0
    assert CosineDecay(0.0, 10)(3) == 0.0


@pytest.mark.parametrize(
    ("factory", "kwargs", "argname", "at_step_2"),
    [
        (
            ExponentialDecay,
            dict(initial_learning_rate=0.1, decay_steps=0.5, decay_rate=0.9),
            "decay_steps",
            0.1 * 0.9**4,
        ),
        (StepDecay, dict(initial_learning_rate=0.1, step_size=0.5, gamma=0.5), "step_size", 0.1 * 0.5**4),
        (CosineDecay, dict(initial_learning_rate=0.1, decay_steps=0.5), "decay_steps", 0.0),
        (
            ExponentialDecay,
            dict(initial_learning_rate=0.1, decay_steps=2.5, decay_rate=0.9),
            "decay_steps",
            0.1 * 0.9**0.8,
        ),
    ],
)
def test_fractional_step_count_is_rejected_or_honoured(factory, kwargs, argname, at_step_2):
    """Refuse a fractional step count up front (naming it) or use it as given: never truncate it (0.5 -> 0 was
    a ZeroDivisionError at the first call, 2.5 -> 2 a silently different schedule)."""
    try:
        s = factory(**kwargs)
    except NnxpError as exc:
        assert f"`{argname}`" in str(exc)
        return
    assert s(2) == pytest.approx(at_step_2, rel=REL, abs=1e-15)


# --- config round trip ----------------------------------------------------------------------------
ROUND_TRIP = [
    ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5),
    ExponentialDecay(0.3, decay_steps=7, decay_rate=0.8, staircase=True),
    StepDecay(0.2, step_size=3, gamma=0.5),
    StepDecay(0.05, step_size=4),
    CosineDecay(1.0, decay_steps=100, alpha=0.1),
    CosineDecay(0.01, decay_steps=50),
]


@pytest.mark.parametrize("schedule", ROUND_TRIP, ids=lambda s: type(s).__name__)
def test_config_round_trip(schedule):
    config = schedule.get_config()
    assert config["name"] == type(schedule).__name__
    config = json.loads(json.dumps(config))  # JSON-safe, as a saved model needs
    original = dict(config)
    rebuilt = schedules.from_config(config)
    assert config == original  # from_config does not consume the caller's dict
    assert type(rebuilt) is type(schedule)
    assert rebuilt.get_config() == schedule.get_config()
    steps = [0, 1, 2, 3, 5, 9, 10, 11, 25, 49, 50, 99, 100, 250]
    assert [rebuilt(k) for k in steps] == [schedule(k) for k in steps]


def test_config_keeps_every_argument():
    config = ExponentialDecay(0.3, decay_steps=7, decay_rate=0.8, staircase=True).get_config()
    assert config == {
        "name": "ExponentialDecay",
        "initial_learning_rate": 0.3,
        "decay_steps": 7,
        "decay_rate": 0.8,
        "staircase": True,
    }
    assert CosineDecay(1.0, 100, alpha=0.1).get_config() == {
        "name": "CosineDecay",
        "initial_learning_rate": 1.0,
        "decay_steps": 100,
        "alpha": 0.1,
    }


@pytest.mark.parametrize("name", ["PolynomialDecay", None, "exponentialdecay"])
def test_from_config_unknown_name(name):
    with pytest.raises(NnxpError, match="schedule must be one of"):
        schedules.from_config({"name": name, "initial_learning_rate": 0.1})


# --- overflow, half-specified configs, NumPy numbers (issue 16, sections 2 and 4) ---------------------------------
@pytest.mark.parametrize(("schedule", "step"), [
    (ExponentialDecay(0.1, decay_steps=1, decay_rate=1e308), 2),  # 1e308**2: OverflowError in plain Python
    (ExponentialDecay(1e300, decay_steps=1, decay_rate=1e10), 1),  # a finite product that is inf
    (ExponentialDecay(0.1, decay_steps=1, decay_rate=1.5), 10**6),
    (StepDecay(1e300, step_size=1, gamma=1e300), 1),
    (StepDecay(0.1, step_size=1, gamma=10.0), 400),
    (CosineDecay(1e308, decay_steps=10, alpha=1e10), 10),
])
def test_overflowing_parameters_give_an_nnxp_error_naming_them(schedule, step):
    with pytest.raises(NnxpError, match=r"parameters overflow\. Received: initial_learning_rate="):
        schedule(step)
    assert math.isfinite(schedule(0))  # the same schedule is fine where it does not overflow


def test_an_overflowing_schedule_stops_fit_with_an_nnxp_error_and_a_usable_model():
    import numpy as np

    from nnxp import Dense, Sequential
    from nnxp.optimizers import SGD

    r = np.random.default_rng(0)
    x, y = r.normal(size=(16, 2)), r.normal(size=(16, 1))
    model = Sequential([Dense(1, input_dim=2)], seed=0)
    model.build(2)
    before = model.get_weights()
    # a zero initial rate keeps the first steps harmless; 1e308**2 overflows at the third
    model.compile(SGD(ExponentialDecay(0.0, decay_steps=1, decay_rate=1e308)), "mse")
    with pytest.raises(NnxpError, match="ExponentialDecay gives inf at step 2"):
        model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("step", [-1, 1.5, "3", None, True])
def test_bad_steps_are_refused(step):
    with pytest.raises(NnxpError, match=r"`step` must be an integer >= 0"):
        StepDecay(0.1, 3)(step)


@pytest.mark.parametrize(("config", "pattern"), [
    ({"name": "ExponentialDecay", "initial_learning_rate": 0.1}, r"missing \['decay_steps', 'decay_rate'\]"),
    ({"name": "StepDecay", "step_size": 3}, r"missing \['initial_learning_rate'\]"),
    ({"name": "CosineDecay", "initial_learning_rate": 0.1, "decay_steps": 5, "warmup": 3},
     r"unknown keys \['warmup'\]"),
    ({"name": "ExponentialDecay", "initial_learning_rate": 0.1, "decay_steps": 5, "decay_rate": 0.5,
      "staircase": "no"}, r"`staircase` must be True or False"),
    ({"name": ["StepDecay"]}, r"schedule must be one of"),
    ("ExponentialDecay", r"schedule config must be a dict"),
])
def test_half_specified_configs_are_refused_naming_what_is_wrong(config, pattern):
    with pytest.raises(NnxpError, match=pattern):
        schedules.from_config(config)


def test_a_compile_dict_with_a_half_specified_schedule_is_an_nnxp_error():
    from nnxp import Dense, Sequential

    model = Sequential([Dense(1, input_dim=2)])
    with pytest.raises(NnxpError, match=r"missing \['step_size'\]"):
        model.compile({"name": "sgd", "learning_rate": {"name": "StepDecay", "initial_learning_rate": 0.1}}, "mse")
    assert model.optimizer is None  # nothing changed


def test_numpy_numbers_are_accepted():
    import numpy as np

    s = ExponentialDecay(np.float32(0.5), decay_steps=np.int64(2), decay_rate=np.float64(0.25))
    assert s(np.int64(2)) == pytest.approx(0.125, rel=REL) and isinstance(s(2), float)
    assert json.loads(json.dumps(s.get_config())) == s.get_config()  # still JSON-safe
