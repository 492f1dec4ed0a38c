"""fit(cuda_graph=True) (nnxp/_graph.py) on the stand-in CuPy and the CPU emulator of CUDA, without a GPU.

The stand-in records what a capturing stream is given and runs it only at replay (tests/_stand_in_cupy.py), so
a step that read a value at capture time, or allocated outside the captured buffers, would diverge from eager
training here. The one seam: nnxp.ops._cublas._gemm calls cuBLAS through ctypes while capturing, which cannot
load without a GPU; _stand_in_cupy.captured_gemm replaces it (a gemm on the current stream, recorded while
capturing). Eager and replayed steps then use the same NumPy matmul, so they must agree bit for bit; on a GPU
they may differ in the last bits (cuBLAS gemm vs CuPy's GemmEx, see test_model.py's GPU tests).

The same step kept as its launch list (nnxp._graph.LaunchedStep: what an eager CUDA fit does where it can) is
held to the same tests: mode "launched" here, against "eager", steps made call by call (LAUNCH_LISTS off).
"""

from __future__ import annotations

import warnings

import _stand_in_cupy
import numpy as np
import pytest

import nnxp
from nnxp import Dense, Sequential, _graph
from nnxp.backend import tf32_active
from nnxp.ops import _cublas


@pytest.fixture
def graph_seam(fake_cupy, monkeypatch):
    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)  # cuBLAS handle + workspace (gpufix)
    return fake_cupy


def _data(n=400):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) > 0).astype(np.int64) + (x[:, 5] > 0.5)
    return x, y


def _model(optimizer, precision="highest"):
    model = Sequential([Dense(32, "relu", input_dim=20), Dense(16, "gelu"), Dense(3, "softmax")], device="cuda",
                       seed=3, precision=precision)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


OPTIMIZERS = {
    "adam-cosine-clipnorm": lambda: nnxp.optimizers.Adam(nnxp.schedules.CosineDecay(0.01, 40), clipnorm=1.0),
    "sgd-nesterov-wd": lambda: nnxp.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop-centered": lambda: nnxp.optimizers.RMSprop(0.002, centered=True),
    "lion-decay-wd": lambda: nnxp.optimizers.Lion(nnxp.schedules.ExponentialDecay(0.003, 10, 0.9), weight_decay=0.01),
}


MODES = ("graph", "launched")  # a step kept whole: captured in a CUDA graph, or kept as its launch list


def _modes(cases, call_by_call=()):
    """(case, mode) for each case in both modes, except "launched" for the cases whose step the launch list does
    not take (`call_by_call`: they run call by call there, which tests/test_graph.py's table of such fits covers;
    left out to keep CI's time)."""
    return [(case, mode) for case in sorted(cases) for mode in MODES
            if not (mode == "launched" and case in call_by_call)]


def _fit(model, x, y, mode, **kw):
    """fit in `mode`: "eager" (every step made call by call), "launched" (an eager fit, which keeps its step as
    a launch list where nnxp.training.step_replayable allows) or "graph" (cuda_graph=True)."""
    kept = nnxp.training.LAUNCH_LISTS
    nnxp.training.LAUNCH_LISTS = mode != "eager"
    try:
        return model.fit(x, y, cuda_graph=mode == "graph", **kw)
    finally:
        nnxp.training.LAUNCH_LISTS = kept


def _kept_steps(model, mode):
    """How many steps of the model's last fit were replayed (graph) or launched from its list (launched)."""
    return nnxp.training.graph_replays(model) if mode == "graph" else nnxp.training.launched_steps(model)


