"""Figures: valid PNG files with the expected content, and correct confusion counts."""

import numpy as np
import pytest

from nnxp import NnxpError
from nnxp.callbacks import History
from nnxp.plot import confusion_matrix, plot_confusion_matrix, plot_history

PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix_counts():
    cm = confusion_matrix([0, 1, 2, 2, 1], [0, 2, 2, 2, 1])
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 0, 2]])
    with pytest.raises(NnxpError, match="same length"):
        confusion_matrix([0, 1], [0])


def test_plot_history_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    h = History()
    for e, (loss, acc) in enumerate([(1.0, 0.5), (0.5, 0.7), (0.3, 0.8)]):
        h.on_epoch_end(e, {"loss": loss, "accuracy": acc, "val_loss": loss * 1.2, "val_accuracy": acc - 0.05})
    path = h.plot(tmp_path / "h.png")
    data = open(path, "rb").read()
    assert data[:8] == PNG and len(data) > 10_000
    # two panels side by side: wider than tall
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1.5 * height


def test_plot_history_rejects_empty():
    with pytest.raises(NnxpError, match="at least one epoch"):
        plot_history({}, "x.png")


def test_plot_confusion_matrix_from_probabilities(tmp_path):
    pytest.importorskip("matplotlib")
    y_true = np.array([0, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 2, 2]] * 0.9 + 0.03
    cm = plot_confusion_matrix(y_true, probs, tmp_path / "cm.png", class_names=["a", "b", "c"])
    np.testing.assert_array_equal(cm.diagonal(), [1, 1, 1])
    assert (tmp_path / "cm.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("epochs, markers", [(10, {"o", "s"}), (60, {"o", "s"}), (400, {"None"})])
def test_long_runs_are_drawn_without_a_marker_per_epoch(epochs, markers):
    pytest.importorskip("matplotlib")
    from nnxp.plot import _pyplot, history_figure

    curve = list(np.linspace(1.0, 0.1, epochs))
    fig = history_figure({"loss": curve, "val_loss": curve, "accuracy": curve})
    try:
        lines = [line for ax in fig.axes for line in ax.get_lines()]
        assert len(lines) == 3 and {line.get_marker() for line in lines} == markers
        assert all(len(line.get_xdata()) == epochs for line in lines)
    finally:
        _pyplot().close(fig)
