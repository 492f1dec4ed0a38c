"""Choosing an L2 penalty on a validation set: the classic regularization experiment.

Reproduces the "overfitting and regularization" chapter of the from-scratch tutorials on
the bundled 8x8 handwritten digits: a 64-128-64-10 network with two sigmoid hidden layers
and a softmax output, trained with SGD (momentum 0.9) for 100 epochs. The 1,797 images
are split 60/20/20 into train, validation and test sets (stratified). One model is trained
per L2 factor λ on the hidden kernels (the loss gains λ·Σw²); the λ with the best
validation accuracy is chosen, and only that model is scored on the test set.

Expect: λ <= 1e-4 fit the training set perfectly, λ = 1e-4 generalizes best (validation
0.964, test 0.961; without the penalty the test accuracy is about 0.95), and λ >= 1e-3
underfits. Runs in about 4 seconds. Figure: the training curves of the chosen model.

    python examples/digits_l2.py [--out DIR] [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

try:
    import nnxp
except ImportError:  # a source checkout without `pip install -e .`: use the package beside examples/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import nnxp
from nnxp import Dense, Sequential
from nnxp.datasets import load_digits, train_test_split
from nnxp.regularizers import L2

GRID = (0.0, 1e-5, 1e-4, 1e-3, 3e-3)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd() / "nnxp-figures", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="a shorter grid (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def have_matplotlib() -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures are saved (pip install "nnxp[plot]").')
        return False
    return True


def train_one(l2, data, seed):
    """Train the 64-128-64-10 sigmoid network with L2 factor `l2` on both hidden kernels."""
    x_train, y_train, x_valid, y_valid = data
    model = Sequential(
        [
            Dense(128, "sigmoid", input_dim=64, kernel_regularizer=L2(l2)),
            Dense(64, "sigmoid", kernel_regularizer=L2(l2)),
            Dense(10, "softmax"),
        ],
        seed=seed,
    )
    model.compile(nnxp.optimizers.SGD(0.1, momentum=0.9), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=100, batch_size=32, validation_data=(x_valid, y_valid), verbose=0)
    return model, history


def main(argv=None) -> dict:
    args = parse_args(argv)
    x, y = load_digits()
    x = x / 16.0  # pixel intensities 0..16 -> 0..1
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, seed=args.seed, stratify=y)
    x_train, x_valid, y_train, y_valid = train_test_split(x_rest, y_rest, test_size=0.25, seed=args.seed,
                                                          stratify=y_rest)
    print(f"digits: {len(x_train)} train, {len(x_valid)} validation, {len(x_test)} test images")

    grid = (0.0, 1e-4, 1e-3) if args.quick else GRID
    rows = []
    print(f"{'lambda':>8}  {'train acc':>9}  {'valid acc':>9}")
    for l2 in grid:
        model, history = train_one(l2, (x_train, y_train, x_valid, y_valid), args.seed)
        row = {"l2": l2, "train_accuracy": history.history["accuracy"][-1],
               "valid_accuracy": history.history["val_accuracy"][-1], "model": model, "history": history}
        rows.append(row)
        print(f"{l2:>8g}  {row['train_accuracy']:>9.4f}  {row['valid_accuracy']:>9.4f}")

    # Best validation accuracy; on a tie, the larger penalty (the simpler model).
    best = max(rows, key=lambda r: (r["valid_accuracy"], r["l2"]))
    test = best["model"].evaluate(x_test, y_test, verbose=0, return_dict=True)
    print(f"chosen lambda {best['l2']:g} (validation accuracy {best['valid_accuracy']:.4f}): "
          f"test accuracy {test['accuracy']:.4f}")

    figures = []
    if have_matplotlib():
        args.out.mkdir(parents=True, exist_ok=True)
        title = f"digits, 64-128-64-10 sigmoid, L2 lambda = {best['l2']:g}"
        figures.append(best["history"].plot(str(args.out / "digits_l2_curves.png"), title=title))
        print("saved", ", ".join(figures))
    table = [{k: r[k] for k in ("l2", "train_accuracy", "valid_accuracy")} for r in rows]
    return {"table": table, "best_l2": best["l2"], "valid_accuracy": best["valid_accuracy"],
            "test_accuracy": test["accuracy"], "figures": figures}


if __name__ == "__main__":
    main()
