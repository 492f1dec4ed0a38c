"""The Optimizer classes: golden steps through ``apply``, schedules, clipping, weight decay, lookup, validation,
config and state round trips.

Expectations come from a scalar reference written here, element by element in plain Python floats, from the
Keras rules: the learning rate is the schedule at ``iterations`` (0 for the first step), gradients are clipped
(by value, then by global norm) before the decoupled weight decay ``p -= p * wd * lr``, which comes before the
update itself.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
from conftest import tol

import nnxp
from nnxp import NnxpError, optimizers
from nnxp.optimizers import SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, Optimizer, RMSprop
from nnxp.schedules import CosineDecay, ExponentialDecay, LearningRateSchedule, StepDecay

P0 = [0.5, -1.25, 2.0, 0.0, -0.3]
GRADS = [
    [0.1, -0.4, 1.5, 0.0, -2.0],
    [-0.3, 0.2, 0.5, 0.8, -1.0],
    [0.25, 0.05, -1.2, 0.6, 0.0],
]
RTOL, ATOL = 1e-12, 1e-14


# --- scalar reference -----------------------------------------------------------------------------


def _sgd(h):
    momentum, nesterov = h.get("momentum", 0.0), h.get("nesterov", False)

    def rule(p, g, s, t, lr):
        if not momentum:
            return p - lr * g
        s["velocity"] = momentum * s["velocity"] - lr * g
        return p + momentum * s["velocity"] - lr * g if nesterov else p + s["velocity"]

    return rule, ({"velocity": 0.0} if momentum else {})


def _rmsprop(h):
    rho, momentum, eps = h.get("rho", 0.9), h.get("momentum", 0.0), h.get("epsilon", 1e-7)
    centered = h.get("centered", False)

    def rule(p, g, s, t, lr):
        s["avg_sq"] = rho * s["avg_sq"] + (1 - rho) * g * g
        if centered:
            s["avg_grad"] = rho * s["avg_grad"] + (1 - rho) * g
            inc = lr * g / math.sqrt(s["avg_sq"] - s["avg_grad"] ** 2 + eps)
        else:
            inc = lr * g / math.sqrt(s["avg_sq"] + eps)
        if momentum:
            s["momentum"] = momentum * s["momentum"] + inc
            return p - s["momentum"]
        return p - inc

    init = {"avg_sq": 0.0}
    if momentum:
        init["momentum"] = 0.0
    if centered:
        init["avg_grad"] = 0.0
    return rule, init


def _adagrad(h):
    eps = h.get("epsilon", 1e-7)

    def rule(p, g, s, t, lr):
        s["accumulator"] += g * g
        return p - lr * g / math.sqrt(s["accumulator"] + eps)

    return rule, {"accumulator": h.get("initial_accumulator_value", 0.1)}


def _adadelta(h):
    rho, eps = h.get("rho", 0.95), h.get("epsilon", 1e-7)

    def rule(p, g, s, t, lr):
        s["accumulated_grad"] = rho * s["accumulated_grad"] + (1 - rho) * g * g
        delta = -math.sqrt(s["accumulated_delta"] + eps) / math.sqrt(s["accumulated_grad"] + eps) * g
        s["accumulated_delta"] = rho * s["accumulated_delta"] + (1 - rho) * delta * delta
        return p + lr * delta

    return rule, {"accumulated_grad": 0.0, "accumulated_delta": 0.0}


def _adam(h):
    b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)

    def rule(p, g, s, t, lr):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        return p - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * s["m"] / (math.sqrt(s["v"]) + eps)

    return rule, {"m": 0.0, "v": 0.0}


def _adamax(h):
    b1, b2, eps = h.get("beta_1", 0.9), h.get("beta_2", 0.999), h.get("epsilon", 1e-7)

    def rule(p, g, s, t, lr):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["u"] = max(b2 * s["u"], abs(g))
        return p - lr / (1 - b1**t) * s["m"] / (s["u"] + eps)

    return rule, {"m": 0.0, "u": 0.0}


def _lion(h):
    b1, b2 = h.get("beta_1", 0.9), h.get("beta_2", 0.99)

    def rule(p, g, s, t, lr):  # Keras's Lion, as written there
        c = b1 * s["m"] + (1 - b1) * g
        s["m"] = b2 * s["m"] + (1 - b2) * g
        return p - lr * ((c > 0) - (c < 0))

    return rule, {"m": 0.0}


RULES = {
    "sgd": _sgd,
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adadelta": _adadelta,
    "adam": _adam,
    "adamax": _adamax,
    "adamw": _adam,
    "lion": _lion,
}
DEFAULT_LR = {"sgd": 0.01}


def reference(kind, h, p0=P0, grads=GRADS, segments=None):
    """[(params, {slot: values})] after each step of optimizer `kind` with keyword arguments `h`; `segments`:
    the (start, stop) of each weight in the flat buffer, as a model tells its optimizer."""
    rule, init = RULES[kind](h)
    lr0 = h.get("learning_rate", DEFAULT_LR.get(kind, 0.001))
    wd = h.get("weight_decay", 0.004 if kind == "adamw" else None)
    p = list(p0)
    states = [dict(init) for _ in p]
    out = []
    for it, g in enumerate(grads):
        lr = lr0(it) if callable(lr0) else lr0  # schedule evaluated at the iteration count before the step
        g = list(g)
        if h.get("clipvalue") is not None:
            c = h["clipvalue"]
            g = [min(max(x, -c), c) for x in g]
        if h.get("clipnorm") is not None:  # each weight (segment) by its own norm; no segments: one weight
            clipped = []
            for a, b in segments or [(0, len(g))]:
                norm = math.sqrt(math.fsum(x * x for x in g[a:b]))
                clipped += [x * h["clipnorm"] / norm for x in g[a:b]] if norm > h["clipnorm"] else g[a:b]
            g = clipped
        if h.get("global_clipnorm") is not None:
            norm = math.sqrt(math.fsum(x * x for x in g))
            if norm > h["global_clipnorm"]:
                g = [x * h["global_clipnorm"] / norm for x in g]
        if wd:
            p = [x - x * wd * lr for x in p]
        p = [rule(p[i], g[i], states[i], it + 1, lr) for i in range(len(p))]
        out.append((list(p), {k: [s[k] for s in states] for k in init}))
    return out


def run(opt, grads=GRADS, dtype=np.float64, p0=P0):
    """Apply `opt` for each gradient; yields (params, optimizer) after each step."""
    p = np.array(p0, dtype=dtype)
    for g in grads:
        opt.apply(p, np.array(g, dtype=dtype))
        yield p, opt


def check_against_reference(opt, kind, h, grads=GRADS, rtol=RTOL, atol=ATOL, segments=None):
    if segments is not None:
        opt.set_segments(segments)
    expected = reference(kind, h, grads=grads, segments=segments)
    for t, (p, o) in enumerate(run(opt, grads)):
        exp_p, exp_state = expected[t]
        np.testing.assert_allclose(p, exp_p, rtol=rtol, atol=atol, err_msg=f"{kind} {h}: params after step {t + 1}")
        state = o.get_state()
        assert set(state) == set(exp_state)
        for k, v in state.items():
            np.testing.assert_allclose(v, exp_state[k], rtol=rtol, atol=atol, err_msg=f"{kind}: {k} step {t + 1}")
        assert o.iterations == t + 1


GOLDEN = [
    ("sgd", SGD, dict(learning_rate=0.1)),
    ("sgd", SGD, dict(learning_rate=0.1, momentum=0.9)),
    ("sgd", SGD, dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.8, epsilon=1e-3)),
    ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.8, momentum=0.6, epsilon=1e-3)),
    ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.8, epsilon=1e-3, centered=True)),
    ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.8, momentum=0.6, epsilon=1e-3, centered=True)),
    ("adagrad", Adagrad, dict(learning_rate=0.05, initial_accumulator_value=0.2, epsilon=1e-3)),
    ("adadelta", Adadelta, dict(learning_rate=0.5, rho=0.9, epsilon=1e-2)),
    ("adam", Adam, dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-2)),
    ("adamax", Adamax, dict(learning_rate=0.02, beta_1=0.8, beta_2=0.95, epsilon=1e-2)),
    ("adamw", AdamW, dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-2, weight_decay=0.1)),
    ("lion", Lion, dict(learning_rate=0.05, beta_1=0.5, beta_2=0.8)),
    ("lion", Lion, dict(learning_rate=0.05, weight_decay=0.2, clipvalue=0.5)),
    # Keras defaults
    ("sgd", SGD, {}),
    ("rmsprop", RMSprop, {}),
    ("adagrad", Adagrad, {}),
    ("adadelta", Adadelta, {}),
    ("adam", Adam, {}),
    ("adamax", Adamax, {}),
    ("adamw", AdamW, {}),
    ("lion", Lion, {}),
]


def _id(case):
    kind, _, h = case
    return kind + "".join(f"-{k}={v}" for k, v in h.items()) if h else kind + "-defaults"


@pytest.mark.parametrize("case", GOLDEN, ids=[_id(c) for c in GOLDEN])
def test_apply_three_golden_steps(case):
    kind, cls, h = case
    check_against_reference(cls(**h), kind, h)


@pytest.mark.parametrize("case", GOLDEN, ids=[_id(c) for c in GOLDEN])
def test_apply_keeps_float32(case):
    kind, cls, h = case
    expected = reference(kind, h)
    opt = cls(**h)
    for t, (p, o) in enumerate(run(opt, dtype=np.float32)):
        assert p.dtype == np.float32
        assert all(v.dtype == np.float32 for v in o.state.values())
        np.testing.assert_allclose(p, expected[t][0], rtol=2e-5, atol=1e-6)


def test_apply_updates_the_caller_buffer_in_place():
    flat = np.zeros(7)
    flat[1:6] = P0
    p = flat[1:6]  # layers hold views into the model's flat buffer
    opt = Adam(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-2)
    for g in GRADS:
        opt.apply(p, np.array(g))
    exp = reference("adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-2))[-1][0]
    np.testing.assert_allclose(flat[1:6], exp, rtol=RTOL, atol=ATOL)
    assert flat[0] == 0 and flat[6] == 0


def test_keras_default_hyper_parameters():
    assert SGD().learning_rate == 0.01 and SGD().momentum == 0.0 and SGD().nesterov is False
    r = RMSprop()
    assert (r.learning_rate, r.rho, r.momentum, r.epsilon, r.centered) == (0.001, 0.9, 0.0, 1e-7, False)
    a = Adagrad()
    assert (a.learning_rate, a.initial_accumulator_value, a.epsilon) == (0.001, 0.1, 1e-7)
    d = Adadelta()
    assert (d.learning_rate, d.rho, d.epsilon) == (0.001, 0.95, 1e-7)
    for cls in (Adam, Adamax, AdamW):
        o = cls()
        assert (o.learning_rate, o.beta_1, o.beta_2, o.epsilon) == (0.001, 0.9, 0.999, 1e-7)
    assert Adam().weight_decay is None


# --- learning-rate schedules ----------------------------------------------------------------------


def test_schedule_is_evaluated_per_iteration_sgd():
    sched = StepDecay(0.1, step_size=1, gamma=0.5)  # 0.1, 0.05, 0.025
    opt = SGD(learning_rate=sched)
    p = np.array(P0)
    expected = list(P0)
    for it, (g, lr) in enumerate(zip(GRADS, [0.1, 0.05, 0.025], strict=True)):
        assert opt.current_learning_rate() == pytest.approx(lr, rel=1e-15)
        opt.apply(p, np.array(g))
        expected = [x - lr * gi for x, gi in zip(expected, g, strict=True)]
        np.testing.assert_allclose(p, expected, rtol=RTOL, atol=ATOL)
        assert opt.iterations == it + 1


class Recording(LearningRateSchedule):
    def __init__(self):
        self.calls = []

    def __call__(self, step):
        self.calls.append(step)
        return 0.01 * (step + 1)


def test_schedule_sees_zero_based_iteration_count():
    sched = Recording()
    opt = Adam(learning_rate=sched)
    list(run(opt))
    assert sched.calls == [0, 1, 2]


@pytest.mark.parametrize(
    ("kind", "cls", "h"),
    [
        ("adam", Adam, dict(learning_rate=ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5), epsilon=1e-2)),
        ("rmsprop", RMSprop, dict(learning_rate=CosineDecay(0.01, decay_steps=4, alpha=0.2), momentum=0.5)),
        ("sgd", SGD, dict(learning_rate=StepDecay(0.1, 2, 0.3), momentum=0.9, weight_decay=0.2)),
        ("adamw", AdamW, dict(learning_rate=StepDecay(0.05, 1, 0.5))),
    ],
    ids=["adam-exponential", "rmsprop-cosine", "sgd-step-weight-decay", "adamw-step"],
)
def test_schedule_golden_steps(kind, cls, h):
    check_against_reference(cls(**h), kind, h)


# --- clipping and weight decay --------------------------------------------------------------------


def test_clipnorm_scales_the_whole_gradient():
    opt = SGD(learning_rate=0.1, clipnorm=1.0)
    p = np.array([1.0, 1.0, 1.0])
    opt.apply(p, np.array([3.0, -4.0, 0.0]))  # norm 5 -> (0.6, -0.8, 0)
    np.testing.assert_allclose(p, [1.0 - 0.06, 1.0 + 0.08, 1.0], rtol=RTOL)
    opt.apply(p, np.array([0.3, 0.4, 0.0]))  # norm 0.5 < 1 -> untouched
    np.testing.assert_allclose(p, [0.94 - 0.03, 1.08 - 0.04, 1.0], rtol=RTOL)


def test_clipnorm_clips_each_weight_by_its_own_norm():
    """Keras's clipnorm: weights (3, -4) and (0.3, 0.4) clipped to norm 1 one by one -> (0.6, -0.8), unchanged."""
    opt = SGD(learning_rate=0.1, clipnorm=1.0)
    opt.set_segments([(0, 2), (2, 4)])
    p = np.zeros(4)
    opt.apply(p, np.array([3.0, -4.0, 0.3, 0.4]))
    np.testing.assert_allclose(p, [-0.06, 0.08, -0.03, -0.04], rtol=RTOL)
    glob = SGD(learning_rate=0.1, global_clipnorm=1.0)  # the same gradient, clipped all together: norm 5.025
    glob.set_segments([(0, 2), (2, 4)])
    q = np.zeros(4)
    glob.apply(q, np.array([3.0, -4.0, 0.3, 0.4]))
    scale = 1.0 / math.sqrt(9 + 16 + 0.09 + 0.16)
    np.testing.assert_allclose(q, [-0.3 * scale, 0.4 * scale, -0.03 * scale, -0.04 * scale], rtol=RTOL)


