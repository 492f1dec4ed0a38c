"""Fit sin and cos with a tiny ReLU network: the from-scratch "universal approximation" demo.

Reproduces the regression experiment of the neural-network-from-scratch tutorials: a
[1, 16, 2] network (16 ReLU units, two linear outputs) learns x -> (sin 2πx, cos 2πx) on
[0, 1] from 512 random samples (``nnxp.datasets.make_sine``). He-uniform kernels, small
random-uniform biases (so the ReLU kinks start spread out) and Adam whose learning rate
follows a cosine from 0.01 to 0 make the piecewise-linear fit converge reliably.

Expect: a final MSE of about 3e-4 on an even grid of 200 points (target: below 1e-3), in a
second or two. Figures: the fit against the true curves, and the training curves.

    python examples/sine_cosine.py [--out DIR] [--quick] [--seed N]
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
from nnxp.datasets import make_sine


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path.cwd() / "nnxp-figures", help="folder for the figures")
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; this example is already fast")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def have_matplotlib() -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        print('matplotlib is not installed, so no figures are saved (pip install "nnxp[plot]").')
        return False
    return True


def plot_fit(x, y_true, y_pred, x_train, y_train, path: Path) -> str:
    """The network's two outputs (solid) over the true sin and cos (dashed), with the training samples."""
    import matplotlib  # imported only here, so the example runs without it

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (name, colour) in enumerate((("sin 2πx", "tab:blue"), ("cos 2πx", "tab:orange"))):
        ax.scatter(x_train[:, 0], y_train[:, k], s=4, color=colour, alpha=0.25)
        ax.plot(x[:, 0], y_true[:, k], "--", color="k", lw=1)
        ax.plot(x[:, 0], y_pred[:, k], color=colour, lw=2, label=f"network: {name}")
    mse = float(np.mean((y_pred - y_true) ** 2))
    ax.set_title(f"[1, 16, 2] ReLU network vs truth (dashed), MSE {mse:.1e}")
    ax.set_xlabel("x")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    x_train, y_train = make_sine(512, seed=args.seed)

    model = Sequential(
        [
            Dense(16, "relu", input_dim=1, kernel_initializer="he_uniform", bias_initializer="random_uniform"),
            Dense(2),  # linear outputs: sin and cos
        ],
        seed=args.seed,
    )
    epochs, batch_size = 1000, 16
    steps = epochs * -(-len(x_train) // batch_size)  # optimizer steps in the whole run
    schedule = nnxp.schedules.CosineDecay(0.01, decay_steps=steps)
    model.compile(nnxp.optimizers.Adam(schedule), "mse")
    model.summary()
    history = model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)

    # The truth on an even grid over [0, 1]: how well does the network match the functions themselves?
    x = np.linspace(0.0, 1.0, 200, dtype=np.float32)[:, None]
    y_true = np.concatenate([np.sin(2 * np.pi * x), np.cos(2 * np.pi * x)], axis=1)
    y_pred = model.predict(x)
    mse = float(np.mean((y_pred - y_true) ** 2))
    print(f"final training loss (MSE) {history.history['loss'][-1]:.2e}")
    print(f"final MSE against sin/cos on a 200-point grid {mse:.2e} (max |error| {np.abs(y_pred - y_true).max():.3f})")

    figures = []
    if have_matplotlib():
        args.out.mkdir(parents=True, exist_ok=True)
        figures.append(plot_fit(x, y_true, y_pred, x_train, y_train, args.out / "sine_cosine_fit.png"))
        figures.append(history.plot(str(args.out / "sine_cosine_curves.png"), title="sin/cos fit, [1, 16, 2] ReLU"))
        print("saved", ", ".join(figures))
    return {"mse": mse, "train_loss": history.history["loss"][-1], "figures": figures}


if __name__ == "__main__":
    main()
