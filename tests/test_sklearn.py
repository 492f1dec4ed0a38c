"""nnxp.sklearn: scikit-learn's own estimator checks, equality with scikit-learn's MLPs, and their ecosystem."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

import joblib  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_multilabel_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from nnxp.datasets import load_digits  # noqa: E402
from nnxp.sklearn import EXPECTED_FAILED_CHECKS, MLPClassifier, MLPRegressor  # noqa: E402

# ConvergenceWarning is scikit-learn's normal message for a short max_iter; the tests that care catch it themselves
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """Small GEMMs on a shared two-core machine: one BLAS thread is faster than two waiting for each other."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=1):
        yield


# --- scikit-learn's own judge, default parameters ------------------------------------------------------------
@parametrize_with_checks([MLPClassifier(), MLPRegressor()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("check", ["check_sample_weight_equivalence_on_dense_data",
                                   "check_sample_weight_equivalence_on_sparse_data"])
def test_expected_failures_pass_in_float64(cls, check):
    """The two checks listed in EXPECTED_FAILED_CHECKS fail on float32 rounding only: weights are exact."""
    from sklearn.utils import estimator_checks

    assert check in EXPECTED_FAILED_CHECKS
    getattr(estimator_checks, check)(cls.__name__, cls(dtype="float64"))


# --- the same numbers as scikit-learn -------------------------------------------------------------------------
def _data(kind: str, n: int = 250):
    if kind == "multiclass":
        return make_classification(n, 6, n_informative=4, n_classes=3, random_state=0)
    if kind == "binary":
        return make_classification(n, 6, random_state=1)
    if kind == "multilabel":
        return make_multilabel_classification(n, 6, n_classes=3, random_state=0)
    x, y = make_regression(n, 6, n_targets=2 if kind == "multioutput" else 1, random_state=0)
    return x, y / 100.0


PARITY = [
    ("multiclass", {}),
    ("binary", {}),
    ("multilabel", {}),
    ("regression", {}),
    ("multioutput", {"alpha": 0.1, "activation": "tanh"}),
    ("multiclass", {"solver": "sgd", "learning_rate": "invscaling", "learning_rate_init": 0.2}),
    ("multiclass", {"solver": "sgd", "learning_rate": "adaptive", "n_iter_no_change": 2, "tol": 0.05}),
    ("multioutput", {"solver": "sgd", "nesterovs_momentum": False, "momentum": 0.5}),
    ("binary", {"early_stopping": True, "activation": "logistic", "batch_size": 64}),
    ("multiclass", {"batch_size": 64, "alpha": 0.5}),  # a short last batch: L2 over its own size
]


@pytest.mark.parametrize("kind, params", PARITY, ids=[f"{k}-{'-'.join(p) or 'default'}" for k, p in PARITY])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_float64_training_equals_scikit_learn(kind, params, weighted):
    """Same random_state, float64, no shuffling: the same initial weights, loss, L2, optimizer, schedule and
    stopping rule give scikit-learn's loss curve and weights to rounding."""
    x, y = _data(kind)
    sw = None
    if weighted:
        sw = np.random.default_rng(0).uniform(0, 2, len(x))
        sw[:30] = 0
    cls = (MLPRegressor, sk_nn.MLPRegressor) if kind in ("regression", "multioutput") else (
        MLPClassifier, sk_nn.MLPClassifier)
    kw = dict(hidden_layer_sizes=(12, 7), max_iter=15, shuffle=False, random_state=0, **params)
    ours = cls[0](dtype="float64", **kw).fit(x, y, sample_weight=sw)
    ref = cls[1](**kw).fit(x, y, sample_weight=sw)
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert ours.out_activation_ == ref.out_activation_ and ours.n_layers_ == ref.n_layers_
    assert ours.n_outputs_ == ref.n_outputs_
    if ref.early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_)
        assert ours.best_validation_score_ == pytest.approx(ref.best_validation_score_) and ours.best_loss_ is None
    else:
        assert ours.best_loss_ == pytest.approx(ref.best_loss_, rel=1e-10) and ours.validation_scores_ is None
    np.testing.assert_allclose(ours.predict(x[:20]), ref.predict(x[:20]), rtol=1e-9, atol=1e-12)
    if hasattr(ref, "predict_proba"):
        np.testing.assert_allclose(ours.predict_proba(x[:20]), ref.predict_proba(x[:20]), rtol=1e-9, atol=1e-12)


def _mean_accuracies(x_train, y_train, x_test, y_test, seeds, **kw) -> tuple[float, float]:
    """Test accuracy of nnxp's and scikit-learn's MLPClassifier, each averaged over the same random_states.

    Shuffling makes two runs differ by about a percent on small sets; the mean over seeds is what is compared.
    """
    ours = [MLPClassifier(random_state=s, **kw).fit(x_train, y_train).score(x_test, y_test) for s in seeds]
    ref = [sk_nn.MLPClassifier(random_state=s, **kw).fit(x_train, y_train).score(x_test, y_test) for s in seeds]
    return float(np.mean(ours)), float(np.mean(ref))


def test_digits_accuracy_within_001_of_scikit_learn():
    """Default dtype (float32) and shuffling, equal hyperparameters and max_iter."""
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.3, stratify=y, random_state=0)
    ours, ref = _mean_accuracies(x_train, y_train, x_test, y_test, seeds=(0, 1, 2), hidden_layer_sizes=(64,),
                                 max_iter=15, learning_rate_init=0.01)
    assert ref > 0.95
    assert abs(ours - ref) <= 0.01, (ours, ref)


