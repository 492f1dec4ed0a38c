"""``nnxp selftest``: does nnxp work on this machine? One PASS, FAIL or SKIP line per check.

On a CUDA device: the environment (driver, runtime, CuPy, NVRTC, cuBLAS, headers, the GPU), every kernel of
kernels.cu compiled for float32 and float64, every fused op against its CuPy reference on this GPU, a 20-step
CPU-vs-GPU training parity check, and a ``cuda_graph=True`` replay parity check. On the CPU: the environment
and a 20-step training check. Any FAIL makes :func:`main` exit 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import backend, training
from ._version import __version__
from .ops import _cuda, batch, dense, dropout, loss  # noqa: F401 - importing them registers their ops
from .ops import optim as O

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DTYPES = (np.float32, np.float64)
# Fused op vs its reference on the same GPU, |a - b| <= rtol * max(1, max |b|): the kernels and CuPy's ufuncs
# round differently in a few ulps (exp, tanh; summation order of the reductions), never more.
OP_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
STEPS = 20  # training steps of the model checks


@dataclass
class Check:
    section: str
    name: str
    status: str
    detail: str = ""


# --- the checks ------------------------------------------------------------------------------------------------


def run(device: str = "cpu") -> list[Check]:
    """Every check for `device` ("cpu", "cuda", "cuda:N" or "auto"), in order."""
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if backend.cuda_available() else "cpu"
    checks = _host_environment()
    if not text.startswith("cuda"):
        backend.get_device(text)  # a malformed spec raises DeviceError here
        checks.append(Check("kernels", "all", SKIP, "CPU device: the CUDA kernels are not used"))
        checks += _guarded("model", f"{STEPS}-step CPU training", _cpu_training)
        return checks
    index = int(text.split(":", 1)[1]) if ":" in text else 0
    env = [Check("environment", what, PASS if ok else FAIL, detail)
           for what, ok, detail in backend.cuda_environment(index)]
    checks += env
    if any(c.status == FAIL for c in env if c.name in ("CuPy", "GPU")):
        for section in ("kernels", "ops", "model", "cuda_graph"):
            checks.append(Check(section, "all", SKIP, "no usable CUDA device"))
        return checks
    dev = backend.get_device(f"cuda:{index}")
    checks += _guarded("kernels", "compile", lambda: _kernels(dev.index))
    if any(c.section == "kernels" and c.status == FAIL for c in checks):
        checks.append(Check("ops", "all", SKIP, "the kernels did not build (nnxp runs the CuPy references)"))
    else:
        checks += _guarded("ops", "fused vs reference", lambda: _ops(dev))
    checks += _guarded("model", f"{STEPS}-step CPU vs {dev.name}", lambda: _model_parity(dev))
    checks += _guarded("cuda_graph", "replay vs eager", lambda: _graph_parity(dev))
    return checks


def _guarded(section: str, name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    """`fn`'s checks, or one FAIL naming the exception it raised."""
    try:
        return fn()
    except Exception as exc:  # a crash is a result too
        return [Check(section, name, FAIL, f"{type(exc).__name__}: {exc}")]


def _host_environment() -> list[Check]:
    return [
        Check("environment", "nnxp", PASS, __version__),
        Check("environment", "Python", PASS, platform.python_version()),
        Check("environment", "NumPy", PASS, np.__version__),
    ]


def _kernels(index: int) -> list[Check]:
    if _cuda.kernel_mode() == "reference":
        return [Check("kernels", "all", SKIP, "NNXP_KERNELS=reference: the CuPy reference ops run instead")]
    out = []
    for dtype in map(np.dtype, DTYPES):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():  # reported here as a FAIL instead of the fallback's warning
                warnings.simplefilter("ignore", RuntimeWarning)
                for name in _cuda.KERNELS:
                    _cuda._KERNELS.function(name, dtype, index)
        except _cuda.KernelUnavailable as exc:
            out.append(Check("kernels", f"kernels.cu {dtype.name}", FAIL, str(exc)))
            continue
        seconds = time.perf_counter() - start
        out.append(Check("kernels", f"kernels.cu {dtype.name}", PASS,
                         f"{len(_cuda.KERNELS)} kernels built or loaded in {seconds:.2f} s: "
                         + ", ".join(_cuda.KERNELS)))
    return out


# --- fused ops against their references, on the device ----------------------------------------------------------


