"""The ``nnxp`` command: train, evaluate, predict, info, selftest and bench.

The logic lives in importable functions (``load_task``, ``build_model``,
``train``); ``main`` only parses arguments and maps errors to exit codes, and
never shows a traceback: every error is one line ``nnxp: error: ...`` on stderr.

Exit codes: 0 success; 2 usage errors (a bad flag or value, an output path in a
folder that does not exist, a model too large for this machine); 1 runtime
errors (missing data, GPU or optional package, a bad model or input file,
divergence, out of memory); 130 Ctrl-C outside training (Ctrl-C during
training stops it, and the run reports and saves as usual); 141 when the
reader of the output went away (``nnxp bench | head``), like SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import activations, datasets, distributed, optimizers, schedules
from ._version import __version__
from .backend import cuda_device_count, cupy_module, get_device
from .errors import (
    DatasetError,
    DeviceError,
    DeviceMemoryError,
    ModelFileError,
    ModelSaveError,
    NnxpError,
    NumericalError,
    did_you_mean,
)
from .io import load_model
from .layers import Dense, Dropout
from .model import Sequential
from .ops import _cpu

DATASETS = ("digits", "fashion-mnist", "mnist", "circles", "moons", "spirals", "sine")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@dataclass
class Task:
    """A data set ready to train on: splits, the loss and output layer that suit it, and sensible defaults."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    loss: str
    output_units: int
    output_activation: str
    metrics: list[str]
    layers: list[int]
    epochs: int
    batch_size: int
    learning_rate: float
    class_names: list[str] | None = None
    dropout: float = 0.0


def load_task(name: str, seed: int = 0) -> Task:
    """Load data set `name` (one of DATASETS) as float32 features with a train/test split."""
    if name in ("fashion-mnist", "mnist"):
        loader = datasets.load_fashion_mnist if name == "fashion-mnist" else datasets.load_mnist
        (xtr, ytr), (xte, yte) = loader()
        flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
        names = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
        return Task(name, flat(xtr), ytr.astype(np.int64), flat(xte), yte.astype(np.int64),
                    "sparse_categorical_crossentropy", 10, "softmax", ["accuracy"], [256, 128], 20, 128, 1e-3, names,
                    dropout=0.2)
    if name == "digits":
        (xtr, ytr), (xte, yte) = datasets.load_digits_split(seed=seed)  # the README's split too
        return Task(name, xtr, ytr, xte, yte, "sparse_categorical_crossentropy", 10, "softmax", ["accuracy"],
                    [128, 64], 40, 32, 1e-3, [str(i) for i in range(10)])
    if name in ("circles", "moons", "spirals"):
        if name == "spirals":
            x, y = datasets.make_spirals(1500, n_classes=3, noise=0.2, seed=seed)
            loss, units, act, layers, epochs = "sparse_categorical_crossentropy", 3, "softmax", [64, 64], 150
        else:
            maker = datasets.make_circles if name == "circles" else datasets.make_moons
            x, y = maker(1000, noise=0.1, seed=seed) if name == "moons" else maker(1000, noise=0.05, factor=0.5,
                                                                                       seed=seed)
            loss, units, act, layers, epochs = "binary_crossentropy", 1, "sigmoid", [10, 5], 100
        xtr, xte, ytr, yte = datasets.train_test_split(x, y, test_size=0.25, seed=seed)
        return Task(name, xtr, ytr, xte, yte, loss, units, act, ["accuracy"], layers, epochs, 32, 1e-2)
    if name == "sine":
        x, y = datasets.make_sine(512, seed=seed)
        xtr, xte, ytr, yte = datasets.train_test_split(x, y, test_size=0.25, seed=seed)
        return Task(name, xtr, ytr, xte, yte, "mse", 2, "linear", ["mae"], [32, 32], 400, 32, 3e-3)
    raise NnxpError(f"`--dataset` must be one of {list(DATASETS)}. Received: {name!r}")


