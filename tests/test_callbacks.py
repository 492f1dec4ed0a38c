"""Callbacks: History, EarlyStopping, ModelCheckpoint, LearningRateScheduler, CSVLogger and the progress logger."""

import csv
import io
import math

import numpy as np
import pytest

import nnxp
from nnxp import Dense, Sequential
from nnxp.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    History,
    LearningRateScheduler,
    ModelCheckpoint,
    ProgbarLogger,
)
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.optimizers import SGD

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3))
Y = X @ np.array([[1.0], [-2.0], [0.5]])


def _model(lr=0.05):
    model = Sequential([Dense(1, input_dim=3)], seed=0)
    model.compile(SGD(lr), "mse")
    return model


class _FakeModel:
    """Just what EarlyStopping touches: stop_training and (get|set)_weights."""

    def __init__(self):
        self.stop_training = False
        self.weights = [np.zeros(1)]
        self.restored = None

    def get_weights(self):
        return [w.copy() for w in self.weights]

    def set_weights(self, weights):
        self.restored = weights
        self.weights = weights


def _drive(cb, values, key="val_loss"):
    """Feed `values` as per-epoch logs; returns the epoch at which training was stopped (or None)."""
    model = _FakeModel()
    cb.set_model(model)
    cb.on_train_begin()
    for epoch, value in enumerate(values):
        model.weights = [np.array([float(epoch)])]
        cb.on_epoch_end(epoch, {key: value})
        if model.stop_training:
            return epoch, model
    return None, model


class _ScriptedLogs(Callback):
    """Overwrites logs[key] with scripted values and records the weights after each epoch."""

    def __init__(self, key, values):
        self.key, self.values, self.weights = key, values, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.weights.append(self.model.get_weights())


# --- History -------------------------------------------------------------------------------------
def test_history_collects_logs_per_epoch():
    h = History()
    h.on_epoch_end(0, {"loss": 2.0, "accuracy": 0.5})
    h.on_epoch_end(1, {"loss": 1.0, "accuracy": 0.75})
    assert h.epoch == [0, 1]
    assert h.history == {"loss": [2.0, 1.0], "accuracy": [0.5, 0.75]}
    assert repr(h) == "History(epochs=2, keys=['loss', 'accuracy'])"


def test_fit_returns_a_history_with_training_and_validation_logs():
    model = _model()
    h = model.fit(X, Y, epochs=3, batch_size=8, validation_split=0.25, verbose=0)
    assert isinstance(h, History) and h is model.history
    assert h.epoch == [0, 1, 2]
    assert set(h.history) == {"loss", "val_loss"}
    assert all(len(v) == 3 for v in h.history.values())
    assert h.history["loss"][-1] < h.history["loss"][0]
    np.testing.assert_allclose(h.history["val_loss"][-1], model.evaluate(X[30:], Y[30:], verbose=0),
                               rtol=1e-5)


# --- EarlyStopping -------------------------------------------------------------------------------
def test_early_stopping_patience_zero_stops_at_the_first_non_improvement():
    stopped, _ = _drive(EarlyStopping(patience=0), [1.0, 0.8, 0.6, 0.7, 0.5])
    assert stopped == 3


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    # best at epoch 1; epochs 2 and 3 do not improve: patience=2 is exhausted at epoch 3 (Keras semantics:
    # "number of epochs with no improvement after which training will be stopped")
    stopped, _ = _drive(EarlyStopping(patience=2), [1.0, 0.9, 0.95, 0.93, 0.92, 0.91])
    assert stopped == 3


def test_early_stopping_patience_resets_on_improvement():
    es = EarlyStopping(patience=2)
    # improvements at epochs 0, 1, 3, 5: never two non-improving epochs in a row, so patience=2 never runs out
    stopped, _ = _drive(es, [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75])
    assert stopped is None
    assert es.best == 0.7 and es.best_epoch == 5


def test_early_stopping_min_delta():
    # 0.95 is better than 1.0 but not by min_delta=0.1: no improvement
    stopped, _ = _drive(EarlyStopping(patience=0, min_delta=0.1), [1.0, 0.95])
    assert stopped == 1
    es = EarlyStopping(patience=0, min_delta=-0.1)  # the sign of min_delta does not matter
    stopped, _ = _drive(es, [1.0, 0.85, 0.8])
    assert stopped == 2 and es.best == 0.85


