"""nnxp/training.py on its own: Batches, EagerStep / GraphStep, Guard, with real numbers on the CPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnxp
from nnxp import Dense, Sequential, training
from nnxp.backend import get_device
from nnxp.errors import NumericalError

CPU = get_device("cpu")


def _data(n=10, d=3):
    x = np.arange(n * d, dtype=np.float64).reshape(n, d)  # row i starts with 3i: rows are recognisable
    y = np.arange(n, dtype=np.float64)
    w = np.linspace(0.5, 2.0, n)
    return x, y, w


# --- Batches ---------------------------------------------------------------------------------------------------
def test_gather_yields_every_row_once_per_epoch_in_the_seeded_order():
    x, y, w = _data()
    batches = training.Batches((x, y, w), 4, CPU, seed=7, mode="gather")
    assert len(batches) == 3
    for count in (0, 1, 5):
        order = np.random.default_rng(np.random.SeedSequence([7, 1, count])).permutation(10)
        got = [(xb.copy(), yb.copy(), wb.copy(), rows) for xb, yb, wb, rows in batches.epoch(count)]
        assert [r for *_, r in got] == [4, 4, 2]
        rows = np.concatenate([g[0] for g in got])
        np.testing.assert_array_equal(rows, x[order])
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y[order])
        np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), w[order])
        assert sorted(rows[:, 0] // 3) == list(range(10))  # each row exactly once
    first = np.concatenate([xb.copy() for xb, *_ in batches.epoch(0)])
    again = np.concatenate([xb.copy() for xb, *_ in batches.epoch(0)])
    other = np.concatenate([xb.copy() for xb, *_ in batches.epoch(1)])
    np.testing.assert_array_equal(first, again)  # a function of (seed, count) alone: resumes repeat it
    assert not np.array_equal(first, other)


def test_eager_gather_permutes_labels_and_weights_once_per_epoch_with_the_same_batches():
    # fixed=False (eager steps): the 1-D arrays are gathered once per epoch and each batch views them; every
    # batch equals the one gathered per batch (the graphed steps' fixed buffers), epoch after epoch
    x, y, w = _data()
    fixed = training.Batches((x, y, w), 4, CPU, seed=7, mode="gather")
    loose = training.Batches((x, y, w), 4, CPU, seed=7, mode="gather", fixed=False)
    for count in (0, 1):
        want = [tuple(a.copy() for a in b[:3]) + (b[3],) for b in fixed.epoch(count)]
        got = [(xb.copy(), yb, wb, rows) for xb, yb, wb, rows in loose.epoch(count)]  # x: one reused buffer
        for (xa, ya, wa, ra), (xb, yb, wb, rb) in zip(want, got, strict=True):
            assert ra == rb
            for a, b in ((xa, xb), (ya, yb), (wa, wb)):
                np.testing.assert_array_equal(a, b)
        assert all(yb.base is got[0][1].base is not None and wb.base is got[0][2].base is not None
                   for _, yb, wb, _ in got)  # views of one buffer each


def test_gather_and_copy_reuse_one_buffer_and_view_copies_nothing():
    x, y, w = _data()
    for mode in ("gather", "copy"):
        batches = training.Batches((x, y, None), 4, CPU, seed=0, mode=mode)
        addresses = {xb.__array_interface__["data"][0] for xb, *_ in batches.epoch(0)}
        assert len(addresses) == 1, mode  # every batch (the last, partial one too) starts at the same address
    views = list(training.Batches((x, y, w), 4, CPU, seed=0, mode="view").epoch(0))
    for (xb, _, wb, rows), lo in zip(views, (0, 4, 8), strict=True):
        assert np.shares_memory(xb, x) and np.shares_memory(wb, w)
        np.testing.assert_array_equal(xb, x[lo : lo + rows])
    copies = [(xb.copy(), wb.copy()) for xb, _, wb, _ in training.Batches((x, y, w), 4, CPU, 0, "copy").epoch(3)]
    np.testing.assert_array_equal(np.concatenate([c[0] for c in copies]), x)  # in order, whatever the epoch
    np.testing.assert_array_equal(np.concatenate([c[1] for c in copies]), w)


@pytest.mark.parametrize("shuffle", [True, False])
def test_graph_mode_yields_the_batches_gather_and_copy_give_filled_on_demand(fake_cupy, shuffle):
    # cuda_graph=True: the buffers come unfilled (a replay gathers on the device); fill() (an eager step) and the
    # device gather through the step counter give exactly the rows of "gather" (shuffled: the same seeded order,
    # so histories stay what they were) or "copy" (in order)
    x, y, w = _data()
    cuda = get_device("cuda")
    graph = training.Batches(tuple(cuda.asarray(a) for a in (x, y, w)), 4, cuda, seed=7, mode="graph",
                             shuffle=shuffle)
    host = training.Batches((x, y, w), 4, CPU, seed=7, mode="gather" if shuffle else "copy")
    cursor = fake_cupy.zeros(1, dtype=np.int64)
    for count in (0, 3):
        want = [tuple(a.copy() for a in b[:3]) for b in host.epoch(count)]
        for k, (xb, yb, wb, rows) in enumerate(graph.epoch(count)):
            assert graph.index == k and rows == len(want[k][0])
            graph.fill()
            for got, expected in zip((xb, yb, wb), want[k], strict=True):
                np.testing.assert_array_equal(nnxp.backend.to_numpy(got), expected)
            for buf in (xb, yb, wb):
                buf.fill(-1)
            cursor[...] = k
            graph.gather(cursor, rows)
            for got, expected in zip((xb, yb, wb), want[k], strict=True):
                np.testing.assert_array_equal(nnxp.backend.to_numpy(got), expected)


def test_batches_share_is_this_ranks_part_of_each_batch():
    class TwoRanks(nnxp.distributed.Communicator):
        rank, size = 1, 2

    x, y, _ = _data(10)
    batches = training.Batches((x, y, None), 4, CPU, seed=0, mode="view", comm=TwoRanks())
    seen = [(xb[:, 0] // 3, rows, list(batches.share)) for xb, _, _, rows in batches.epoch(0)]
    # rank 1 of 2 takes the second half of each global batch of 4 (and of the last, of 2)
    assert [list(r) for r, _, _ in seen] == [[2, 3], [6, 7], [9]]
    assert [rows for _, rows, _ in seen] == [4, 4, 2]
    assert [s for *_, s in seen] == [[4, 2, 4], [4, 2, 4], [2, 1, 2]]


# --- Step ------------------------------------------------------------------------------------------------------
def _linear(lr=0.1, optimizer=None):
    model = Sequential([Dense(1, input_dim=3)], dtype="float64", seed=0)
    model.compile(optimizer or nnxp.optimizers.SGD(lr), "mse", metrics=["mae"])
    model.build(3)
    return model


def test_eager_step_is_one_sgd_step_of_linear_regression():
    x, y, _ = _data(8)
    x = x / 10
    model = _linear(lr=0.1)
    (kernel, bias) = model.get_weights()
    loss, sums = training.EagerStep(model).run(x, y[:, None], None, 8)
    err = x @ kernel + bias - y[:, None]  # (8, 1)
    np.testing.assert_allclose(float(loss), np.mean(err**2), rtol=1e-12)
    np.testing.assert_allclose(float(sums["mae"]), np.abs(err).sum(), rtol=1e-12)  # a sum: divided per epoch
    new_kernel, new_bias = model.get_weights()
    np.testing.assert_allclose(new_kernel, kernel - 0.1 * 2 * x.T @ err / 8, rtol=1e-12)
    np.testing.assert_allclose(new_bias, bias - 0.1 * 2 * err.sum(axis=0) / 8, rtol=1e-12)
    assert model.optimizer.iterations == 1


def test_graph_step_whose_capture_fails_warns_once_and_trains_like_eager_steps():
    class FailingCapture(training.GraphStep):
        tries = 0

        def capture(self, xb, yb, wb=None):
            FailingCapture.tries += 1
            raise RuntimeError("no graphs here")

    x, y, _ = _data(16)
    x, y = x / 50, y[:, None] / 16
    eager_model, graph_model = _linear(), _linear()
    eager, graphed = training.EagerStep(eager_model), FailingCapture(training.EagerStep(graph_model), 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lo in (0, 4, 8, 12):
            a = eager.run(x[lo : lo + 4], y[lo : lo + 4], None, 4)
            b = graphed.run(x[lo : lo + 4], y[lo : lo + 4], None, 4)
            assert float(a[0]) == float(b[0])
    # the first full batch warms up eagerly, the second tries to capture; after a failure no more tries
    assert FailingCapture.tries == 1 and not graphed.enabled and graphed.graph is None
    assert [str(w.message) for w in caught] == ["cuda_graph: capturing the training step failed (RuntimeError: no "
                                                "graphs here); this fit goes on without CUDA graphs"]
    for p, q in zip(eager_model.get_weights(), graph_model.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)


# --- Guard -----------------------------------------------------------------------------------------------------
def _adam_model_after_one_epoch():
    x, y, _ = _data(32)
    model = Sequential([Dense(4, "relu", input_dim=3), Dense(1)], dtype="float64", seed=1)
    model.compile(nnxp.optimizers.Adam(0.01), "mse")
    model.fit(x / 100, y / 32, epochs=1, batch_size=8, verbose=0)
    return model, x / 100, (y / 32)[:, None]


def test_guard_restores_bit_for_bit_after_a_real_exception_mid_epoch():
    model, x, y = _adam_model_after_one_epoch()
    weights = model.get_weights()
    state = {k: np.array(v) for k, v in model.optimizer.state.items()}
    iterations = model.optimizer.iterations
    guard, step = training.Guard(model), training.EagerStep(model)
    with pytest.raises(ZeroDivisionError):
        with guard.watch():
            for lo in (0, 8, 16):
                step.run(x[lo : lo + 8], y[lo : lo + 8], None, 8)
            assert model.optimizer.iterations == iterations + 3  # the steps did train
            1 / 0  # noqa: B018 - a real exception escaping mid-epoch
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(model.optimizer.state) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(model.optimizer.state[k], v)
    assert model.optimizer.iterations == iterations


class _LeavesDevice1Current(nnxp.callbacks.Callback):
    """After the model's 4th batch, makes CUDA device 1 current and leaves it so (a callback's bug)."""

    def __init__(self, cupy):
        self.cupy, self.batches, self.device = cupy, 0, None

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 4:
            self.device = self.cupy.cuda.Device(1)
            self.device.__enter__()

    def on_train_end(self, logs=None):
        if self.device is not None:
            self.device.__exit__(None, None, None)


@pytest.mark.parametrize("launch_lists", [False, True])
def test_a_fit_that_fails_on_another_current_device_still_rolls_back(fake_cupy, monkeypatch, launch_lists):
    # a callback that leaves another device current makes the next step fail (the model's arrays live on device
    # 0); the rollback itself must not fail the same way: it runs on the model's device, and the model is whole
    monkeypatch.setattr(training, "LAUNCH_LISTS", launch_lists)
    x, y, _ = _data(200)
    model = Sequential([Dense(16, "relu", input_dim=x.shape[1]), Dense(3, "softmax")], device="cuda", seed=3)
    model.compile(nnxp.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    before = model.get_weights()
    with pytest.raises(ValueError, match="different from the current device"):
        model.fit(x, y % 3, epochs=1, batch_size=32, verbose=0, callbacks=[_LeavesDevice1Current(fake_cupy)])
    assert fake_cupy.cuda.runtime.getDevice() == 0
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0


def test_guard_restores_a_fresh_optimizer_and_training_then_equals_an_untouched_run():
    x, y, _ = _data(16)
    x, y = x / 50, y[:, None] / 16
    touched, untouched = _linear(optimizer=nnxp.optimizers.Adam(0.01)), _linear(optimizer=nnxp.optimizers.Adam(0.01))
    guard = training.Guard(touched)
    guard.snapshot()  # before the first step: no optimizer state yet
    training.EagerStep(touched).run(x[:8], y[:8], None, 8)
    guard.restore()
    assert touched.optimizer.state == {} and touched.optimizer.iterations == 0
    for model in (touched, untouched):
        training.EagerStep(model).run(x[8:], y[8:], None, 8)
    for a, b in zip(touched.get_weights(), untouched.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_guard_check_names_the_first_bad_batch_and_rolls_back():
    model, x, y = _adam_model_after_one_epoch()
    weights = model.get_weights()
    guard = training.Guard(model)
    guard.snapshot()
    guard.check(0, 0.5, np.array([0.4, 0.6]))  # finite: nothing happens
    training.EagerStep(model).run(x[:8], y[:8], None, 8)
    with pytest.raises(NumericalError, match=r"at epoch 3, batch 2\. The model is back .* start of epoch 3"):
        guard.check(2, float("inf"), np.array([0.4, np.inf, np.nan]))
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    model.params[0] = np.nan  # finite losses but weights that are not: still diverged, no batch to name
    with pytest.raises(NumericalError, match=r"at epoch 1\. The model"):
        guard.check(0, 0.5, np.array([0.4, 0.6]))
    assert np.isfinite(model.params).all()


def test_divergence_is_checked_at_the_end_of_the_epoch_on_the_cpu_too():
    # one rule on every device (issue 14): the diverged epoch runs to its end, then rolls back, naming batch 2
    x, y, _ = _data(64)

    class Count(nnxp.callbacks.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            Count.batches += 1

    model = Sequential([Dense(8, "relu", input_dim=3), Dense(1)], seed=0)
    model.compile(nnxp.optimizers.SGD(10.0), "mse")
    before = model.get_weights()
    with pytest.raises(NumericalError, match=r"epoch 1, batch 2\b"):
        model.fit(x * 1e6, y, epochs=1, batch_size=16, verbose=0, callbacks=[Count()])
    assert Count.batches == 4
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_model_keeps_no_reference_to_the_training_data_after_fit():
    import gc
    import weakref

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.normal(size=(64, 1)).astype(np.float32)
    refs = [weakref.ref(x), weakref.ref(y)]
    model = Sequential([Dense(1, input_dim=3)], seed=0)
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # (shuffled: the layers keep copies, not views of x)
    del x, y
    gc.collect()
    assert [r() is None for r in refs] == [True, True]  # a large data set is not held (on the GPU) after fit returns


def test_ctrl_c_during_validation_rolls_that_epoch_back_too(monkeypatch):
    # (before issue 14 the weights kept the interrupted epoch's training while epochs_trained did not count it)
    import os
    import signal

    x, y, _ = _data(48)
    x, y = x / 100, y / 48

    def model():
        m = Sequential([Dense(4, "relu", input_dim=3), Dense(1)], seed=2)
        m.compile(nnxp.optimizers.Adam(0.01), "mse")
        return m

    straight = model()
    straight.fit(x, y, epochs=1, batch_size=8, validation_split=0.25, verbose=0)
    original = training.evaluate_arrays

    def ctrl_c_in_the_second_validation(m, *args):
        if m.epochs_trained == 1:
            os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as Ctrl-C sends
        return original(m, *args)

    monkeypatch.setattr(training, "evaluate_arrays", ctrl_c_in_the_second_validation)
    interrupted = model()
    h = interrupted.fit(x, y, epochs=3, batch_size=8, validation_split=0.25, verbose=0)
    assert h.interrupted and len(h.history["loss"]) == 1 and interrupted.epochs_trained == 1
    assert interrupted.optimizer.iterations == straight.optimizer.iterations
    for a, b in zip(interrupted.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rollback_of_a_model_whose_optimizer_was_last_stepped_by_another_model():
    # one optimizer instance shared by two models of different sizes: at the start of b's epoch the optimizer
    # still holds a's state. Rolling b back used to copy a's buffers into b's (ValueError: could not broadcast),
    # hiding the callback's own error and leaving the iteration count advanced
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    opt = nnxp.optimizers.Adam(1e-3)
    a = Sequential([Dense(8, input_dim=4), Dense(1)], dtype="float64", seed=0)
    b = Sequential([Dense(3, input_dim=4), Dense(1)], dtype="float64", seed=1)
    a.compile(opt, "mse")
    b.compile(opt, "mse")
    a.fit(x, y, epochs=1, batch_size=8, verbose=0)
    iterations, weights = opt.iterations, b.get_weights()

    class Boom(nnxp.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        b.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[Boom()])
    assert opt.iterations == iterations
    for p, q in zip(b.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(p, q)
    opt.learning_rate = 1e6  # and a diverged epoch of b: the NumericalError, b as it was
    with pytest.raises(NumericalError, match="epoch 1"):
        b.fit(x * 1e200, y, epochs=1, batch_size=8, verbose=0)
    assert opt.iterations == iterations
    for p, q in zip(b.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("first", ["dense", "gelu"])
def test_an_unshuffled_fit_keeps_no_reference_to_the_training_data_either(first):
    # unshuffled batches are views of the data: the first layer's input kept for backward (Dense's x, a gelu
    # Activation's pre-activation) used to keep the whole data set alive after fit (on a GPU: its device copy)
    import gc
    import weakref

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.normal(size=(64, 1)).astype(np.float32)
    refs = [weakref.ref(x), weakref.ref(y)]
    layers = [Dense(4, "relu", input_dim=3)] if first == "dense" else [nnxp.layers.Activation("gelu"), Dense(4)]
    model = Sequential([*layers, Dense(1)], seed=0)
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, validation_split=0.25, verbose=0)
    del x, y
    gc.collect()
    assert [r() is None for r in refs] == [True, True]
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 1)), epochs=1, verbose=0)  # and it trains on after


def test_an_epoch_that_leaves_the_optimizer_state_infinite_is_a_divergence_too(tmp_path):
    # float32 Adam: one huge row makes g^2 overflow in `v` while the loss (1e34) and the weights stay finite.
    # The epoch used to be accepted: the model then held an infinite state, every later epoch diverged back to
    # it, and a file saved from it (ModelCheckpoint's) could not be loaded ("must be finite")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 3)).astype(np.float32), (rng.normal(size=(64, 1)) * 1e17).astype(np.float32)
    x[5] *= 1e7
    model = Sequential([Dense(1, input_dim=3)], seed=0)
    model.compile(nnxp.optimizers.Adam(1e-3), "mse")
    model.fit(x[:8] / 1e7, y[:8] / 1e17, epochs=1, batch_size=8, verbose=0)  # a healthy first epoch
    weights, state = model.get_weights(), model.optimizer.get_state()
    with pytest.raises(NumericalError, match=r"diverged: the optimizer state 'v' became NaN or infinite at epoch 2\."):
        model.fit(x, y, epochs=2, initial_epoch=1, batch_size=64, verbose=0)
    assert model.epochs_trained == 1 and model.optimizer.iterations == 1
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    for k, v in state.items():
        np.testing.assert_array_equal(model.optimizer.state[k], v)
    model.save(tmp_path / "m.nnxp")
    nnxp.load_model(tmp_path / "m.nnxp")  # loads: nothing infinite was kept


def test_ctrl_c_then_resume_with_a_rate_scheduler_equals_the_uninterrupted_run(tmp_path):
    # LearningRateScheduler sets the rate in on_epoch_begin from the current one: the rolled-back epoch's rate
    # used to stay, so the resumed epoch halved it a second time (and a file saved then recorded it)
    import os
    import signal

    x, y, _ = _data(48)
    x, y = x / 100, y / 48

    def model():
        m = Sequential([Dense(4, "relu", input_dim=3), Dense(1)], seed=2)
        m.compile(nnxp.optimizers.Adam(0.01), "mse")
        return m

    def halve():
        return nnxp.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)

    class CtrlC(nnxp.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2 and self.model.epochs_trained == 2:
                os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT, as Ctrl-C sends

    straight = model()
    h_straight = straight.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[halve()])
    interrupted = model()
    h = interrupted.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[halve(), CtrlC()])
    assert h.interrupted and interrupted.epochs_trained == 2
    assert interrupted.optimizer.learning_rate == 0.01 / 4  # the rates of the two epochs it kept
    interrupted.save(tmp_path / "m.nnxp")
    resumed = nnxp.load_model(tmp_path / "m.nnxp")
    h_resumed = resumed.fit(x, y, epochs=4, initial_epoch=2, batch_size=8, verbose=0, callbacks=[halve()])
    assert h.history["lr"] + h_resumed.history["lr"] == h_straight.history["lr"]
    assert h.history["loss"] + h_resumed.history["loss"] == h_straight.history["loss"]
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_second_ctrl_c_during_the_rollback_waits_for_it(monkeypatch):
    # an impatient user presses Ctrl-C twice: the first stops the epoch, the second used to land inside the
    # rollback itself (its KeyboardInterrupt cut the copy short), leaving the model mid-epoch
    import os
    import signal

    x, y, _ = _data(48)
    x, y = x / 100, y / 48

    def model():
        m = Sequential([Dense(4, "relu", input_dim=3), Dense(1)], seed=2)
        m.compile(nnxp.optimizers.Adam(0.01), "mse")
        return m

    straight = model()
    straight.fit(x, y, epochs=1, batch_size=8, verbose=0)
    original = training.Guard.restore

    def restore_with_a_second_ctrl_c(guard):
        os.kill(os.getpid(), signal.SIGINT)  # a real SIGINT as the rollback starts
        original(guard)

    class CtrlC(nnxp.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2 and self.model.epochs_trained == 1:
                monkeypatch.setattr(training.Guard, "restore", restore_with_a_second_ctrl_c)
                os.kill(os.getpid(), signal.SIGINT)

    interrupted = model()
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C still stops at once, after the rollback
        interrupted.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[CtrlC()])
    assert interrupted.epochs_trained == 1
    assert interrupted.optimizer.iterations == straight.optimizer.iterations
    for a, b in zip(interrupted.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(37, 5), (37,), (37, 2, 3)])
def test_take_rows_gathers_what_take_gathers_into_out(shape):
    rng = np.random.default_rng(0)
    src = rng.standard_normal(shape).astype(np.float32)
    idx = rng.permutation(shape[0])[:11]
    out = np.full((11, *shape[1:]), np.nan, np.float32)
    got = training.take_rows(np, src, idx, out)
    assert got is out  # written in place, no new array
    np.testing.assert_array_equal(out, src[idx])


def test_fit_batches_are_the_shuffled_rows(monkeypatch):
    """Every row of an epoch reaches a step exactly once, through take_rows (NumPy's clip mode)."""
    seen = []
    real = training.take_rows

    def spy(xp, src, idx, out):
        got = real(xp, src, idx, out)
        if src.ndim == 2 and src.shape[1] == 3:  # x (y is a column too, for mse)
            seen.append(got[:, 0].copy())
        return got

    monkeypatch.setattr(training, "take_rows", spy)
    x = np.arange(50, dtype=np.float32)[:, None].repeat(3, axis=1)
    y = np.zeros(50, dtype=np.float32)
    model = Sequential([Dense(1, input_dim=3)], seed=0)
    model.compile("sgd", "mse")
    model.fit(x, y, epochs=1, batch_size=16, shuffle=True, verbose=0)
    rows = np.concatenate(seen)
    assert sorted(rows.tolist()) == list(range(50)) and rows.tolist() != list(range(50))


def _default_take(xp, src, idx, out):
    return np.take(src, idx, axis=0, out=out)  # NumPy's default mode ("raise"): what take_rows replaced


def _fit_kinds(tmp_path):
    """(name, x, y, fit kwargs, loss, first layers): the data kinds a fit's gather meets."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((53, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 53)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.memmap(tmp_path / "x.mm", dtype=np.float32, mode="w+", shape=x.shape)
    mm[...] = x
    mm.flush()
    ro = x.copy()
    ro.flags.writeable = False
    wide = np.zeros((53, 12), np.float32)
    wide[:, ::2] = x
    sw = rng.uniform(0.5, 2.0, 53)
    strided_3d = wide.reshape(53, 2, 6)[:, :, ::2]
    return [
        ("int64", x, labels, {}, "sparse_categorical_crossentropy"),
        ("int32", x, labels.astype(np.int32), {}, "sparse_categorical_crossentropy"),
        ("uint8", x, labels.astype(np.uint8), {}, "sparse_categorical_crossentropy"),
        ("bool", x, labels == 1, {}, "binary_crossentropy"),
        ("one-hot", x, np.eye(3, dtype=np.float32)[labels], {}, "categorical_crossentropy"),
        ("weights", x, labels, {"sample_weight": sw}, "sparse_categorical_crossentropy"),
        ("class weights", x, labels, {"class_weight": {0: 1.0, 1: 2.0, 2: 0.5}}, "sparse_categorical_crossentropy"),
        ("weights+split", x, labels, {"sample_weight": sw, "validation_split": 0.2}, "sparse_categorical_crossentropy"),
        ("no shuffle", x, labels, {"sample_weight": sw, "shuffle": False}, "sparse_categorical_crossentropy"),
        ("strided", wide[:, ::2], labels, {}, "sparse_categorical_crossentropy"),
        ("fortran", np.asfortranarray(x), labels, {}, "sparse_categorical_crossentropy"),
        ("read-only", ro, labels, {}, "sparse_categorical_crossentropy"),
        ("memmap", mm, labels, {}, "sparse_categorical_crossentropy"),
        ("np.load mmap", np.load(path, mmap_mode="r"), labels, {}, "sparse_categorical_crossentropy"),
        ("3-D", x.reshape(53, 2, 3), labels, {"flatten": True}, "sparse_categorical_crossentropy"),
        ("3-D strided", strided_3d, labels, {"flatten": True}, "sparse_categorical_crossentropy"),
    ]


def test_fit_with_take_rows_trains_exactly_as_numpys_default_take(monkeypatch, tmp_path):
    """take_rows' clip mode changes nothing a fit computes, for every kind of data a gather meets: the weights
    after 2 shuffled epochs (a partial last batch each) are bit-identical to a fit gathering with np.take's
    default mode, which raises on an out-of-range row where clip would repeat the last one."""
    from nnxp import Flatten

    for name, x, y, kw, loss in _fit_kinds(tmp_path):
        kw = dict(kw)
        flatten = kw.pop("flatten", False)
        units = 1 if loss == "binary_crossentropy" else 3
        act = "sigmoid" if units == 1 else "softmax"
        got = []
        for take in (training.take_rows, _default_take):
            monkeypatch.setattr(training, "take_rows", take)
            first = [Flatten(input_shape=x.shape[1:])] if flatten else []
            model = Sequential([*first, Dense(5, activation="relu", input_dim=None if flatten else 6),
                                Dense(units, activation=act)], seed=1)
            model.compile("adam", loss)
            model.fit(x, y, epochs=2, batch_size=16, verbose=0, **kw)
            got.append(model.get_weights())
        for a, b in zip(*got, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, object])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "fortran", "read-only", "memmap"])
def test_take_rows_matches_default_take_for_any_dtype_and_layout(dtype, layout, tmp_path):
    """Batches' buffers (xp.empty of the source's shape and dtype) filled by take_rows hold what np.take's
    default mode gives, whatever the source's dtype and memory layout, for a full and a partial batch."""
    rng = np.random.default_rng(5)
    base = (rng.standard_normal((29, 8)) * 3).astype(dtype)
    if layout == "strided":
        src = np.repeat(base, 2, axis=1)[:, ::2]
    elif layout == "fortran":
        src = np.asfortranarray(base)
    elif layout == "read-only":
        src = base.copy()
        src.flags.writeable = False
    elif layout == "memmap":
        if dtype is object:
            pytest.skip("object arrays cannot be memory-mapped")
        src = np.memmap(tmp_path / "src.mm", dtype=base.dtype, mode="w+", shape=base.shape)
        src[...] = base
    else:
        src = base
    perm = rng.permutation(29)
    for idx in (perm[:16], perm[16:]):  # the full batch, then the partial last one
        out = np.empty((len(idx), 8), src.dtype)
        assert training.take_rows(np, src, idx, out) is out
        want = np.take(src, idx, axis=0)
        assert out.dtype == want.dtype
        np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("data", ["replicated", "sharded"])