@pytest.mark.slow
def test_fashion_mnist_subset_accuracy_within_001_of_scikit_learn():
    from nnxp.datasets import load_fashion_mnist

    try:
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download=False)
    except Exception as exc:  # not installed here (apt-get install dataset-fashion-mnist)
        pytest.skip(f"Fashion-MNIST not available offline: {exc}")
    x_train, y_train = x_train[:3000].reshape(3000, -1) / 255.0, y_train[:3000]
    x_test = x_test.reshape(len(x_test), -1) / 255.0
    ours, ref = _mean_accuracies(x_train, y_train, x_test, y_test, seeds=(0, 1), hidden_layer_sizes=(64,),
                                 max_iter=5, learning_rate_init=0.003)
    assert ref > 0.78
    assert abs(ours - ref) <= 0.01, (ours, ref)


# --- scikit-learn's ecosystem ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs():
    x, y = make_classification(240, 8, n_informative=6, n_classes=3, n_clusters_per_class=1, class_sep=2.0,
                               random_state=3)
    return x * 10 + 5, y  # badly scaled, so the scaler matters


def test_pipeline_with_standard_scaler(blobs):
    x, y = blobs
    pipe = make_pipeline(StandardScaler(), MLPClassifier(max_iter=60, random_state=0)).fit(x, y)
    assert pipe.score(x, y) > 0.9
    assert pipe[-1].n_features_in_ == 8


def test_grid_search_in_two_processes(blobs):
    """GridSearchCV(n_jobs=2) pickles estimators to joblib workers and fitted ones back."""
    x, y = blobs
    search = GridSearchCV(MLPClassifier(max_iter=30, random_state=0), {"hidden_layer_sizes": [(4,), (32,)]},
                          cv=2, n_jobs=2).fit(x, y)
    assert search.best_params_ == {"hidden_layer_sizes": (32,)}
    best = search.best_estimator_
    assert isinstance(best, MLPClassifier) and best.coefs_[0].shape == (8, 32)
    np.testing.assert_array_equal(search.predict(x), best.predict(x))