@pytest.mark.parametrize(
    "monitor, mode, values, stopped",
    [
        ("val_accuracy", "auto", [0.5, 0.6, 0.55], 2),  # accuracy: higher is better
        ("val_loss", "auto", [0.5, 0.6], 1),  # loss: lower is better
        ("val_loss", "max", [0.5, 0.6, 0.55], 2),
        ("score", "min", [0.5, 0.4, 0.45], 2),
    ],
)
def test_early_stopping_mode(monitor, mode, values, stopped):
    es = EarlyStopping(monitor=monitor, mode=mode, patience=0)
    assert _drive(es, values, key=monitor)[0] == stopped


def test_early_stopping_restores_best_weights_on_a_fake_model():
    es = EarlyStopping(patience=0, restore_best_weights=True)
    stopped, model = _drive(es, [1.0, 0.5, 0.7])
    assert stopped == 2
    np.testing.assert_array_equal(model.restored[0], [1.0])  # the weights seen at epoch 1, the best


def test_early_stopping_restores_best_weights_in_fit():
    model = _model()
    script = _ScriptedLogs("loss", [1.0, 0.5, 0.7, 0.9, 1.1, 1.3])
    es = EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    h = model.fit(X, Y, epochs=6, batch_size=8, verbose=0, callbacks=[script, es])
    assert len(h.epoch) == 3 and model.stop_training
    assert es.stopped_epoch == 2 and es.best_epoch == 1
    assert not np.array_equal(script.weights[1][0], script.weights[2][0])  # training moved the weights
    for restored, best in zip(model.get_weights(), script.weights[1], strict=True):
        np.testing.assert_array_equal(restored, best)


def test_early_stopping_warns_when_the_monitored_key_is_missing():
    es = EarlyStopping(monitor="val_loss", patience=0)
    model = _model()
    with pytest.warns(UserWarning, match=r"EarlyStopping monitors 'val_loss', which is not in the logs \(\['loss'\]\)"):
        h = model.fit(X, Y, epochs=2, verbose=0, callbacks=[es])
    assert len(h.epoch) == 2  # nothing stopped


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"patience": -1}, r"`patience` must be an integer >= 0\. Received: patience=-1"),
        ({"patience": 1.5}, r"`patience` .*Received: patience=1\.5"),
        ({"patience": True}, r"`patience` .*Received: patience=True"),
        ({"mode": "median"}, r"`mode` must be 'auto', 'min' or 'max'\. Received: mode='median'"),
    ],
)
def test_early_stopping_argument_errors(kwargs, pattern):
    with pytest.raises(NnxpError, match=pattern):
        EarlyStopping(**kwargs)


