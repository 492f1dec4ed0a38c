"""Golden tests for the flat-buffer optimizer updates in :mod:`nnxp.ops.optim`.

Each update runs three steps on a small float64 vector with a fixed gradient per step. The expected trajectory is
computed here independently, one element at a time in plain Python floats, from the Keras update rules quoted in
each op's docstring. Parameters *and* every state buffer are compared after every step, the scratch buffer is
filled with NaN before each call (so reading it would show), and hyper-parameters avoid the values (lr=1,
epsilon~0, rho=beta) that would hide a misplaced factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from nnxp.ops import optim as O

P0 = [0.5, -1.25, 2.0, 0.0, -0.3]
GRADS = [
    [0.1, -0.4, 1.5, 0.0, -2.0],
    [-0.3, 0.2, 0.5, 0.8, -1.0],
    [0.25, 0.05, -1.2, 0.6, 0.0],
]
RTOL64, ATOL64 = 1e-12, 1e-14
RTOL32, ATOL32 = 2e-5, 1e-6


# --- scalar references (one element, plain floats) ------------------------------------------------
# Each rule takes (p, g, state, t) for one element, updates the element's `state` dict and returns the new p.


def sgd_rule(lr, momentum=0.0, nesterov=False):
    def rule(p, g, s, t):
        if "velocity" not in s:  # plain SGD
            return p - lr * g
        s["velocity"] = momentum * s["velocity"] - lr * g
        if nesterov:
            return p + momentum * s["velocity"] - lr * g
        return p + s["velocity"]

    return rule


def rmsprop_rule(lr, rho, momentum, epsilon, centered):
    def rule(p, g, s, t):
        s["avg_sq"] = rho * s["avg_sq"] + (1.0 - rho) * g * g
        if centered:
            s["avg_grad"] = rho * s["avg_grad"] + (1.0 - rho) * g
            denominator = s["avg_sq"] - s["avg_grad"] ** 2 + epsilon
        else:
            denominator = s["avg_sq"] + epsilon
        increment = lr * g / math.sqrt(denominator)
        if "momentum" in s:
            s["momentum"] = momentum * s["momentum"] + increment
            return p - s["momentum"]
        return p - increment

    return rule


def adagrad_rule(lr, epsilon):
    def rule(p, g, s, t):
        s["accumulator"] = s["accumulator"] + g * g
        return p - lr * g / math.sqrt(s["accumulator"] + epsilon)

    return rule


def adadelta_rule(lr, rho, epsilon):
    def rule(p, g, s, t):
        s["accumulated_grad"] = rho * s["accumulated_grad"] + (1.0 - rho) * g * g
        delta = -math.sqrt(s["accumulated_delta"] + epsilon) / math.sqrt(s["accumulated_grad"] + epsilon) * g
        s["accumulated_delta"] = rho * s["accumulated_delta"] + (1.0 - rho) * delta * delta
        return p + lr * delta

    return rule


def adam_rule(lr, beta_1, beta_2, epsilon):
    def rule(p, g, s, t):
        s["m"] = beta_1 * s["m"] + (1.0 - beta_1) * g
        s["v"] = beta_2 * s["v"] + (1.0 - beta_2) * g * g
        alpha = lr * math.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)
        return p - alpha * s["m"] / (math.sqrt(s["v"]) + epsilon)

    return rule


def adamax_rule(lr, beta_1, beta_2, epsilon):
    def rule(p, g, s, t):
        s["m"] = beta_1 * s["m"] + (1.0 - beta_1) * g
        s["u"] = max(beta_2 * s["u"], abs(g))
        return p - lr * s["m"] / ((1.0 - beta_1**t) * (s["u"] + epsilon))

    return rule


def lion_rule(lr, beta_1, beta_2):
    def rule(p, g, s, t):
        c = beta_1 * s["m"] + (1.0 - beta_1) * g
        s["m"] = beta_2 * s["m"] + (1.0 - beta_2) * g
        return p - lr * math.copysign(1.0, c) if c else p

    return rule


def scalar_trajectory(rule, p0, grads, init):
    """[(params, {slot: values})] after each step, element by element."""
    params = list(p0)
    states = [dict(init) for _ in params]
    history = []
    for t, g in enumerate(grads, start=1):
        for i in range(len(params)):
            params[i] = rule(params[i], g[i], states[i], t)
        history.append((list(params), {k: [st[k] for st in states] for k in init}))
    return history


# --- the cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    rule: Callable
    init: dict  # slot -> initial value of every element
    call: Callable  # (p, g, state dict of arrays, tmp, t) -> None
    extra: dict = field(default_factory=dict)


CASES = [
    Case("sgd_plain", sgd_rule(0.1), {}, lambda p, g, s, tmp, t: O.sgd(p, g, None, tmp, 0.1, 0.0, False)),
    Case(
        "sgd_momentum",
        sgd_rule(0.1, momentum=0.9),
        {"velocity": 0.0},
        lambda p, g, s, tmp, t: O.sgd(p, g, s["velocity"], tmp, 0.1, 0.9, False),
    ),
    Case(
        "sgd_nesterov",
        sgd_rule(0.1, momentum=0.9, nesterov=True),
        {"velocity": 0.0},
        lambda p, g, s, tmp, t: O.sgd(p, g, s["velocity"], tmp, 0.1, 0.9, True),
    ),
    Case(
        "rmsprop_plain",
        rmsprop_rule(0.01, rho=0.8, momentum=0.0, epsilon=1e-3, centered=False),
        {"avg_sq": 0.0},
        lambda p, g, s, tmp, t: O.rmsprop(p, g, s["avg_sq"], None, None, tmp, 0.01, 0.8, 0.0, 1e-3),
    ),
    Case(
        "rmsprop_momentum",
        rmsprop_rule(0.01, rho=0.8, momentum=0.6, epsilon=1e-3, centered=False),
        {"avg_sq": 0.0, "momentum": 0.0},
        lambda p, g, s, tmp, t: O.rmsprop(p, g, s["avg_sq"], s["momentum"], None, tmp, 0.01, 0.8, 0.6, 1e-3),
    ),
    Case(
        "rmsprop_centered",
        rmsprop_rule(0.01, rho=0.8, momentum=0.0, epsilon=1e-3, centered=True),
        {"avg_sq": 0.0, "avg_grad": 0.0},
        lambda p, g, s, tmp, t: O.rmsprop(p, g, s["avg_sq"], None, s["avg_grad"], tmp, 0.01, 0.8, 0.0, 1e-3),
    ),
    Case(
        "rmsprop_centered_momentum",
        rmsprop_rule(0.01, rho=0.8, momentum=0.6, epsilon=1e-3, centered=True),
        {"avg_sq": 0.0, "momentum": 0.0, "avg_grad": 0.0},
        lambda p, g, s, tmp, t: O.rmsprop(p, g, s["avg_sq"], s["momentum"], s["avg_grad"], tmp, 0.01, 0.8, 0.6, 1e-3),
    ),
    Case(
        "adagrad",
        adagrad_rule(0.05, epsilon=1e-3),
        {"accumulator": 0.1},  # Keras's initial_accumulator_value
        lambda p, g, s, tmp, t: O.adagrad(p, g, s["accumulator"], tmp, 0.05, 1e-3),
    ),
    Case(
        "adadelta",
        adadelta_rule(0.5, rho=0.9, epsilon=1e-2),
        {"accumulated_grad": 0.0, "accumulated_delta": 0.0},
        lambda p, g, s, tmp, t: O.adadelta(p, g, s["accumulated_grad"], s["accumulated_delta"], tmp, 0.5, 0.9, 1e-2),
    ),
    Case(
        "adam",
        adam_rule(0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-2),
        {"m": 0.0, "v": 0.0},
        lambda p, g, s, tmp, t: O.adam(p, g, s["m"], s["v"], tmp, 0.01, 0.8, 0.95, 1e-2, t),
    ),
    Case(
        "adamax",
        adamax_rule(0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-2),
        {"m": 0.0, "u": 0.0},
        lambda p, g, s, tmp, t: O.adamax(p, g, s["m"], s["u"], tmp, 0.02, 0.8, 0.95, 1e-2, t),
    ),
    Case(
        "lion",
        lion_rule(0.05, beta_1=0.7, beta_2=0.8),
        {"m": 0.0},
        lambda p, g, s, tmp, t: O.lion(p, g, s["m"], tmp, 0.05, 0.7, 0.8),
    ),
]
IDS = [c.name for c in CASES]


def run_op(case, dtype):
    """Three steps of the op on fresh buffers; yields (step, p, state arrays, g) after each."""
    p = np.array(P0, dtype=dtype)
    state = {k: np.full(len(P0), v, dtype=dtype) for k, v in case.init.items()}
    tmp = np.empty_like(p)
    for t, g_list in enumerate(GRADS, start=1):
        g = np.array(g_list, dtype=dtype)
        tmp.fill(np.nan)  # scratch: its old contents must never leak into the result
        assert case.call(p, g, state, tmp, t) is None
        yield t, p, state, g


# --- golden steps (float64) -----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_three_golden_steps_float64(case):
    expected = scalar_trajectory(case.rule, P0, GRADS, case.init)
    for t, p, state, _ in run_op(case, np.float64):
        exp_p, exp_state = expected[t - 1]
        np.testing.assert_allclose(p, exp_p, rtol=RTOL64, atol=ATOL64, err_msg=f"{case.name}: params after step {t}")
        for k, arr in state.items():
            np.testing.assert_allclose(
                arr, exp_state[k], rtol=RTOL64, atol=ATOL64, err_msg=f"{case.name}: state {k!r} after step {t}"
            )


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_steps_actually_move_the_parameters(case):
    """Guards the golden test against a degenerate setting where nothing changes."""
    expected = scalar_trajectory(case.rule, P0, GRADS, case.init)
    for t in range(3):
        previous = P0 if t == 0 else expected[t - 1][0]
        moved = [abs(a - b) for a, b in zip(expected[t][0], previous, strict=True)]
        assert sum(m > 1e-4 for m in moved) >= 3, f"{case.name}: step {t + 1} barely moves"


# --- dtype and in-place behaviour -----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_float32_stays_float32(case):
    expected = scalar_trajectory(case.rule, P0, GRADS, case.init)
    for t, p, state, g in run_op(case, np.float32):
        assert p.dtype == np.float32
        assert g.dtype == np.float32
        assert all(a.dtype == np.float32 for a in state.values())
        exp_p, exp_state = expected[t - 1]
        np.testing.assert_allclose(p, exp_p, rtol=RTOL32, atol=ATOL32, err_msg=f"{case.name} float32, step {t}")
        for k, arr in state.items():
            np.testing.assert_allclose(arr, exp_state[k], rtol=RTOL32, atol=ATOL32, err_msg=f"{case.name} {k!r}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_updates_in_place_through_views_and_leave_gradient_alone(case, dtype):
    """Layers hold views into one flat buffer: the op must write through `p` (and the state) in place."""
    n = len(P0)
    flat = np.zeros(n + 3, dtype=dtype)  # parameters live in a slice of a bigger buffer
    flat[1 : n + 1] = P0
    p = flat[1 : n + 1]
    state_flat = {k: np.full(n + 2, -7.0, dtype=dtype) for k in case.init}
    state = {k: buf[1 : n + 1] for k, buf in state_flat.items()}
    for k, v in case.init.items():
        state[k][...] = v
    ids = {k: id(v) for k, v in state.items()}
    p_id = id(p)
    tmp = np.empty(n, dtype=dtype)
    expected = scalar_trajectory(case.rule, P0, GRADS, case.init)
    for t, g_list in enumerate(GRADS, start=1):
        g = np.array(g_list, dtype=dtype)
        g_before = g.copy()
        assert case.call(p, g, state, tmp, t) is None
        np.testing.assert_array_equal(g, g_before, err_msg=f"{case.name} modified the gradient")
        assert id(p) == p_id and {k: id(v) for k, v in state.items()} == ids
    rtol, atol = (RTOL64, ATOL64) if dtype == np.float64 else (RTOL32, ATOL32)
    np.testing.assert_allclose(flat[1 : n + 1], expected[-1][0], rtol=rtol, atol=atol)
    assert flat[0] == 0 and np.all(flat[n + 1 :] == 0), "wrote outside the parameter view"
    for k, buf in state_flat.items():
        np.testing.assert_allclose(buf[1 : n + 1], expected[-1][1][k], rtol=rtol, atol=atol)
        assert buf[0] == -7.0 and buf[-1] == -7.0, f"wrote outside the {k!r} view"
    assert flat.dtype == dtype and all(b.dtype == dtype for b in state_flat.values())


def test_plain_sgd_needs_no_state_and_ignores_nesterov():
    p = np.array(P0)
    tmp = np.empty_like(p)
    O.sgd(p, np.array(GRADS[0]), None, tmp, 0.1, 0.0, True)
    np.testing.assert_allclose(p, [x - 0.1 * g for x, g in zip(P0, GRADS[0], strict=True)], rtol=RTOL64)


def test_adam_bias_correction_uses_the_step_number():
    """Same state, different `step`: the bias correction must change the update (t=1 vs t=3)."""
    out = []
    for step in (1, 3):
        p = np.array(P0)
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        O.adam(p, np.array(GRADS[0]), m, v, np.empty_like(p), 0.01, 0.8, 0.95, 1e-2, step)
        out.append(p)
        rule = adam_rule(0.01, 0.8, 0.95, 1e-2)
        exp = [rule(x, g, {"m": 0.0, "v": 0.0}, step) for x, g in zip(P0, GRADS[0], strict=True)]
        np.testing.assert_allclose(p, exp, rtol=RTOL64, atol=ATOL64)
    assert not np.allclose(out[0], out[1])


# --- weight decay ---------------------------------------------------------------------------------

WD_LRS = [0.1, 0.05, 0.2]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weight_decay_three_golden_steps(dtype):
    wd = 0.04
    p = np.array(P0, dtype=dtype)
    view = p[:]
    expected = list(P0)
    for lr in WD_LRS:
        assert O.weight_decay(view, lr, wd) is None
        expected = [x - x * wd * lr for x in expected]  # Keras: variable -= variable * wd * lr
        assert p.dtype == dtype
        rtol, atol = (RTOL64, ATOL64) if dtype == np.float64 else (RTOL32, ATOL32)
        np.testing.assert_allclose(p, expected, rtol=rtol, atol=atol)
    assert expected[0] == pytest.approx(0.5 * (1 - 0.004) * (1 - 0.002) * (1 - 0.008), rel=1e-14)


# --- clipping -------------------------------------------------------------------------------------

CLIP_GRADS = [
    [0.1, -0.4, 1.5, 0.0, -2.0],
    [-0.3, 0.2, 0.5, 0.8, -1.0],
    [3.0, -4.0, 0.0, 0.25, -0.5],
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_clip_by_value_three_gradients(dtype):
    c = 0.45
    for g_list in CLIP_GRADS:
        g = np.array(g_list, dtype=dtype)
        g_id = id(g)
        assert O.clip_by_value(g, c) is None
        assert id(g) == g_id and g.dtype == dtype
        expected = [min(max(x, -c), c) for x in g_list]
        np.testing.assert_allclose(g, expected, rtol=1e-7 if dtype == np.float32 else 0, atol=0)
    g = np.array([0.44, -0.44, 0.0])
    O.clip_by_value(g, c)
    np.testing.assert_array_equal(g, [0.44, -0.44, 0.0])  # values inside the range are untouched


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("g_list", "clipnorm"),
    [
        (CLIP_GRADS[0], 1.0),  # norm 2.5573... -> scaled down
        (CLIP_GRADS[1], 2.0),  # norm 1.3784... -> untouched
        (CLIP_GRADS[2], 2.5),  # norm 5.0312... -> scaled down
        ([3.0, 4.0], 5.0),  # norm exactly at the limit -> untouched
        ([0.0, 0.0, 0.0], 1.0),  # zero gradient stays zero (no 0/0)
    ],
)
def test_clip_by_global_norm(g_list, clipnorm, dtype):
    norm = math.sqrt(math.fsum(x * x for x in g_list))
    scale = 1.0 if norm <= clipnorm else clipnorm / norm
    expected = [x * scale for x in g_list]
    g = np.array(g_list, dtype=dtype)
    base = np.concatenate([[9.0], g, [9.0]]).astype(dtype)
    view = base[1:-1]
    assert O.clip_by_global_norm(view, clipnorm) is None
    assert view.dtype == dtype and base[0] == 9.0 and base[-1] == 9.0
    rtol, atol = (RTOL64, ATOL64) if dtype == np.float64 else (RTOL32, ATOL32)
    np.testing.assert_allclose(view, expected, rtol=rtol, atol=atol)
    assert math.sqrt(math.fsum(float(x) ** 2 for x in view)) <= clipnorm * (1 + rtol)
    assert np.all(np.isfinite(view))


def test_clip_by_global_norm_is_global_not_per_element():
    """Each entry is below the limit; only the whole vector's norm (2.0) exceeds it."""
    g = np.array([1.0, 1.0, 1.0, 1.0])
    O.clip_by_global_norm(g, 1.0)
    np.testing.assert_allclose(g, [0.5, 0.5, 0.5, 0.5], rtol=RTOL64)