SEGMENTS = [(0, 2), (2, 3), (3, 5)]  # three weights of P0's five entries


@pytest.mark.parametrize(("kind", "cls", "h"), [
    ("sgd", SGD, dict(learning_rate=0.1, momentum=0.5, clipnorm=0.5)),
    ("adam", Adam, dict(learning_rate=0.01, clipnorm=0.3, clipvalue=1.0, epsilon=1e-2)),
    ("sgd", SGD, dict(learning_rate=0.1, global_clipnorm=0.8)),
    ("rmsprop", RMSprop, dict(learning_rate=0.01, global_clipnorm=1.0, clipvalue=0.6, epsilon=1e-3)),
], ids=["sgd-clipnorm", "adam-clipnorm-clipvalue", "sgd-global", "rmsprop-global-clipvalue"])
def test_per_weight_and_global_clipnorm_golden_steps(kind, cls, h):
    check_against_reference(cls(**h), kind, h, segments=SEGMENTS)


def test_clipnorm_and_global_clipnorm_are_exclusive_and_validated():
    with pytest.raises(NnxpError, match="only one of `clipnorm`.*and `global_clipnorm`"):
        SGD(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(NnxpError, match=r"`global_clipnorm` must be a finite number in \(0.0, inf\)"):
        Adam(global_clipnorm=0.0)


def test_clipnorm_refuses_a_buffer_of_another_model():
    opt = SGD(clipnorm=1.0)
    opt.set_segments([(0, 3), (3, 5)])
    p = np.zeros(7)
    with pytest.raises(NnxpError, match="set up for a model of 5 parameters but is stepping 7"):
        opt.apply(p, np.ones(7))
    assert opt.iterations == 0 and not p.any()  # refused before the step was counted or taken


@pytest.mark.parametrize("make", [lambda: SGD(momentum=0.9), lambda: RMSprop(momentum=0.5, centered=True), Adagrad,
                                  Adadelta, Adam, Adamax, AdamW], ids=lambda m: getattr(m, "__name__", "custom"))
def test_each_optimizer_names_its_rule_scalars_and_state_once(make):
    """The rule (nnxp.ops.optim) declares its scalars and state by name; the optimizer holds them by those names."""
    opt = make()
    opt.iterations = 4
    scalars = opt._scalars(0.25)
    assert tuple(scalars) == opt.rule.scalars
    assert scalars["lr"] == 0.25 and scalars.get("step", 4) == 4
    assert all(scalars[k] == getattr(opt, k) for k in scalars if k not in ("lr", "step"))
    assert set(opt.slot_names()) == set(opt.rule.state)  # every slot on in these configurations
    opt.build(np.zeros(3))
    assert all(b is opt.state[k] for k, b in zip(opt.rule.state, opt._buffers(), strict=True))


@pytest.mark.parametrize("old, new", [("lr", "use learning_rate instead"), ("decay", "use a learning-rate schedule"),
                                      ("clip_norm", "use clipnorm")])
def test_removed_keras_spellings_name_the_right_one(old, new):
    with pytest.raises(TypeError, match=f"Adam no longer takes `{old}`.*{new}"):
        Adam(**{old: 0.1})
    with pytest.raises(NnxpError, match=f"`{old}`"):
        optimizers.get({"name": "sgd", old: 0.1})


def test_a_model_tells_its_optimizer_where_each_weight_lies():
    model = nnxp.Sequential([nnxp.Dense(3, input_dim=4), nnxp.Dense(2, use_bias=False)], seed=0)
    opt = SGD(clipnorm=1.0)
    model.compile(opt, "mse")
    assert opt.segments is None  # not built yet: the first fit builds the model and tells it
    model.fit(np.ones((4, 4)), np.zeros((4, 2)), verbose=0)
    assert opt.segments == ((0, 12), (12, 15), (15, 21))
    late = Adam(clipnorm=1.0)
    model.compile(late, "mse")  # compiling a built model tells the new optimizer at once
    assert late.segments == opt.segments


def test_model_clipnorm_clips_each_weight_separately():
    """One SGD step of a 1-unit linear model, checked by hand: the kernel's and the bias's gradient norms differ."""
    x = np.array([[3.0, 4.0]])
    model = nnxp.Sequential([nnxp.Dense(1, input_dim=2, kernel_initializer="zeros")], dtype="float64")
    model.compile(SGD(learning_rate=1.0, clipnorm=1.0), "mse")
    model.fit(x, np.array([[1.0]]), epochs=1, batch_size=1, verbose=0, shuffle=False)
    # mse gradient wrt output: 2 (0 - 1) = -2; kernel grad (-6, -8) has norm 10 -> (-0.6, -0.8); bias grad -2 -> -1
    kernel, bias = model.get_weights()
    np.testing.assert_allclose(kernel.ravel(), [0.6, 0.8], rtol=1e-12)
    np.testing.assert_allclose(bias, [1.0], rtol=1e-12)


def test_clipvalue_clips_each_entry():
    opt = SGD(learning_rate=0.1, clipvalue=0.5)
    p = np.zeros(4)
    opt.apply(p, np.array([2.0, -3.0, 0.25, -0.5]))
    np.testing.assert_allclose(p, [-0.05, 0.05, -0.025, 0.05], rtol=RTOL)


@pytest.mark.parametrize(
    ("kind", "cls", "h"),
    [
        ("adam", Adam, dict(learning_rate=0.01, clipnorm=1.2, epsilon=1e-2)),
        ("rmsprop", RMSprop, dict(learning_rate=0.01, clipvalue=0.7, centered=True, epsilon=1e-3)),
        ("sgd", SGD, dict(learning_rate=0.1, momentum=0.5, clipnorm=2.0, clipvalue=1.0)),
        ("sgd", SGD, dict(learning_rate=0.1, weight_decay=0.1)),
        ("adagrad", Adagrad, dict(learning_rate=0.05, weight_decay=0.05, clipnorm=1.0)),
        ("adam", Adam, dict(learning_rate=0.01, weight_decay=0.3, epsilon=1e-2)),
    ],
    ids=[
        "adam-clipnorm",
        "rmsprop-clipvalue",
        "sgd-both-clips",
        "sgd-weight-decay",
        "adagrad-wd-clipnorm",
        "adam-weight-decay",
    ],
)
def test_clipping_and_weight_decay_golden_steps(kind, cls, h):
    check_against_reference(cls(**h), kind, h)


def test_weight_decay_is_decoupled_and_applied_before_the_update():
    opt = SGD(learning_rate=0.1, weight_decay=0.5)
    p = np.array([2.0])
    opt.apply(p, np.array([1.0]))
    # p (1 - lr wd) - lr g = 2 * 0.95 - 0.1 = 1.8 ; decaying after the update would give 1.9 * 0.95 = 1.805
    assert p[0] == pytest.approx(1.8, rel=1e-14)


def test_adamw_default_weight_decay():
    assert AdamW().weight_decay == 0.004
    assert AdamW().get_config()["weight_decay"] == 0.004
    a, b = AdamW(learning_rate=0.1), Adam(learning_rate=0.1)
    pa, pb = list(run(a))[-1][0], list(run(b))[-1][0]
    assert not np.allclose(pa, pb, rtol=1e-6, atol=0)  # the decay is actually applied
    check_against_reference(AdamW(learning_rate=0.1), "adamw", dict(learning_rate=0.1, weight_decay=0.004))


def test_adamw_equals_adam_with_weight_decay_and_zero_decay_equals_adam():
    pa = [p.copy() for p, _ in run(AdamW(learning_rate=0.05, weight_decay=0.2))]
    pb = [p.copy() for p, _ in run(Adam(learning_rate=0.05, weight_decay=0.2))]
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(x, y)
    pa = [p.copy() for p, _ in run(AdamW(learning_rate=0.05, weight_decay=0.0))]
    pb = [p.copy() for p, _ in run(Adam(learning_rate=0.05))]
    for x, y in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(x, y)


# --- get ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", SGD),
        ("rmsprop", RMSprop),
        ("adagrad", Adagrad),
        ("adadelta", Adadelta),
        ("adam", Adam),
        ("adamax", Adamax),
        ("adamw", AdamW),
        ("lion", Lion),
        ("Adam", Adam),
        (" RMSprop ", RMSprop),
    ],
)
def test_get_by_name(name, cls):
    opt = optimizers.get(name)
    assert type(opt) is cls
    assert opt.get_config() == cls().get_config()