def test_cross_val_score_and_clone(blobs):
    x, y = blobs
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=40, learning_rate_init=0.01, random_state=0, dtype="float64")
    scores = cross_val_score(make_pipeline(StandardScaler(), est), x, y, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.8
    assert not hasattr(est, "coefs_")  # cross_val_score fits clones
    fitted = clone(est).fit(x, y)
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params() and not hasattr(twin, "model_")
    np.testing.assert_array_equal(twin.fit(x, y).predict_proba(x), fitted.predict_proba(x))  # same random_state


# --- fitted attributes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, out_activation, n_outputs", [
    ("multiclass", "softmax", 3), ("binary", "logistic", 1), ("multilabel", "logistic", 3),
    ("regression", "identity", 1), ("multioutput", "identity", 2)])
def test_fitted_attributes(kind, out_activation, n_outputs):
    x, y = _data(kind, 120)
    cls = MLPRegressor if kind in ("regression", "multioutput") else MLPClassifier
    est = cls(hidden_layer_sizes=(5, 4), max_iter=7, random_state=0, batch_size=50).fit(x, y)
    assert est.out_activation_ == out_activation and est.n_outputs_ == n_outputs and est.n_layers_ == 4
    assert est.n_features_in_ == 6 and not hasattr(est, "feature_names_in_")
    assert est.n_iter_ == 7 == len(est.loss_curve_) and est.t_ == 7 * 120
    assert est.loss_ == est.loss_curve_[-1] and est.best_loss_ == min(est.loss_curve_)
    assert [c.shape for c in est.coefs_] == [(6, 5), (5, 4), (4, n_outputs)]
    assert [b.shape for b in est.intercepts_] == [(5,), (4,), (n_outputs,)]
    assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in est.coefs_ + est.intercepts_)
    np.testing.assert_array_equal(est.coefs_[0], est.model_.get_weights()[0])  # copies of the trained network
    pred = est.predict(x)
    if cls is MLPClassifier:
        proba = est.predict_proba(x)
        assert proba.shape == (120, 2 if kind == "binary" else 3)
        if kind != "multilabel":
            np.testing.assert_array_equal(est.classes_[proba.argmax(axis=1)], pred)
            np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(est.predict_log_proba(x), np.log(proba), rtol=1e-5)
        assert pred.shape == y.shape
    else:
        assert pred.shape == y.shape and est.score(x, y) > -1.0


def test_string_labels_and_pandas_feature_names():
    pd = pytest.importorskip("pandas")
    x, y = _data("multiclass", 120)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    labels = np.array(["cat", "dog", "eel"])[y]
    est = MLPClassifier(max_iter=5, random_state=0).fit(frame, pd.Series(labels))
    assert list(est.feature_names_in_) == list(frame.columns)
    assert list(est.classes_) == ["cat", "dog", "eel"] and set(est.predict(frame)) <= set(est.classes_)
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame.rename(columns={"f0": "other"}))


def test_sparse_input_trains_like_dense():
    x, y = _data("multiclass", 120)
    x[np.abs(x) < 0.7] = 0.0
    kw = dict(hidden_layer_sizes=(8,), max_iter=6, random_state=0)
    dense = MLPClassifier(**kw).fit(x, y)
    for fmt in (sp.csr_matrix, sp.csc_matrix):
        sparse = MLPClassifier(**kw).fit(fmt(x), y)
        np.testing.assert_array_equal(sparse.loss_curve_, dense.loss_curve_)
        np.testing.assert_allclose(sparse.predict_proba(fmt(x)), dense.predict_proba(x), rtol=1e-6)


# --- convergence, partial_fit, warm_start ---------------------------------------------------------------------
def test_convergence_warning_only_when_max_iter_is_reached():
    x, y = _data("multiclass", 100)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(max_iter=3, random_state=0).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        est = MLPClassifier(max_iter=50, tol=10.0, n_iter_no_change=2, random_state=0).fit(x, y)
    # no epoch after the first improves on the best loss by tol=10: stop when the count exceeds n_iter_no_change
    assert est.n_iter_ == 4


def test_verbose_prints_scikit_learns_lines(capsys):
    x, y = _data("multiclass", 100)
    MLPClassifier(max_iter=50, tol=10.0, n_iter_no_change=1, random_state=0, verbose=True).fit(x, y)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Iteration 1, loss = ") and out[2].startswith("Iteration 3, loss = ")
    assert out[3] == ("Training loss did not improve more than tol=10.000000 for 1 consecutive epochs. Stopping.")