def test_clip_by_global_norm_three_steps_golden():
    clipnorm = 1.5
    for g_list in CLIP_GRADS:
        g = np.array(g_list)
        O.clip_by_global_norm(g, clipnorm)
        norm = math.sqrt(sum(x * x for x in g_list))
        expected = [x * min(1.0, clipnorm / norm) for x in g_list]
        np.testing.assert_allclose(g, expected, rtol=RTOL64, atol=ATOL64)


def test_global_norm_clip_survives_float32_overflow_of_the_sum_of_squares():
    from nnxp.ops.optim import clip_by_global_norm_ref

    g = np.array([3e19, 4e19], dtype=np.float32)
    clip_by_global_norm_ref(g, 1.0)
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 1031])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_numba_adam_is_bit_identical_to_the_reference(monkeypatch, dtype, size):
    pytest.importorskip("numba")
    from nnxp.ops import optim as O

    monkeypatch.setattr(O, "NUMBA_MIN_SIZE", 0)  # take the compiled path at every size
    r = np.random.default_rng(size)
    p = r.normal(size=size).astype(dtype)
    p[: min(size, 3)] = [0.0, -0.0, 1e-30][: min(size, 3)]
    fast = [p.copy(), np.zeros(size, dtype), np.zeros(size, dtype)]
    ref = [p.copy(), np.zeros(size, dtype), np.zeros(size, dtype)]
    for step in range(1, 6):
        g = r.normal(size=size).astype(dtype)
        if size > 3 and step == 5:
            g[:3] = [np.inf, -np.inf, np.nan]
        assert O._fusable(fast[0], g, fast[1], fast[2])
        O.adam(fast[0], g, fast[1], fast[2], np.empty(size, dtype), 1e-2, 0.9, 0.999, 1e-7, step)
        O.adam_ref(ref[0], g, ref[1], ref[2], np.empty(size, dtype), 1e-2, 0.9, 0.999, 1e-7, step)
        for a, b in zip(fast, ref):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == dtype
    assert O._numba_adam() is not None  # the compiled loop really ran