def test_get_passes_instances_through():
    opt = Adam(learning_rate=0.3)
    assert optimizers.get(opt) is opt
    assert nnxp.optimizers.get("adam").learning_rate == 0.001


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [("adma", "adam"), ("rmsporp", "rmsprop"), ("adagard", "adagrad"), ("sdg", "sgd"), ("adadelt", "adadelta")],
)
def test_get_unknown_name_suggests(typo, suggestion):
    with pytest.raises(NnxpError) as info:
        optimizers.get(typo)
    msg = str(info.value)
    assert f'Did you mean "{suggestion}"?' in msg
    assert f"optimizer={typo!r}" in msg


def test_get_unknown_name_without_close_match():
    with pytest.raises(NnxpError, match="must be one of") as info:
        optimizers.get("lbfgs-qn-xyz")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("bad", [42, None, ["adam"], 0.1])
def test_get_wrong_type(bad):
    with pytest.raises(NnxpError) as info:
        optimizers.get(bad)
    assert isinstance(info.value, TypeError)
    assert "Received: optimizer=" in str(info.value)


def test_get_config_dict_with_unknown_name():
    with pytest.raises(NnxpError, match="Did you mean"):
        optimizers.get({"name": "adamm", "learning_rate": 0.1})


# --- invalid hyper-parameters ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "argname", "shown"),
    [
        (SGD, dict(learning_rate=-0.1), "learning_rate", "-0.1"),
        (Adam, dict(learning_rate=-1e-3), "learning_rate", "-0.001"),
        (Adam, dict(learning_rate=math.nan), "learning_rate", "nan"),
        (RMSprop, dict(learning_rate=math.inf), "learning_rate", "inf"),
        (SGD, dict(learning_rate="0.1"), "learning_rate", "'0.1'"),
        (SGD, dict(learning_rate=True), "learning_rate", "True"),
        (Adam, dict(beta_1=1.0), "beta_1", "1.0"),
        (Adam, dict(beta_1=1.5), "beta_1", "1.5"),
        (Adamax, dict(beta_1=1.0), "beta_1", "1.0"),
        (AdamW, dict(beta_1=2), "beta_1", "2"),
        (Adam, dict(beta_1=-0.1), "beta_1", "-0.1"),
        (Adam, dict(beta_2=1.0), "beta_2", "1.0"),
        (Adam, dict(beta_1=math.nan), "beta_1", "nan"),
        (SGD, dict(momentum=1.5), "momentum", "1.5"),
        (SGD, dict(momentum=-0.5), "momentum", "-0.5"),
        (SGD, dict(momentum=math.nan), "momentum", "nan"),
        (RMSprop, dict(momentum=1.01), "momentum", "1.01"),
        (Adam, dict(epsilon=0), "epsilon", "0"),
        (Adam, dict(epsilon=-1e-7), "epsilon", "-1e-07"),
        (RMSprop, dict(epsilon=0.0), "epsilon", "0.0"),
        (Adagrad, dict(epsilon=0), "epsilon", "0"),
        (Adadelta, dict(epsilon=math.nan), "epsilon", "nan"),
        (RMSprop, dict(rho=1.5), "rho", "1.5"),
        (Adadelta, dict(rho=math.nan), "rho", "nan"),
        (Adagrad, dict(initial_accumulator_value=-0.1), "initial_accumulator_value", "-0.1"),
        (SGD, dict(clipnorm=0), "clipnorm", "0"),
        (SGD, dict(clipnorm=-1.0), "clipnorm", "-1.0"),
        (Adam, dict(clipvalue=0.0), "clipvalue", "0.0"),
        (Adam, dict(clipvalue=math.nan), "clipvalue", "nan"),
        (Adam, dict(weight_decay=-0.01), "weight_decay", "-0.01"),
        (AdamW, dict(weight_decay=math.nan), "weight_decay", "nan"),
    ],
)
def test_invalid_hyper_parameters(cls, kwargs, argname, shown):
    with pytest.raises(NnxpError) as info:
        cls(**kwargs)
    msg = str(info.value)
    assert f"`{argname}`" in msg
    assert f"Received: {argname}={shown}" in msg or f"{argname}={shown}" in msg.split("Received:", 1)[1]