def update_examples(rule: O.Update, variants: bool = False) -> dict[str, tuple[dict[str, Any], tuple[bool, ...]]]:
    """label -> (named scalars, which state slots are present) for an optimizer rule, from its declaration.

    The scalars are the defaults of the public optimizer class that uses `rule` (nnxp.optimizers.OPTIMIZERS) at
    step 3, with every feature a default turns off turned on (0.0 -> 0.5, False -> True), so each branch of the
    kernel runs; every state slot is present. With `variants`: instead every subset of the optional slots with
    both values of each flag (what the element-math test of tests/test_ops_cuda_compile.py runs).
    """
    from .optimizers import OPTIMIZERS

    cls = next((c for c in OPTIMIZERS.values() if c.rule is rule), None)
    if cls is None:
        raise LookupError(f"no optimizer in nnxp.optimizers.OPTIMIZERS uses the rule {rule.__name__!r}")
    opt = cls()
    opt.iterations = 3
    base = opt._scalars(opt.current_learning_rate())
    base = {k: (True if v is False else 0.5 if v == 0.0 and not isinstance(v, bool) else v) for k, v in base.items()}
    if not variants:
        return {"": (base, (True,) * len(rule.state))}
    cases = {}
    optional = [i for i, slot in enumerate(rule.state) if slot in rule.optional]
    flags = [k for k, v in base.items() if isinstance(v, bool)]
    for mask in range(1 << len(optional)):
        present = tuple(i not in optional or bool(mask >> optional.index(i) & 1) for i in range(len(rule.state)))
        for bits in range(1 << len(flags)):
            scalars = {**base, **{f: bool(bits >> j & 1) for j, f in enumerate(flags)}}
            label = ",".join([s for s, on in zip(rule.state, present, strict=True) if s in rule.optional and on]
                             + [f"{f}={scalars[f]}" for f in flags])
            cases[label or "plain"] = (scalars, present)
    return cases


def update_state(rng: np.random.Generator, dtype: np.dtype, n: int, present: tuple[bool, ...]) -> list:
    """State buffers for a rule step: slot i uniform in [0.5, 1.5] / 2^i (positive, as running means of squares
    must be, and each smaller than the one before, so centered RMSprop's avg_sq - avg_g^2 stays positive)."""
    return [rng.uniform(0.5, 1.5, n).astype(dtype) / dtype.type(2**i) if on else None
            for i, on in enumerate(present)]


def _op_cases(rng: np.random.Generator, dtype: np.dtype) -> dict[str, tuple[Callable, Callable, tuple, int | None]]:
    """name -> (fused op, reference, host args, the scratch argument not to compare) for every op with a CUDA
    override (nnxp.ops._cuda.OPS): an optimizer rule's from its declaration (:func:`update_examples`), any other
    op's from the inputs it declares (``@op.example`` beside its override)."""
    cases: dict[str, tuple[Callable, Callable, tuple, int | None]] = {}
    n = 1031
    for name, op in sorted(_cuda.OPS.items()):
        if isinstance(op, O.Update):
            for label, (scalars, present) in update_examples(op).items():
                args = (rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype),
                        *update_state(rng, dtype, n, present), np.empty(n, dtype),
                        *(scalars[k] for k in op.scalars))
                cases["/".join(filter(None, ("optim", name, label)))] = (op.fused, op.ref, args, 2 + len(present))
            continue
        if op.examples is None:
            raise LookupError(f"the fused op {name!r} declares no examples (@{name}.example beside its override)")
        for label, args in op.examples(rng, dtype).items():
            cases["/".join(filter(None, (name, label)))] = (op.fused, op.ref, args, None)
    return cases


def _outputs(result: Any, args: list, scratch: int | None) -> list:
    """What an op produced: the arrays it returned, then every array argument but its scratch (outputs and state
    it wrote, inputs it must not have changed)."""
    if result is NotImplemented:
        raise RuntimeError("the fused op declined its inputs")
    returned = result if isinstance(result, tuple) else (result,)
    kept = [a for i, a in enumerate(args) if i != scratch]
    return [a for a in (*returned, *kept) if a is not None and hasattr(a, "shape")]


def _ops(dev: backend.Device) -> list[Check]:
    if _cuda.kernel_mode() == "reference":
        return [Check("ops", "all", SKIP, "NNXP_KERNELS=reference")]
    results: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for dtype in map(np.dtype, DTYPES):
        rng = np.random.default_rng(0)
        for name, (fused, ref, host, scratch) in _op_cases(rng, dtype).items():
            try:
                with dev.use(tf32=False):
                    fused_args = [dev.asarray(a) if isinstance(a, np.ndarray) else a for a in host]
                    got = _outputs(fused(*fused_args), fused_args, scratch)
                    ref_args = [dev.asarray(a) if isinstance(a, np.ndarray) else a for a in host]
                    want = _outputs(ref(*ref_args), ref_args, scratch)
                err = max(_rel_error(backend.to_numpy(a), backend.to_numpy(b)) for a, b in zip(got, want, strict=True))
            except Exception as exc:
                failed[name] = f"{dtype.name}: {type(exc).__name__}: {exc}"
                continue
            if not err <= OP_RTOL[dtype]:
                failed[name] = f"{dtype.name}: relative error {err:.2e} > {OP_RTOL[dtype]:.0e}"
            results.setdefault(name, []).append(f"{dtype.name} {err:.1e}")
    return [Check("ops", name, FAIL if name in failed else PASS, failed.get(name, ", ".join(results.get(name, []))))
            for name in sorted(set(results) | set(failed))]


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(1, max |b|), NaN where they disagree about NaN (inf compared exactly)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("nan")
    finite = np.isfinite(b)
    if not np.array_equal(a[~finite & ~np.isnan(b)], b[~finite & ~np.isnan(b)]):
        return float("nan")
    if not finite.any():
        return 0.0
    return float(np.abs(a[finite] - b[finite]).max() / max(1.0, float(np.abs(b[finite]).max())))


