"""The nnxp command: training runs, exit codes, one-line errors, files it writes."""

import json
import subprocess
import sys

import numpy as np
import pytest

import nnxp
from nnxp import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_train_reaches_97_percent_on_digits(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--json", "-o", str(tmp_path / "d.nnxp"))
    assert code == 0
    result = json.loads(out)
    assert result["dataset"] == "digits" and result["test"]["accuracy"] >= 0.97
    model = nnxp.load_model(tmp_path / "d.nnxp")
    assert model.count_params() > 0


def test_train_prints_summary_progress_and_accuracy(capsys):
    code, out, _ = run(capsys, "train", "--dataset", "circles", "--epochs", "30", "--layers", "10,5")
    assert code == 0
    assert "Total params" in out and "Epoch 30/30" in out and "samples/s" in out
    assert float(out.strip().splitlines()[-1].split(":")[1].split()[0]) >= 0.9


def test_quiet_prints_only_the_result(capsys):
    code, out, _ = run(capsys, "train", "--dataset", "moons", "--epochs", "5", "--quiet")
    assert code == 0 and out.count("\n") == 1 and out.startswith("test accuracy:")


def test_sine_regression_reports_loss(capsys):
    code, out, _ = run(capsys, "train", "--dataset", "sine", "--epochs", "50", "--json")
    result = json.loads(out)
    assert code == 0 and "mae" in result["test"] and result["test"]["loss"] < 0.5


def test_plot_writes_pngs(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, _ = run(capsys, "train", "--epochs", "3", "--quiet", "--plot", str(png))
    assert code == 0
    for path in (png, tmp_path / "curves_confusion.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["train", "--layers", "12,abc"], 2, "--layers"),
        (["train", "--layers", "0"], 2, "--layers"),
        (["train", "--epochs", "0"], 2, "epochs"),
        (["train", "--batch-size", "-3"], 2, "batch_size"),
        (["train", "--validation-split", "1.5"], 2, "validation_split"),
        (["train", "--activation", "rleu"], 2, "Did you mean"),
        (["train", "--optimizer", "adma"], 2, "Did you mean"),
        (["train", "--device", "tpu"], 1, "device"),
        (["evaluate", "missing.nnxp"], 1, "existing model file"),
    ],
)
def test_errors_are_one_line_with_exit_codes(capsys, argv, code, message):
    got, out, err = run(capsys, *argv)
    assert got == code
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cuda_without_gpu_is_a_runtime_error(capsys):
    if nnxp.cuda_available():
        pytest.skip("a GPU is present")
    code, _, err = run(capsys, "train", "--device", "cuda")
    assert code == 1
    if nnxp.backend.cupy_module() is None:  # no CuPy: how to install it
        assert "nnxp[cuda12]" in err
    else:  # CuPy installed (the dev extra brings it) but no driver or device
        assert "device='cpu'" in err


def test_argparse_usage_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--dataset", "imagenet"])
    assert exc.value.code == 2


def test_evaluate_and_predict_a_saved_model(capsys, tmp_path):
    path = tmp_path / "m.nnxp"
    run(capsys, "train", "--epochs", "5", "--quiet", "-o", str(path))
    code, out, _ = run(capsys, "evaluate", str(path), "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.8
    x = np.random.default_rng(0).uniform(0, 1, (7, 64)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    code, out, _ = run(capsys, "predict", str(path), str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.npy"))
    assert code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), nnxp.load_model(path).predict(x))
    code, _, err = run(capsys, "predict", str(path), str(tmp_path / "nope.npy"), "-o", str(tmp_path / "o.npy"))
    assert code == 1 and "INPUT" in err


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--json")
    data = json.loads(out)
    assert code == 0 and data["nnxp"] == nnxp.__version__ and data["numpy"] == np.__version__
    assert isinstance(data["gpus"], list)


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "nnxp", "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and nnxp.__version__ in proc.stdout


def test_bench_passes_its_options_to_the_report(capsys, tmp_path, monkeypatch):
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # `nnxp bench` runs from a checkout
    code = cli.main(["bench", "--no-plots", "--quiet", "--out", str(tmp_path)])
    assert code == 0 and "samples/s" in (tmp_path / "REPORT.md").read_text()
    code = cli.main(["bench", "--results-dir", str(tmp_path / "empty"), "--quiet"])
    assert code == 1 and "no benchmark results" in capsys.readouterr().err