# --- ModelCheckpoint -----------------------------------------------------------------------------
def test_checkpoint_writes_a_loadable_file_each_epoch(tmp_path):
    model = _model()
    script = _ScriptedLogs("loss", [3.0, 2.0, 1.0])
    ckpt = ModelCheckpoint(tmp_path / "model_{epoch}.nnxp")
    model.fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[script, ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_1.nnxp", "model_2.nnxp", "model_3.nnxp"]
    for epoch in range(3):
        loaded = nnxp.load_model(tmp_path / f"model_{epoch + 1}.nnxp")
        for got, want in zip(loaded.get_weights(), script.weights[epoch], strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(nnxp.load_model(tmp_path / "model_3.nnxp").predict(X), model.predict(X), rtol=1e-6)


def test_checkpoint_filepath_can_use_log_values(tmp_path):
    model = _model()
    script = _ScriptedLogs("loss", [0.5, 0.25])
    ckpt = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{loss:.2f}"))
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[script, ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-01-0.50", "m-02-0.25"]


def test_checkpoint_save_best_only_saves_on_improvement_only(tmp_path):
    model = _model()
    script = _ScriptedLogs("loss", [1.0, 1.2, 0.8, 0.9])
    ckpt = ModelCheckpoint(tmp_path / "m_{epoch}.nnxp", monitor="loss", save_best_only=True)
    model.fit(X, Y, epochs=4, batch_size=8, verbose=0, callbacks=[script, ckpt])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_1.nnxp", "m_3.nnxp"]
    assert ckpt.best == 0.8


def test_checkpoint_save_best_only_keeps_the_best_weights_in_one_file(tmp_path):
    model = _model()
    script = _ScriptedLogs("val_acc", [0.5, 0.9, 0.7])
    path = tmp_path / "best.nnxp"
    ckpt = ModelCheckpoint(path, monitor="val_acc", save_best_only=True)  # auto mode: higher is better
    model.fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[script, ckpt])
    for got, want in zip(nnxp.load_model(path).get_weights(), script.weights[1], strict=True):
        np.testing.assert_array_equal(got, want)


def test_checkpoint_warns_when_the_monitored_key_is_missing(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "m.nnxp", monitor="val_loss", save_best_only=True)
    with pytest.warns(UserWarning, match=r"ModelCheckpoint monitors 'val_loss'"):
        _model().fit(X, Y, epochs=1, verbose=0, callbacks=[ckpt])
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_argument_errors(tmp_path):
    with pytest.raises(NnxpTypeError, match=r"`filepath` must be a path\. Received: filepath=3"):
        ModelCheckpoint(3)
    with pytest.raises(NnxpError, match=r"`mode` must be .*Received: mode='up'"):
        ModelCheckpoint(tmp_path / "m", mode="up")


# --- LearningRateScheduler -----------------------------------------------------------------------
def test_scheduler_sets_the_rate_each_epoch():
    model = _model(lr=0.5)
    seen = []
    sched = LearningRateScheduler(lambda epoch, lr: seen.append((epoch, lr)) or 0.01 * (epoch + 1))
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[sched])
    assert [e for e, _ in seen] == [0, 1, 2]
    np.testing.assert_allclose([lr for _, lr in seen], [0.5, 0.01, 0.02])  # each call sees the current rate
    np.testing.assert_allclose(model.optimizer.learning_rate, 0.03)


def test_scheduler_logs_lr_into_the_epoch_logs():
    model = _model()
    logs_seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs_seen.append(dict(logs))

    model.fit(X, Y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: 0.1 / (e + 1)), Spy()])
    np.testing.assert_allclose([logs["lr"] for logs in logs_seen], [0.1, 0.05])


def test_a_callback_listed_before_the_scheduler_sees_lr_too():
    """The loop puts a declared `lr` into the epoch logs before any callback runs (no order trap); without a
    scheduler the logs and the history keys are as before (no `lr`)."""
    model = _model()
    logs_seen = []

    class Spy(Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs_seen.append(dict(logs))

    h = model.fit(X, Y, epochs=2, verbose=0, callbacks=[Spy(), LearningRateScheduler(lambda e, lr: 0.1 / (e + 1))])
    np.testing.assert_allclose([logs["lr"] for logs in logs_seen], [0.1, 0.05])
    np.testing.assert_allclose(h.history["lr"], [0.1, 0.05])
    logs_seen.clear()
    h = _model().fit(X, Y, epochs=1, verbose=0, callbacks=[Spy()])
    assert "lr" not in logs_seen[0] and "lr" not in h.history


def test_scheduler_lr_reaches_the_history():
    model = _model()
    h = model.fit(X, Y, epochs=3, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: 0.01 * (e + 1))])
    np.testing.assert_allclose(h.history["lr"], [0.01, 0.02, 0.03])


def test_scheduler_rate_really_drives_training():
    model = _model()
    model.build(3)
    before = model.get_weights()
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: 0.0)])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # a zero rate leaves plain SGD's weights untouched


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, "0.1", None, True])
def test_scheduler_rejects_bad_rates(bad):
    sched = LearningRateScheduler(lambda e, lr: bad)
    with pytest.raises(NnxpError, match=r"`schedule` must return a finite learning rate >= 0\. "
                                        r"Received: .* at epoch 0"):
        _model().fit(X, Y, epochs=1, verbose=0, callbacks=[sched])


def test_scheduler_needs_a_callable():
    with pytest.raises(NnxpTypeError, match=r"`schedule` must be callable as schedule\(epoch, lr\)\. Received: 0\.1"):
        LearningRateScheduler(0.1)