def test_ctrl_c_keeps_the_completed_epochs(monkeypatch):
    """scikit-learn warns and keeps the model; nnxp's fit stops after the batch and rolls back that epoch."""
    import nnxp.sklearn as nnxp_sklearn

    x, y = _data("multiclass", 100)
    end = nnxp_sklearn._Epochs.on_epoch_end

    def press_ctrl_c_after_epoch_3(self, epoch, logs=None):
        end(self, epoch, logs)
        if self.est.n_iter_ == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(nnxp_sklearn._Epochs, "on_epoch_end", press_ctrl_c_after_epoch_3)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=100, random_state=0, batch_size=10).fit(x, y)
    assert est.n_iter_ == 3 and len(est.loss_curve_) == 3 and est.model_.epochs_trained == 3
    assert est.predict(x).shape == (100,)


def test_partial_fit_classes_and_progress():
    x, y = _data("multiclass", 150)
    est = MLPClassifier(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01)
    with pytest.raises(ValueError, match="classes must be passed on the first call to partial_fit"):
        est.partial_fit(x, y)
    est.partial_fit(x[:75], y[:75], classes=[0, 1, 2])
    for _ in range(30):
        est.partial_fit(x, y)
    assert est.n_iter_ == 1 and est.t_ == 75 + 30 * 150 and len(est.loss_curve_) == 31
    assert est.loss_curve_[-1] < 0.7 * est.loss_curve_[1] and est.score(x, y) > 0.7
    with pytest.raises(ValueError, match="classes not in"):
        est.partial_fit(x, np.full(150, 7))
    with pytest.raises(ValueError, match="does not support early_stopping"):
        MLPClassifier(early_stopping=True).partial_fit(x, y, classes=[0, 1, 2])
    reg = MLPRegressor(random_state=0).partial_fit(*_data("regression", 50))
    assert reg.n_iter_ == 1 and reg.t_ == 50


def test_warm_start_continues_from_the_weights():
    x, y = _data("regression", 100)
    est = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, warm_start=True, random_state=0).fit(x, y)
    first = [c.copy() for c in est.coefs_]
    est.fit(x, y)
    assert len(est.loss_curve_) == 10 and est.n_iter_ == 5 and est.t_ == 1000
    assert not np.array_equal(first[0], est.coefs_[0])
    cold = MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(x, y)
    np.testing.assert_array_equal(cold.coefs_[0], first[0])  # a cold fit starts over: same as the first


# --- pickling -------------------------------------------------------------------------------------------------
def test_pickle_keeps_predictions_and_training_state(tmp_path):
    x, y = _data("multiclass", 120)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, random_state=0).fit(x, y)
    path = tmp_path / "est.joblib"
    joblib.dump(est, path)
    back = joblib.load(path)
    np.testing.assert_array_equal(back.predict_proba(x), est.predict_proba(x))
    assert back.loss_curve_ == est.loss_curve_ and back.model_.device.name == "cpu"
    # Adam's moments and step count travel too: one more epoch on each gives the same weights
    back.partial_fit(x, y)
    est.partial_fit(x, y)
    np.testing.assert_array_equal(back.coefs_[0], est.coefs_[0])


def test_partial_fit_after_unpickling_shuffles_as_the_original_would():
    # several batches per epoch, so the order of the rows matters: each epoch's shuffle follows the model's seed
    # and its count of epochs trained, which must travel with the pickle (it came back as 0: another order)
    x, y = _data("multiclass", 120)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, batch_size=16, random_state=0).fit(x, y)
    back = pickle.loads(pickle.dumps(est))
    assert back.model_.epochs_trained == est.model_.epochs_trained
    back.partial_fit(x, y)
    est.partial_fit(x, y)
    np.testing.assert_array_equal(back.coefs_[0], est.coefs_[0])