def _fit_both(optimizer, precision="highest", epochs=2, batch_size=64, mode="graph"):
    x, y = _data()
    eager, graphed = _model(OPTIMIZERS[optimizer](), precision), _model(OPTIMIZERS[optimizer](), precision)
    h_eager = _fit(eager, x, y, "eager", epochs=epochs, batch_size=batch_size, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture falls back to eager steps with a warning: not here
        h_graph = _fit(graphed, x, y, mode, epochs=epochs, batch_size=batch_size, verbose=0)
    full = epochs * (len(x) // batch_size) - 1  # all but the warm-up batch
    assert _kept_steps(graphed, mode) == full
    return eager, graphed, h_eager, h_graph


@pytest.mark.parametrize(("optimizer", "mode"), _modes(OPTIMIZERS, call_by_call=("adam-cosine-clipnorm",)))
def test_replayed_steps_equal_eager_steps_on_the_stand_in(graph_seam, optimizer, mode):
    # (a clipping optimizer's step is not kept as a launch list, its norms being CuPy reductions: graph mode only)
    eager, graphed, h_eager, h_graph = _fit_both(optimizer, mode=mode)
    assert h_graph.history == h_eager.history
    assert graphed.optimizer.iterations == eager.optimizer.iterations
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_pinned_upload_waits_only_while_the_gpu_has_not_read_its_last_copy(graph_seam, monkeypatch):
    # a pinned twin is rewritten only after the copy that last read it has run (its event is done), else the host
    # waits for it (Event.synchronize) first
    target = graph_seam.zeros(5, dtype=np.int64)
    upload = _graph.PinnedUpload(target)
    waits = []
    monkeypatch.setattr(_stand_in_cupy.Event, "synchronize", lambda self: waits.append(self.ptr))
    upload.write(np.arange(5))
    upload.write([7, 8], start=3)
    assert waits == []  # the stand-in's copies have run by the time they return: events are done
    monkeypatch.setattr(_stand_in_cupy.Event, "done", property(lambda self: False))
    upload.write([9], start=0)
    upload.write([6], start=1)
    assert len(waits) == 2 and len(set(waits)) == 1  # one event, reused
    np.testing.assert_array_equal(nnxp.backend.to_numpy(target), [9, 6, 2, 7, 8])


def test_replays_compute_at_replay_not_at_capture(graph_seam):
    # the capture itself must not train: after capturing, the weights are what the eager warm-up step left; the
    # replay then gathers its batch itself (batch 1 of the epoch: rows 64..127) and trains exactly as an eager step
    x, y = _data(128)
    model, twin = _model(OPTIMIZERS["sgd-nesterov-wd"]()), _model(OPTIMIZERS["sgd-nesterov-wd"]())
    for m in (model, twin):
        m.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0, shuffle=False)  # warm-up: kernels and state
    before = model.get_weights()
    dev = model.device
    batches = nnxp.training.Batches((dev.asarray(x), dev.asarray(y), None), 64, dev, seed=0, mode="graph",
                                    shuffle=False)
    step = nnxp.training.GraphStep(nnxp.training.EagerStep(model), 64, batches)
    epoch = batches.epoch(0)
    next(epoch)
    xb, yb, _, _ = next(epoch)
    record = step.epoch_record(dev.xp, (2, len(batches)))
    xb.fill(np.nan)
    graphed = step.capture(xb, yb)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(float(graphed.loss))  # poison until the first replay
    assert np.isnan(nnxp.backend.to_numpy(xb)).all()  # nothing gathered at capture either
    loss, _ = graphed.run(batches.index)
    np.testing.assert_array_equal(nnxp.backend.to_numpy(xb), x[64:])
    twin_loss, _ = nnxp.training.EagerStep(twin).run(dev.asarray(x[64:]), dev.asarray(y[64:]), None, 64)
    assert float(loss) == float(twin_loss) and model.optimizer.iterations == twin.optimizer.iterations
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    record = nnxp.backend.to_numpy(record)
    assert record[0, 1] == float(loss) and record[0, 0] == 0  # the replay wrote its column (batch 1) only


class _RateEveryBatch(nnxp.callbacks.Callback):
    """Halves the learning rate after every third batch: mid-epoch, between replays."""

    def on_train_batch_end(self, batch, logs=None):
        if batch % 3 == 2:
            self.model.optimizer.learning_rate = self.model.optimizer.learning_rate * 0.5


def _dropout_model(optimizer):
    model = Sequential([Dense(32, "relu", input_dim=20), nnxp.Dropout(0.3), Dense(16, "gelu"), nnxp.Dropout(0.1),
                        Dense(3, "softmax")], device="cuda", seed=3)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


FITS = {  # name -> (model maker, fit keywords): each trained eagerly and replayed, on the same data
    "shuffled": (lambda: _model(nnxp.optimizers.Adam(0.01)), {}),
    "unshuffled": (lambda: _model(nnxp.optimizers.Adam(0.01)), {"shuffle": False}),
    "partial-last-batch": (lambda: _model(nnxp.optimizers.SGD(0.05, momentum=0.9)), {"batch_size": 48}),
    "sample-weight": (lambda: _model(nnxp.optimizers.Adam(0.01)), {"sample_weight": True}),
    "sample-weight-unshuffled-partial": (lambda: _model(nnxp.optimizers.RMSprop(0.002)),
                                         {"sample_weight": True, "shuffle": False, "batch_size": 48}),
    "class-weight": (lambda: _model(nnxp.optimizers.Adam(0.01)), {"class_weight": {0: 1.0, 1: 2.0, 2: 0.5}}),
    "scheduler-per-epoch": (lambda: _model(nnxp.optimizers.Adam(0.01)), {
        "callbacks": lambda: [nnxp.callbacks.LearningRateScheduler(lambda epoch, lr: 0.02 / (1 + epoch))]}),
    "exponential-decay-per-step": (lambda: _model(nnxp.optimizers.Adam(
        nnxp.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.8))), {}),
    "rate-changed-mid-epoch": (lambda: _model(nnxp.optimizers.Adam(0.01)), {"callbacks": lambda: [_RateEveryBatch()]}),
    "dropout": (lambda: _dropout_model(nnxp.optimizers.Adam(0.01)), {}),
    "one-hot-labels": (lambda: _model_with(Dense(32, "relu", input_dim=20), Dense(3, "softmax"),
                                           loss="categorical_crossentropy"), {"one_hot": True}),
    "dropout-unshuffled-partial": (lambda: _dropout_model(nnxp.optimizers.SGD(0.05)),
                                   {"shuffle": False, "batch_size": 48}),
}