# --- ProgbarLogger -------------------------------------------------------------------------------
@pytest.mark.parametrize("verbose", [1, 2])
def test_progbar_prints_one_line_per_epoch(verbose):
    stream = io.StringIO()
    model = _model()
    h = model.fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[ProgbarLogger(verbose, stream=stream)])
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("Epoch")]
    assert len(lines) == 3
    for epoch, line in enumerate(lines):
        assert line.startswith(f"Epoch {epoch + 1}/3 - ")
        assert "samples/s" in line
        assert f"loss: {h.history['loss'][epoch]:.4f}" in line


def test_progbar_with_verbose_zero_is_silent():
    stream = io.StringIO()
    _model().fit(X, Y, epochs=2, verbose=0, callbacks=[ProgbarLogger(0, stream=stream)])
    assert stream.getvalue() == ""


def test_fit_verbose_controls_stdout(capsys):
    model = _model()
    model.fit(X, Y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    model.fit(X, Y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2 and all("samples/s" in line and "loss: " in line for line in lines)


_TRAIN_SCRIPT = """
import sys, time
import numpy as np
import nnxp
from nnxp.callbacks import Callback, ModelCheckpoint

class Slow(Callback):
    def on_epoch_end(self, epoch, logs=None):
        time.sleep(0.4)  # give the parent time to kill us between checkpoints

r = np.random.default_rng(0)
x = r.normal(size=(256, 4)).astype(np.float32)
y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
model = nnxp.Sequential([nnxp.Dense(16, "relu", input_dim=4), nnxp.Dropout(0.2), nnxp.Dense(2, "softmax")], seed=5)
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x, y, epochs=int(sys.argv[2]), batch_size=32, verbose=0,
          callbacks=[ModelCheckpoint(sys.argv[1]), Slow()])
"""


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    ckpt = tmp_path / "ckpt.nnxp"
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), "8"], env=env)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and nnxp.load_model(ckpt).epochs_trained >= 2:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = nnxp.load_model(ckpt)  # the last checkpoint is whole despite the kill
    done = resumed.epochs_trained
    assert 2 <= done < 8

    r = np.random.default_rng(0)
    x = r.normal(size=(256, 4)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    resumed.fit(x, y, epochs=8, batch_size=32, verbose=0, initial_epoch=done)
    straight = nnxp.Sequential([nnxp.Dense(16, "relu", input_dim=4), nnxp.Dropout(0.2),
                                nnxp.Dense(2, "softmax")], seed=5)
    straight.compile("adam", "sparse_categorical_crossentropy")
    straight.fit(x, y, epochs=8, batch_size=32, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert resumed.optimizer.iterations == straight.optimizer.iterations


def test_model_checkpoint_takes_bytes_paths(tmp_path):
    import os

    r = np.random.default_rng(0)
    model = nnxp.Sequential([nnxp.Dense(2, "softmax", input_dim=3)], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    path = os.fsencode(tmp_path / "ck-{epoch}.nnxp")
    model.fit(r.normal(size=(8, 3)), r.integers(0, 2, 8), epochs=2, verbose=0,
              callbacks=[nnxp.callbacks.ModelCheckpoint(path)])
    assert nnxp.load_model(tmp_path / "ck-2.nnxp").epochs_trained == 2


# --- argument checks before training (issue 16, section 4) -------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"min_delta": None}, NnxpError, r"`min_delta` must be a finite number\. Received: min_delta=None"),
    ({"min_delta": "abc"}, NnxpError, r"`min_delta` .*Received: min_delta='abc'"),
    ({"min_delta": math.nan}, NnxpError, r"`min_delta` .*Received: min_delta=nan"),
    ({"min_delta": math.inf}, NnxpError, r"`min_delta` .*Received: min_delta=inf"),
    ({"monitor": 3}, NnxpTypeError, r"`monitor` .*Received: monitor=3"),
    ({"monitor": ""}, NnxpTypeError, r"`monitor` .*Received: monitor=''"),
    ({"monitor": None}, NnxpTypeError, r"`monitor` .*Received: monitor=None"),
    ({"mode": 3}, NnxpError, r"`mode` .*Received: mode=3"),
    ({"restore_best_weights": "yes"}, NnxpTypeError, r"`restore_best_weights` .*Received: restore_best_weights='yes'"),
    ({"verbose": -1}, NnxpError, r"`verbose` .*Received: verbose=-1"),
    ({"patience": np.int64(-1)}, NnxpError, r"`patience`"),
])
def test_early_stopping_refuses_bad_arguments_with_nnxp_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        EarlyStopping(**kwargs)


def test_early_stopping_takes_numpy_numbers():
    es = EarlyStopping(min_delta=np.float32(0.5), patience=np.int64(1))
    assert es.min_delta == 0.5 and es.patience == 1
    assert _drive(es, [1.0, 0.9, 0.8])[0] == 1  # 0.9 is not 0.5 better than 1.0: patience 1 runs out


@pytest.mark.parametrize("template, error, pattern", [
    ("m{1.nnxp", NnxpError, r"`filepath` is not a valid format template"),
    ("m}.nnxp", NnxpError, r"`filepath` is not a valid format template"),
    ("m-{}.nnxp", NnxpError, r"fields must be log names"),
    ("m-{0}.nnxp", NnxpError, r"fields must be log names"),
    ("m-{loss.real}.nnxp", NnxpError, r"fields must be log names"),
    ("m-{loss[0]}.nnxp", NnxpError, r"fields must be log names"),
    ("m-{loss:{w}}.nnxp", NnxpError, r"fields must be log names"),
])
def test_checkpoint_refuses_broken_templates_when_created(template, error, pattern):
    with pytest.raises(error, match=pattern):
        ModelCheckpoint(template)


@pytest.mark.parametrize("template, fit_kwargs, pattern", [
    ("m-{val_loss:.2f}.nnxp", {}, r"uses \['val_loss'\], which this fit does not log \(validation values need"),
    ("m-{accuracy}.nnxp", {}, r"uses \['accuracy'\]"),
    ("m-{loss:d}.nnxp", {}, r"cannot be formatted"),
    ("m-{epoch:s}.nnxp", {}, r"cannot be formatted"),
    ("nope/m-{epoch}.nnxp", {}, r"existing folder"),
    ("m-{val_mae:.2f}.nnxp", {"validation_split": 0.25}, r"uses \['val_mae'\]"),
    ("m-{loss:.1000f}.nnxp", {}, r"file names of about 1009 bytes; its folder allows"),  # ENAMETOOLONG after epoch 1
    ("m-{epoch:>300}.nnxp", {}, r"file names of about 307 bytes; its folder allows"),
])
def test_checkpoint_template_is_checked_before_any_epoch_trains(tmp_path, monkeypatch, template, fit_kwargs, pattern):
    monkeypatch.chdir(tmp_path)
    model = _model()
    model.build(3)
    before = model.get_weights()
    with pytest.raises(NnxpError, match=pattern):
        model.fit(X, Y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(template)], **fit_kwargs)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # not one batch was trained
    assert model.epochs_trained == 0 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("template, fit_kwargs, callbacks, expected", [
    ("m-{val_loss:.2f}.nnxp", {"validation_split": 0.25}, [], "m-"),
    ("m-{epoch:03d}-{loss:.3f}.nnxp", {}, [], "m-001-"),
    ("m-{lr:.3f}.nnxp", {}, [], "m-0.050"),  # the optimizer's rate, without a scheduler
    ("m-{lr:.3f}.nnxp", {}, ["scheduler"], "m-0.020"),
    ("m-{{literal}}-{epoch}.nnxp", {}, [], "m-{literal}-1"),
])
def test_checkpoint_templates_that_fit_can_fill(tmp_path, template, fit_kwargs, callbacks, expected):
    model = _model()
    cbs = [LearningRateScheduler(lambda e, lr: 0.02)] if callbacks else []
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / template)), *cbs],
              **fit_kwargs)
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].startswith(expected), names


