"""The ``nnxp`` command: train, evaluate, predict, info and bench.

The logic lives in importable functions (``load_task``, ``build_model``,
``train``); ``main`` only parses arguments and maps errors to exit codes:
0 success, 2 usage errors, 1 runtime errors. User errors print one line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import datasets, distributed, optimizers, schedules
from ._version import __version__
from .backend import cuda_device_count, cupy_module, get_device
from .errors import DatasetError, DeviceError, DeviceMemoryError, ModelFileError, NnxpError, NumericalError
from .io import load_model
from .layers import Dense, Dropout
from .model import Sequential

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
        x, y = datasets.load_digits()
        xtr, xte, ytr, yte = datasets.train_test_split(x / 16.0, y, test_size=0.25, seed=seed, stratify=y)
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


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``nnxp train``; returns the result dict (also printed)."""
    task = load_task(args.dataset, seed=args.seed)
    layers = parse_layers(args.layers) if args.layers is not None else task.layers
    dropout = task.dropout if args.dropout is None else args.dropout
    model = build_model(task, layers, args.activation, args.device, args.seed, args.dtype, dropout)
    epochs = task.epochs if args.epochs is None else args.epochs
    batch_size = task.batch_size if args.batch_size is None else args.batch_size
    if args.lr is not None and not args.lr > 0:
        raise NnxpError(f"`--lr` must be a positive number. Received: --lr={args.lr}")
    lr: float | schedules.LearningRateSchedule = args.lr if args.lr is not None else task.learning_rate
    if args.schedule == "cosine" and isinstance(epochs, int) and epochs > 0 and isinstance(batch_size, int) \
            and batch_size > 0:
        n_train = len(task.x_train) - int(round(len(task.x_train) * args.validation_split))
        steps = epochs * max(1, -(-n_train // batch_size))
        lr = schedules.CosineDecay(lr, steps, alpha=0.05)  # anneal to 5% of the rate by the last step
    opt = optimizers.get({"name": args.optimizer, "learning_rate": lr})
    model.compile(opt, task.loss, metrics=task.metrics)
    if not args.quiet and not args.json:
        model.summary()
    history = model.fit(
        task.x_train, task.y_train,
        epochs=epochs,
        batch_size=batch_size,
        validation_split=args.validation_split,
        verbose=0 if (args.quiet or args.json) else 1,
    )
    test = model.evaluate(task.x_test, task.y_test, verbose=0, return_dict=True)
    result = {"dataset": task.name, "device": model.device.name, "layers": layers,
              "epochs": len(history.history["loss"]), "test": test, "history": history.history}
    if args.output:
        model.save(args.output)
        result["model"] = args.output
    if args.plot and distributed.current().is_main:  # under MPI the main rank draws
        history.plot(args.plot, title=f"nnxp on {task.name}")
        result["plot"] = args.plot
        if task.class_names:
            from .plot import plot_confusion_matrix

            cm_path = _sibling(args.plot, "_confusion")
            plot_confusion_matrix(task.y_test, model.predict(task.x_test), cm_path, task.class_names)
            result["confusion_plot"] = cm_path
    if args.json:
        print(json.dumps(result))
    else:
        key = "accuracy" if "accuracy" in test else "loss"
        print(f"test {key}: {test[key]:.4f}" + (f"  (model saved to {args.output})" if args.output else ""))
    return result


def _sibling(path: str, suffix: str) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem}{suffix}.{ext}" if dot else f"{path}{suffix}"


def evaluate(args: argparse.Namespace) -> dict[str, float]:
    model = load_model(args.model, device=args.device)
    task = load_task(args.dataset, seed=args.seed)
    result = model.evaluate(task.x_test, task.y_test, verbose=0, return_dict=True)
    print(json.dumps(result) if args.json else " - ".join(f"{k}: {v:.4f}" for k, v in result.items()))
    return result


def predict(args: argparse.Namespace) -> np.ndarray:
    model = load_model(args.model, device=args.device)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"`INPUT` must be a .npy file of shape (N, {model.input_dim}). Received: {args.input!r} "
                           f"({exc})") from None
    out = model.predict(x.reshape(len(x), -1) if x.ndim > 2 else x)
    np.save(args.output, out)
    if not args.quiet:
        print(f"wrote predictions of shape {out.shape} to {args.output}")
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
    """Entry point of the benchmark report (the suite lives in the repository's bench/ folder)."""
    import importlib
    import os

    sys.path.insert(0, os.getcwd())
    try:
        report = importlib.import_module("bench.report")
    except ImportError:
        raise NnxpError("`nnxp bench` runs from a checkout of the nnxp repository (it needs its bench/ folder); "
                        "cd into the repository first") from None
    return int(report.main(args.bench_args) or 0)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnxp", description="Train and use small neural networks (nnxp).")
    parser.add_argument("--version", action="version", version=f"nnxp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP on a data set and report test metrics")
    t.add_argument("--dataset", choices=DATASETS, default="digits")
    t.add_argument("--layers", default=None, help="hidden layer sizes, e.g. 512,256 (default: per data set)")
    t.add_argument("--activation", default="relu")
    t.add_argument("--optimizer", default="adam")
    t.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule over the run (default: cosine decay)")
    t.add_argument("--dropout", type=float, default=None,
                   help="dropout after each hidden layer (default: per data set)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: per data set)")
    t.add_argument("--epochs", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--validation-split", type=float, default=0.1)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    t.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--output", default=None, help="save the trained model to this file")
    t.add_argument("--plot", default=None, help="save training curves (and a confusion matrix) as PNG")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--json", action="store_true", help="print one JSON object with the results")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n N nnxp train --distributed (needs nnxp[mpi])")

    e = sub.add_parser("evaluate", help="evaluate a saved model on a data set's test split")
    e.add_argument("model")
    e.add_argument("--dataset", choices=DATASETS, default="digits")
    e.add_argument("--device", default="cpu")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="run a saved model on a .npy file")
    p.add_argument("model")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")

    i = sub.add_parser("info", help="versions, BLAS, CuPy, CUDA and GPUs")
    i.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="benchmark report (run from the repository)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


# Errors about the run itself (missing data, a GPU that is not there, divergence, a bad file) exit 1;
# every other NnxpError is a usage error and exits 2, like argparse's own.
_RUNTIME_ERRORS = (DatasetError, DeviceError, DeviceMemoryError, ModelFileError, NumericalError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to bench.report, options included
        args = argparse.Namespace(command="bench", bench_args=argv[1:])
    else:
        args = make_parser().parse_args(argv)
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
    except _RUNTIME_ERRORS as exc:
        print(f"nnxp: error: {exc}", file=sys.stderr)
        return distributed.abort(1)  # under MPI the other ranks must not wait for this one
    except NnxpError as exc:
        print(f"nnxp: error: {exc}", file=sys.stderr)
        return distributed.abort(2)
    except KeyboardInterrupt:
        print("nnxp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
