"""scikit-learn estimators trained by nnxp: ``MLPClassifier`` and ``MLPRegressor``.

Drop-ins for ``sklearn.neural_network``'s MLPs with the stochastic solvers: the same parameter names and
defaults, fitted attributes, loss and L2 convention, learning-rate schedules and stopping rule, trained by an
nnxp :class:`~nnxp.Sequential` on the CPU or a CUDA GPU (``device="cuda"``), in float32 by default.
Needs scikit-learn >= 1.6 (``pip install "nnxp[sklearn]"``).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np

try:
    import scipy.sparse as sp
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils._param_validation import Interval, Options, StrOptions
    from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # not installed, or older than 1.6 (no validate_data)
    raise ImportError(f"nnxp.sklearn needs scikit-learn >= 1.6: pip install \"nnxp[sklearn]\" ({exc})") from exc

from . import losses, optimizers
from .backend import Device, get_device, is_cupy_array, to_numpy, xp_of
from .callbacks import Callback
from .errors import NnxpError, NumericalError
from .layers import Dense
from .model import Sequential
from .ops.reduce import sum_of_squares
from .regularizers import L1L2

__all__ = ["MLPClassifier", "MLPRegressor", "EXPECTED_FAILED_CHECKS"]

# scikit-learn's activation names -> nnxp's
_ACTIVATIONS = {"identity": "linear", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUT_ACTIVATIONS = {"softmax": "softmax", "logistic": "sigmoid", "identity": "linear"}
_PREDICT_ROWS = 4096  # rows per predict chunk (sparse input is densified one chunk at a time)

# Checks of sklearn.utils.estimator_checks these estimators are known to fail, with the reason; pass it as
# parametrize_with_checks(..., expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS).
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_sample_weight_equivalence_on_dense_data": (
        "float32 by default: the weighted fit and the fit on repeated rows sum the same gradients in a different "
        "order, and 200 epochs of float32 rounding differ by more than the check's float64 tolerance (rtol 1e-7); "
        "both pass with dtype='float64' (tests/test_sklearn.py)"
    ),
    "check_sample_weight_equivalence_on_sparse_data": (
        "float32 by default: the weighted fit and the fit on repeated rows sum the same gradients in a different "
        "order, and 200 epochs of float32 rounding differ by more than the check's float64 tolerance (rtol 1e-7); "
        "both pass with dtype='float64' (tests/test_sklearn.py)"
    ),
}


class _BatchL2(L1L2):
    """scikit-learn's penalty ``alpha / 2 * ||W||^2 / n``, with ``n`` the batch's size (or its weight sum).

    One instance is shared by every Dense layer of the network; the loss (:func:`_sklearn_loss`) sets ``n`` for
    each batch before the model adds penalties and their gradients, so the last, shorter batch is penalised as
    scikit-learn penalises it. ``n`` may be a 0-d device array (a weighted batch on a GPU: no host sync).
    """

    def __init__(self, alpha: float) -> None:
        super().__init__(l2=0.5 * alpha)
        self.alpha = alpha
        self._scratch: dict[tuple, Any] = {}  # one buffer per kernel shape: no large allocation per batch

    def set_batch_size(self, n: Any) -> None:
        self.l2 = 0.5 * self.alpha / n

    def penalty(self, w: Any) -> Any:
        return self.l2 * sum_of_squares(w.reshape(-1))

    def add_gradient(self, w: Any, dw: Any) -> None:
        xp = xp_of(w)
        key = (w.shape, w.dtype.str, xp.__name__)
        tmp = self._scratch.get(key)
        if tmp is None:
            tmp = self._scratch[key] = xp.empty_like(w)
        xp.multiply(w, 2.0 * self.l2, out=tmp)
        dw += tmp


def _sklearn_loss(kind: str, reg: _BatchL2 | None) -> losses.Loss:
    """The training loss in scikit-learn's convention, as an nnxp Loss (fused with the output activation).

    - ``log_loss`` (softmax): the mean over samples of the cross-entropy summed over classes (nnxp's own);
    - ``binary_log_loss`` (logistic, binary and multilabel): summed over labels, not averaged as nnxp's BCE;
    - ``squared_error`` (identity): ``0.5 * mean((pred - y)^2)``, with scikit-learn's gradient ``(pred - y) / n``
      (it does not divide by the number of outputs).

    A weighted batch is averaged over its weight sum (scikit-learn), not over its size (nnxp and Keras).
    """

    def scaled(fn: Any, loss_scale: Any, grad_scale: Any) -> Any:
        def wrapped(out: Any, y: Any, grad: Any = None, sample_weight: Any = None) -> tuple[Any, Any]:
            k = out.shape[1]
            ls, gs = loss_scale(k), grad_scale(k)
            if sample_weight is None:
                n = out.shape[0]
                loss, g = fn(out, y, grad)
            else:
                xp = xp_of(out)
                total = sample_weight.sum()
                # a batch whose weights are all 0 contributes nothing (its "n" is infinite), as no sample does
                n = xp.where(total > 0, total, xp.inf)
                loss, g = getattr(fn, "__wrapped__", fn)(out, y, grad, sample_weight=sample_weight)
                ls = ls * (out.shape[0] / n)
                gs = gs * (out.shape[0] / n)
            if reg is not None:
                reg.set_batch_size(n)
            if not isinstance(ls, float) or ls != 1.0:
                loss = loss * ls
            if not isinstance(gs, float) or gs != 1.0:
                g *= gs
            return loss, g

        return wrapped

    one = lambda k: 1.0  # noqa: E731
    if kind == "log_loss":
        base = losses.get("categorical_crossentropy")
        return losses.Loss("sklearn_log_loss", scaled(base.fn, one, one), "softmax", scaled(base.fused_fn, one, one),
                           task="categorical")
    if kind == "binary_log_loss":
        base = losses.get("binary_crossentropy")
        k_times = lambda k: float(k)  # noqa: E731
        return losses.Loss("sklearn_binary_log_loss", scaled(base.fn, k_times, k_times), "sigmoid",
                           scaled(base.fused_fn, k_times, k_times), task="binary")
    base = losses.get("mean_squared_error")
    return losses.Loss("sklearn_squared_error", scaled(base.fn, lambda k: 0.5, lambda k: 0.5 * k), task="regression")


class _Epochs(Callback):
    """scikit-learn's end-of-iteration bookkeeping, run by nnxp's fit after every epoch.

    Records ``loss_curve_``, ``t_`` and ``n_iter_``, applies the stopping rule (training loss, or the validation
    score with ``early_stopping``) and the SGD learning-rate schedules, and stops ``fit`` when scikit-learn would.
    """

    def __init__(self, est: _BaseMLP, n_train: int, val: tuple | None) -> None:
        self.est, self.n_train, self.val = est, n_train, val
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        est = self.est
        est.n_iter_ += 1
        est.loss_ = float(logs["loss"])
        est.t_ += self.n_train
        est.loss_curve_.append(est.loss_)
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_:.8f}")
        est._update_no_improvement_count(self.val, self.model)
        opt = self.model.optimizer
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            opt.learning_rate = float(est.learning_rate_init) / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if est.early_stopping else "Training loss"
            msg = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} consecutive epochs."
            if est.solver == "sgd" and est.learning_rate == "adaptive" and opt.learning_rate > 1e-6:
                opt.learning_rate = opt.learning_rate / 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(msg + f" Setting learning rate to {opt.learning_rate:f}")
            else:
                if est.verbose:
                    small = est.solver == "sgd" and est.learning_rate == "adaptive"
                    print(msg + (" Learning rate too small." if small else "") + " Stopping.")
                self.stopped = True
                self.model.stop_training = True


class _BaseMLP(BaseEstimator):
    """What MLPClassifier and MLPRegressor share: parameters, the network, the epoch loop, pickling."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "device": [str, Device, None],
        "dtype": [StrOptions({"float32", "float64"})],
    }

    # --- the network ----------------------------------------------------------------------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        return [int(s) for s in sizes]

    def _new_optimizer(self) -> optimizers.Optimizer:
        if self.solver == "adam":
            return optimizers.Adam(self.learning_rate_init, beta_1=self.beta_1, beta_2=self.beta_2,
                                   epsilon=self.epsilon)
        return optimizers.SGD(self.learning_rate_init, momentum=self.momentum, nesterov=self.nesterovs_momentum)

    def _new_model(self, layer_units: list[int], device: Any, seed: int) -> Sequential:
        """A compiled, built Sequential with this estimator's architecture (weights not yet set)."""
        reg = _BatchL2(float(self.alpha)) if self.alpha > 0 else None
        hidden = _ACTIVATIONS[self.activation]
        layers = [Dense(units, hidden, kernel_regularizer=reg) for units in layer_units[1:-1]]
        layers.append(Dense(layer_units[-1], _OUT_ACTIVATIONS[self.out_activation_], kernel_regularizer=reg))
        model = Sequential(layers, device=device, seed=seed, dtype=self.dtype)
        kind = {"softmax": "log_loss", "logistic": "binary_log_loss", "identity": "squared_error"}
        model.compile(self._new_optimizer(), _sklearn_loss(kind[self.out_activation_], reg))
        model.build(layer_units[0])
        return model

    def _initialize(self, y: np.ndarray, layer_units: list[int], rng: np.random.RandomState) -> None:
        """Fresh fitted state and network, initialised exactly as scikit-learn initialises its own."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(layer_units)
        if not is_classifier(self):
            self.out_activation_ = "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:  # binary (one sigmoid unit) and multilabel
            self.out_activation_ = "logistic"
        weights = []
        factor = 2.0 if self.activation == "logistic" else 6.0  # Glorot et al., as scikit-learn
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)))
            weights.append(rng.uniform(-bound, bound, fan_out))
        self.model_ = self._new_model(layer_units, self.device, seed=0)  # the shuffle seed is drawn per fit
        self.model_.set_weights(weights)
        self._best_weights = self.model_.get_weights()  # what early_stopping restores if no score ever improves
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None
        self._sync_weights()

    def _sync_weights(self) -> None:
        """coefs_ / intercepts_ as host NumPy copies of the network's weights (also after training on a GPU)."""
        weights = self.model_.get_weights()
        self.coefs_ = weights[0::2]
        self.intercepts_ = weights[1::2]

    # --- fitting --------------------------------------------------------------------------------
    def _check_solver(self) -> None:
        if self.solver == "lbfgs":
            raise ValueError(
                "solver='lbfgs' is not available in nnxp's MLP, which trains with mini-batches on the CPU or a GPU; "
                "use solver='adam' or solver='sgd', or sklearn.neural_network for L-BFGS. Received: solver='lbfgs'"
            )

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> _BaseMLP:
        # bad input or a failed run leaves the estimator exactly as it was
        before = dict(self.__dict__)
        network = self._network_state()  # model_ trains in place: fit rolls back only a diverging epoch
        try:
            return self._fit_unguarded(X, y, sample_weight, incremental)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            if network is not None:
                self._restore_network(network)
            raise

    def _network_state(self) -> tuple | None:
        """What a fit call may change in an existing model_: weights, epoch count, shuffle seed, and the optimizer
        (a warm start compiles a new one; partial_fit steps it and the callbacks change its rate)."""
        model = self.__dict__.get("model_")
        if model is None:
            return None
        opt = model.optimizer
        return (model.get_weights(), model.epochs_trained, model.seed, model.loss, opt, opt.get_state(),
                opt.iterations, opt.learning_rate)

    def _restore_network(self, saved: tuple) -> None:
        weights, epochs_trained, seed, loss, opt, state, iterations, learning_rate = saved
        model = self.model_
        if model.optimizer is not opt:
            model.compile(opt, loss)
        model.set_weights(weights)
        model.epochs_trained, model.seed = epochs_trained, seed
        opt.to(model.params, state)
        opt.iterations, opt.learning_rate = iterations, learning_rate

    def _fit_unguarded(self, X: Any, y: Any, sample_weight: Any, incremental: bool) -> _BaseMLP:
        self._check_solver()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        if y.ndim == 1:
            y = y.reshape((-1, 1))
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        layer_units = [X.shape[1], *hidden, y.shape[1]]
        if not first_pass:
            expected = [c.shape[0] for c in self.coefs_] + [self.coefs_[-1].shape[1]]
            if expected != layer_units:
                raise ValueError(f"warm_start and partial_fit need the same layer sizes as the fitted network "
                                 f"{expected}. Received: {layer_units}")
        rng = check_random_state(self.random_state)
        if first_pass:
            self._initialize(y, layer_units, rng)
        elif not incremental:  # a warm start: same weights, a new optimizer (as scikit-learn)
            self.model_.compile(self._new_optimizer(), self.model_.loss)
        self._fit_stochastic(X, y, sample_weight, rng, incremental)
        return self

    def _fit_stochastic(self, X, y, sample_weight, rng, incremental) -> None:
        if self.early_stopping:
            stratify = y if is_classifier(self) and self.n_outputs_ == 1 else None
            arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            parts = train_test_split(*arrays, random_state=rng, test_size=self.validation_fraction,
                                     stratify=stratify)
            X_train, X_val, y_train, y_val = parts[:4]
            sw_train, sw_val = (parts[4], parts[5]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                                 "your dataset.")
            if is_classifier(self):
                y_val = self._label_binarizer.inverse_transform(y_val)
            val = (X_val, y_val, sw_val)
        else:
            X_train, y_train, sw_train, val = X, y, sample_weight, None
        n = X_train.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                              stacklevel=5)
            batch_size = int(np.clip(self.batch_size, 1, n))
        if sw_train is not None and np.all(sw_train == sw_train[0]):
            sw_train = None  # equal weights change nothing in scikit-learn's weighted mean: keep the fused path
        if sp.issparse(X_train):  # nnxp trains on dense arrays
            X_train = X_train.toarray()
        # nnxp shuffles by (seed, epoch); drawn after the split so the split is scikit-learn's for a random_state
        self.model_.seed = int(rng.randint(np.iinfo(np.int32).max))
        self.n_iter_ = 0
        epochs = _Epochs(self, n, val)
        max_iter = 1 if incremental else self.max_iter
        try:
            # each epoch's shuffle follows (model_.seed, model_.epochs_trained): partial_fit calls continue the sequence
            history = self.model_.fit(X_train, y_train, epochs=max_iter, batch_size=batch_size, shuffle=self.shuffle,
                                      verbose=0, callbacks=[epochs], sample_weight=sw_train)
        except NumericalError as exc:
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large values "
                             f"and need to be preprocessed. ({exc})") from None
        if history.interrupted:
            warnings.warn("Training interrupted by user.", stacklevel=5)
        elif not incremental and not epochs.stopped and self.n_iter_ == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                          "hasn't converged yet.", ConvergenceWarning, stacklevel=5)
        if self.early_stopping:
            self.model_.set_weights(self._best_weights)  # restore the best weights
        self._sync_weights()

    def _update_no_improvement_count(self, val: tuple | None, model: Sequential) -> None:
        if val is not None:
            X_val, y_val, sw_val = val
            score = self._score(X_val, y_val, sample_weight=sw_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_weights = model.get_weights()
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> _BaseMLP:
        """Fit the model to data matrix X and target(s) y (optionally weighted per sample); returns self."""
        self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    # --- predicting -----------------------------------------------------------------------------
    def _forward(self, X: Any, check_input: bool = True) -> np.ndarray:
        """Output-layer activations (n, n_outputs) as a host NumPy array."""
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        if not sp.issparse(X):
            return self.model_.predict(X, batch_size=_PREDICT_ROWS)
        out = np.empty((X.shape[0], self.n_outputs_), dtype=self.model_.dtype)
        for start in range(0, X.shape[0], _PREDICT_ROWS):
            chunk = X[start : start + _PREDICT_ROWS].toarray()
            out[start : start + chunk.shape[0]] = self.model_.predict(chunk, batch_size=_PREDICT_ROWS)
        return out

    def _score_with_function(self, X, y, sample_weight, score_function) -> float:
        y_pred = self._predict(X, check_input=False)
        if np.issubdtype(y_pred.dtype, np.floating) and not np.isfinite(y_pred).all():
            return np.nan
        return float(score_function(y, y_pred, sample_weight=sample_weight))

    # --- pickling: the network travels as host arrays and comes back on its device, or on the CPU -------------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # object.__getstate__ may hand out __dict__ itself
        model = state.pop("model_", None)
        if model is not None:
            opt = model.optimizer
            state["_model_state"] = {
                "device": model.device.name,
                "seed": model.seed,
                "epochs_trained": model.epochs_trained,  # with the seed, each later epoch's shuffle
                "weights": model.get_weights(),
                "optimizer": opt.get_state(),
                "iterations": opt.iterations,
                "learning_rate": opt.learning_rate,
            }
        return state

    def __setstate__(self, state: dict) -> None:
        saved = state.pop("_model_state", None)
        super().__setstate__(state)
        if saved is None:
            return
        try:
            device = get_device(saved["device"])
        except NnxpError:  # e.g. trained on CUDA, unpickled on a machine without a GPU
            warnings.warn(f"nnxp.sklearn: the network was trained on {saved['device']}, which is not available "
                          "here; it is loaded onto the CPU", UserWarning, stacklevel=2)
            device = get_device("cpu")
        units = [c.shape[0] for c in saved["weights"][0::2]] + [saved["weights"][-1].shape[0]]
        model = self._new_model(units, device, saved["seed"])
        model.epochs_trained = saved.get("epochs_trained", 0)  # (pickles made before it travelled lack it)
        model.set_weights(saved["weights"])
        opt = model.optimizer
        if saved["optimizer"]:
            opt.set_state(saved["optimizer"], model.params)
        opt.iterations = saved["iterations"]
        opt.learning_rate = saved["learning_rate"]
        self.model_ = model

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier, scikit-learn's ``MLPClassifier`` trained by nnxp.

    Multiclass (softmax), binary (one logistic unit) and multilabel (2-D 0/1 ``y``, logistic units), trained with
    the log-loss plus ``alpha / 2 * ||W||^2 / batch_size``. ``solver`` is "adam" or "sgd" ("lbfgs" raises a
    ValueError, so ``max_fun`` is accepted for scikit-learn's parameter sets but unused). Extra parameters:
    ``device`` ("cpu", "cuda", "cuda:N", "auto"; None = ``$NNXP_DEVICE`` or the CPU) and ``dtype`` ("float32" or
    "float64").
    The fitted network is ``model_`` (an nnxp Sequential); ``coefs_`` and ``intercepts_`` are NumPy copies.
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        device=None,
        dtype="float32",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun  # L-BFGS's budget: kept so scikit-learn's parameter sets carry over; unused
        self.device = device
        self.dtype = dtype

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if is_cupy_array(y):  # CuPy input under array-API dispatch: labels are few, LabelBinarizer works on the host
            y = to_numpy(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # the same decisions as scikit-learn about when classes_ is (re)defined or checked
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the previous "
                                     f"call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        # float targets for the loss (scikit-learn keeps bool; nnxp wants the model's float dtype)
        y = self._label_binarizer.transform(y).astype(self.dtype)
        return X, y

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y); ``classes`` (every label) is needed on the first call."""
        self._check_solver()
        if is_cupy_array(y):
            y = to_numpy(y)
        if _check_partial_fit_first_call(self, classes):
            self._validate_params()
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (or a 0/1 indicator matrix for multilabel) for the rows of X."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input=check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probability of each class (columns ordered as ``classes_``), shape (n_samples, n_classes)."""
        check_is_fitted(self)
        y_pred = self._forward(X)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        if y_pred.ndim == 1:
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """``log(predict_proba(X))``."""
        y_prob = self.predict_proba(X)
        return np.log(y_prob, out=y_prob)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor, scikit-learn's ``MLPRegressor`` trained by nnxp.

    Squared error (``0.5 * mean((pred - y)^2)``) plus ``alpha / 2 * ||W||^2 / batch_size``, identity output,
    single or multiple outputs. ``loss`` accepts only "squared_error" (scikit-learn's "poisson" needs an
    exponential output nnxp does not have). Extra parameters ``device`` and ``dtype`` as in
    :class:`MLPClassifier`.
    """

    _parameter_constraints: dict = {**_BaseMLP._parameter_constraints, "loss": [StrOptions({"squared_error"})]}

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        device=None,
        dtype="float32",
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun  # L-BFGS's budget: kept so scikit-learn's parameter sets carry over; unused
        self.device = device
        self.dtype = dtype

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return X, y

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over (X, y)."""
        self._check_solver()
        if not hasattr(self, "coefs_"):
            self._validate_params()
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted values, shape (n_samples,) for one output, else (n_samples, n_outputs)."""
        check_is_fitted(self)
        return self._predict(X)

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input=check_input)
        if y_pred.shape[1] == 1:
            return y_pred.ravel()
        return y_pred

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)