def parse_layers(text: str) -> list[int]:
    """'512,256' -> [512, 256]; an empty string means no hidden layer."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
        bad = True
    else:
        bad = any(s <= 0 for s in sizes)
    if bad:
        raise NnxpError(f"`--layers` must be comma-separated positive integers such as 512,256. Received: {text!r}")
    return sizes


def build_model(task: Task, layers: list[int], activation: str, device: str | None, seed: int,
                dtype: str = "float32", dropout: float = 0.0) -> Sequential:
    """An MLP for `task`: hidden Dense layers of `layers` units (each followed by Dropout when
    `dropout` > 0), then the task's output layer."""
    input_dim = task.x_train.shape[1]
    model = Sequential(device=device, seed=seed, dtype=dtype)
    for i, units in enumerate(layers):
        model.add(Dense(units, activation, input_dim=input_dim if i == 0 else None,
                        kernel_initializer="he_uniform" if "relu" in activation else "glorot_uniform"))
        if dropout:
            model.add(Dropout(dropout))
    model.add(Dense(task.output_units, task.output_activation, input_dim=None if layers else input_dim))
    return model


class MissingDependencyError(NnxpError):
    """An optional package the command needs (matplotlib for --plot) is not installed."""


class OutputError(NnxpError):
    """An output file could not be written (a full disk, a name too long, a folder that refuses files)."""


