"""The nnxp command: training runs, exit codes, one-line errors, files it writes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

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
        (["train", "--batch-size", "-3"], 2, "--batch-size"),  # the flag, no longer Python's batch_size
        (["train", "--validation-split", "1.5"], 2, "--validation-split"),
        (["train", "--activation", "rleu"], 2, "Did you mean"),
        (["train", "--optimizer", "adma"], 2, "Did you mean"),
        (["train", "--device", "tpu"], 2, "--device"),  # a malformed device is a usage error now (was 1)
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


def test_argparse_usage_errors_exit_2(capsys):
    # main returns the code (the console script exits with it) instead of letting argparse raise SystemExit
    code, _, err = run(capsys, "train", "--dataset", "imagenet")
    assert code == 2 and err.startswith("nnxp: error: argument --dataset: invalid choice")


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
    assert data["cpu_loops"].startswith(("on: Numba", "off: "))  # whether the fast extra's loops run, and why not


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



# --- every subcommand with bad arguments, in a subprocess: no traceback, one `nnxp: error:` line, its exit code ---

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved digits-shaped model, a circles-shaped one, and input files good and bad."""
    d = tmp_path_factory.mktemp("cli_files")
    digits = nnxp.Sequential([nnxp.Dense(10, "softmax", input_dim=64)], seed=0)
    digits.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    digits.save(d / "digits.nnxp")
    circles = nnxp.Sequential([nnxp.Dense(1, "sigmoid", input_dim=2)], seed=0)
    circles.compile("adam", "binary_crossentropy")
    circles.save(d / "circles.nnxp")
    (d / "damaged.nnxp").write_text("not a model")
    rng = np.random.default_rng(0)
    np.save(d / "empty.npy", np.zeros((0, 64), np.float32))
    np.save(d / "narrow.npy", rng.random((3, 5)))
    np.save(d / "nan.npy", np.full((2, 64), np.nan))
    np.save(d / "huge.npy", np.full((2, 64), 1e39))  # finite in float64, inf in the model's float32
    np.save(d / "good.npy", rng.random((2, 64)))
    np.save(d / "text.npy", np.array(["a", "b"]))
    np.savez(d / "two.npz", a=rng.random((2, 64)), b=rng.random((2, 64)))
    (d / "folder").mkdir()
    np.save(d / "inputs64.npy", rng.random((3, 64)))
    (d / "inputs.csv").write_text("0.5,1.5\n2.5,3.5\n")
    return d