# --- models ------------------------------------------------------------------------------------------------------


def _data(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(STEPS * 16, 12)).astype(dtype)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 0.5)
    return x, y


def _train(device: Any, dtype: str, cuda_graph: bool = False) -> tuple[list[float], list[np.ndarray], Any]:
    from .layers import Dense
    from .model import Sequential

    model = Sequential([Dense(32, "relu", input_dim=12), Dense(16, "tanh"), Dense(3, "softmax")], device=device,
                       seed=0, dtype=dtype)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = _data(dtype)
    # 2 epochs of STEPS / 2 steps of 32 rows: two per-epoch losses to compare, one fit (one captured graph)
    h = model.fit(x[: STEPS * 16], y[: STEPS * 16], epochs=2, batch_size=32, verbose=0, cuda_graph=cuda_graph)
    return h.history["loss"], model.get_weights(), model


def _compare(section: str, name: str, a: tuple, b: tuple, rtol: float, atol: float) -> Check:
    la, wa = np.asarray(a[0]), a[1]
    lb, wb = np.asarray(b[0]), b[1]
    finite = np.isfinite(la).all() and all(np.isfinite(w).all() for w in wa)
    loss_err = float(np.max(np.abs(la - lb) / (atol + rtol * np.abs(lb))))
    w_err = max(float(np.max(np.abs(x - y) / (atol + rtol * np.abs(y)))) for x, y in zip(wa, wb, strict=True))
    ok = finite and loss_err <= 1 and w_err <= 1
    detail = (f"losses {', '.join(f'{v:.6g}' for v in la)} vs {', '.join(f'{v:.6g}' for v in lb)}; worst "
              f"loss {loss_err:.2g}, weight {w_err:.2g} of the tolerance (rtol={rtol:g}, atol={atol:g})")
    return Check(section, name, PASS if ok else FAIL, detail)


def _model_parity(dev: backend.Device) -> list[Check]:
    out = []
    for dtype, rtol, atol in (("float64", 1e-7, 1e-9), ("float32", 2e-3, 2e-4)):
        cpu, gpu = _train("cpu", dtype)[:2], _train(dev, dtype)[:2]
        out.append(_compare("model", f"{STEPS}-step CPU vs {dev.name} ({dtype})", gpu, cpu, rtol, atol))
    return out


def _graph_parity(dev: backend.Device) -> list[Check]:
    eager = _train(dev, "float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed = _train(dev, "float32", cuda_graph=True)
    replays = training.graph_replays(graphed[2])
    problems = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    check = _compare("cuda_graph", f"{STEPS}-step replay vs eager (float32)", graphed[:2], eager[:2], 1e-4, 1e-5)
    if replays < STEPS - 2 or problems:  # every step but the first (eager, it builds the buffers)
        check.status = FAIL
        check.detail = f"{replays} replays; " + ("; ".join(problems) or "the step was not captured")
    else:
        check.detail = f"{replays} replays; {check.detail}"
    return [check]


def _cpu_training() -> list[Check]:
    first, second = _train("cpu", "float64")[:2], _train("cpu", "float64")[:2]
    same = first[0] == second[0] and all(np.array_equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    learned = np.isfinite(first[0]).all() and first[0][-1] < first[0][0]
    detail = f"losses {', '.join(f'{v:.6g}' for v in first[0])}; two runs {'identical' if same else 'DIFFER'}"
    return [Check("model", f"{STEPS}-step CPU training (float64)", PASS if same and learned else FAIL, detail)]


# --- output ------------------------------------------------------------------------------------------------------


def report(checks: list[Check]) -> str:
    width = max(len(f"{c.section}: {c.name}") for c in checks)
    lines = []
    for c in checks:
        detail = c.detail.replace("\n", "\n" + " " * (width + 9))
        lines.append(f"{c.status}  {f'{c.section}: {c.name}':<{width}}  {detail}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append(f"{'FAIL' if failed else 'PASS'}  {failed} of {len(checks)} checks failed" if failed
                 else f"PASS  all {sum(c.status == PASS for c in checks)} checks passed "
                      f"({sum(c.status == SKIP for c in checks)} skipped)")
    return "\n".join(lines)


def to_json(checks: list[Check], device: str) -> dict[str, Any]:
    return {"device": device, "ok": not any(c.status == FAIL for c in checks),
            "checks": [asdict(c) for c in checks], "compile_seconds": _cuda.compile_seconds()}


def main(device: str = "cpu", as_json: bool = False) -> int:
    """Run the checks, print them, return the exit code (1 on any FAIL)."""
    checks = run(device)
    print(json.dumps(to_json(checks, device)) if as_json else report(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="python -m nnxp.selftest")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true")
    ns = ap.parse_args()
    sys.exit(main(ns.device, ns.json))