def _check_output_path(path: str, flag: str) -> None:
    """Fail before any work when `path` cannot be written: a folder, a missing or read-only parent folder."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if os.path.isdir(target) or path.endswith(("/", os.sep)):  # "out/" names a folder even before it exists
        raise NnxpError(f"`{flag}` must be a file name, not a folder. Received: {flag} {path}")
    if not os.path.isdir(folder):
        raise NnxpError(f"`{flag}` must be in an existing folder; {folder!r} does not exist. Received: {flag} {path}")
    if not os.access(folder, os.W_OK):
        raise NnxpError(f"`{flag}` must be in a folder you can write to; {folder!r} is not writable. "
                        f"Received: {flag} {path}")


def _check_plot(path: str) -> None:
    _check_output_path(path, "--plot")
    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependencyError('`--plot` needs matplotlib: pip install "nnxp[plot]" (or leave out --plot)')
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    if suffix:  # savefig picks the format from the suffix, and refuses an unknown one only after training
        from matplotlib.backend_bases import FigureCanvasBase

        formats = sorted(FigureCanvasBase.get_supported_filetypes())
        if suffix not in formats:
            raise NnxpError(f"`--plot` must end in a format matplotlib writes ({', '.join(formats)}). "
                            f"Received: --plot {path}")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every platform
        return None


def _check_model_size(sizes: list[int], layers_text: str, batch_size: int, dtype: str, on_cpu: bool) -> None:
    """Refuse, before allocating, a model whose training cannot fit in this machine's memory."""
    n_params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    itemsize = np.dtype(dtype).itemsize
    # the flat buffer is first made on the host; on the CPU training adds gradients, Adam's two moments, a
    # scratch buffer and a few activations of a batch per layer
    need = n_params * itemsize * (5 if on_cpu else 1) + (4 * batch_size * sum(sizes) * itemsize if on_cpu else 0)
    have = _physical_memory()
    if have is not None and need > have:
        raise NnxpError(f"`--layers` {layers_text} make a model of {n_params:,} parameters, about "
                        f"{need / 2**30:,.1f} GiB to train in {dtype}, but this machine has {have / 2**30:,.1f} GiB "
                        "of memory; use smaller layers")


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``nnxp train``; returns the result dict (also printed)."""
    # everything that can fail without training is checked first, so no run is lost to a typo in a path
    if args.output:
        _check_output_path(args.output, "-o/--output")
    if args.plot:
        _check_plot(args.plot)
    device = get_device(args.device)  # a GPU that is not there fails before any data is loaded
    task = load_task(args.dataset, seed=args.seed)
    layers = parse_layers(args.layers) if args.layers is not None else task.layers
    dropout = task.dropout if args.dropout is None else args.dropout
    epochs = task.epochs if args.epochs is None else args.epochs
    batch_size = task.batch_size if args.batch_size is None else args.batch_size
    _check_model_size([task.x_train.shape[1], *layers, task.output_units], ",".join(map(str, layers)), batch_size,
                      args.dtype, not device.is_cuda)
    model = build_model(task, layers, args.activation, args.device, args.seed, args.dtype, dropout)
    if args.lr is not None and not args.lr > 0:
        raise NnxpError(f"`--lr` must be a positive number. Received: --lr={args.lr}")
    lr: float | schedules.LearningRateSchedule = args.lr if args.lr is not None else task.learning_rate
    if args.schedule == "cosine":
        n_train = len(task.x_train) - int(round(len(task.x_train) * args.validation_split))
        steps = epochs * max(1, -(-n_train // batch_size))
        lr = schedules.CosineDecay(lr, steps, alpha=0.05)  # anneal to 5% of the rate by the last step
    opt = optimizers.get({"name": args.optimizer, "learning_rate": lr})
    model.compile(opt, task.loss, metrics=task.metrics)
    if not args.quiet and not args.json:
        model.summary()
    # with --json, stdout carries one JSON object: anything fit prints (an interruption note) goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        history = model.fit(
            task.x_train, task.y_train,
            epochs=epochs,
            batch_size=batch_size,
            validation_split=args.validation_split,
            verbose=0 if (args.quiet or args.json) else 1,
        )
    completed = len(history.history.get("loss", []))  # Ctrl-C in the first epoch leaves none
    test = model.evaluate(task.x_test, task.y_test, verbose=0, return_dict=True)
    result = {"dataset": task.name, "device": model.device.name, "layers": layers, "epochs": completed,
              "interrupted": bool(getattr(history, "interrupted", False)), "test": test, "history": history.history}
    if args.output:
        model.save(args.output)
        result["model"] = args.output
    if args.plot and distributed.current().is_main:  # under MPI the main rank draws
        if completed:
            history.plot(args.plot, title=f"nnxp on {task.name}")
            result["plot"] = args.plot
        else:
            print("nnxp: no complete epoch, so no training curves to plot", file=sys.stderr)
        if task.class_names:
            from .plot import plot_confusion_matrix

            cm_path = _sibling(args.plot, "_confusion")
            plot_confusion_matrix(task.y_test, model.predict(task.x_test, verbose=0), cm_path, task.class_names)
            result["confusion_plot"] = cm_path
    if args.json:
        print(json.dumps(result))
    else:
        key = "accuracy" if "accuracy" in test else "loss"
        note = f" after {completed} complete epoch{'s' if completed != 1 else ''} (interrupted)" \
            if result["interrupted"] else ""
        print(f"test {key}: {test[key]:.4f}{note}" + (f"  (model saved to {args.output})" if args.output else ""))
    return result


def _sibling(path: str, suffix: str) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{suffix}.{ext}" if dot else f"{path}{suffix}"


def _check_task_fits(model: Any, task: Task, model_path: str) -> None:
    if model.input_dim is not None and model.input_dim != task.x_test.shape[1]:
        raise NnxpError(f"model {model_path!r} takes {model.input_dim} features but --dataset {task.name} has "
                        f"{task.x_test.shape[1]}; pick the data set the model was trained on")
    if model.output_dim is not None and model.output_dim != task.output_units:
        raise NnxpError(f"model {model_path!r} has {model.output_dim} outputs but --dataset {task.name} needs "
                        f"{task.output_units}; pick the data set the model was trained on")


def _load_model(path: str, device: str | None) -> Any:
    """``load_model``, with a missing file named as the MODEL argument rather than load_model's `path`."""
    if not os.path.isfile(path):
        what = "a folder" if os.path.isdir(path) else "not there"
        raise ModelFileError(f"`MODEL` must be an existing model file (.nnxp, as `nnxp train -o` writes); "
                             f"{path!r} is {what}")
    return load_model(path, device=device)


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    """Run ``nnxp evaluate`` on the test split of ``--dataset`` (the split ``nnxp train`` holds out)."""
    model = _load_model(args.model, args.device)
    if model.loss is None:
        raise ModelFileError(f"model {args.model!r} was saved without compile(), so it has no loss to evaluate")
    task = load_task(args.dataset, seed=args.seed)
    _check_task_fits(model, task, args.model)
    y = task.y_test
    if model.loss.name == "categorical_crossentropy" and np.ndim(y) == 1:  # trained on to_categorical labels
        y = datasets.one_hot(y, task.output_units)
    result = model.evaluate(task.x_test, y, verbose=0, return_dict=True)
    print(json.dumps(result) if args.json else " - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
    return result


def _npy_path(path: str) -> str:
    """The file ``np.save`` really writes: it appends ``.npy`` to names without it."""
    return path if path.endswith(".npy") else path + ".npy"


def _read_input(path: str, model: Any) -> np.ndarray:
    """The samples in INPUT (.npy, or .npz with one array or an array named 'x') as rows for `model`."""
    what = f"`INPUT` must be a .npy file (or .npz holding one array or an array 'x') of shape (N, {model.input_dim})"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":  # else NumPy blames "pickled data" for a CSV
            raise ValueError("not a NumPy file; save arrays with np.save or np.savez")
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"{what}. Received: {path!r} ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if len(keys) != 1 and "x" not in keys:
                raise DatasetError(f"{what}. Received: {path!r} holding arrays {keys}")
            x = loaded[keys[0] if len(keys) == 1 else "x"]
    else:
        x = loaded
    if x.dtype.kind not in "biuf":
        raise DatasetError(f"{what}. Received: {path!r} holding {x.dtype} values")
    if x.ndim == 0 or x.shape[0] == 0:
        raise DatasetError(f"`INPUT` {path!r} holds no samples (an array of shape {x.shape}); nothing to predict")
    rows = x.reshape(len(x), -1) if x.ndim != 2 else x
    if model.input_dim is not None and rows.shape[1] != model.input_dim:
        raise DatasetError(f"`INPUT` {path!r} must hold samples of {model.input_dim} values (the model's input size). "
                           f"Received: an array of shape {x.shape}")
    if rows.dtype.kind == "f" and not np.isfinite(rows).all():
        raise DatasetError(f"`INPUT` {path!r} must be finite. Received: {int((~np.isfinite(rows)).sum())} NaN or "
                           "infinite values")
    limit = float(np.finfo(model.dtype).max)
    if rows.dtype.kind == "f" and rows.size and float(np.abs(rows).max()) > limit:  # inf once cast to the model's
        raise DatasetError(f"`INPUT` {path!r} must be finite in {np.dtype(model.dtype).name} (the model's dtype). "
                           f"Received: magnitudes up to {float(np.abs(rows).max()):.3g}; "
                           f"{np.dtype(model.dtype).name} holds up to {limit:.3g}")
    return rows


def predict(args: argparse.Namespace) -> np.ndarray:
    """Run ``nnxp predict``: the model's outputs for INPUT, saved as .npy."""
    if not args.output or os.path.isdir(args.output):  # np.save would write ".npy" or "<folder>.npy"
        raise NnxpError(f"`-o/--output` must be a file name, not a folder. Received: -o/--output {args.output!r}")
    out_path = _npy_path(args.output)
    _check_output_path(out_path, "-o/--output")
    model = _load_model(args.model, args.device)
    out = model.predict(_read_input(args.input, model), verbose=0)
    try:
        np.save(out_path, out)
    except OSError as exc:  # a full disk, a name too long, a folder that refuses files (/proc)
        raise OutputError(f"cannot write the predictions to {out_path!r}: {exc.strerror or exc}") from None
    if not args.quiet:
        print(f"wrote predictions of shape {out.shape} to {out_path}")
    return out


def info() -> dict[str, Any]:
    """Versions, BLAS and GPUs, as a dict (``nnxp info`` prints it)."""
    result: dict[str, Any] = {"nnxp": __version__, "python": platform.python_version(), "numpy": np.__version__,
                              "platform": platform.platform()}
    try:
        from threadpoolctl import threadpool_info

        result["blas"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                          for p in threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        result["blas"] = "unknown (pip install threadpoolctl to see it)"
    result["cpu_loops"] = _cpu.status()
    cp = cupy_module()
    result["cupy"] = getattr(cp, "__version__", None)
    gpus = []
    if cp is not None and cuda_device_count():
        result["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
        result["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        for i in range(cuda_device_count()):
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            gpus.append({"index": i, "name": name, "memory_gib": round(props["totalGlobalMem"] / 2**30, 1)})
    result["gpus"] = gpus
    return result


def _print_info(as_json: bool) -> None:
    data = info()
    if as_json:
        print(json.dumps(data))
        return
    for key, value in data.items():
        print(f"{key:>13}: {value}")


def bench(args: argparse.Namespace) -> int:
    """Entry point of the benchmark report (the suite lives in the repository's bench/ folder).

    The report's own complaints (no results, a bad option) come out as one ``nnxp: error:`` line too.
    """
    import io

    sys.path.insert(0, os.getcwd())
    try:
        report = importlib.import_module("bench.report")
    except ImportError:
        raise NnxpError("`nnxp bench` runs from a checkout of the nnxp repository (it needs its bench/ folder); "
                        "cd into the repository first") from None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            code = int(report.main(args.bench_args) or 0)
    except SystemExit as exc:  # the report's argparse: --help (0) or a bad option (2)
        code = exc.code if isinstance(exc.code, int) else 2
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if code == 0:
        for line in lines:  # notes such as "matplotlib is not installed"
            print(line, file=sys.stderr)
        return 0
    errors = [line.split("error:", 1)[1] for line in lines if "error:" in line]
    return _error(errors[-1] if errors else (lines[-1] if lines else f"the benchmark report failed ({code})"),
                  code)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer. Received: {text}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0. Received: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0. Received: {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number. Received: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number. Received: {text}")
    return value


def _fraction(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1). Received: {text}")
    return value


def _positive_float(text: str) -> float:
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number. Received: {text}")
    return value


def _layers(text: str) -> str:
    try:
        parse_layers(text)
    except NnxpError:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 512,256. "
                                         f"Received: {text!r}") from None
    return text


def _choice(names: list[str], canonical: Any) -> Any:
    def parse(text: str) -> str:
        try:
            return canonical(text)
        except NnxpError:
            raise argparse.ArgumentTypeError(f"must be one of {names}. Received: {text!r}."
                                             + did_you_mean(text, names)) from None
    return parse


def _optimizer_name(text: str) -> str:
    return optimizers.get(text).name


_DEVICE_RE = re.compile(r"(cpu|cuda)(:\d+)?|auto")


def _device(text: str) -> str:
    if not _DEVICE_RE.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N (N a GPU number) or auto. Received: {text!r}")
    return text.strip().lower()


class _UsageError(Exception):
    """argparse's complaint, turned into one ``nnxp: error:`` line with exit code 2 by main."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (None: chosen per data set)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is argparse.SUPPRESS or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nnxp", description="Train and use small neural networks (nnxp).")
    parser.add_argument("--version", action="version", version=f"nnxp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    kw = {"formatter_class": _HelpFormatter}

    t = sub.add_parser("train", help="train an MLP on a data set and report test metrics", **kw)
    t.add_argument("--dataset", choices=DATASETS, default="digits", help="the data set")
    t.add_argument("--layers", type=_layers, default=None, help="hidden layer sizes, e.g. 512,256 (default: per "
                   "data set; an empty string for none)")
    t.add_argument("--activation", type=_choice(activations.names(), activations.get), default="relu",
                   help="activation of the hidden layers")
    t.add_argument("--optimizer", type=_choice(sorted(optimizers.OPTIMIZERS), _optimizer_name), default="adam",
                   help="optimizer")
    t.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over the run")
    t.add_argument("--dropout", type=_fraction, default=None,
                   help="dropout rate after each hidden layer (default: per data set)")
    t.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: per data set)")
    t.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: per data set)")
    t.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default: per data set)")
    t.add_argument("--validation-split", type=_fraction, default=0.1,
                   help="fraction of the training rows held out to report validation metrics")
    t.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="floating-point type")
    t.add_argument("--seed", type=_seed, default=0, help="seed of the weights, shuffles and train/test split")
    t.add_argument("-o", "--output", default=None, help="save the trained model to this file")
    t.add_argument("--plot", default=None, help="save training curves (and a confusion matrix) as PNG")
    t.add_argument("--quiet", action="store_true", help="print only the result")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n N nnxp train --distributed (needs nnxp[mpi])")

    e = sub.add_parser("evaluate", help="evaluate a saved model on a data set's test split", **kw)
    e.add_argument("model", help="a model file saved by nnxp train -o or model.save")
    e.add_argument("--dataset", choices=DATASETS, default="digits", help="the data set whose test split to score")
    e.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto")
    e.add_argument("--seed", type=_seed, default=0,
                   help="seed of the train/test split: the one the model was trained with")
    e.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("predict", help="run a saved model on a .npy or .npz file", **kw)
    p.add_argument("model", help="a model file saved by nnxp train -o or model.save")
    p.add_argument("input", help=".npy file of samples (or .npz holding one array, or an array named x)")
    p.add_argument("-o", "--output", required=True, help="where to save the predictions (.npy is appended if missing)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quiet", action="store_true", help="print nothing")

    i = sub.add_parser("info", help="versions, BLAS, CuPy, CUDA and GPUs", **kw)
    i.add_argument("--json", action="store_true", help="print one JSON object")

    s = sub.add_parser("selftest", help="check nnxp on this machine: environment, kernels, ops, training parity",
                       **kw)
    s.add_argument("--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto")
    s.add_argument("--json", action="store_true", help="print one JSON object")

    b = sub.add_parser("bench", help="benchmark report (run from the repository)", **kw)
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the report (nnxp bench --help)")
    return parser


# Errors about the run itself (missing data, a GPU or package that is not there, divergence, a bad file, memory)
# exit 1; every other NnxpError is a usage error and exits 2, like argparse's own.
_RUNTIME_ERRORS = (DatasetError, DeviceError, DeviceMemoryError, ModelFileError, NumericalError,
                   MissingDependencyError, OutputError)


def _error(message: str, code: int) -> int:
    print(f"nnxp: error: {' '.join(str(message).split())}", file=sys.stderr)  # one line, whatever the message
    return code


def main(argv: list[str] | None = None) -> int:
    """The ``nnxp`` command; returns the exit code (see the module docstring)."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`nnxp bench | head`): stop quietly, and point stdout at /dev/null so that
        # Python's own flush at exit does not complain again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["bench"]:  # everything after `bench` belongs to bench.report, options included
            args = argparse.Namespace(command="bench", bench_args=argv[1:])
        else:
            args = make_parser().parse_args(argv)
    except _UsageError as exc:
        return _error(str(exc), 2)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        if args.command == "train":
            comm = distributed.init() if args.distributed else distributed.current()
            if args.device:
                get_device(args.device)  # a bad device fails before any data is loaded
            with distributed.quiet_unless_main(comm):
                train(args)
        elif args.command == "evaluate":
            evaluate(args)
        elif args.command == "predict":
            predict(args)
        elif args.command == "info":
            _print_info(args.json)
        elif args.command == "bench":
            return bench(args)
        elif args.command == "selftest":
            from . import selftest

            return selftest.main(args.device, args.json)
    except ModelSaveError as exc:  # an OSError too: its message without the "[Errno 2]" prefix, exit 1
        return _error(exc.strerror or str(exc), 1)
    except _RUNTIME_ERRORS as exc:
        return distributed.abort(_error(str(exc), 1))  # under MPI the other ranks must not wait for this one
    except NnxpError as exc:
        return distributed.abort(_error(str(exc), 2))
    except KeyboardInterrupt:
        print("nnxp: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:
        return _error(f"out of memory ({exc or 'the allocation failed'}); try smaller --layers or --batch-size", 1)
    except BrokenPipeError:
        raise
    except OSError as exc:  # a file the checks could not foresee failing (/proc, a full disk): not a bug in nnxp
        where = f" {exc.filename!r}" if exc.filename else ""
        return _error(f"file error{where}: {exc.strerror or exc}", 1)
    except Exception as exc:  # a bug in nnxp: still one line, with a way to see the traceback
        if os.environ.get("NNXP_TRACEBACK"):
            raise
        return _error(f"unexpected {type(exc).__name__}: {exc} (this is a bug in nnxp; run with NNXP_TRACEBACK=1 "
                      "to see where, and please report it)", 1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