def test_checkpoint_may_use_keys_another_callback_declares(tmp_path):
    class Tagger(Callback):
        log_keys = ("tag",)

        def on_epoch_end(self, epoch, logs=None):
            logs["tag"] = 7.0

    _model().fit(X, Y, epochs=1, verbose=0,
                 callbacks=[Tagger(), ModelCheckpoint(str(tmp_path / "m-{tag:.0f}.nnxp"))])
    assert [p.name for p in tmp_path.iterdir()] == ["m-7.nnxp"]


@pytest.mark.parametrize("rate", [np.float32(0.01), np.float64(0.01), np.int64(0), 0.01, 0])
def test_scheduler_accepts_any_real_number_type(rate):
    model = _model()
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[LearningRateScheduler(lambda e, lr: rate)])
    assert model.optimizer.learning_rate == pytest.approx(float(rate)) and type(model.optimizer.learning_rate) is float


def test_checkpoint_verbose_starts_a_maximised_metric_from_minus_inf(tmp_path, capsys):
    # Keras: "val_accuracy improved from -inf to ..."; "from inf" reads as if accuracy had got worse
    ckpt = ModelCheckpoint(tmp_path / "m.nnxp", monitor="accuracy", save_best_only=True, verbose=1)
    _model().fit(X, Y, epochs=1, verbose=0, callbacks=[_ScriptedLogs("accuracy", [0.75]), ckpt])
    path = tmp_path / "m.nnxp"
    assert capsys.readouterr().out.strip() == f"Epoch 1: accuracy improved from -inf to 0.75000, saving model to {path}"