def test_a_network_from_a_missing_gpu_unpickles_onto_the_cpu():
    x, y = _data("binary", 80)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(x, y)
    state = est.__getstate__()
    assert "model_" not in state and all(isinstance(w, np.ndarray) for w in state["_model_state"]["weights"])
    state["_model_state"]["device"] = "cuda:63"  # as saved on a GPU machine; no such GPU here
    back = MLPClassifier.__new__(MLPClassifier)
    with pytest.warns(UserWarning, match="loaded onto the CPU"):
        back.__setstate__(state)
    assert back.model_.device.name == "cpu"
    np.testing.assert_array_equal(back.predict(x), est.predict(x))


@pytest.mark.parametrize("kind", ["multiclass", "multilabel", "multioutput"])
def test_device_cuda_on_the_emulated_gpu_matches_the_cpu(fake_cupy, kind):
    """device="cuda" through the stand-in CuPy (kernels.cu on the CPU emulator): fused losses unweighted, the
    reference with weights; the fitted attributes are host NumPy arrays; a pickle comes back on that device."""
    x, y = _data(kind, 90)
    sw = np.random.default_rng(1).uniform(0, 2, 90)
    cls = MLPRegressor if kind == "multioutput" else MLPClassifier
    for weights in (None, sw):
        kw = dict(hidden_layer_sizes=(6,), max_iter=3, batch_size=32, random_state=0, dtype="float64")
        cpu = cls(device="cpu", **kw).fit(x, y, sample_weight=weights)
        gpu = cls(device="cuda", **kw).fit(x, y, sample_weight=weights)
        assert gpu.model_.device.is_cuda and all(type(c) is np.ndarray for c in gpu.coefs_ + gpu.intercepts_)
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-9)
        for a, b in zip(gpu.coefs_, cpu.coefs_):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    back = pickle.loads(pickle.dumps(gpu))
    assert back.model_.device.is_cuda
    np.testing.assert_allclose(back.predict(x), gpu.predict(x), rtol=1e-12)


