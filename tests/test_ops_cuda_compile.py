"""The CUDA sources without a GPU: nvcc compiles them, importing the loader compiles nothing, and the element
math of kernels.cu (built as host C++) gives the references' numbers."""

from __future__ import annotations

import ast
import ctypes
import importlib.resources
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import tol

from nnxp.ops import _cuda
from nnxp.ops import dropout as DR
from nnxp.ops import optim as O
from nnxp.ops.activation import ACTIVATION_OPS
from nnxp.selftest import update_examples, update_state

KERNELS_CU = Path(str(importlib.resources.files("nnxp.ops").joinpath("kernels.cu")))
CUDA_PY = Path(_cuda.__file__)
SOURCE = KERNELS_CU.read_text(encoding="utf-8")
NVCC = shutil.which("nvcc")
CXX = shutil.which("g++") or shutil.which("c++")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
needs_cxx = pytest.mark.skipif(CXX is None, reason="no host C++ compiler (g++ / c++)")


# --- the source and its registry ------------------------------------------------------------------------------


def test_registry_lists_every_kernel_template():
    in_source = re.findall(r"__global__\s+void\s+(nnxp_\w+)\s*\(", SOURCE)
    assert sorted(in_source) == sorted(_cuda.KERNELS)


def test_activation_codes_match_the_source():
    defines = dict(re.findall(r"#define NX_(\w+) (\d+)\n", SOURCE))
    assert {name: int(defines[name.upper()]) for name in _cuda.ACT_CODES} == _cuda.ACT_CODES
    # every activation has a kernel path: a code, or softmax's row kernels
    assert set(ACTIVATION_OPS) == set(_cuda.ACT_CODES) | {"softmax"}


def test_source_needs_no_header_under_nvrtc():
    # NVRTC has no standard headers; the one include is for the host build of the element math
    device_part = re.sub(r"#ifdef NNXP_HOST_HARNESS.*?#else", "", SOURCE, count=1, flags=re.S)
    assert "#include" not in device_part
    assert 'extern "C"' not in SOURCE  # templates, retrieved through name_expressions


# --- nvcc ---------------------------------------------------------------------------------------------------


def _nvcc(tmp_path: Path, arch: str, mode: str, *extra: str) -> subprocess.CompletedProcess:
    out = tmp_path / f"kernels_{arch}.{mode}"
    cmd = [NVCC, f"-{mode}", f"-arch={arch}", *_cuda.NVRTC_OPTIONS, "-DNNXP_EXPLICIT_INSTANTIATION",
           "-Werror", "all-warnings", *extra, "-o", str(out), str(KERNELS_CU)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_to_ptx_without_warnings(tmp_path, arch):
    result = _nvcc(tmp_path, arch, "ptx")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    ptx = (tmp_path / f"kernels_{arch}.ptx").read_text()
    for name in _cuda.KERNELS:
        for suffix in ("If", "Id"):  # the float and double instantiations (Itanium mangling)
            assert re.search(rf"\.entry\s+_Z\d+{name}{suffix}E", ptx), f"{name}<{suffix}> missing from the PTX"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptxas_reports_no_spills_or_local_memory(tmp_path, arch):
    result = _nvcc(tmp_path, arch, "cubin", "-Xptxas", "-v,-warn-spills,-warn-lmem-usage")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                        result.stderr)
    assert len(frames) == 2 * len(_cuda.KERNELS)
    assert all(f == ("0", "0", "0") for f in frames), result.stderr


# --- lazy: no CuPy import, no compile at import ---------------------------------------------------------------