def test_checkpoint_verbose_names_the_epoch_and_the_metric(tmp_path, capsys):
    script = _ScriptedLogs("loss", [1.0, 1.2, 0.8])
    ckpt = ModelCheckpoint(tmp_path / "m.nnxp", monitor="loss", save_best_only=True, verbose=1)
    _model().fit(X, Y, epochs=3, batch_size=8, verbose=0, callbacks=[script, ckpt])
    path = tmp_path / "m.nnxp"
    assert capsys.readouterr().out.splitlines() == [
        f"Epoch 1: loss improved from inf to 1.00000, saving model to {path}",
        "Epoch 2: loss did not improve from 1.00000",
        f"Epoch 3: loss improved from 1.00000 to 0.80000, saving model to {path}",
    ]
    every = ModelCheckpoint(tmp_path / "e{epoch}.nnxp", monitor="loss", verbose=1)
    _model().fit(X, Y, epochs=1, verbose=0, callbacks=[_ScriptedLogs("loss", [0.5]), every])
    assert capsys.readouterr().out.strip() == f"Epoch 1: saving model to {tmp_path / 'e1.nnxp'} (loss=0.50000)"


def test_fit_tells_callbacks_the_model_and_the_run_through_set_model_and_set_params():
    class Told(Callback):
        log_keys = ("lr",)

        def on_train_begin(self, logs=None):
            self.seen = (self.model, dict(self.params))

    cb = Told()
    model = _model()
    model.fit(X, Y, epochs=3, batch_size=16, validation_split=0.25, verbose=0, callbacks=[cb])
    assert cb.seen[0] is model
    # 30 training rows (10 held out) in batches of 16: 2 steps per epoch
    assert cb.seen[1] == {"epochs": 3, "steps": 2, "samples": 30, "batch_size": 16, "verbose": 0,
                          "metrics": ["loss", "val_loss", "lr"]}
    out = io.StringIO()
    bar = ProgbarLogger(verbose=2, stream=out)  # driven by hand: it reads only what set_params gave it
    bar.set_params({"epochs": 7, "samples": 5})
    bar.on_train_begin()
    bar.on_epoch_begin(0)
    bar.on_epoch_end(0, {"loss": 0.25})
    assert out.getvalue().startswith("Epoch 1/7 - ") and out.getvalue().rstrip().endswith("loss: 0.2500")
    assert "samples/s" in out.getvalue()


def test_progbar_without_set_params_prints_what_it_knows():
    # (driven by hand without set_params it raised TypeError on None["epochs"]; Keras's bar runs without a target)
    out = io.StringIO()
    bar = ProgbarLogger(verbose=2, stream=out)
    bar.on_train_begin()
    bar.on_epoch_begin(2)
    bar.on_epoch_end(2, {"loss": 0.5})
    line = out.getvalue().strip()
    assert line.startswith("Epoch 3 - ") and "/" not in line.split(" - ")[0] and "samples/s" not in line
    assert line.endswith("loss: 0.5000")
    out2 = io.StringIO()
    ProgbarLogger(verbose=2, stream=out2).on_epoch_end(0, {"loss": 1.0})  # not even on_epoch_begin
    assert out2.getvalue().startswith("Epoch 1 - ")


# --- CSVLogger ------------------------------------------------------------------------------------------------