@pytest.mark.gpu
def test_cuda_trained_estimator_unpickles_without_a_gpu(tmp_path):
    x, y = _data("multiclass", 200)
    est = MLPClassifier(max_iter=5, random_state=0, device="cuda").fit(x, y)
    assert est.model_.device.is_cuda and type(est.coefs_[0]) is np.ndarray
    path = tmp_path / "est.pkl"
    path.write_bytes(pickle.dumps(est))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "p.npy", est.predict_proba(x))
    code = ("import pickle, sys, numpy as np, warnings; d = sys.argv[1]\n"
            "with warnings.catch_warnings(record=True): est = pickle.load(open(d + '/est.pkl', 'rb'))\n"
            "assert est.model_.device.name == 'cpu', est.model_.device\n"
            "np.testing.assert_allclose(est.predict_proba(np.load(d + '/x.npy')), np.load(d + '/p.npy'), atol=1e-5)\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a process that sees no GPU
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- bad input: scikit-learn's errors, and a fitted estimator stays as it was ---------------------------------
def test_unfitted_estimators_raise_not_fitted_error():
    x, _ = _data("multiclass", 10)
    for method in ("predict", "predict_proba", "predict_log_proba"):
        with pytest.raises(NotFittedError):
            getattr(MLPClassifier(), method)(x)
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(x)


def test_bad_input_leaves_a_fitted_estimator_as_it_was():
    x, y = _data("multiclass", 100)
    est = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(x, y)
    params = est.get_params()
    before = {k: v for k, v in est.__dict__.items() if k != "model_"}
    weights = est.model_.get_weights()
    proba = est.predict_proba(x)
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    bad = [
        (lambda: est.fit(x, y[:-1]), ValueError, "inconsistent numbers of samples"),
        (lambda: est.fit(x_nan, y), ValueError, "Input X contains NaN"),
        (lambda: est.predict(x[:, :4]), ValueError, "X has 4 features, but MLPClassifier is expecting 6"),
        (lambda: est.partial_fit(x[:, :4], y), ValueError, "X has 4 features"),
        (lambda: est.fit(x, y, sample_weight=np.ones(5)), ValueError, r"sample_weight.shape == \(5,\)"),
        (lambda: est.fit(x, y, sample_weight=-np.ones(100)), ValueError, "Negative values in data"),
        (lambda: est.set_params(solver="lbfgs").fit(x, y), ValueError, "solver='adam' or solver='sgd'"),
        (lambda: est.set_params(hidden_layer_sizes=(0,)).fit(x, y), ValueError, "hidden_layer_sizes must be > 0"),
        (lambda: est.set_params(alpha=-1.0).fit(x, y), InvalidParameterError, "alpha"),
    ]
    for call, error, match in bad:
        with pytest.raises(error, match=match):
            call()
        est.set_params(**params)
        after = {k: v for k, v in est.__dict__.items() if k != "model_"}
        assert after.keys() == before.keys()
        for key, value in before.items():
            assert after[key] is value, key
        for a, b in zip(est.model_.get_weights(), weights):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(est.predict_proba(x), proba)


def test_a_warm_start_that_fails_after_some_epochs_leaves_the_network_as_it_was(monkeypatch):
    # fit rolls back only the diverging epoch; the epochs before it had trained model_ in place, so the
    # estimator's attributes were restored but its network was not (predict changed after the ValueError)
    import nnxp.sklearn as nnxp_sklearn

    x, y = _data("regression", 100)
    est = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=0.001, momentum=0.5, batch_size=10,
                       max_iter=5, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(x, y)
    model, opt = est.model_, est.model_.optimizer
    pred, weights, epochs, seed = est.predict(x), model.get_weights(), model.epochs_trained, model.seed
    state, iterations, lr = opt.get_state(), opt.iterations, opt.learning_rate
    assert state and iterations == 50
    end_of_epoch = nnxp_sklearn._Epochs.on_epoch_end

    def blow_up_after_two_epochs(self, epoch, logs=None):  # a real NumericalError from the loop in epoch 3
        end_of_epoch(self, epoch, logs)
        if epoch == 1:
            self.model.optimizer.learning_rate = 1e30

    monkeypatch.setattr(nnxp_sklearn._Epochs, "on_epoch_end", blow_up_after_two_epochs)
    est.set_params(max_iter=20)
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        est.fit(x, y)
    assert est.model_ is model and model.optimizer is opt and est.n_iter_ == 5
    assert (model.epochs_trained, model.seed, opt.iterations, opt.learning_rate) == (epochs, seed, iterations, lr)
    for a, b in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert opt.get_state().keys() == state.keys()
    for k, v in state.items():
        np.testing.assert_array_equal(opt.get_state()[k], v)
    np.testing.assert_array_equal(est.predict(x), pred)


def test_parameters_are_scikit_learns_plus_device_and_dtype():
    for ours, ref in ((MLPClassifier(), sk_nn.MLPClassifier()), (MLPRegressor(), sk_nn.MLPRegressor())):
        mine, theirs = ours.get_params(), ref.get_params()
        assert set(mine) - set(theirs) == {"device", "dtype"} and set(theirs) <= set(mine)
        assert {k: mine[k] for k in theirs} == theirs  # the same defaults
        assert mine["device"] is None and mine["dtype"] == "float32"


def test_unsupported_options_say_what_to_use():
    x, y = _data("regression", 20)
    with pytest.raises(InvalidParameterError, match="loss"):
        MLPRegressor(loss="poisson").fit(x, y)
    with pytest.raises(InvalidParameterError, match="dtype"):
        MLPRegressor(dtype="float16").fit(x, y)
    with pytest.raises(ValueError, match="lbfgs"):
        MLPRegressor(solver="lbfgs").partial_fit(x, y)


def test_non_finite_training_raises_scikit_learns_error():
    x, y = _data("regression", 60)
    with pytest.raises(ValueError, match="Solver produced non-finite parameter weights"):
        MLPRegressor(solver="sgd", learning_rate_init=1e6, momentum=0.0, random_state=0).fit(x * 1e3, y * 1e6)