# (argv with {d} for the files folder, exit code, a piece of the error line)
BAD = [
    (["train", "--seed", "-1"], 2, "argument --seed: must be an integer >= 0"),
    (["train", "--seed", "x"], 2, "argument --seed"),
    (["train", "--validation-split", "nan"], 2, "argument --validation-split: must be a finite number"),
    (["train", "--validation-split", "1"], 2, "argument --validation-split: must be a number in [0, 1)"),
    (["train", "--dropout", "1.5"], 2, "argument --dropout"),
    (["train", "--lr", "0"], 2, "argument --lr: must be a positive number"),
    (["train", "--lr", "inf"], 2, "argument --lr: must be a finite number"),
    (["train", "--epochs", "0"], 2, "argument --epochs"),
    (["train", "--batch-size", "2.5"], 2, "argument --batch-size"),
    (["train", "--layers", "100000000,100000000"], 2, "`--layers` 100000000,100000000 make a model of"),
    (["train", "--layers", "12,abc"], 2, "argument --layers"),
    (["train", "--device", "cuda:abc"], 2, "argument --device: must be cpu, cuda, cuda:N"),
    (["train", "--dtype", "float16"], 2, "argument --dtype"),
    (["train", "--activation", "rleu"], 2, 'Did you mean "relu"'),
    (["train", "--optimizer", "adma"], 2, 'Did you mean "adam"'),
    (["train", "--dataset", "imagenet"], 2, "argument --dataset: invalid choice"),
    (["train", "--nonsense"], 2, "unrecognized arguments: --nonsense"),
    (["train", "-o", "{d}/missing/m.nnxp"], 2, "`-o/--output` must be in an existing folder"),
    (["train", "-o", "{d}/folder"], 2, "`-o/--output` must be a file name, not a folder"),
    (["train", "--plot", "{d}/missing/c.png"], 2, "`--plot` must be in an existing folder"),
    (["evaluate"], 2, "the following arguments are required: model"),
    (["evaluate", "{d}/nope.nnxp"], 1, "`MODEL` must be an existing model file"),
    (["evaluate", "{d}/folder"], 1, "`MODEL` must be an existing model file"),
    (["predict", "{d}/nope.nnxp", "{d}/narrow.npy", "-o", "{d}/p.npy"], 1, "`MODEL` must be an existing model file"),
    (["predict", "{d}/digits.nnxp", "{d}/inputs.csv", "-o", "{d}/p.npy"], 1, "inputs.csv' (not a NumPy file"),
    (["train", "-o", "{d}/new_folder/"], 2, "`-o/--output` must be a file name, not a folder"),
    (["evaluate", "{d}/damaged.nnxp"], 1, "damaged or not an nnxp model"),
    (["evaluate", "{d}/circles.nnxp", "--dataset", "digits"], 2, "takes 2 features but --dataset digits has 64"),
    (["evaluate", "{d}/digits.nnxp", "--device", "gpu0"], 2, "argument --device"),
    (["evaluate", "{d}/digits.nnxp", "--seed", "-3"], 2, "argument --seed"),
    (["predict", "{d}/digits.nnxp", "{d}/empty.npy"], 2, "the following arguments are required: -o/--output"),
    (["predict", "{d}/digits.nnxp", "{d}/empty.npy", "-o", "{d}/p.npy"], 1, "holds no samples"),
    (["predict", "{d}/digits.nnxp", "{d}/narrow.npy", "-o", "{d}/p.npy"], 1, "must hold samples of 64 values"),
    (["predict", "{d}/digits.nnxp", "{d}/nan.npy", "-o", "{d}/p.npy"], 1, "must be finite"),
    (["predict", "{d}/digits.nnxp", "{d}/text.npy", "-o", "{d}/p.npy"], 1, "`INPUT` must be a .npy file"),
    (["predict", "{d}/digits.nnxp", "{d}/two.npz", "-o", "{d}/p.npy"], 1, "holding arrays ['a', 'b']"),
    (["predict", "{d}/digits.nnxp", "{d}/nope.npy", "-o", "{d}/p.npy"], 1, "`INPUT` must be a .npy file"),
    (["predict", "{d}/digits.nnxp", "{d}/narrow.npy", "-o", "{d}/missing/p"], 2,
     "`-o/--output` must be in an existing folder"),
    (["predict", "{d}/digits.nnxp", "{d}/huge.npy", "-o", "{d}/p.npy"], 1,
     "`INPUT` '{d}/huge.npy' must be finite in float32"),
    (["predict", "{d}/digits.nnxp", "{d}/narrow.npy", "-o", "{d}/folder"], 2,
     "`-o/--output` must be a file name, not a folder"),
    (["predict", "{d}/digits.nnxp", "{d}/narrow.npy", "-o", ""], 2, "`-o/--output` must be a file name"),
    (["predict", "{d}/digits.nnxp", "{d}/good.npy", "-o", "{d}/" + "p" * 300], 1,
     "cannot write the predictions to"),
    (["info", "--verbose"], 2, "unrecognized arguments: --verbose"),
    (["bench", "--stat", "bogus"], 2, "argument --stat: invalid choice"),
    (["bench", "--results-dir", "{d}/folder"], 1, "no benchmark results found"),
    ([], 2, "the following arguments are required: command"),
]


def _nnxp(*argv, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "nnxp", *argv], capture_output=True, text=True, check=False,
                          cwd=ROOT, env=env, timeout=120, **kwargs)