def test_boundary_values_are_accepted():
    SGD(learning_rate=0.0, momentum=1.0)
    RMSprop(rho=0.0, momentum=0.0)
    Adam(beta_1=0.0, beta_2=0.0, epsilon=1e-30)
    Adagrad(initial_accumulator_value=0.0)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        Adam(beta1=0.9)


# --- config round trip ----------------------------------------------------------------------------

ROUND_TRIP = [
    *[(lambda cls=cls, h=h: cls(**h)) for _, cls, h in GOLDEN],
    lambda: SGD(learning_rate=StepDecay(0.1, 2, 0.3), momentum=0.9, nesterov=True, clipnorm=1.5),
    lambda: Adam(learning_rate=ExponentialDecay(0.01, 2, 0.5, staircase=True), clipvalue=0.3, weight_decay=0.01),
    lambda: RMSprop(learning_rate=CosineDecay(0.02, 5, alpha=0.1), centered=True, momentum=0.3),
    lambda: AdamW(weight_decay=0.0),
    lambda: AdamW(learning_rate=0.02, weight_decay=0.05, clipnorm=0.5),
    lambda: Adamax(learning_rate=0.002, clipnorm=2.0, clipvalue=1.0),
    lambda: SGD(learning_rate=0.1, global_clipnorm=0.7),
]
ROUND_TRIP_IDS = [repr(make())[:90] for make in ROUND_TRIP]