def test_gather_under_data_parallelism_takes_each_ranks_rows_once(data):
    """Each rank of a (simulated) 3-rank fit gathers, through take_rows, exactly its rows of the epoch: sharded
    ranks of unequal size (one runs out of rows before the others and gets empty batches), replicated ranks
    their share of each global batch; what they gather is what np.take's default mode gathers."""
    from nnxp import distributed

    rank_rows = [23, 9, 17]
    everyone = {True: [], False: []}
    for rank in range(3):
        comm = distributed.Communicator()
        comm.rank, comm.size, comm.data, comm.rank_rows = rank, 3, data, rank_rows
        n = rank_rows[rank] if data == "sharded" else 31
        x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        y = np.arange(n) % 4
        w = np.linspace(0.5, 1.5, n)
        for fixed in (True, False):  # per-batch gathers of y and w, or once per epoch
            batches = training.Batches((x, y, w), 8, CPU, seed=2, mode="gather", comm=comm, fixed=fixed)
            order = batches.order(0)
            seen = []
            for (lo, hi, _, _), (xb, yb, wb, _) in zip(batches.plan, batches.epoch(0), strict=True):
                idx = order[lo:hi]
                np.testing.assert_array_equal(xb, np.take(x, idx, axis=0))
                np.testing.assert_array_equal(yb, np.take(y, idx, axis=0))
                np.testing.assert_array_equal(wb, np.take(w, idx, axis=0))
                seen.extend((xb[:, 0] // 2).astype(int).tolist())
            if data == "sharded":
                assert sorted(seen) == list(range(n))  # all of this rank's rows, once
            everyone[fixed] += seen
    if data == "replicated":  # the ranks' shares together: every row once
        assert sorted(everyone[True]) == sorted(everyone[False]) == list(range(31))