@pytest.mark.parametrize(("case", "mode"), _modes(FITS, call_by_call=(
    "sample-weight", "sample-weight-unshuffled-partial", "class-weight")))
def test_replayed_fits_equal_eager_fits(graph_seam, case, mode):
    # the same kernels in the same order, eager or replayed (the replay gathers, reads its scalars and records
    # its loss and sums on the device): on the stand-in the histories and weights agree bit for bit
    make, keywords = FITS[case]
    x, y = _data()
    runs = []
    for run_mode in ("eager", mode):
        kw = {"epochs": 2, "batch_size": 40, "verbose": 0, **keywords}
        if kw.pop("one_hot", False):
            y = np.eye(3, dtype=np.float32)[_data()[1]]
        if kw.pop("sample_weight", False):
            kw["sample_weight"] = np.random.default_rng(1).uniform(0.2, 2.0, len(x)).astype(np.float32)
        if "callbacks" in kw:
            kw["callbacks"] = kw["callbacks"]()
        model = make()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a failed capture falls back to eager steps with a warning: not here
            history = _fit(model, x, y, run_mode, **kw)
        runs.append((model, history))
    (eager, h_eager), (graphed, h_graph) = runs
    full = len(x) // kw["batch_size"]
    assert _kept_steps(graphed, mode) == 2 * full - 1  # every full batch but the warm-up
    assert h_graph.history == h_eager.history
    assert graphed.optimizer.iterations == eager.optimizer.iterations
    assert graphed.optimizer.current_learning_rate() == eager.optimizer.current_learning_rate()
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_replayed_fit_that_diverges_names_the_batch_an_eager_one_names(graph_seam):
    x, y = _data()
    x[130:140] *= 1e30  # batch 4 of 40 rows (rows 120..159, unshuffled): its step leaves weights that make the
    # next batch's loss NaN, batch 5 (a replayed one: the eager warm-up is batch 1, the capture batch 2)
    messages = []
    for mode in ("eager", *MODES):
        model = _model(nnxp.optimizers.SGD(0.01))
        before = model.get_weights()
        with pytest.raises(nnxp.errors.NumericalError) as caught:
            _fit(model, x, y, mode, epochs=1, batch_size=40, verbose=0, shuffle=False)
        messages.append(str(caught.value))
        for a, b in zip(model.get_weights(), before, strict=True):  # rolled back to the epoch's start
            np.testing.assert_array_equal(a, b)
    assert "epoch 1, batch 5." in messages[0] and messages[1] == messages[0] and messages[2] == messages[0]