# --- the CPU fast path: every optimizer's compiled loop, bit for bit against its reference ---------------------
# Each case: (public op, reference, number of state buffers, hyper-parameters after the state and tmp; a callable
# takes the step number). The states start as the optimizers start them (zeros; Adagrad's accumulator at 0.1).

CPU_CASES = {
    "sgd": (O.sgd, O.sgd_ref, [None], (0.05, 0.0, False)),
    "sgd_momentum": (O.sgd, O.sgd_ref, [0.0], (0.05, 0.8, False)),
    "sgd_nesterov": (O.sgd, O.sgd_ref, [0.0], (0.05, 0.8, True)),
    "rmsprop": (O.rmsprop, O.rmsprop_ref, [0.0, None, None], (0.01, 0.85, 0.0, 1e-7)),
    "rmsprop_momentum_centered": (O.rmsprop, O.rmsprop_ref, [0.0, 0.0, 0.0], (0.01, 0.85, 0.7, 1e-7)),
    "rmsprop_centered": (O.rmsprop, O.rmsprop_ref, [0.0, None, 0.0], (0.01, 0.85, 0.0, 1e-3)),
    "adagrad": (O.adagrad, O.adagrad_ref, [0.1], (0.05, 1e-7)),
    "adadelta": (O.adadelta, O.adadelta_ref, [0.0, 0.0], (1.0, 0.9, 1e-6)),
    "adam": (O.adam, O.adam_ref, [0.0, 0.0], lambda t: (1e-2, 0.9, 0.999, 1e-7, t)),
    "adam_lr0": (O.adam, O.adam_ref, [0.0, 0.0], lambda t: (0.0, 0.9, 0.999, 1e-7, t)),
    "adamax": (O.adamax, O.adamax_ref, [0.0, 0.0], lambda t: (1e-2, 0.9, 0.999, 1e-7, t)),
    "lion": (O.lion, O.lion_ref, [0.0], (1e-3, 0.9, 0.99)),
    "lion_lr0": (O.lion, O.lion_ref, [0.0], (0.0, 0.9, 0.99)),
}