@pytest.mark.parametrize("argv, code, message", BAD, ids=[" ".join(a) or "nothing" for a, _, _ in BAD])
def test_bad_arguments_give_one_error_line_and_the_documented_code(files, argv, code, message):
    proc = _nnxp(*[a.format(d=files) for a in argv])
    err_lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.returncode == code, proc.stderr
    assert len(err_lines) == 1 and err_lines[0].startswith("nnxp: error: "), proc.stderr
    assert message.format(d=files) in err_lines[0]
    assert proc.stdout == ""  # refused before any work: no summary, no progress


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_training(files):
    pytest.importorskip("matplotlib")
    proc = _nnxp("train", "--dataset", "circles", "--plot", str(files / "curves.txt"))
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("nnxp: error: `--plot` must end in a format matplotlib writes")
    assert "curves.txt" in proc.stderr


def test_plot_without_matplotlib_is_refused_before_training(capsys, monkeypatch, tmp_path):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name))
    monkeypatch.setattr(nnxp.Sequential, "fit", lambda *a, **k: pytest.fail("trained before checking --plot"))
    code, out, err = run(capsys, "train", "--plot", str(tmp_path / "c.png"))
    assert code == 1 and out == "" and err == 'nnxp: error: `--plot` needs matplotlib: pip install "nnxp[plot]" ' \
                                              "(or leave out --plot)\n"


def test_a_closed_pipe_ends_quietly():
    """`nnxp bench | head`: the reader goes away; no BrokenPipeError, the SIGPIPE-like code 141."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nnxp", "bench", "--no-plots", "--out", str(ROOT / ".pytest_cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
    proc.stdout.close()  # before it writes: its first print meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""


def test_train_help_shows_defaults():
    proc = _nnxp("train", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for piece in ("(default: digits)", "(default: relu)", "(default: adam)", "(default: 0.1)", "(default: 0)",
                  "(default: cpu)", "(default: cosine)"):
        assert piece in text, piece
    assert "(default: None)" not in text


def test_predict_reads_npz_and_reports_the_path_it_wrote(capsys, files, tmp_path):
    x = np.random.default_rng(1).random((4, 64)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, ids=np.arange(4))  # several arrays: the one named x
    np.savez(tmp_path / "one.npz", x)  # a single array under any name
    model = nnxp.load_model(files / "digits.nnxp")
    for name in ("in.npz", "one.npz"):
        code, out, _ = run(capsys, "predict", str(files / "digits.nnxp"), str(tmp_path / name), "-o",
                           str(tmp_path / "preds"))
        assert code == 0 and out.strip() == f"wrote predictions of shape (4, 10) to {tmp_path / 'preds.npy'}"
        np.testing.assert_array_equal(np.load(tmp_path / "preds.npy"), model.predict(x))
    assert not (tmp_path / "preds").exists()


def test_ctrl_c_in_the_first_epoch_reports_and_saves(capsys, monkeypatch, tmp_path):
    """Ctrl-C during the first epoch: training stops, the run still evaluates, saves and says so."""
    calls = []

    def press_ctrl_c(self, batch, logs=None):
        calls.append(batch)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # caught by fit's handler, checked after this batch

    monkeypatch.setattr(nnxp.callbacks.History, "on_train_batch_end", press_ctrl_c, raising=False)
    path = tmp_path / "m.nnxp"
    code, out, err = run(capsys, "train", "--epochs", "5", "--quiet", "-o", str(path))
    assert code == 0 and "Traceback" not in err
    assert "after 0 complete epochs (interrupted)" in out and f"model saved to {path}" in out
    saved = nnxp.load_model(path)
    # fit went back to the start of the interrupted epoch (so a later fit continues exactly): no step counts
    assert saved.epochs_trained == 0 and saved.optimizer.iterations == 0 and len(calls) == 3
    calls.clear()
    code, out, err = run(capsys, "train", "--epochs", "5", "--json")
    result = json.loads(out)  # stdout stays one JSON object; fit's note about the interruption went to stderr
    assert code == 0 and result["interrupted"] and result["epochs"] == 0 and "interrupted" in err


def test_readme_example_and_cli_evaluate_use_one_split(capsys, tmp_path, monkeypatch):
    """The README's 60-second example, run as written (fewer epochs), then `nnxp evaluate --dataset digits` on
    its model: the CLI must score exactly the example's held-out rows, not rows it trained on."""
    pytest.importorskip("matplotlib")  # the example draws its curves
    pytest.importorskip("onnx")  # and exports ONNX
    readme = (ROOT / "README.md").read_text()
    code_block = readme.split("## The 60-second example")[1].split("```python\n")[1].split("```")[0]
    assert "load_digits_split(" in code_block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code_block.replace("epochs=30", "epochs=2"), "README.md", "exec"), namespace)  # noqa: S102
    capsys.readouterr()
    code, out, _ = run(capsys, "evaluate", "digits.nnxp", "--dataset", "digits", "--json")
    assert code == 0
    expected = namespace["model"].evaluate(namespace["x_test"], namespace["y_test"], verbose=0, return_dict=True)
    assert json.loads(out) == pytest.approx(expected, rel=1e-6)
    task = cli.load_task("digits")
    np.testing.assert_array_equal(task.x_test, namespace["x_test"])
    train_rows = {row.tobytes() for row in namespace["x_train"]}
    held_out = [row.tobytes() not in train_rows for row in task.x_test]
    assert np.mean(held_out) > 0.95  # digits has a few duplicate images; the split itself is disjoint