@pytest.mark.parametrize("make", ROUND_TRIP, ids=ROUND_TRIP_IDS)
def test_config_round_trip_gives_identical_steps(make):
    opt = make()
    config = opt.get_config()
    config = json.loads(json.dumps(config))  # what a saved model holds
    frozen = copy.deepcopy(config)
    clone = optimizers.get(config)
    assert config == frozen  # `get` does not consume the caller's dict
    assert type(clone) is type(opt)
    assert clone.get_config() == opt.get_config()
    for (pa, oa), (pb, ob) in zip(run(opt), run(clone), strict=True):
        np.testing.assert_array_equal(pa, pb)
        assert oa.get_state().keys() == ob.get_state().keys()
        for k in oa.state:
            np.testing.assert_array_equal(oa.state[k], ob.state[k])


def test_config_names_every_hyper_parameter():
    config = RMSprop(learning_rate=0.01, rho=0.8, momentum=0.6, epsilon=1e-3, centered=True, clipnorm=1.0).get_config()
    assert config == {
        "name": "rmsprop",
        "learning_rate": 0.01,
        "clipnorm": 1.0,
        "global_clipnorm": None,
        "clipvalue": None,
        "weight_decay": None,
        "rho": 0.8,
        "momentum": 0.6,
        "epsilon": 1e-3,
        "centered": True,
    }


