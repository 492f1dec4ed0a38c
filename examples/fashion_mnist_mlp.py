"""Fashion-MNIST with a small sigmoid MLP, its learning curves and its confusion matrix.

Reproduces the "classify clothes" experiment of the from-scratch tutorials: a 784-64-32-10
network (sigmoid, sigmoid, softmax) trained with Adam on the 60,000 Zalando images
(5,000 held out for validation), scored on the 10,000 test images, and a confusion matrix
showing which garments it mixes up (shirts with T-shirts, pullovers and coats).

Data: Fashion-MNIST from disk (``load_fashion_mnist(download=False)``: ``$NNXP_DATA``, the
nnxp cache, or Debian's ``apt-get install dataset-fashion-mnist``); when it is absent the
bundled 8x8 digits are used instead, with a printed note. Nothing is downloaded.

Expect: test accuracy 0.876 after 10 epochs (about 10 s); the digits fallback reaches
0.962. Figures: training curves and the confusion matrix.
If the CPU is shared with other busy jobs and epochs crawl, run with OPENBLAS_NUM_THREADS=1
(same numbers; a multi-threaded OpenBLAS can slow down ten-fold when its threads are starved).

    python examples/fashion_mnist_mlp.py [--out DIR] [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

try:
    import nnxp
except ImportError:  # a source checkout without `pip install -e .`: use the package beside examples/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import nnxp
from nnxp import Dense, Sequential
from nnxp.datasets import load_digits, load_fashion_mnist, train_test_split
from nnxp.errors import DatasetError
from nnxp.plot import confusion_matrix, plot_confusion_matrix

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd() / "nnxp-figures", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def have_matplotlib() -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures are saved (pip install "nnxp[plot]").')
        return False
    return True


def load_data(seed: int):
    """(name, class names, x_train, y_train, x_test, y_test): float32 features in [0, 1], int64 labels."""
    try:
        (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download=False)
    except DatasetError as err:
        print(f"note: Fashion-MNIST is not on this machine, so the bundled 8x8 digits are used instead.\n  {err}")
    else:
        flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
        return "fashion-mnist", CLASSES, flat(x_train), y_train.astype(np.int64), flat(x_test), y_test.astype(np.int64)
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.25, seed=seed, stratify=y)
    return "digits", [str(d) for d in range(10)], x_train, y_train, x_test, y_test


def main(argv=None) -> dict:
    args = parse_args(argv)
    name, classes, x_train, y_train, x_test, y_test = load_data(args.seed)
    if name == "fashion-mnist":
        n_train, epochs = (10000, 5) if args.quick else (len(x_train), 10)
    else:
        n_train, epochs = len(x_train), 30 if args.quick else 60
    order = np.random.default_rng(args.seed).permutation(len(x_train))[:n_train]  # seeded (sub)sample
    x_train, y_train = x_train[order], y_train[order]
    print(f"{name}: {len(x_train)} training images (1/12 of them held out for validation), {len(x_test)} test")

    n_features = x_train.shape[1]
    model = Sequential(
        [Dense(64, "sigmoid", input_dim=n_features), Dense(32, "sigmoid"), Dense(10, "softmax")], seed=args.seed
    )
    model.compile(nnxp.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=32, validation_split=1 / 12, verbose=2)

    test = model.evaluate(x_test, y_test, verbose=0, return_dict=True)
    y_pred = model.predict(x_test).argmax(axis=1)
    print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f})")

    counts = confusion_matrix(y_test, y_pred, num_classes=10)
    off = counts - np.diag(np.diag(counts))
    true_k, pred_k = np.unravel_index(off.argmax(), off.shape)
    print(f"most frequent mistake: {classes[true_k]} taken for {classes[pred_k]} ({off[true_k, pred_k]} times)")
    per_class = np.diag(counts) / counts.sum(axis=1)
    print("per-class accuracy: " + ", ".join(f"{c} {a:.2f}" for c, a in zip(classes, per_class)))

    figures = []
    if have_matplotlib():
        args.out.mkdir(parents=True, exist_ok=True)
        title = f"{name}: {n_features}-64-32-10 sigmoid MLP, Adam"
        figures.append(history.plot(str(args.out / "fashion_mnist_mlp_curves.png"), title=title))
        path = args.out / "fashion_mnist_mlp_confusion.png"
        plot_confusion_matrix(y_test, y_pred, path, class_names=classes,
                              title=f"{name} test set, accuracy {test['accuracy']:.3f}")
        figures.append(str(path))
        print("saved", ", ".join(figures))
    return {"dataset": name, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "valid_accuracy": history.history["val_accuracy"][-1],
            "most_confused": (classes[true_k], classes[pred_k], int(off[true_k, pred_k])),
            "confusion_matrix": counts, "figures": figures}


if __name__ == "__main__":
    main()