@pytest.mark.parametrize("mode", MODES)
def test_tf32_replays_equal_tf32_eager_and_differ_from_highest(graph_seam, mode):
    eager, graphed, h_eager, h_graph = _fit_both("sgd-nesterov-wd", precision="tf32", mode=mode)
    assert not tf32_active()  # the model's scope restored CuPy's setting
    assert h_graph.history == h_eager.history
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x, y = _data()
    highest = _model(OPTIMIZERS["sgd-nesterov-wd"]())
    highest.fit(x, y, epochs=2, batch_size=64, verbose=0)
    diffs = [np.abs(a - b).max() for a, b in zip(highest.get_weights(), eager.get_weights(), strict=True)]
    assert 0 < max(diffs) < 1e-2  # TF32 rounds matmul inputs to 10 mantissa bits: close, not equal


WEIGHT_DECAY = {  # every optimizer with weight decay (and each clipping mode once): one update function, both paths
    "sgd": lambda: nnxp.optimizers.SGD(0.05, weight_decay=0.01),
    "sgd-momentum": lambda: nnxp.optimizers.SGD(0.05, momentum=0.9, weight_decay=0.01, clipvalue=0.5),
    "rmsprop": lambda: nnxp.optimizers.RMSprop(0.002, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": lambda: nnxp.optimizers.Adagrad(0.01, weight_decay=0.01),
    "adadelta": lambda: nnxp.optimizers.Adadelta(0.5, weight_decay=0.01),
    "adam": lambda: nnxp.optimizers.Adam(0.01, weight_decay=0.01, global_clipnorm=1.0),
    "adamax": lambda: nnxp.optimizers.Adamax(0.01, weight_decay=0.01),
    "adamw": lambda: nnxp.optimizers.AdamW(0.01),
}


@pytest.mark.parametrize(("optimizer", "mode"), _modes(WEIGHT_DECAY, call_by_call=("sgd-momentum", "adam")))
def test_weight_decay_replays_equal_eager_steps_for_every_optimizer(graph_seam, optimizer, mode):
    x, y = _data(200)
    eager, graphed = _model(WEIGHT_DECAY[optimizer]()), _model(WEIGHT_DECAY[optimizer]())
    h_eager = _fit(eager, x, y, "eager", epochs=2, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h_graph = _fit(graphed, x, y, mode, epochs=2, batch_size=32, verbose=0)
    assert _kept_steps(graphed, mode) == 2 * (200 // 32) - 1
    assert h_graph.history == h_eager.history and graphed.optimizer.iterations == eager.optimizer.iterations
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    state = eager.optimizer.get_state()
    assert graphed.optimizer.get_state().keys() == state.keys()
    for k, v in graphed.optimizer.get_state().items():
        np.testing.assert_array_equal(v, state[k])


class _ChangeAfter(nnxp.callbacks.Callback):
    """Calls `change(optimizer, model)` once, after the model's 4th batch (mid-epoch, between replays)."""

    def __init__(self, change):
        self.change, self.batches = change, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 4:
            self.change(self.model.optimizer, self.model)


def _replace_optimizer(optimizer, model):
    model.optimizer = nnxp.optimizers.SGD(0.1, momentum=0.5)


CAPTURED_CONSTANTS = {  # what a captured step took as constants, changed by a callback mid-epoch
    "clipnorm": (lambda: nnxp.optimizers.Adam(0.01), lambda opt, model: setattr(opt, "clipnorm", 1e-3)),
    "clipvalue": (lambda: nnxp.optimizers.SGD(0.05), lambda opt, model: setattr(opt, "clipvalue", 1e-4)),
    "global_clipnorm-off": (lambda: nnxp.optimizers.Adam(0.01, global_clipnorm=1e-3),
                            lambda opt, model: setattr(opt, "global_clipnorm", None)),
    "nesterov": (lambda: nnxp.optimizers.SGD(0.05, momentum=0.9), lambda opt, model: setattr(opt, "nesterov", True)),
    "another-optimizer": (lambda: nnxp.optimizers.Adam(0.01), _replace_optimizer),
}


def _set_activation(optimizer, model):
    model.layers[1].activation = "tanh"


CAPTURED_CONSTANTS["hidden-activation"] = (lambda: nnxp.optimizers.Adam(0.01), _set_activation)


@pytest.mark.parametrize(("case", "mode"), _modes(CAPTURED_CONSTANTS, call_by_call=("global_clipnorm-off",)))
def test_a_change_to_what_the_graph_holds_fixed_is_captured_again(graph_seam, case, mode):
    # clipping settings, SGD's nesterov flag, the optimizer object itself and the layers' settings (an
    # activation) are not among the per-step scalars a replay reads from its table: changed mid-epoch, the step
    # must be captured (or recorded) again, not replayed as it was
    make, change = CAPTURED_CONSTANTS[case]
    x, y = _data(200)
    runs = []
    for run_mode in ("eager", mode):
        model = _model(make())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no failed capture either (the new optimizer has no state yet)
            history = _fit(model, x, y, run_mode, epochs=2, batch_size=32, verbose=0,
                           callbacks=[_ChangeAfter(change)])
        runs.append((model, history))
    (eager, h_eager), (graphed, h_graph) = runs
    kept = _kept_steps(graphed, mode)
    if mode == "launched" and case in ("clipnorm", "clipvalue"):
        assert kept == 3  # batches 2-4 from the list; clipping added after batch 4: call by call from then on
    else:
        assert kept > 6  # replayed again after the change (6 full batches an epoch)
    assert h_graph.history == h_eager.history
    assert graphed.optimizer.iterations == eager.optimizer.iterations
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _arrays_reachable(root, shape):
    """The arrays of `shape` (or views of one) that can be reached from `root` through references."""
    import gc
    import types

    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            if shape in (obj.shape, getattr(obj.base, "shape", None)):
                found.append(obj)
            continue
        stack.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("mode", ["eager", *MODES])
def test_the_model_holds_no_data_and_no_graph_after_a_fit(graph_seam, mode):
    # the model keeps its last fit's step (for graph_replays), but not the data on the device through it, nor
    # the graph (or launch list) and its captured memory
    x, y = _data(203)
    model = _model(nnxp.optimizers.Adam(0.01))
    _fit(model, x, y, mode, epochs=2, batch_size=32, verbose=0)
    assert nnxp.training.graph_replays(model) == (2 * 6 - 1 if mode == "graph" else 0)
    assert nnxp.training.launched_steps(model) == (2 * 6 - 1 if mode == "launched" else 0)
    assert _arrays_reachable(model, (203, 20)) == [] and _arrays_reachable(model, (203,)) == []
    assert not any(isinstance(obj, _graph.GraphedStep) for obj in vars(model._fit_step).values())


def _binary_model():
    model = Sequential([Dense(16, "relu", input_dim=20), Dense(1, "sigmoid")], device="cuda", seed=3)
    model.compile(nnxp.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    return model


def _model_with(*layers, metrics=("accuracy",), loss="sparse_categorical_crossentropy"):
    model = Sequential(list(layers), device="cuda", seed=3)
    model.compile(nnxp.optimizers.Adam(0.01), loss, metrics=list(metrics))
    return model


NOT_LAUNCHED = {  # models whose step makes CuPy calls a launch list cannot repeat: every step call by call
    "regularizer": lambda: _model_with(Dense(16, "relu", input_dim=20, kernel_regularizer="l2"),
                                       Dense(3, "softmax")),
    "mse-metric": lambda: _model_with(Dense(16, "relu", input_dim=20), Dense(3, "softmax"), metrics=("mse",),
                                      loss="categorical_crossentropy"),
    "activation-layer": lambda: _model_with(Dense(16, input_dim=20), nnxp.Activation("relu"),
                                            Dense(3, "softmax")),
    "binary-accuracy": lambda: _binary_model(),
    "clipvalue": lambda: _model(nnxp.optimizers.SGD(0.05, clipvalue=0.1)),
    # a hidden softmax Dense sums its bias gradient with a CuPy reduction (nnxp/ops/dense.py calls unplanned()):
    # the model passes step_replayable, but its recording is void (silently: no warning)
    "voided-recording": lambda: _model_with(Dense(16, "softmax", input_dim=20), Dense(3, "softmax")),
}


@pytest.mark.parametrize("case", sorted(NOT_LAUNCHED))
def test_a_step_that_cannot_be_launched_from_a_list_runs_call_by_call(graph_seam, case):
    x, y = _data(200)
    if case == "binary-accuracy":
        y = (y > 0).astype(np.float32)
    elif case == "mse-metric":
        y = np.eye(3, dtype=np.float32)[y]
    runs = []
    for mode in ("eager", "launched"):
        model = NOT_LAUNCHED[case]()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = _fit(model, x, y, mode, epochs=2, batch_size=32, verbose=0)
        runs.append((model, history))
    (eager, h_eager), (launched, h_launched) = runs
    assert nnxp.training.launched_steps(launched) == 0
    assert h_launched.history == h_eager.history
    for a, b in zip(launched.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _OtherStreamFrom(nnxp.callbacks.Callback):
    """From the model's 4th batch on, its steps run on another CUDA stream (entered in a callback)."""

    def __init__(self, cupy):
        self.cupy, self.batches, self.stream = cupy, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 4:
            self.stream = self.cupy.cuda.Stream(non_blocking=True)
            self.stream.__enter__()

    def on_train_end(self, logs=None):
        if self.stream is not None:
            self.stream.__exit__(None, None, None)


def test_a_launch_list_moved_to_another_stream_is_recorded_again(graph_seam):
    # its scratch buffers are those of the stream (and thread) it was recorded on: on another one it is recorded
    # again there, and training equals the call-by-call steps
    x, y = _data(200)
    runs = []
    for mode in ("eager", "launched"):
        model = _model(nnxp.optimizers.Adam(0.01))
        history = _fit(model, x, y, mode, epochs=2, batch_size=32, verbose=0,
                       callbacks=[_OtherStreamFrom(graph_seam)])
        runs.append((model, history))
    (eager, h_eager), (launched, h_launched) = runs
    step = launched._fit_step
    assert nnxp.training.launched_steps(launched) == 2 * 6 - 2  # 2 warm-ups: before and after the move
    assert h_launched.history == h_eager.history
    for a, b in zip(launched.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert step.launched


class _TwoRates(nnxp.schedules.LearningRateSchedule):
    """A user's schedule whose rates live in a list (or another object) it holds: a callback that changes one in
    place changes the rate of the next step, though no attribute of the schedule itself was set."""

    def __init__(self):
        self.rates = [0.01, 0.002]

    def _rate(self, step):
        return self.rates[0] if step < 9 else self.rates[1]


class _SetRateInPlace(nnxp.callbacks.Callback):
    def __init__(self, at, which, value):
        self.at, self.which, self.value, self.batches = at, which, value, 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == self.at:
            self.model.optimizer.learning_rate.rates[self.which] = self.value


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("at", "which"), [(4, 0), (8, 1)])  # the rate of the next step, or of the one after it
def test_a_schedule_changed_in_place_mid_epoch_is_used_from_the_next_step(graph_seam, mode, at, which):
    # the scalars key sees a schedule's attributes, not what they hold: the rate a step uses is checked itself
    # against the table's, so a replay or a launch uses the rate an eager step would (the 8th batch is epoch 2's
    # first, which made the epoch's table: the changed rates[1] is first used by the step after next, step 9)
    x, y = _data(200)
    runs = []
    for run_mode in ("eager", mode):
        model = _model(nnxp.optimizers.Adam(_TwoRates()))
        history = _fit(model, x, y, run_mode, epochs=2, batch_size=32, verbose=0,
                       callbacks=[_SetRateInPlace(at, which, 0.05)])
        runs.append((model, history))
    (eager, h_eager), (kept, h_kept) = runs
    assert _kept_steps(kept, mode) == 2 * 6 - 1
    assert h_kept.history == h_eager.history
    for a, b in zip(kept.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
