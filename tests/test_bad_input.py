"""Every public entry point refuses bad input the same way, and touches nothing when it does.

One table of cases. Each case runs against a freshly built, seeded model trained for one epoch
(so the optimizer has state and a step count), makes one bad call, and checks that

- it raises an ``nnxp.NnxpError`` that is also a ``ValueError`` or ``TypeError`` as the case says,
- the message matches the case's pattern (it names the argument, and usually what was received),
- the weights, the optimizer state, its ``iterations`` (and the model's layers, optimizer, loss,
  history and epoch count) are bit-identical afterwards.

CLI cases call ``nnxp.cli.main([...])`` and expect exit code 2 with one line on stderr.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import nnxp
from nnxp import Dense, Dropout, NnxpError, Sequential, cli, optimizers
from nnxp.datasets import load_fashion_mnist, make_circles, one_hot, train_test_split
from nnxp.datasets import mnist as mnist_module

N, FEATURES, CLASSES = 16, 4, 3


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[SimpleNamespace], Any]  # makes the bad call; gets the context (model, x, y, tmp_path)
    match: str  # regex the message must match (re.search, DOTALL)
    exc: type = ValueError  # the built-in the NnxpError must also be: ValueError or TypeError
    model: str = "sparse"  # which trained model the case gets: sparse, categorical or binary
    cli: bool = False  # call returns an exit code; the message is read from stderr


# --- the trained models --------------------------------------------------------------------------------------


def _trained(kind: str) -> tuple[Sequential, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    labels = rng.integers(0, CLASSES, N)
    if kind == "sparse":
        out, loss, y = Dense(CLASSES, "softmax"), "sparse_categorical_crossentropy", labels
    elif kind == "categorical":
        out, loss, y = Dense(CLASSES, "softmax"), "categorical_crossentropy", one_hot(labels, CLASSES)
    elif kind == "binary":
        out, loss, y = Dense(1, "sigmoid"), "binary_crossentropy", (labels > 0).astype(np.float32)
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(kind)
    model = Sequential([Dense(8, "relu", input_dim=FEATURES), Dropout(0.1), out], seed=0)
    model.compile(optimizers.Adam(1e-2), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    return model, x, y


def _snapshot(model: Sequential) -> dict[str, Any]:
    opt = model.optimizer
    return {
        "weights": [w.copy() for w in model.get_weights()],
        "state": {k: np.array(v, copy=True) for k, v in opt.state.items()},
        "iterations": opt.iterations,
        "layers": [id(layer) for layer in model.layers],
        "optimizer": id(opt),
        "loss": id(model.loss),
        "history": id(model.history),
        "epochs_trained": model.epochs_trained,
    }


def _assert_bit_identical(a: list[np.ndarray] | dict, b: list[np.ndarray] | dict, what: str) -> None:
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{what}: keys changed"
        a, b = [a[k] for k in sorted(a)], [b[k] for k in sorted(b)]
    assert len(a) == len(b), f"{what}: count changed"
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.dtype == v.dtype and u.shape == v.shape, f"{what}[{i}]: dtype or shape changed"
        assert u.tobytes() == v.tobytes(), f"{what}[{i}]: values changed"


# --- small helpers for the table -------------------------------------------------------------------------------


def _fit(c, **kwargs):
    args = {"x": c.x, "y": c.y, "epochs": 1, "batch_size": 8, "verbose": 0, **kwargs}
    return c.model.fit(**args)


def _with(a: np.ndarray, index: tuple, value: float) -> np.ndarray:
    a = np.array(a, dtype=np.float64 if a.dtype.kind != "f" else a.dtype, copy=True)
    a[index] = value
    return a


def _nan_last_weight(c):
    weights = c.model.get_weights()
    weights[-1] = _with(weights[-1], (0,), np.nan)
    c.model.set_weights(weights)


def _wrong_shape_weight(c):
    weights = c.model.get_weights()
    weights[-1] = np.zeros(weights[-1].shape[0] + 1, dtype=np.float32)
    c.model.set_weights(weights)


def _not_a_zip(c):
    path = c.tmp_path / "model.nnxp"
    path.write_text("this is not a zip file\n")
    nnxp.load_model(path)


def _add_twice(c):
    dense = Dense(2, input_dim=3)
    fresh = Sequential([dense], seed=0)
    c.extra = fresh
    fresh.add(dense)


def _no_fashion_mnist(c):
    # nothing in `path`, and no cache or system folder to fall back on
    c.monkeypatch.delenv("NNXP_DATA", raising=False)
    c.monkeypatch.setenv("XDG_CACHE_HOME", str(c.tmp_path / "cache"))
    src = mnist_module._SOURCES["fashion-mnist"]
    c.monkeypatch.setitem(mnist_module._SOURCES, "fashion-mnist", dataclasses.replace(src, system_dirs=()))
    load_fashion_mnist(path=c.tmp_path / "empty", download=False)


def _cli(*argv: str) -> Callable[[SimpleNamespace], int]:
    return lambda c: cli.main(["train", "--quiet", "--epochs", "1", *argv])


class _NotACallback:
    def on_epoch_end(self, epoch, logs=None):
        pass




# --- the table -----------------------------------------------------------------------------------------------

RECEIVED = r".*Received"

CASES = [
    # Sequential(...)
    Case("Sequential-device-gpu", lambda c: Sequential(device="gpu"), r"`device` must be 'cpu', 'cuda'.*device='gpu'"),
    Case("Sequential-device-cuda:x", lambda c: Sequential(device="cuda:x"), r"`device`.*Received: device='cuda:x'"),
    Case("Sequential-device-cpu:1", lambda c: Sequential(device="cpu:1"), r"`device`.*Received: device='cpu:1'"),
    Case("Sequential-device-not-a-string", lambda c: Sequential(device=5), r"`device`.*device=5", TypeError),
    Case("to-device-gpu", lambda c: c.model.to("gpu"), r"`device`.*Received: device='gpu'"),
    Case("Sequential-dtype-float16", lambda c: Sequential(dtype="float16"), r"`dtype` must be one of.*'float16'"),
    Case("Sequential-seed-negative", lambda c: Sequential(seed=-1), r"`seed` must be an integer >= 0.*seed=-1"),
    Case("Sequential-seed-float", lambda c: Sequential(seed=1.5), r"`seed`.*Received: seed=1.5"),
    # add
    Case("add-not-a-layer", lambda c: c.model.add("dense"), r"`layer` must be an nnxp layer.*'dense'", TypeError),
    Case("add-same-layer-twice", _add_twice, r"`layer` 'dense' is already in this model"),
    Case("add-after-build", lambda c: c.model.add(Dense(2)), r"cannot add a layer to a model that is already built"),
    # compile
    Case("compile-unknown-optimizer", lambda c: c.model.compile("adma", "mse"),
         r"`optimizer` must be one of.*Received: optimizer='adma'.*Did you mean \"adam\""),
    Case("compile-optimizer-not-a-name", lambda c: c.model.compile(3, "mse"), r"`optimizer`.*optimizer=3", TypeError),
    Case("compile-unknown-loss", lambda c: c.model.compile("adam", "sparse_categorical_crossentropyy"),
         r"`loss` must be one of.*Did you mean \"sparse_categorical_crossentropy\""),
    Case("compile-loss-None", lambda c: c.model.compile("adam", None), r"`loss` must be given.*loss=None"),
    Case("compile-loss-not-a-name", lambda c: c.model.compile("adam", 3), r"`loss`.*loss=3", TypeError),
    Case("compile-unknown-metric", lambda c: c.model.compile("adam", "mse", metrics=["maee"]),
         r"`metrics`.*Received: 'maee'.*Did you mean \"mae\""),
    Case("compile-metrics-bare-string",
         lambda c: c.model.compile("adam", "sparse_categorical_crossentropy", metrics="accuracy"),
         r"`metrics`.*'accuracy'", TypeError),
    Case("compile-metrics-not-a-list", lambda c: c.model.compile("adam", "mse", metrics=5), r"`metrics`",
         TypeError),
    Case("compile-optimizer-config-unknown-key", lambda c: c.model.compile({"name": "adam", "lr": 0.1}, "mse"),
         r"`optimizer`.*`lr`.*use learning_rate instead"),
    Case("compile-optimizer-config-without-name", lambda c: c.model.compile({"learning_rate": 0.1}, "mse"),
         r"`optimizer` must be one of.*optimizer=None"),
    Case("compile-accuracy-with-mse", lambda c: c.model.compile("adam", "mse", metrics=["accuracy"]),
         r"metric 'accuracy' needs a classification loss.*Received: loss='mse'"),
    Case("compile-mae-with-sparse-labels",
         lambda c: c.model.compile("adam", "sparse_categorical_crossentropy", metrics=["mae"]),
         r"metric 'mae' needs one-hot targets"),
    # fit: x
    Case("fit-x-rank-1", lambda c: _fit(c, x=c.x[:, 0]), r"`x` must be 2-D.*Received: an array of shape \(16,\)"),
    Case("fit-x-rank-3", lambda c: _fit(c, x=c.x[:, :, None]), r"`x` must be 2-D.*shape \(16, 4, 1\)"),
    Case("fit-x-wrong-feature-count", lambda c: _fit(c, x=c.x[:, :3]), r"`x` must have 4 features.*\(16, 3\)"),
    Case("fit-x-y-length-mismatch", lambda c: _fit(c, y=c.y[:-1]),
         r"`x` and `y` must have the same number of samples.*x has 16, y has 15"),
    Case("fit-empty-arrays", lambda c: _fit(c, x=c.x[:0], y=c.y[:0]), r"`x` must not be empty.*\(0, 4\)"),
    Case("fit-x-object-dtype", lambda c: _fit(c, x=c.x.astype(object)), r"`x` must hold numbers.*dtype object",
         TypeError),
    Case("fit-x-strings", lambda c: _fit(c, x=c.x.astype(str)), r"`x` must hold numbers.*dtype <U", TypeError),
    Case("fit-x-ragged-list", lambda c: _fit(c, x=[[1.0, 2.0], [3.0]]), r"`x` must be a numeric array", TypeError),
    Case("fit-x-complex", lambda c: _fit(c, x=c.x + 1j), r"`x` must hold numbers.*dtype complex", TypeError),
    Case("fit-x-no-features", lambda c: _fit(c, x=np.zeros((N, 0))), r"`x` must not be empty.*\(16, 0\)"),
    Case("fit-x-None", lambda c: _fit(c, x=None), r"`x` must be an array.*x=None", TypeError),
    Case("fit-x-nan", lambda c: _fit(c, x=_with(c.x, (3, 1), np.nan)), r"`x` must be finite.*1 NaN or infinite"),
    Case("fit-x-inf", lambda c: _fit(c, x=_with(c.x, (0, 0), -np.inf)), r"`x` must be finite.*1 NaN or infinite"),
    # fit: y
    Case("fit-y-nan", lambda c: _fit(c, y=_with(c.y, (2, 0), np.nan)), r"`y` must be finite.*NaN",
         model="categorical"),
    Case("fit-y-inf", lambda c: _fit(c, y=_with(c.y, (1,), np.inf)), r"`y` must be finite.*1 NaN or infinite"),
    Case("fit-y-rank-3-sparse", lambda c: _fit(c, y=c.y[:, None, None]),
         r"`y` must be integer class labels of shape \(N,\).*\(16, 1, 1\)"),
    Case("fit-y-strings", lambda c: _fit(c, y=c.y.astype(str)), r"`y` must hold numbers", TypeError),
    Case("fit-sparse-label-out-of-range", lambda c: _fit(c, y=_with(c.y, (5,), CLASSES).astype(np.int64)),
         r"`y` labels must lie in \[0, 2\].*Received: labels from 0 to 3"),
    Case("fit-sparse-label-negative", lambda c: _fit(c, y=_with(c.y, (5,), -1).astype(np.int64)),
         r"`y` labels must lie in \[0, 2\].*labels from -1"),
    Case("fit-sparse-label-fractional", lambda c: _fit(c, y=_with(c.y, (5,), 0.5)),
         r"`y` must hold whole-number class labels.*fractional"),
    Case("fit-sparse-label-one-hot", lambda c: _fit(c, y=one_hot(c.y, CLASSES)),
         r"`y` must be integer class labels of shape \(N,\).*categorical_crossentropy"),
    Case("fit-one-hot-wrong-width", lambda c: _fit(c, y=np.pad(c.y, ((0, 0), (0, 1)))),
         r"`y` must have 3 columns.*\(16, 4\)", model="categorical"),
    Case("fit-categorical-integer-labels", lambda c: _fit(c, y=c.y.argmax(axis=1)),
         r"`y` must have 3 columns.*sparse_categorical_crossentropy", model="categorical"),
    Case("fit-binary-target-above-1", lambda c: _fit(c, y=_with(c.y, (0,), 2.0)),
         r"`y` must lie in \[0, 1\] for binary cross-entropy.*to 2.0", model="binary"),
    Case("fit-binary-target-negative", lambda c: _fit(c, y=_with(c.y, (0,), -0.5)),
         r"`y` must lie in \[0, 1\].*from -0.5", model="binary"),
    # fit: the other arguments
    Case("fit-batch_size-0", lambda c: _fit(c, batch_size=0), r"`batch_size` must be a positive integer.*=0"),
    Case("fit-batch_size--1", lambda c: _fit(c, batch_size=-1), r"`batch_size`" + RECEIVED + r": batch_size=-1"),
    Case("fit-batch_size-2.5", lambda c: _fit(c, batch_size=2.5), r"`batch_size`" + RECEIVED + r": batch_size=2.5"),
    Case("fit-batch_size-True", lambda c: _fit(c, batch_size=True), r"`batch_size`" + RECEIVED + r": batch_size=True"),
    Case("fit-epochs-0", lambda c: _fit(c, epochs=0), r"`epochs` must be a positive integer.*epochs=0"),
    Case("fit-validation_split--0.1", lambda c: _fit(c, validation_split=-0.1),
         r"`validation_split` must be a number in \[0, 1\).*-0.1"),
    Case("fit-validation_split-1.0", lambda c: _fit(c, validation_split=1.0), r"`validation_split`.*=1.0"),
    Case("fit-validation_split-too-small", lambda c: _fit(c, validation_split=0.01),
         r"`validation_split`=0.01 leaves an empty training or validation set"),
    Case("fit-validation_data-one-element", lambda c: _fit(c, validation_data=(c.x,)),
         r"`validation_data` must be a tuple \(x_val, y_val\)"),
    Case("fit-validation_data-wrong-features", lambda c: _fit(c, validation_data=(c.x[:, :2], c.y)),
         r"`validation_data\[0\]` must have 4 features"),
    Case("fit-validation_data-bad-labels", lambda c: _fit(c, validation_data=(c.x, c.y + 10)),
         r"`validation_data\[1\]` labels must lie in \[0, 2\]"),
    Case("fit-callbacks-not-Callback", lambda c: _fit(c, callbacks=[_NotACallback()]),
         r"`callbacks` entries must be nnxp Callback instances", TypeError),
    Case("fit-callbacks-single-instance", lambda c: _fit(c, callbacks=nnxp.callbacks.EarlyStopping()),
         r"`callbacks`", TypeError),
    Case("fit-initial_epoch-negative", lambda c: _fit(c, initial_epoch=-1),
         r"`initial_epoch` must be an integer >= 0.*initial_epoch=-1"),
    # evaluate / predict
    Case("evaluate-wrong-feature-count", lambda c: c.model.evaluate(c.x[:, :2], c.y, verbose=0),
         r"`x` must have 4 features"),
    Case("evaluate-batch_size-0", lambda c: c.model.evaluate(c.x, c.y, batch_size=0, verbose=0),
         r"`batch_size` must be a positive integer"),
    Case("evaluate-y-out-of-range", lambda c: c.model.evaluate(c.x, c.y * 7, verbose=0), r"`y` labels must lie in"),
    Case("predict-x-rank-3", lambda c: c.model.predict(c.x[None]), r"`x` must be 2-D"),
    Case("predict-ragged-list", lambda c: c.model.predict([[1.0, 2.0], [3.0]]), r"`x` must be a numeric array",
         TypeError),
    Case("predict-x-nan", lambda c: c.model.predict(_with(c.x, (0, 0), np.nan)), r"`x` must be finite"),
    Case("predict-batch_size-negative", lambda c: c.model.predict(c.x, batch_size=-4), r"`batch_size`.*=-4"),
    # layers
    Case("Dense-units-0", lambda c: Dense(0), r"`units` must be a positive integer.*units=0"),
    Case("Dense-units--3", lambda c: Dense(-3), r"`units`.*units=-3"),
    Case("Dense-units-2.5", lambda c: Dense(2.5), r"`units`.*units=2.5"),
    Case("Dense-unknown-activation", lambda c: Dense(4, "relux"),
         r"`activation` must be one of.*'relux'.*Did you mean \"relu\""),
    Case("Dense-activation-not-a-name", lambda c: Dense(4, activation=np.tanh), r"`activation`", TypeError),
    Case("Dense-unknown-initializer", lambda c: Dense(4, kernel_initializer="glorot_unifrom"),
         r"`kernel_initializer`.*Did you mean \"glorot_uniform\""),
    Case("Dense-unknown-regularizer", lambda c: Dense(4, kernel_regularizer="l3"), r"`kernel_regularizer`.*'l3'"),
    Case("Dense-use_bias-not-bool", lambda c: Dense(4, use_bias="yes"), r"`use_bias`.*'yes'", TypeError),
    Case("Dropout-rate-1.0", lambda c: Dropout(1.0), r"`rate` must be a number in \[0, 1\).*rate=1.0"),
    Case("Dropout-rate--0.1", lambda c: Dropout(-0.1), r"`rate`.*rate=-0.1"),
    # optimizers
    Case("SGD-learning_rate-negative", lambda c: optimizers.SGD(-0.1), r"`learning_rate`.*learning_rate=-0.1"),
    Case("Adam-learning_rate-nan", lambda c: optimizers.Adam(math.nan), r"`learning_rate` must be a finite number"),
    Case("Adam-beta_1-1", lambda c: optimizers.Adam(beta_1=1.0), r"`beta_1`.*must be < 1.*beta_1=1.0"),
    Case("SGD-momentum-1.5", lambda c: optimizers.SGD(momentum=1.5), r"`momentum`.*\[0.0, 1.0\].*momentum=1.5"),
    Case("Adam-epsilon-0", lambda c: optimizers.Adam(epsilon=0), r"`epsilon` must be a finite number in \(0.0"),
    Case("SGD-clipnorm-0", lambda c: optimizers.SGD(clipnorm=0.0), r"`clipnorm`.*clipnorm=0.0"),
    Case("RMSprop-rho-negative", lambda c: optimizers.RMSprop(rho=-0.5), r"`rho`.*rho=-0.5"),
    # set_weights
    Case("set_weights-wrong-count", lambda c: c.model.set_weights(c.model.get_weights()[:-1]),
         r"`weights` must be a list of 4 arrays. Received: 3"),
    Case("set_weights-wrong-shape", _wrong_shape_weight, r"`weights\[3\]` \(dense_1.bias\) must have shape \(3,\)"),
    Case("set_weights-nan", _nan_last_weight, r"`weights\[3\]`.*must be finite"),
    Case("layer-set_weights-wrong-count", lambda c: c.model.layers[2].set_weights(c.model.layers[2].get_weights()[:1]),
         r"`weights` must be a list of 2 arrays. Received: 1; expected, in order: dense_1.kernel \(8, 3\)"),
    Case("layer-set_weights-wrong-shape", lambda c: c.model.layers[0].set_weights([np.ones((8, 4)), np.ones(8)]),
         r"`weights\[0\]` \(dense.kernel\) must have shape \(4, 8\). Received: \(8, 4\)"),
    Case("layer-set_weights-nan", lambda c: c.model.layers[0].set_weights([np.ones((4, 8)), _with(np.ones(8), (2,),
         np.nan)]), r"`weights\[1\]` \(dense.bias\) must be finite"),
    Case("get_layer-unknown-name", lambda c: c.model.get_layer("dense_2"),
         r"No such layer: 'dense_2'. Existing layers are: \['dense', 'dropout', 'dense_1'\]"),
    Case("get_layer-index-out-of-range", lambda c: c.model.get_layer(index=3), r"`index`.*Received: index=3"),
    # save / load
    Case("load_model-missing-file", lambda c: nnxp.load_model(c.tmp_path / "missing.nnxp"),
         r"`path` must be an existing model file.*missing.nnxp"),
    Case("load_model-not-a-zip", _not_a_zip, r"model.nnxp' is damaged or not an nnxp model"),
    Case("load_model-a-directory", lambda c: nnxp.load_model(c.tmp_path), r"`path` must be an existing model file"),
    Case("save-to-a-directory", lambda c: c.model.save(c.tmp_path), r"`path`"),
    Case("save-into-a-missing-folder", lambda c: c.model.save(c.tmp_path / "no-such-folder" / "m.nnxp"), r"`path`"),
    Case("save-path-None", lambda c: c.model.save(None), r"`path`", TypeError),
    Case("load_model-path-None", lambda c: nnxp.load_model(None), r"`path`", TypeError),
    # datasets
    Case("make_circles-n_samples-0", lambda c: make_circles(n_samples=0), r"`n_samples` must be an integer >= 1"),
    Case("one_hot-negative-labels", lambda c: one_hot(np.array([0, -1, 2]), 3), r"`labels` must lie in \[0, 2\]"),
    Case("train_test_split-test_size-1.5", lambda c: train_test_split(c.x, c.y, test_size=1.5),
         r"`test_size` must be a fraction in \(0, 1\) or a row count.*test_size=1.5"),
    Case("train_test_split-mismatched-lengths", lambda c: train_test_split(c.x, c.y[:-2]),
         r"same number of rows. Received lengths: \[16, 14\]"),
    Case("load_fashion_mnist-nothing-there", _no_fashion_mnist,
         r"Fashion-MNIST files not found. Looked in: .*empty.*download=False"),
    # the command line: exit code 2 and one line on stderr, naming the flag (not the Python argument behind it)
    Case("cli-epochs--1", _cli("--epochs", "-1"), r"^nnxp: error: argument --epochs: must be a positive integer",
         cli=True),
    Case("cli-batch-size-0", _cli("--batch-size", "0"), r"^nnxp: error: argument --batch-size:.*Received: 0",
         cli=True),
    Case("cli-lr-nan", _cli("--lr", "nan", "--schedule", "constant"), r"^nnxp: error: argument --lr:.*nan", cli=True),
    Case("cli-lr-negative-cosine", _cli("--lr", "-0.1"), r"^nnxp: error: argument --lr:.*-0.1", cli=True),
    Case("cli-dropout-1.0", _cli("--dropout", "1.0"), r"^nnxp: error: argument --dropout:.*Received: 1.0", cli=True),
    Case("cli-validation-split--0.1", _cli("--validation-split", "-0.1"),
         r"^nnxp: error: argument --validation-split", cli=True),
    Case("cli-layers-negative", _cli("--layers", "8,-4"), r"^nnxp: error: argument --layers:.*'8,-4'", cli=True),
    Case("cli-activation-typo", _cli("--activation", "tanhh"),
         r"^nnxp: error: argument --activation:.*Did you mean \"tanh\"", cli=True),
]


def _param(entry):
    return pytest.param(entry, id=entry.id) if isinstance(entry, Case) else entry  # xfail entries are params


def _case_of(entry) -> Case:
    return entry if isinstance(entry, Case) else entry.values[0]


def test_the_table_has_at_least_45_distinct_cases():
    cases = [_case_of(entry) for entry in CASES]
    assert len(cases) >= 45
    assert len({case.id for case in cases}) == len(cases), "case ids must be unique"


@pytest.mark.parametrize("case", [_param(entry) for entry in CASES])
def test_bad_input_raises_a_named_error_and_changes_nothing(case: Case, tmp_path, monkeypatch, capsys):
    model, x, y = _trained(case.model)
    ctx = SimpleNamespace(model=model, x=x, y=y, tmp_path=tmp_path, monkeypatch=monkeypatch, extra=None)
    before = _snapshot(model)
    capsys.readouterr()

    if case.cli:
        code = case.call(ctx)
        err = capsys.readouterr().err
        assert code == 2, f"exit code {code}, stderr: {err!r}"
        assert err.count("\n") == 1 and "Traceback" not in err, f"not one line: {err!r}"
        message = err
    else:
        with pytest.raises(NnxpError) as info:
            case.call(ctx)
        assert isinstance(info.value, case.exc), f"{type(info.value).__name__} is not a {case.exc.__name__}"
        assert isinstance(info.value, (ValueError, TypeError))
        message = str(info.value)
    assert re.search(case.match, message, flags=re.DOTALL), f"message {message!r} does not match {case.match!r}"

    after = _snapshot(model)
    _assert_bit_identical(before["weights"], after["weights"], "weights")
    _assert_bit_identical(before["state"], after["state"], "optimizer state")
    for key in ("iterations", "layers", "optimizer", "loss", "history", "epochs_trained"):
        assert before[key] == after[key], f"{key} changed"
    if case.id == "add-same-layer-twice":  # the refused layer was not appended to the fresh model either
        assert len(ctx.extra.layers) == 1
    assert list(tmp_path.glob(".*.tmp")) == [], "a temporary file was left behind"