def _run_cpu_case(case, dtype, size):
    op, ref, init, hyper = CPU_CASES[case]
    r = np.random.default_rng(size)
    p0 = r.normal(size=size).astype(dtype)
    p0[: min(size, 3)] = [0.0, -0.0, 1e-30][: min(size, 3)]
    bufs = {}
    for name, fn in (("fast", op), ("ref", ref)):
        state = [None if v is None else np.full(size, v, dtype) for v in init]
        bufs[name] = (p0.copy(), state, fn)
    for step in range(1, 6):
        g = r.normal(size=size).astype(dtype)
        if size > 3 and step == 5:
            g[:3] = [np.inf, -np.inf, np.nan]
        h = hyper(step) if callable(hyper) else hyper
        for p, state, fn in bufs.values():
            tmp = np.full(size, np.nan, dtype)  # reading the scratch before writing it would show
            fn(p, g, *state, tmp, *h)
        (pf, sf, _), (pr, sr, _) = bufs["fast"], bufs["ref"]
        np.testing.assert_array_equal(pf, pr)
        for a, b in zip(sf, sr):
            if a is not None:
                np.testing.assert_array_equal(a, b)
                assert a.dtype == dtype
        assert pf.dtype == dtype


@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 1031])
@pytest.mark.parametrize("case", sorted(CPU_CASES))
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
def test_every_compiled_optimizer_loop_is_bit_identical_to_its_reference(monkeypatch, case, dtype, size, threaded):
    pytest.importorskip("numba")
    from nnxp.ops import _cpu

    monkeypatch.setattr(O, "NUMBA_MIN_SIZE", 0)  # take the compiled path at every size
    monkeypatch.setattr(_cpu, "_enabled", True)
    if threaded:  # blocks of 100: several per thread, and a short last one
        monkeypatch.setattr(_cpu, "_threads", 2)  # as on a machine with two BLAS threads
        monkeypatch.setattr(O, "PARALLEL_MIN_SIZE", 0)
        monkeypatch.setattr(O, "PARALLEL_CHUNK", 100)
    ran = []
    real = _cpu.call
    monkeypatch.setattr(_cpu, "call", lambda n, *a, **k: (ran.append((n, k.get("parallel"))), real(n, *a, **k))[1])
    _run_cpu_case(case, dtype, size)
    name = CPU_CASES[case][1].__name__.removesuffix("_ref")
    assert ran == [(name, threaded)] * 5  # the compiled loop ran each step
    assert _cpu._compiled.get(name + ("/parallel" if threaded else "")) is not None


@pytest.mark.parametrize("case", sorted(CPU_CASES))
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")  # step 5: inf, nan
def test_without_numba_the_reference_runs(monkeypatch, case):
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", False)  # as where Numba is not installed
    monkeypatch.setattr(O, "NUMBA_MIN_SIZE", 0)
    _run_cpu_case(case, np.float64, 7)
