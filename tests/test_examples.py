"""The scripts in examples/: each main() runs (in its --quick form), reaches its numbers and saves real PNGs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nnxp
from nnxp.backend import cuda_available
from nnxp.datasets import load_fashion_mnist, load_mnist
from nnxp.errors import DatasetError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS thread for these runs: the results are the same, but when other jobs share the CPU a
    multi-threaded OpenBLAS spins and waits and the examples run ten times slower or worse."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only a speed-up; the tests pass without it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def load_example(name: str):
    """Import examples/<name>.py by path (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"nnxp_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_disk(loader) -> bool:
    try:
        loader(download=False)
    except DatasetError:
        return False
    return True


def assert_figures(result: dict, folder: Path, names: list[str]) -> None:
    """With matplotlib: exactly these PNG files, each a real PNG. Without it: no figures, no files."""
    if not HAVE_MATPLOTLIB:
        assert result["figures"] == []
        assert not any(folder.glob("*.png"))
        return
    assert sorted(Path(p).name for p in result["figures"]) == sorted(names)
    for name in names:
        data = (folder / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 5000, f"{name} is suspiciously small ({len(data)} bytes)"


def test_two_circles(tmp_path):
    result = load_example("two_circles").main(["--quick", "--out", str(tmp_path)])
    assert result["test_accuracy"] >= 0.97
    assert_figures(result, tmp_path, ["two_circles_curves.png", "two_circles_boundary.png"])


def test_two_circles_is_deterministic(tmp_path):
    module = load_example("two_circles")
    first = module.main(["--quick", "--out", str(tmp_path / "a")])
    second = module.main(["--quick", "--out", str(tmp_path / "b")])
    assert first["test_loss"] == second["test_loss"]
    assert first["test_accuracy"] == second["test_accuracy"]


def test_sine_cosine(tmp_path):
    result = load_example("sine_cosine").main(["--quick", "--out", str(tmp_path)])
    assert result["mse"] < 1e-3
    assert result["train_loss"] < 1e-3
    assert_figures(result, tmp_path, ["sine_cosine_fit.png", "sine_cosine_curves.png"])


def test_digits_l2(tmp_path, capsys):
    result = load_example("digits_l2").main(["--quick", "--out", str(tmp_path)])
    assert [row["l2"] for row in result["table"]] == [0.0, 1e-4, 1e-3]
    assert result["best_l2"] in (0.0, 1e-4, 1e-3)
    assert result["valid_accuracy"] == max(row["valid_accuracy"] for row in result["table"])
    assert result["test_accuracy"] >= 0.9
    assert "chosen lambda" in capsys.readouterr().out
    assert_figures(result, tmp_path, ["digits_l2_curves.png"])


# quick-mode thresholds measured on this machine (Fashion-MNIST: 0.772 / 0.815; digits: 0.925 / 0.967);
# MNIST is the easier set, so the Fashion-MNIST bounds are safe for it too.
MNIST_SOFTMAX_MIN = {"mnist": (0.72, 0.78), "fashion-mnist": (0.72, 0.78), "digits": (0.88, 0.93)}


def missing(*args, **kwargs):
    raise DatasetError("not on this machine (a test stand-in)")


@pytest.mark.parametrize("fallback", [False, True], ids=["on-disk", "digits-fallback"])
def test_mnist_softmax(tmp_path, monkeypatch, capsys, fallback):
    module = load_example("mnist_softmax")
    if fallback:  # neither MNIST nor Fashion-MNIST: the bundled digits, with a note
        monkeypatch.setattr(module, "load_mnist", missing)
        monkeypatch.setattr(module, "load_fashion_mnist", missing)
    result = module.main(["--quick", "--out", str(tmp_path)])
    if fallback:
        assert result["dataset"] == "digits"
        assert "using the bundled 8x8 digits" in capsys.readouterr().out
    softmax_min, hidden_min = MNIST_SOFTMAX_MIN[result["dataset"]]
    assert result["softmax_sgd"]["test_accuracy"] >= softmax_min
    assert result["sigmoid100_adam"]["test_accuracy"] >= hidden_min
    assert 0 < result["softmax_sgd"]["valid_accuracy"] <= 1
    assert_figures(result, tmp_path, ["mnist_softmax_sgd_curves.png", "mnist_sigmoid100_adam_curves.png"])


@pytest.mark.skipif(on_disk(load_mnist), reason="MNIST is on this machine")
def test_mnist_softmax_missing_data_set_is_a_clear_exit(tmp_path):
    with pytest.raises(SystemExit, match="MNIST files not found"):
        load_example("mnist_softmax").main(["--quick", "--data", "mnist", "--out", str(tmp_path)])


@pytest.mark.parametrize("fallback", [False, True], ids=["on-disk", "digits-fallback"])
def test_fashion_mnist_mlp(tmp_path, monkeypatch, capsys, fallback):
    module = load_example("fashion_mnist_mlp")
    if fallback:
        monkeypatch.setattr(module, "load_fashion_mnist", missing)
    result = module.main(["--quick", "--out", str(tmp_path)])
    expected = "fashion-mnist" if on_disk(load_fashion_mnist) and not fallback else "digits"
    assert result["dataset"] == expected
    if expected == "digits":
        assert "bundled 8x8 digits are used instead" in capsys.readouterr().out
    # quick mode measured 0.818 on Fashion-MNIST and 0.956 on the digits
    assert result["test_accuracy"] >= (0.78 if expected == "fashion-mnist" else 0.9)
    counts = result["confusion_matrix"]
    assert counts.shape == (10, 10)
    assert counts.trace() / counts.sum() == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert_figures(result, tmp_path, ["fashion_mnist_mlp_curves.png", "fashion_mnist_mlp_confusion.png"])


@pytest.mark.skipif(cuda_available(), reason="a GPU is present; the next test times it")
def test_gpu_train_without_gpu_says_so(tmp_path, capsys):
    result = load_example("gpu_train").main(["--quick", "--out", str(tmp_path)])
    assert result["gpu"] is False
    out = capsys.readouterr().out
    assert "device 'cuda'" in out and "needs a CUDA GPU" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(cuda_available(), reason="a GPU is present")
def test_gpu_train_script_exits_zero_without_gpu(tmp_path):
    # run as a script from elsewhere, with nnxp found only through the script's own path fallback
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "gpu_train.py"), "--out", str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout


@pytest.mark.gpu
def test_gpu_train_on_gpu(tmp_path):
    result = load_example("gpu_train").main(["--quick", "--out", str(tmp_path)])
    assert result["gpu"] is True
    assert result["cpu"]["epoch_s"] > 0 and result["cuda"]["epoch_s"] > 0
    assert abs(result["cpu"]["test_accuracy"] - result["cuda"]["test_accuracy"]) < 0.05
    assert_figures(result, tmp_path, ["gpu_train_curves.png"])


def test_gpu_train_timing_path_runs_with_the_cpu_standing_in(tmp_path, monkeypatch):
    """The GPU branch, exercised on any machine by letting the CPU pose as the GPU."""
    real = nnxp.get_device
    monkeypatch.setattr(nnxp, "get_device", lambda spec=None: real("cpu"))
    result = load_example("gpu_train").main(["--quick", "--out", str(tmp_path)])
    assert result["gpu"] is True
    assert result["speedup"] > 0
    # same seed, same device, same data: the two runs agree exactly
    assert result["cpu"]["test_accuracy"] == result["cuda"]["test_accuracy"]
    assert result["cpu"]["test_accuracy"] > 0.6
    assert_figures(result, tmp_path, ["gpu_train_curves.png"])


def test_without_matplotlib_the_figures_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail, as if not installed
    result = load_example("two_circles").main(["--quick", "--out", str(tmp_path / "figs")])
    assert result["test_accuracy"] >= 0.97
    assert result["figures"] == []
    assert not (tmp_path / "figs").exists()
    assert "matplotlib is not installed" in capsys.readouterr().out
