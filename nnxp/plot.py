"""Figures: training curves and confusion matrices as PNG files (matplotlib, optional extra `plot`).

Matplotlib is imported only when a figure is drawn, with the file-only Agg
backend, so nnxp works without it and never needs a display.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import NnxpError


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise NnxpError('plotting needs matplotlib: pip install "nnxp[plot]"') from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Any, path: str | os.PathLike, title: str | None = None) -> str:
    """Train/validation curves of every metric in `history` (a History or its dict), one panel each."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs.get("loss"):
        raise NnxpError("`history` must be a History (or dict) with at least one epoch of 'loss'. Received: "
                        f"{type(history).__name__} with keys {list(logs) if isinstance(logs, dict) else '?'}")
    fig = history_figure(logs, title)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return str(path)


MAX_MARKED_EPOCHS = 60  # beyond this a marker per epoch turns the curve into a smudge: plain lines only


def history_figure(logs: dict, title: str | None = None) -> Any:
    """The matplotlib Figure that :func:`plot_history` saves (the caller closes it)."""
    plt = _pyplot()
    metrics = [k for k in logs if not k.startswith("val_") and k != "lr"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        epochs = np.arange(1, len(logs[key]) + 1)
        marked = len(epochs) <= MAX_MARKED_EPOCHS
        ax.plot(epochs, logs[key], marker="o" if marked else None, ms=3, label=f"train {key}")
        if f"val_{key}" in logs:
            ax.plot(epochs, logs[f"val_{key}"], marker="s" if marked else None, ms=3, label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        if key == "loss" and min(logs[key]) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """Counts (true class, predicted class) from integer labels."""
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise NnxpError(f"`y_true` and `y_pred` must have the same length. Received: {y_true.size} and {y_pred.size}")
    k = num_classes or int(max(y_true.max(initial=0), y_pred.max(initial=0)) + 1)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def plot_confusion_matrix(
    y_true: Any, y_pred: Any, path: str | os.PathLike, class_names: list[str] | None = None, title: str | None = None
) -> np.ndarray:
    """Save a confusion-matrix heat map of integer labels (or one-hot / probability rows) and return the counts."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim == 2:
        y_true = y_true.argmax(axis=1)
    if y_pred.ndim == 2:
        y_pred = y_pred.argmax(axis=1)
    k = len(class_names) if class_names else None
    cm = confusion_matrix(y_true, y_pred, k)
    plt = _pyplot()
    size = max(4.0, 0.55 * cm.shape[0] + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    labels = class_names or [str(i) for i in range(cm.shape[0])]
    ax.set_xticks(range(cm.shape[0]), labels, rotation=45, ha="right")
    ax.set_yticks(range(cm.shape[0]), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    limit = cm.max() / 2 if cm.size else 0
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > limit else "black")
    ax.set_title(title or f"accuracy {np.trace(cm) / max(cm.sum(), 1):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return cm