@pytest.mark.skipif(not (os.path.isdir("/proc") and os.access("/proc", os.W_OK)),
                    reason="needs a folder that os.access calls writable but that refuses new files (/proc as root)")
@pytest.mark.parametrize("argv", [
    ["predict", "{d}/digits.nnxp", "{d}/inputs64.npy", "-o", "/proc/nnxp_p.npy"],
    ["train", "--dataset", "circles", "--epochs", "1", "--quiet", "-o", "/proc/nnxp_m.nnxp"],
    ["train", "--dataset", "circles", "--epochs", "1", "--quiet", "--plot", "/proc/nnxp_c.png"],
], ids=["predict -o", "train -o", "train --plot"])
def test_an_output_that_fails_only_when_written_is_a_one_line_runtime_error(files, argv):
    # the pre-checks pass (the folder exists and is "writable"), the write itself fails: exit 1, one line,
    # not "this is a bug in nnxp" and not [Errno 2] glued to the front
    proc = _nnxp(*[a.format(d=files) for a in argv])
    err_lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert len(err_lines) == 1 and err_lines[0].startswith("nnxp: error: "), proc.stderr
    assert "/proc/nnxp_" in err_lines[0] and "bug in nnxp" not in err_lines[0] and "[Errno" not in err_lines[0]


def test_evaluate_scores_a_model_trained_on_one_hot_labels(capsys, tmp_path):
    # a Keras port compiles with categorical_crossentropy and to_categorical labels; `nnxp evaluate` refused it
    # with "`y` must have 10 columns ... use nnxp.datasets.one_hot", exit 2
    task = cli.load_task("digits", seed=0)
    model = nnxp.Sequential([nnxp.Dense(10, "softmax", input_dim=64)], seed=0)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy"])
    model.fit(task.x_train, nnxp.utils.to_categorical(task.y_train, 10), epochs=20, verbose=0)
    model.save(tmp_path / "onehot.nnxp")
    code, out, err = run(capsys, "evaluate", str(tmp_path / "onehot.nnxp"), "--dataset", "digits", "--json")
    assert code == 0, err
    loss, accuracy = model.evaluate(task.x_test, nnxp.utils.to_categorical(task.y_test, 10), verbose=0)
    assert json.loads(out) == pytest.approx({"loss": loss, "accuracy": accuracy})
    assert accuracy > 0.85
