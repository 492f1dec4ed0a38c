"""Architecture rules from DESIGN.md: CuPy only in backend.py, imports point down only."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nnxp"

# Which nnxp modules each layer may import (a module's own package counts as itself).
LEVEL = {
    "errors": 0, "_version": 0,
    "backend": 1, "distributed": 2,
    "ops": 2, "_validation": 2,  # input checks over backend and errors only; schedules and regularizers use them
    "activations": 3, "initializers": 3, "losses": 3, "regularizers": 3, "schedules": 3,
    "optimizers": 4, "layers": 4, "head": 4,
    "callbacks": 5, "_graph": 5, "training": 5.5,
    "model": 6, "io": 5, "models": 8,  # io below model: model.save delegates to it, load_model asks a registry
    "plot": 1, "onnx_export": 7,
    "selftest": 7,  # drives model, layers and ops; the CLI runs it
    "cli": 8, "utils": 8, "__main__": 9,  # utils: Keras's helpers over datasets
    "__init__": 10,
    "sklearn": 8,  # scikit-learn's estimators over Sequential, beside cli
}
DATASETS_ALLOWED = {"errors"}
# Sequential.export_onnx delegates to onnx_export through an import inside the method, as Keras does.
ALLOWED_UPWARD = {("model", "onnx_export")}  # datasets return host arrays and know nothing of devices


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, rel.parts[0].removesuffix(".py")


def _nnxp_imports(path: Path):
    """(dotted module name, line) of every import in `path`, relative ones resolved."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    package = ["nnxp", *rel.parts[:-1]]  # the package holding this module (or this __init__)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                yield node.module or "", node.lineno
                continue
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                yield ".".join(base + node.module.split(".")), node.lineno
            else:
                for alias in node.names:
                    yield ".".join(base + [alias.name]), node.lineno


def test_cupy_is_imported_only_in_backend():
    offenders = []
    for path, _ in _modules():
        for name, line in _nnxp_imports(path):
            if (name == "cupy" or name.startswith("cupy.") or name.startswith("cupyx")) and path.name != "backend.py":
                offenders.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not offenders, offenders


@pytest.mark.parametrize("path, top", list(_modules()), ids=lambda v: str(v))
def test_imports_point_down(path, top):
    for name, line in _nnxp_imports(path):
        if not name.startswith("nnxp."):
            continue
        target = name.split(".")[1]
        if target == top:
            continue
        where = f"{path.relative_to(PACKAGE)}:{line} imports nnxp.{target}"
        if top == "datasets":
            assert target in DATASETS_ALLOWED, where
            continue
        if target == "datasets":
            assert LEVEL.get(top, 0) >= LEVEL["cli"] or top == "__init__", where
            continue
        assert top in LEVEL, f"add {top} to LEVEL in this test"
        assert target in LEVEL, f"add {target} to LEVEL in this test"
        assert LEVEL[target] < LEVEL[top] or (top, target) in ALLOWED_UPWARD, where


def test_scanner_sees_a_violation(tmp_path, monkeypatch):
    # the checker itself must be able to fail
    bad = PACKAGE / "ops" / "_layering_probe.py"
    bad.write_text("from ..model import Sequential\nimport cupy\n")
    try:
        names = [n for n, _ in _nnxp_imports(bad)]
    finally:
        bad.unlink()
    assert "nnxp.model" in names and "cupy" in names


def _import_graph() -> dict[str, set[str]]:
    """Top-level nnxp module -> the top-level nnxp modules it imports anywhere (function bodies included)."""
    graph: dict[str, set[str]] = {}
    for path, top in _modules():
        targets = graph.setdefault(top, set())
        for name, _ in _nnxp_imports(path):
            if name.startswith("nnxp.") and name.split(".")[1] != top:
                targets.add(name.split(".")[1])
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles():
    # model <-> io imported each other (issue 14): every import, even one inside a function, must point one way
    assert _cycles(_import_graph()) == []


def test_cycle_finder_sees_a_cycle():
    assert _cycles({"model": {"io"}, "io": {"backend", "model"}, "backend": set()}) == [["io", "model", "io"]]