def test_loader_module_has_no_cupy_import():
    tree = ast.parse(CUDA_PY.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "cupy" for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "cupy"


def _run_python(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout's nnxp."""
    root = str(Path(_cuda.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=root)


def test_import_compiles_nothing_and_needs_no_cupy():
    # with CuPy made unimportable, the whole ops package imports and every wrapper declines
    result = _run_python("""
        import sys
        sys.modules["cupy"] = None  # importing CuPy now raises ImportError
        import numpy as np
        from nnxp.ops import _cuda
        from nnxp.ops import dense as D, loss as L, optim as O
        assert _cuda.compile_seconds() == {}
        assert sys.modules.get("cupy") is None
        x = np.ones((2, 3))
        assert D.dense_forward.fused(x, np.ones((3, 2)), None, "relu") is NotImplemented
        assert L.softmax_cross_entropy.fused(x, x) is NotImplemented
        assert O.adam.fused(x, x, x, x, x, 0.1, 0.9, 0.999, 1e-7, 1) is NotImplemented
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_import_compiles_nothing_where_cupy_exists():
    # on a GPU machine backend imports CuPy, but nothing is built until a wrapper runs
    result = _run_python("""
        from nnxp.ops import _cuda, dense, loss
        assert _cuda.compile_seconds() == {} and not _cuda._KERNELS._functions
        print("ok")
    """)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# --- the element math as host C++ against the NumPy references -------------------------------------------------

_HARNESS = r"""
#include "kernels.cu"

#define NX_EXPORT(T, S)                                                                                          \
extern "C" void act_fwd_##S(int code, const T* z, T* y, long n) {                                               \
    for (long i = 0; i < n; ++i) y[i] = act_forward(code, z[i]);                                                \
}                                                                                                                \
extern "C" void act_bwd_##S(int code, const T* dy, const T* y, const T* z, T* out, long n) {                    \
    for (long i = 0; i < n; ++i) out[i] = act_backward(code, dy[i], y[i], z[i]);                                \
}                                                                                                                \
extern "C" void mask_##S(unsigned long long seed, long n, T rate, T scale, T* out) {                            \
    for (long i = 0; i < n; ++i) out[i] = dropout_mask(seed, (unsigned long long)i, rate, scale);              \
}

NX_EXPORT(float, f)
NX_EXPORT(double, d)
"""

RULES = {name: op for name, op in _cuda.OPS.items() if isinstance(op, O.Update)}


def _kernel_signature(name: str) -> list[tuple[str, str]]:
    """(type, name) of each parameter of the kernel template ``name`` in kernels.cu."""
    match = re.search(rf"__global__\s+void\s+{name}\s*\(([^)]*)\)", SOURCE)
    assert match, f"kernel {name} not found in kernels.cu"
    params = [" ".join(p.split()) for p in match.group(1).split(",")]
    return [tuple(p.rsplit(" ", 1)) for p in params]


def _kernel_body(name: str) -> str:
    start = re.search(rf"__global__\s+void\s+{name}\s*\(", SOURCE).end()
    return SOURCE[start:SOURCE.index("\n}\n", start)]


def _rule_wrappers() -> str:
    """One host loop per optimizer kernel, generated from its signature in kernels.cu: every pointer before `n`
    is a buffer passed element by element, every parameter after it (but `hp`) a scalar, to ``<rule>_elem`` in
    that order (as the kernel calls it; test_each_rule_kernel_calls_its_element_function checks)."""
    out = []
    for rule in sorted(RULES):
        params = _kernel_signature(f"nnxp_{rule}")
        names = [n for _, n in params]
        arrays, scalars = params[:names.index("n")], [p for p in params[names.index("n") + 1:] if p[1] != "hp"]
        for ctype, suffix in (("float", "f"), ("double", "d")):
            decl = ", ".join([f"{t.replace('T', ctype)} {n}" for t, n in arrays] + ["long long n"]
                             + [f"{t.replace('T', ctype)} {n}" for t, n in scalars])
            call = ", ".join([f"{n}[i]" for _, n in arrays] + [n for _, n in scalars])
            out.append(f'extern "C" void {rule}_{suffix}({decl}) {{\n'
                       f"    for (long long i = 0; i < n; ++i) {rule}_elem<{ctype}>({call});\n}}\n")
    return "\n".join(out)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    if CXX is None:
        pytest.skip("no host C++ compiler (g++ / c++)")
    build = tmp_path_factory.mktemp("harness")
    src = build / "harness.cpp"
    src.write_text(_HARNESS + _rule_wrappers())
    lib = build / "libnx_harness.so"
    cmd = [CXX, "-std=c++14", "-O2", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror",
           "-shared", "-fPIC", "-DNNXP_HOST_HARNESS", f"-I{KERNELS_CU.parent}", str(src), "-o", str(lib)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(lib))


DTYPES = [np.float32, np.float64]
SUFFIX = {np.dtype(np.float32): "f", np.dtype(np.float64): "d"}
SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan]


def _call(lib, name, dtype, *args):
    """Call name_{f,d} with arrays as pointers, Python/NumPy floats as T and ints as C int/long."""
    scalar = ctypes.c_float if np.dtype(dtype) == np.float32 else ctypes.c_double
    conv = []
    for a in args:
        if isinstance(a, np.ndarray):
            assert a.flags.c_contiguous
            conv.append(ctypes.c_void_p(a.ctypes.data))
        elif isinstance(a, np.floating):
            conv.append(scalar(float(a)))
        elif isinstance(a, np.uint64):
            conv.append(ctypes.c_ulonglong(int(a)))
        elif isinstance(a, (np.integer, int)):
            conv.append(ctypes.c_long(int(a)) if isinstance(a, (int, np.int64)) else ctypes.c_int(int(a)))
        else:
            raise TypeError(type(a))
    getattr(lib, f"{name}_{SUFFIX[np.dtype(dtype)]}")(*conv)


def _inputs(rng, n, dtype, scale=3.0):
    z = (rng.normal(size=n) * scale).astype(dtype)
    z[: len(SPECIALS)] = SPECIALS[: n]
    return z


def _assert_same(actual, expected, dtype, slack=None):
    """Equal within the dtype's tolerance (NaN and inf must match); `slack` widens atol per element."""
    if slack is None:
        np.testing.assert_allclose(actual, expected, equal_nan=True, **tol(dtype))
        return
    t = tol(dtype)
    same_special = (np.isnan(actual) & np.isnan(expected)) | (actual == expected)
    finite = np.isfinite(expected) & np.isfinite(actual)
    close = np.abs(actual - expected) <= t["atol"] + slack + t["rtol"] * np.abs(expected)
    bad = ~(same_special | (finite & close))
    assert not bad.any(), f"{bad.sum()} mismatches, e.g. {actual[bad][:5]} vs {expected[bad][:5]}"


def _gelu_slack(z, dy, dtype):
    """GELU's 0.5 (1 + tanh(u)) cancels for z << 0, so one ulp of tanh (libm's and NumPy's differ by that)
    moves y by |z| ulp and dz by |dy| (1 + 2 |z| (c + 3 0.044715 c z^2)) ulp; allow two ulps of each."""
    eps = float(np.finfo(dtype).eps)
    with np.errstate(all="ignore"):
        z = np.abs(z.astype(np.float64))
        fwd = 2 * eps * z
        bwd = 2 * eps * np.abs(dy.astype(np.float64)) * (1 + 2 * z * (0.7978845608028654 + 0.10703222440890037 * z * z))
    return np.nan_to_num(fwd, posinf=0.0), np.nan_to_num(bwd, posinf=0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", sorted(_cuda.ACT_CODES))
def test_activation_element_math_matches_reference(harness, act, dtype):
    rng = np.random.default_rng(1)
    n = 4099
    z = _inputs(rng, n, dtype)
    op = ACTIVATION_OPS[act]
    dy = _inputs(rng, n, dtype, 1.0)[::-1].copy()
    slack_fwd, slack_bwd = _gelu_slack(z, dy, dtype) if act == "gelu" else (None, None)
    with np.errstate(all="ignore"):
        y_ref = op.forward(z, np.empty_like(z))
        y = np.empty_like(z)
        _call(harness, "act_fwd", dtype, np.int32(_cuda.ACT_CODES[act]), z, y, n)
        _assert_same(y, y_ref, dtype, slack_fwd)
        dz_ref = op.backward(dy, y_ref, z, np.empty_like(z))
        dz = np.empty_like(z)
        _call(harness, "act_bwd", dtype, np.int32(_cuda.ACT_CODES[act]), dy, y_ref, z, dz, n)
        _assert_same(dz, dz_ref, dtype, slack_bwd)


# every optimizer rule with a kernel, in every configuration its declaration allows (selftest.update_examples)
RULE_CASES = [(rule, label) for rule in sorted(RULES) for label in update_examples(RULES[rule], variants=True)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule, label", RULE_CASES, ids=[f"{r}[{c}]" for r, c in RULE_CASES])
def test_optimizer_element_math_matches_reference(harness, rule, label, dtype, weight_decay):
    """Weight decay then the rule's reference, against the kernel's element function, for its declared scalars."""
    op = RULES[rule]
    scalars, present = update_examples(op, variants=True)[label]
    rng = np.random.default_rng(2)
    n = 1031
    dtype = np.dtype(dtype)
    p, g = (rng.normal(size=n)).astype(dtype), _inputs(rng, n, dtype, 1.0)
    states = update_state(rng, dtype, n, present)
    ref = [p.copy(), *[None if s is None else s.copy() for s in states]]
    got = [p.copy(), *[np.zeros_like(p) if s is None else s.copy() for s in states]]
    with np.errstate(all="ignore"):
        if weight_decay:
            O.weight_decay_ref(ref[0], scalars["lr"], weight_decay)
        op.ref(ref[0], g, *ref[1:], np.empty_like(p), *(scalars[k] for k in op.scalars))
        _call(harness, rule, dtype, got[0], g, *got[1:], np.int64(n),
              *op.kernel_scalars(dtype, tuple(states), scalars, weight_decay))
    for a, e in zip(got, ref, strict=True):
        if e is not None:
            _assert_same(a, e, dtype)


# --- the scalars' order: Update declaration, *_scalars and kernels.cu agree by name ------------------------------


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_kernel_scalars_match_the_kernel_parameters_by_name(rule):
    """*_scalars returns the kernel's parameters (after `n`, but `hp`) by name and in order; the floating-point
    ones are what a captured step writes to `hp`, and the kernel must read hp[i] into the i-th of them."""
    op = RULES[rule]
    params = _kernel_signature(f"nnxp_{rule}")
    names = [n for _, n in params]
    after_n = [p for p in params[names.index("n") + 1:] if p[1] != "hp"]
    scalars, present = update_examples(op)[""]
    state = tuple(np.zeros(1) if on else None for on in present)
    given = op.kernel_arguments(np.float32, state, scalars, 0.004)
    assert list(given) == [n for _, n in after_n], f"{rule}: *_scalars names/order differ from kernels.cu"
    floats = [k for k, v in given.items() if isinstance(v, np.floating)]
    assert floats == [n for t, n in after_n if t == "T"], f"{rule}: a T parameter is not a float scalar (or back)"
    hp_reads = re.findall(r"(\w+) = hp\[(\d+)\];", _kernel_body(f"nnxp_{rule}"))
    assert [(n, int(i)) for n, i in hp_reads] == [(n, i) for i, n in enumerate(floats)], (
        f"{rule}: the kernel reads hp in another order than *_scalars writes it: {hp_reads} vs {floats}")
    assert op.device_scalars(np.float32, state, scalars, 0.004) == tuple(given[k] for k in floats)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_each_rule_kernel_calls_its_element_function(rule):
    """What the generated harness assumes: nnxp_<rule> calls <rule>_elem with its buffers' elements, then its
    scalar parameters by name in signature order, and <rule>_elem takes as many arguments."""
    params = _kernel_signature(f"nnxp_{rule}")
    names = [n for _, n in params]
    arrays, scalars = names[:names.index("n")], [n for n in names[names.index("n") + 1:] if n != "hp"]
    call = re.search(rf"{rule}_elem\(([^;]*)\);", _kernel_body(f"nnxp_{rule}"))
    assert call, f"nnxp_{rule} does not call {rule}_elem"
    args = [a.strip() for a in call.group(1).split(",")]
    assert args[len(arrays):] == scalars
    elem = re.search(rf"NX_HD void {rule}_elem\(([^)]*)\)", SOURCE)
    assert elem and len(elem.group(1).split(",")) == len(arrays) + len(scalars)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.9])
def test_dropout_mask_matches_host_reference_bit_for_bit(harness, dtype, rate):
    n, seed = 100_003, 2**63 + 12345
    mask = np.empty(n, dtype=dtype)
    t = np.dtype(dtype).type
    _call(harness, "mask", dtype, np.uint64(seed), n, t(rate), t(1.0 / (1.0 - rate)), mask)
    expected = DR.dropout_mask_ref(np, n, rate, seed, dtype)
    np.testing.assert_array_equal(mask, expected)
    kept = float((mask != 0).mean())
    assert abs(kept - (1.0 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n) + 1e-12
