"""The same MLP on the CPU and on a CUDA GPU: one ``device=`` argument, timed per epoch.

Reproduces the "now move it to the GPU" step of the from-scratch tutorials: a
784-512-256-10 ReLU/softmax MLP on Fashion-MNIST (the bundled digits when it is absent),
built once with ``device="cpu"`` and once with ``device="cuda"`` (NumPy vs CuPy under the
same code), each trained for a warm-up epoch and then timed on the next ones.

Without CuPy or a GPU, nnxp refuses ``device="cuda"`` with a ``DeviceError`` that says what
to install; this script prints that message, says it needs a GPU, and exits with status 0.
With a GPU it prints the seconds per epoch on each device, the speed-up and both test
accuracies (close, not bit-identical: the two BLAS libraries round differently), and saves
the CUDA run's training curves. The speed-up depends on the GPU, the CPU and the batch size
(256 here); it was not measured where this was written, which has no GPU.

    python examples/gpu_train.py [--out DIR] [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

try:
    import nnxp
except ImportError:  # a source checkout without `pip install -e .`: use the package beside examples/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import nnxp
from nnxp import Dense, Sequential
from nnxp.callbacks import Callback
from nnxp.datasets import load_digits, load_fashion_mnist, train_test_split
from nnxp.errors import DatasetError, DeviceError


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd() / "nnxp-figures", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer images (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class EpochTimer(Callback):
    """Wall-clock seconds of each epoch, with the device synchronized so GPU work is counted."""

    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.model.device.synchronize()
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.model.device.synchronize()
        self.seconds.append(time.perf_counter() - self._t0)


def load_data(quick: bool, seed: int):
    try:
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download=False)
    except DatasetError:
        print("note: Fashion-MNIST is not on this machine; timing on the bundled 8x8 digits instead")
        x, y = load_digits()
        x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, seed=seed, stratify=y)
        return "digits", x_train, y_train, x_test, y_test
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    n, n_test = (3000, 2000) if quick else (len(x_train), len(x_test))
    return ("fashion-mnist", flat(x_train[:n]), y_train[:n].astype(np.int64), flat(x_test[:n_test]),
            y_test[:n_test].astype(np.int64))


def train_on(device: str, data, epochs: int, seed: int):
    """Train a fresh, identically initialized MLP on `device`; returns ({epoch times, test accuracy}, history)."""
    _, x_train, y_train, x_test, y_test = data
    model = Sequential(
        [Dense(512, "relu", input_dim=x_train.shape[1], kernel_initializer="he_uniform"),
         Dense(256, "relu", kernel_initializer="he_uniform"),
         Dense(10, "softmax")],
        device=device,
        seed=seed,
    )
    model.compile(nnxp.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    timer = EpochTimer()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=256, callbacks=[timer], verbose=0)
    test = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    epoch_s = min(timer.seconds[1:])  # the first epoch pays for warm-up (CUDA kernels, memory pools)
    print(f"{device:>4}: {epoch_s:.3f} s per epoch (first epoch {timer.seconds[0]:.3f} s), "
          f"test accuracy {test['accuracy']:.4f}")
    return {"epoch_s": epoch_s, "first_epoch_s": timer.seconds[0], "test_accuracy": test["accuracy"]}, history


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        gpu = nnxp.get_device("cuda")  # the same check Sequential(device="cuda") makes
    except DeviceError as err:
        print(f"nnxp: {err}")
        print("This example needs a CUDA GPU with CuPy to compare against; nothing to time here.")
        return {"gpu": False, "message": str(err)}

    data = load_data(args.quick, args.seed)
    arch = f"{data[1].shape[1]}-512-256-10"
    print(f"{data[0]}: {len(data[1])} training images, timing a {arch} MLP on cpu and {gpu.name}")
    epochs = 2 if args.quick else 3
    cpu_result, _ = train_on("cpu", data, epochs, args.seed)
    gpu_result, gpu_history = train_on(gpu.name, data, epochs, args.seed)
    speedup = cpu_result["epoch_s"] / gpu_result["epoch_s"]
    print(f"speed-up of {gpu.name} over the CPU: {speedup:.1f}x per epoch")

    figures = []
    if importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures are saved (pip install "nnxp[plot]").')
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        title = f"{data[0]}: {arch} ReLU MLP on {gpu.name}"
        figures.append(gpu_history.plot(str(args.out / "gpu_train_curves.png"), title=title))
        print("saved", ", ".join(figures))
    return {"gpu": True, "dataset": data[0], "cpu": cpu_result, "cuda": gpu_result, "speedup": speedup,
            "figures": figures}


if __name__ == "__main__":
    main()