def _rows(path, separator=","):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f, delimiter=separator))


def _classifier():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64)
    model = Sequential([Dense(8, "relu", input_dim=4), Dense(2, "softmax")], seed=1)
    model.compile(SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, x, y


def test_csv_logger_writes_the_history_of_a_real_fit(tmp_path):
    model, x, y = _classifier()
    path = tmp_path / "log.csv"
    history = model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, verbose=0, callbacks=[CSVLogger(path)])
    header, *rows = _rows(path)
    assert header == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]  # counted from 0, as Keras writes it
    for j, key in enumerate(header[1:], start=1):
        assert [float(r[j]) for r in rows] == history.history[key]  # written exactly (repr round-trips)
    assert history.history["loss"][-1] < history.history["loss"][0]  # it trained: the rows are not constant


def test_csv_logger_takes_lr_from_a_scheduler_that_runs_after_it(tmp_path):
    path = tmp_path / "lr.csv"
    model = _model()
    model.fit(X, Y, epochs=3, verbose=0, callbacks=[CSVLogger(path, separator=";"),
                                                    LearningRateScheduler(lambda e, lr: 0.01 * (e + 1))])
    header, *rows = _rows(path, ";")
    assert header == ["epoch", "loss", "lr"]
    np.testing.assert_allclose([float(r[2]) for r in rows], [0.01, 0.02, 0.03])


def test_csv_logger_appends_a_resumed_run_under_one_header(tmp_path):
    path = tmp_path / "run.csv"
    model = _model()
    first = model.fit(X, Y, epochs=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    second = model.fit(X, Y, epochs=4, initial_epoch=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    header, *rows = _rows(path)
    assert header == ["epoch", "loss"]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert [float(r[1]) for r in rows] == first.history["loss"] + second.history["loss"]
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[CSVLogger(path)])  # append=False: a new file
    assert len(_rows(path)) == 2


def test_csv_logger_refuses_to_append_under_another_header_before_training(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("epoch,loss,accuracy\n0,1.0,0.5\n")
    model = _model()
    with pytest.raises(NnxpError, match=r"holds columns \['epoch', 'loss', 'accuracy'\].*logs \['epoch', 'loss'\]"):
        model.fit(X, Y, epochs=2, verbose=0, callbacks=[CSVLogger(path, append=True)])
    assert path.read_text() == "epoch,loss,accuracy\n0,1.0,0.5\n"  # untouched
    assert model.epochs_trained == 0 and not model.built  # nothing trained; fit's build undone


def test_csv_logger_keeps_finished_epochs_when_training_stops_with_an_error(tmp_path):
    class Boom(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("stop here")

    path = tmp_path / "partial.csv"
    model = _model()
    logger = CSVLogger(path)
    with pytest.raises(RuntimeError, match="stop here"):
        model.fit(X, Y, epochs=5, verbose=0, callbacks=[logger, Boom()])
    header, *rows = _rows(path)
    assert [int(r[0]) for r in rows] == [0, 1, 2]  # the logger ran before Boom in epoch 2
    assert logger._file is None  # closed by on_train_end


def test_csv_logger_stops_with_early_stopping(tmp_path):
    path = tmp_path / "early.csv"
    model = _model(lr=0.0)  # nothing improves: patience 1 stops after the second epoch
    model.fit(X, Y, epochs=10, verbose=0, callbacks=[EarlyStopping("loss", patience=1), CSVLogger(path)])
    assert [r[0] for r in _rows(path)[1:]] == ["0", "1"]


def test_csv_logger_needs_an_existing_folder_before_any_epoch_trains(tmp_path):
    model = _model()
    with pytest.raises(NnxpError, match="must be in an existing folder"):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[CSVLogger(tmp_path / "missing" / "log.csv")])
    assert model.epochs_trained == 0


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(filename=3), NnxpTypeError, "Received: filename=3"),
    (dict(filename="a.csv", separator=",,"), NnxpError, "Received: separator=',,'"),
    (dict(filename="a.csv", separator="\n"), NnxpError, "separator"),
    (dict(filename="a.csv", append="yes"), NnxpTypeError, "Received: append='yes'"),
])
def test_csv_logger_argument_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        CSVLogger(**kwargs)
