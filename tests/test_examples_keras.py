"""examples/keras/: three classic Keras programs that differ from their Keras originals only in import lines.

Each test runs the program as a script in a subprocess and checks its reported accuracy or error; a second
test rebuilds the Keras original from the header each file carries and checks that nothing else mentions nnxp.
Fashion-MNIST runs on a subset of the rows (the test swaps ``fashion_mnist.load_data`` before the script runs,
so the Keras code itself is untouched).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nnxp.datasets import load_fashion_mnist
from nnxp.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
PORTS = ROOT / "examples" / "keras"
PROGRAMS = sorted(p.name for p in PORTS.glob("*.py"))

# One BLAS thread: the numbers are the same, and on a shared machine a spinning OpenBLAS is many times slower.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1"}


def _run(script: str, cwd: Path, prelude: str = "") -> str:
    code = f"import runpy\n{prelude}\nrunpy.run_path({str(PORTS / script)!r}, run_name='__main__')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=ENV,
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text[-2000:]}"
    return float(match.group(1))


def test_the_ports_are_there():
    assert PROGRAMS == ["binary_classifier.py", "fashion_mnist_mlp.py", "regression_mlp.py"]


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_port_differs_from_its_keras_original_only_in_import_lines(name):
    body = (PORTS / name).read_text()
    doc = ast.get_docstring(ast.parse(body))
    originals = [line.strip() for line in doc.split("replaced by:")[1].splitlines() if line.strip()]
    assert originals and all(line.startswith(("from tensorflow", "import tensorflow")) for line in originals)
    block = body.split("# --- imports (the only lines that differ from the Keras program) ---\n")[1]
    block = block.split("# --- end of imports ---")[0]
    ports = [line for line in block.splitlines() if line.strip()]
    assert len(ports) == len(originals) and all(line.startswith(("import nnxp", "from nnxp")) for line in ports)
    # the Keras program is the file with that block replaced; outside the block nothing names nnxp
    keras_program = body.replace(block, "\n".join(originals) + "\n")
    code = ast.parse(keras_program)  # still a valid Python program
    code.body = code.body[1:]  # all but the docstring, which tells the story
    assert "nnxp" not in ast.unparse(code)


def test_regression_port_reaches_a_small_error(tmp_path):
    out = _run("regression_mlp.py", tmp_path)
    mse, mae = _number(r"Test MSE: ([\d.]+)", out), _number(r"Test MAE: ([\d.]+)", out)
    assert mse < 0.08 and mae < 0.22  # the target's variance is about 1.9; the noise alone gives mse 0.01
    assert mae * mae <= mse  # mae^2 <= mse always: the two metrics are what they claim


def test_binary_port_classifies_with_float_labels_and_class_weights(tmp_path):
    out = _run("binary_classifier.py", tmp_path)
    assert _number(r"Test accuracy: ([\d.]+)", out) > 0.88
    assert _number(r"Recall of the positive class: ([\d.]+)", out) > 0.85  # the class weights make it count


def test_fashion_mnist_port_with_dropout_early_stopping_and_checkpoint(tmp_path):
    try:
        load_fashion_mnist(download=False)
    except DatasetError:
        pytest.skip("Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist)")
    prelude = (
        "from nnxp.datasets import fashion_mnist\n"
        "full = fashion_mnist.load_data\n"
        "def subset():\n"
        "    (a, b), (c, d) = full()\n"
        "    return (a[:4000], b[:4000]), (c[:1000], d[:1000])\n"
        "fashion_mnist.load_data = subset\n"
    )
    out = _run("fashion_mnist_mlp.py", tmp_path, prelude)
    assert "4000 train samples" in out and "Total params: 235,146" in out
    assert _number(r"Test accuracy: ([\d.]+)", out) > 0.78
    assert _number(r"Best checkpoint test accuracy: ([\d.]+)", out) > 0.78
    assert re.search(r"Epoch 1: val_accuracy improved from -inf to [\d.]+, saving model to fashion_mnist_best.keras",
                     out)
    assert (tmp_path / "fashion_mnist_best.keras").is_file()