# --- state round trip -----------------------------------------------------------------------------

MORE_GRADS = GRADS + [[-0.7, 0.9, 0.05, -0.2, 1.1], [0.4, -0.6, 0.3, 0.1, -0.9]]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make", ROUND_TRIP, ids=ROUND_TRIP_IDS)
def test_state_round_trip_mid_training_continues_bit_identically(make, dtype):
    a = make()
    p = np.array(P0, dtype=dtype)
    for g in MORE_GRADS[:2]:
        a.apply(p, np.array(g, dtype=dtype))
    saved = {k: v.copy() for k, v in a.get_state().items()}  # as io.save writes them out
    assert all(isinstance(v, np.ndarray) for v in saved.values())

    b = optimizers.get(json.loads(json.dumps(a.get_config())))
    q = p.copy()
    b.set_state(saved, q)
    b.iterations = a.iterations  # io saves the step count beside the state
    assert b.current_learning_rate() == a.current_learning_rate()
    for g in MORE_GRADS[2:]:
        a.apply(p, np.array(g, dtype=dtype))
        b.apply(q, np.array(g, dtype=dtype))
        np.testing.assert_array_equal(p, q)
        for k in a.state:
            np.testing.assert_array_equal(a.state[k], b.state[k])
            assert b.state[k].dtype == dtype


def test_state_slots_and_lazy_allocation():
    expected = {
        "sgd": [],
        "sgd-momentum": ["velocity"],
        "rmsprop": ["avg_sq"],
        "rmsprop-all": ["avg_grad", "avg_sq", "momentum"],
        "adagrad": ["accumulator"],
        "adadelta": ["accumulated_delta", "accumulated_grad"],
        "adam": ["m", "v"],
        "adamax": ["m", "u"],
        "adamw": ["m", "v"],
        "lion": ["m"],
    }
    made = {
        "sgd": SGD(),
        "sgd-momentum": SGD(momentum=0.5),
        "rmsprop": RMSprop(),
        "rmsprop-all": RMSprop(momentum=0.5, centered=True),
        "adagrad": Adagrad(),
        "adadelta": Adadelta(),
        "adam": Adam(),
        "adamax": Adamax(),
        "adamw": AdamW(),
        "lion": Lion(),
    }
    for key, opt in made.items():
        assert opt.get_state() == {}  # nothing before the first step
        opt.apply(np.zeros(3), np.ones(3))
        assert sorted(opt.get_state()) == expected[key], key


def test_set_state_rejects_wrong_slots_and_shapes():
    opt = Adam()
    p = np.zeros(4)
    with pytest.raises(NnxpError, match="must hold"):
        opt.set_state({"m": np.zeros(4)}, p)
    with pytest.raises(NnxpError, match="must hold"):
        opt.set_state({"m": np.zeros(4), "v": np.zeros(4), "u": np.zeros(4)}, p)
    with pytest.raises(NnxpError, match="`v` must have shape"):
        opt.set_state({"m": np.zeros(4), "v": np.zeros(5)}, p)


def test_set_state_then_training_uses_restored_values():
    """The restored state is really used (not silently re-zeroed by a rebuild on the first apply)."""
    opt = SGD(learning_rate=0.1, momentum=0.5)
    p = np.zeros(2)
    opt.set_state({"velocity": np.array([1.0, -2.0])}, p)
    opt.apply(p, np.array([0.0, 0.0]))
    np.testing.assert_allclose(p, [0.5, -1.0], rtol=RTOL)  # v = 0.5 v - 0 ; p += v


def test_get_state_is_a_snapshot():
    opt = Adam(learning_rate=0.01)
    p = np.array(P0)
    opt.apply(p, np.array(GRADS[0]))
    snapshot = opt.get_state()
    frozen = {k: v.copy() for k, v in snapshot.items()}
    opt.apply(p, np.array(GRADS[1]))
    for k in frozen:
        np.testing.assert_array_equal(snapshot[k], frozen[k])


def test_base_optimizer_is_abstract():
    opt = Optimizer(learning_rate=0.1)
    with pytest.raises(NotImplementedError):
        opt.apply(np.zeros(2), np.zeros(2))
    assert opt.iterations == 0


# --- the CUDA-graph split: host scalars + a captured device half, run on the CPU emulator of CUDA ----------

def _segmented(opt):
    opt.set_segments([(0, 7), (7, 8), (8, 50)])  # three weights of the 50 parameters below
    return opt


GRAPH_CASES = [
    ("sgd", lambda: SGD(0.05)),
    ("sgd-nesterov-decay", lambda: SGD(ExponentialDecay(0.05, 1, 0.5), momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("rmsprop-centered-momentum", lambda: RMSprop(0.01, momentum=0.5, centered=True, clipnorm=0.5)),
    ("adagrad", lambda: Adagrad(0.1, clipvalue=0.3)),
    ("adadelta", lambda: Adadelta(1.0)),
    ("adam-cosine", lambda: Adam(CosineDecay(0.01, 4), clipnorm=1.0)),
    ("sgd-clipnorm-per-weight", lambda: _segmented(SGD(0.05, momentum=0.5, clipnorm=0.4))),
    ("adam-global-clipnorm", lambda: _segmented(Adam(0.01, global_clipnorm=0.5))),
    ("adamax", lambda: Adamax(0.02)),
    ("adamw", lambda: AdamW(0.01)),
    ("lion-decay-wd", lambda: Lion(ExponentialDecay(0.01, 1, 0.5), weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [m for _, m in GRAPH_CASES], ids=[n for n, _ in GRAPH_CASES])
def test_graph_split_steps_equal_apply(fake_cupy, make, dtype):
    """graph_scalars (host, every step) + graph_apply (device, reading them) == apply, step for step.

    The device half runs with by-value scalars that are wrong on purpose (a stale learning rate from the
    capture), so only the hp buffer can make it right; the kernels run on the emulator via the stand-in CuPy.
    """
    rng = np.random.default_rng(4)
    p0 = rng.normal(size=50).astype(dtype)
    grads = [rng.normal(size=50).astype(dtype) for _ in range(4)]
    eager, split = make(), make()
    p_eager, p_split = p0.copy(), fake_cupy.asarray(p0)
    eager.apply(p_eager, grads[0].copy())
    split.apply(p_split, fake_cupy.asarray(grads[0]))  # the warm-up step builds the state
    for g in grads[1:]:
        eager.apply(p_eager, g.copy())
        host = split.graph_scalars(p_split)
        assert host.dtype == dtype and host.ndim == 1
        hp = fake_cupy.asarray(np.concatenate([host, np.full(8 - host.size, np.nan, dtype)]))
        split.graph_apply(p_split, fake_cupy.asarray(g), hp)
        assert split.iterations == eager.iterations
        np.testing.assert_allclose(np.asarray(p_split), p_eager, **tol(dtype))
        for k, v in eager.state.items():
            np.testing.assert_allclose(np.asarray(split.state[k]), v, **tol(dtype), err_msg=k)


@pytest.mark.parametrize("make", [m for _, m in GRAPH_CASES], ids=[n for n, _ in GRAPH_CASES])
def test_graph_table_is_the_next_steps_graph_scalars_without_counting_them(make):
    # a replayed epoch uploads every step's scalars at once (nnxp._graph.StepFeed): row k must be exactly what
    # graph_scalars returns k steps later (schedules, bias corrections), and the step count must not move
    p = np.zeros(50, dtype=np.float32)
    opt = make()
    opt.apply(p, np.ones(50, dtype=np.float32))
    before = opt.iterations
    table = opt.graph_table(p, 5)
    assert opt.iterations == before and table.shape[0] == 5 and table.dtype == np.float32
    for row in table:
        np.testing.assert_array_equal(opt.graph_scalars(p), row)
    assert opt.iterations == before + 5
    assert opt.graph_table(p, 0).shape[0] == 0


def test_graph_apply_refuses_buffers_its_kernel_cannot_take(fake_cupy):
    opt = Adam(0.01)
    p = fake_cupy.asarray(np.zeros(6))
    opt.apply(p, fake_cupy.asarray(np.ones(6)))
    with pytest.raises(NnxpError, match="cannot be captured"):
        opt.graph_apply(p, fake_cupy.asarray(np.ones(6)), fake_cupy.asarray(np.zeros(2)))  # hp too short


@pytest.mark.parametrize("cls", [Adam, Adamax, AdamW])
@pytest.mark.parametrize("size", [5, 70_000], ids=["reference", "one-pass"])  # 70k: Numba's loop where installed
def test_adam_family_takes_zero_steps_at_learning_rate_zero(cls, size):
    # CosineDecay ends at 0: the update must become exactly 0 (it divided by zero before), moments still move
    opt = cls(CosineDecay(0.01, 2))
    p = np.ones(size, np.float32)
    for _ in range(2):
        opt.apply(p, np.ones(size, np.float32))
    before, m_before = p.copy(), opt.state["m"].copy()
    opt.apply(p, np.full(size, 3.0, np.float32))
    assert opt.current_learning_rate() == 0.0
    np.testing.assert_array_equal(p, before)
    assert not np.array_equal(opt.state["m"], m_before)


# --- clipnorm / global_clipnorm through a model on each device ----------------------------------------------

CLIPS = [{"clipnorm": 0.05}, {"global_clipnorm": 0.05}]


def _clipped_weights(device, clip):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(96, 5))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64) + (x[:, 3] > 0.8)
    model = nnxp.Sequential([nnxp.Dense(8, "tanh", input_dim=5), nnxp.Dense(3, "softmax")], device=device, seed=1,
                            dtype="float64")
    model.compile(SGD(0.5, momentum=0.5, **clip), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model.get_weights()


def _check_clipping_matches_the_cpu(device, clip):
    got, cpu = _clipped_weights(device, clip), _clipped_weights("cpu", clip)
    for a, b in zip(got, cpu, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
    unclipped = _clipped_weights("cpu", {})
    assert any(not np.allclose(a, b) for a, b in zip(cpu, unclipped))  # the clip did bite


@pytest.mark.gpu
@pytest.mark.parametrize("clip", CLIPS, ids=["clipnorm", "global_clipnorm"])
def test_clipping_on_cuda_matches_the_cpu(clip):
    _check_clipping_matches_the_cpu("cuda", clip)


@pytest.mark.parametrize("clip", CLIPS, ids=["clipnorm", "global_clipnorm"])
def test_clipping_through_the_cuda_path_on_the_emulator(fake_cupy, clip):
    _check_clipping_matches_the_cpu("cuda", clip)


def test_per_weight_and_global_clipping_give_different_models():
    a, b = _clipped_weights("cpu", CLIPS[0]), _clipped_weights("cpu", CLIPS[1])
    assert any(not np.allclose(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("clip", CLIPS, ids=["clipnorm", "global_clipnorm"])
def test_clipping_survives_save_and_load(tmp_path, clip):
    """Both names round-trip through a model file, and the loaded optimizer knows the weights' segments."""
    model = nnxp.Sequential([nnxp.Dense(4, input_dim=3), nnxp.Dense(2)], seed=0)
    model.compile(Adam(0.01, **clip), "mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "m.nnxp")
    loaded = nnxp.load_model(tmp_path / "m.nnxp")
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.segments == model.optimizer.segments == ((0, 12), (12, 16), (16, 24), (24, 26))


# --- Lion: worked by hand, validation, training --------------------------------------------------------------


def test_lion_two_steps_worked_by_hand():
    # step 1: c = 0.9*0 + 0.1*0.1 = 0.01 > 0, so p = 0.5 - 0.1 = 0.4; m = 0.99*0 + 0.01*0.1 = 0.001
    # step 2: c = 0.9*0.001 + 0.1*(-0.3) = -0.0291 < 0, so p = 0.4 + 0.1 = 0.5; m = 0.00099 - 0.003 = -0.00201
    # (the 0 entry: c = 0 at both steps, sign 0, p stays)
    opt, p = Lion(0.1), np.array([0.5, 1.0])
    opt.apply(p, np.array([0.1, 0.0]))
    np.testing.assert_allclose(p, [0.4, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state["m"], [0.001, 0.0], rtol=0, atol=1e-15)
    opt.apply(p, np.array([-0.3, 0.0]))
    np.testing.assert_allclose(p, [0.5, 1.0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(opt.state["m"], [-0.00201, 0.0], rtol=0, atol=1e-15)


def test_lion_moves_every_weight_by_exactly_the_learning_rate():
    rng = np.random.default_rng(3)
    p = rng.normal(size=64)
    opt = Lion(0.01)
    for _ in range(3):
        before = p.copy()
        opt.apply(p, rng.normal(size=64))
        np.testing.assert_allclose(np.abs(p - before), 0.01, rtol=1e-12)


@pytest.mark.parametrize("kwargs, message", [
    (dict(beta_1=0.0), "Received: beta_1=0.0"),
    (dict(beta_1=1.5), "Received: beta_1=1.5"),
    (dict(beta_2=-0.1), "Received: beta_2=-0.1"),
    (dict(beta_2=float("nan")), "Received: beta_2=nan"),
    (dict(epsilon=1e-7), "epsilon"),  # Lion has none: an unknown argument, named
])
def test_lion_rejects_bad_arguments(kwargs, message):
    with pytest.raises(NnxpError, match=message):
        Lion(**kwargs)


def test_lion_config_round_trips_through_get_and_a_model_file(tmp_path):
    opt = Lion(0.003, beta_1=0.8, beta_2=0.95, weight_decay=0.01)
    again = optimizers.get(json.loads(json.dumps(opt.get_config())))
    assert type(again) is Lion and again.get_config() == opt.get_config()
    model = nnxp.Sequential([nnxp.Dense(4, "relu", input_dim=3), nnxp.Dense(2)], seed=0)
    model.compile(opt, "mse")
    model.fit(np.ones((8, 3)), np.zeros((8, 2)), epochs=1, verbose=0)
    model.save(tmp_path / "m.nnxp")
    loaded = nnxp.load_model(tmp_path / "m.nnxp")
    assert loaded.optimizer.get_config() == opt.get_config()
    np.testing.assert_array_equal(loaded.optimizer.get_state()["m"], model.optimizer.get_state()["m"])


def test_lion_trains_a_classifier():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    y = (x[:, 0] + x[:, 1] * x[:, 2] - x[:, 3] > 0).astype(np.int64)
    model = nnxp.Sequential([nnxp.Dense(32, "relu", input_dim=8), nnxp.Dense(2, "softmax")], seed=2)
    model.compile(Lion(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    loss, acc = model.evaluate(x, y, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert acc > 0.9 > before[1]


@pytest.mark.parametrize("change", ["learning_rate", "schedule attribute", "beta", "clipnorm", "weight_decay"])
def test_scalars_key_changes_with_everything_the_scalars_depend_on(change):
    # a step kept whole re-reads its scalars table only when this key changes (nnxp._graph.StepFeed.advance)
    opt = Adam(nnxp.schedules.ExponentialDecay(0.01, 10, 0.9)) if change == "schedule attribute" else Adam(0.01)
    key = opt.scalars_key()
    assert opt.scalars_key() == key  # a new tuple, equal while nothing changed
    opt.iterations += 3
    assert opt.scalars_key() == key  # (the step count is not in it: the table has a row per step)
    if change == "schedule attribute":
        opt.learning_rate.decay_rate = 0.5
    elif change == "beta":
        opt.beta_1 = 0.8
    else:
        setattr(opt, change, 0.5)
    assert opt.scalars_key() != key
