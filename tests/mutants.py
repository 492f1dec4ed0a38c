"""A mutation pass over the kernels and numerics: each listed mutant must be killed by the tests named with it.

Run from the repository root (not collected by pytest; too slow for every CI run)::

    python tests/mutants.py            # every mutant, then a summary; exit status 1 if any survived
    python tests/mutants.py --list     # the mutants and the tests that must kill them
    python tests/mutants.py K1 P3      # only these

Each mutant is one realistic single-line change (a wrong constant, a swapped variable, an off-by-one, a
flipped comparison), applied to a copy of the working tree in a temporary folder, one at a time; the named
test modules then run there (``pytest -x``) and a test must fail. A run that only errors (say the emulator's
-Werror build refusing an unused parameter) is reported as ERRORED and not counted as a kill: NVRTC would
compile that mutant, so the tests themselves must catch it. First the same tests run unmutated and must pass,
so a kill means the mutant, not a broken tree. Kernel mutants run the parity registry of tests/test_ops_cuda.py
on the CPU emulator of CUDA (tests/_cuda_emu.py), so they need a C++ compiler, not a GPU.

A mutant whose line is no longer in the source is reported as STALE (the code moved on): update its text.
Review rule: a change to kernels.cu, nnxp/ops or the optimizers adds a mutant here for the line it is most
likely to get wrong, and the pass stays at 100% kills.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    key: str
    path: str
    # (old, new) candidates: the first `old` found in the file is replaced (its `nth` occurrence, 0-based);
    # several candidates let one mutant follow a line that other branches reworded
    changes: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]
    why: str
    nth: int | None = None  # which occurrence of `old`, when it is not unique


def _emu(select: str) -> tuple[str, ...]:
    """The parity registry on the CPU emulator, only the pairs matching `select`."""
    return ("tests/test_ops_cuda.py", "-k", f"fake_cupy and ({select})")


OPTIM_TESTS = ("tests/test_ops_optim.py", "tests/test_optimizers.py")

MUTANTS = [
    # --- kernels.cu, run on the CPU emulator ---------------------------------------------------------------------
    Mutant("K1", "nnxp/ops/kernels.cu", (("if (j == label) g = g - T(1);", "if (j == labels[r]) g = g - T(1);"),),
           _emu("sparse"), "sparse xent: the raw label, read before the wrap (issue 16's survivor)"),
    Mutant("K2", "nnxp/ops/kernels.cu", (("if (label < 0) label += cols;", "if (label < 0) label += cols - 1;"),),
           _emu("sparse"), "sparse xent: the wrap off by one"),
    Mutant("K3", "nnxp/ops/kernels.cu", (("        one_minus_b2 = hp[1];", "        one_minus_b2 = hp[0];"),),
           _emu("adam"), "adam: the graph's scalar buffer read at the wrong index"),
    Mutant("K4", "nnxp/ops/kernels.cu", (("        t = v * momentum;", "        t = v * lr;"),),
           _emu("sgd"), "sgd: Nesterov's look-ahead scaled by the rate"),
    Mutant("K5", "nnxp/ops/kernels.cu", (("const T a = nx_log1p(nx_exp(-nx_abs(z)));",
                                          "const T a = nx_log1p(nx_exp(nx_abs(z)));"),),
           _emu("sigmoid_bce"), "sigmoid BCE: the sign inside the stable log1p"),
    Mutant("K6", "nnxp/ops/kernels.cu", (("for (int w = 1; w < n_warps; ++w) r = op(r, shm[w]);",
                                          "for (int w = 1; w < n_warps - 1; ++w) r = op(r, shm[w]);"),),
           _emu("xent or sigmoid_bce"), "block reduction: the last warp's partial dropped"),
    Mutant("K7", "nnxp/ops/kernels.cu", (("return nx_uniform(nx_hash(seed, offset), T(0)) >= rate ? scale : T(0);",
                                          "return nx_uniform(nx_hash(seed, offset), T(0)) < rate ? scale : T(0);"),),
           _emu("dropout"), "dropout: the keep test inverted"),
    Mutant("K8", "nnxp/ops/kernels.cu", (("for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(",
                                          "for (int o = 8; o > 0; o >>= 1) v = op(v, __shfl_xor_sync("),),
           _emu("xent"), "warp reduction: half the lanes left out"),
    Mutant("K9", "nnxp/ops/kernels.cu", (("{ return code == NX_GELU || code == NX_SILU; }",
                                          "{ return code == NX_GELU; }"),),
           _emu("silu"), "act backward: SiLU's z not passed to the kernel (it read 0 instead)"),
    Mutant("K10", "nnxp/ops/kernels.cu", (("        one_minus_b2 = hp[2];\n        decay = hp[3];",
                                           "        one_minus_b2 = hp[1];\n        decay = hp[3];"),),
           _emu("lion"), "lion: the graph's scalar buffer read at the wrong index"),
    # --- ops/optim.py: the host half of the fused optimizer steps (the kernels' scalars) ------------------------
    Mutant("C1", "nnxp/ops/optim.py", (("(1.0 - beta_1**step)  # exactly as adam_ref, on the host",
                                        "(1.0 - beta_1 ** (step + 1))  # exactly as adam_ref, on the host"),),
           _emu("adam"), "adam scalars: bias correction one step ahead"),
    Mutant("C2", "nnxp/ops/optim.py", (('"one_minus_rho": t(1.0 - rho), "momentum"',
                                        '"one_minus_rho": t(rho), "momentum"'),),
           _emu("rmsprop"), "rmsprop scalars: rho where 1 - rho belongs"),
    # --- nnxp/ops/*.py: the references ---------------------------------------------------------------------------
    Mutant("P1", "nnxp/ops/optim.py", (("xp.multiply(velocity, momentum, out=tmp)",
                                        "xp.multiply(velocity, lr, out=tmp)"),),
           OPTIM_TESTS, "sgd_ref: Nesterov's look-ahead scaled by the rate"),
    Mutant("P2", "nnxp/ops/optim.py", (("    avg_sq *= rho", "    avg_sq *= 1.0 - rho"),),
           OPTIM_TESTS, "rmsprop_ref: the decay applied as 1 - rho"),
    Mutant("P3", "nnxp/ops/optim.py", (("    acc_dx *= rho", "    acc_dx *= 1.0 - rho"),),
           OPTIM_TESTS, "adadelta_ref: the update accumulator's decay"),
    Mutant("P4", "nnxp/ops/optim.py", (("    tmp *= 1.0 - beta_2", "    tmp *= 1.0 - beta_1"),),
           OPTIM_TESTS, "adam_ref: the first moment's beta in the second moment", nth=0),  # 1: lion_ref's
    Mutant("P5", "nnxp/ops/optim.py", (("scale = xp.minimum(1.0, clipnorm", "scale = xp.maximum(1.0, clipnorm"),),
           OPTIM_TESTS, "clip_by_global_norm: scales up small gradients too"),
    Mutant("P5b", "nnxp/ops/optim.py", (("seg *= xp.minimum(1.0, clipnorm", "seg *= xp.maximum(1.0, clipnorm"),),
           OPTIM_TESTS, "per-weight clipnorm (Keras's meaning): scales up small gradients too"),
    Mutant("P6", "nnxp/ops/loss.py", (("    g *= 1.0 / pred.size", "    g *= 1.0 / pred.shape[0]"),),
           ("tests/test_ops_loss.py", "tests/test_losses.py"), "MAE gradient: mean over rows, not elements"),
    Mutant("P7", "nnxp/ops/loss.py", (("picked = g[rows, labels]  # (B,)", "picked = g[rows, labels - 1]  # (B,)"),),
           ("tests/test_ops_loss.py", "tests/test_losses.py"), "sparse softmax CE: the loss reads the class before"),
    Mutant("P8", "nnxp/ops/activation.py", (("slope = xp.where(y > 0, 1.0, LEAKY_RELU_SLOPE)",
                                             "slope = xp.where(y > 0, 1.0, 0.0)"),),
           ("tests/test_ops_activation.py", "tests/test_activations.py"), "leaky ReLU backward as ReLU's"),
    Mutant("P10", "nnxp/ops/optim.py", (("    xp.sign(tmp, out=tmp)  # NaN stays NaN, 0 moves nothing",
                                         "    xp.sign(m, out=tmp)  # NaN stays NaN, 0 moves nothing"),),
           OPTIM_TESTS, "lion_ref: the step's sign from the old momentum, not the interpolation"),
    Mutant("P11", "nnxp/ops/activation.py", (("    t *= z\n    t += 1.0\n    t *= s",
                                              "    t *= z\n    t += 1.0\n    t *= z"),),
           ("tests/test_ops_activation.py",), "SiLU backward: z where sigmoid(z) belongs"),
    Mutant("P9", "nnxp/ops/dense.py", (("        dz.sum(axis=0, out=db)", "        dz.mean(axis=0, out=db)"),),
           ("tests/test_ops_dense.py", "tests/test_layers.py"), "dense backward: bias gradient averaged"),
    # --- nnxp/optimizers.py ------------------------------------------------------------------------------------
    Mutant("O1", "nnxp/optimizers.py", (('self.beta_2 = number("beta_2", beta_2, "[0.0, 1.0]")',
                                         'self.beta_2 = number("beta_2", beta_1, "[0.0, 1.0]")'),),
           ("tests/test_optimizers.py",), "Adam: beta_1 stored as beta_2 (copy-paste)", nth=0),  # 1: Lion's
    Mutant("O2", "nnxp/optimizers.py", (('named = {"lr": lr, "step": self.iterations}',
                                         'named = {"lr": lr, "step": self.iterations + 1}'),),
           ("tests/test_optimizers.py",), "Adam: bias correction at the next step's count"),
    Mutant("O3", "nnxp/ops/optim.py", (("    if weight_decay:\n        weight_decay_ref(p",
                                        "    if not weight_decay:\n        weight_decay_ref(p"),),
           ("tests/test_optimizers.py",), "weight decay applied exactly when it is off"),
    # --- the training loop (issue 16's two model-level survivors; nnxp/training.py since issue 14) ---------------
    Mutant("M1", "nnxp/training.py", (("        sizes.append(rows)", "        sizes.append(plan.batch_size)"),),
           ("tests/test_model.py",), "epoch loss: the partial last batch weighted as a full one (issue 16)"),
    Mutant("M2", "nnxp/training.py", (("SeedSequence([self.seed, 1, count])", "SeedSequence([self.seed, 1])"),),
           ("tests/test_model.py", "tests/test_training.py"),
           "shuffle seeded without the epoch: every epoch the same order (issue 16)"),
    # --- validation and files ----------------------------------------------------------------------------------
    Mutant("V1", "nnxp/_validation.py", (("if lo < 0 or hi >= n_outputs:", "if lo < -1 or hi >= n_outputs:"),),
           ("tests/test_ops_loss.py", "tests/test_validation.py"), "sparse labels: -1 let through to the loss"),
    Mutant("F1", "nnxp/io.py", (("if slot in _NON_NEGATIVE_SLOTS and (host < 0).any():",
                                 "if slot in _NON_NEGATIVE_SLOTS and (host < -1).any():"),),
           ("tests/test_io.py", "-k", "optimizer_state"), "load: slightly negative second moments accepted"),
]


def _tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def _copy_tree(dest: Path) -> None:
    for rel in _tree_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)


def _pytest(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        result = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out", time.perf_counter() - t0
    tail = (result.stdout + result.stderr).strip().splitlines()
    return result.returncode, tail[-1] if tail else "", time.perf_counter() - t0


def _apply(source: str, mutant: Mutant) -> str | None:
    for old, new in mutant.changes:
        count = source.count(old)
        if count == 0:
            continue
        if mutant.nth is None and count > 1:
            raise SystemExit(f"{mutant.key}: {old!r} occurs {count} times in {mutant.path}; make it unique or "
                             "set nth")
        at = -1
        for _ in range((mutant.nth or 0) + 1):
            at = source.index(old, at + 1)
        return source[:at] + new + source[at + len(old):]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("keys", nargs="*", help="mutant keys to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run (default 900)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.keys or m.key in args.keys]
    if args.list:
        for m in mutants:
            print(f"{m.key:3} {m.path:24} {m.why}\n    tests: {' '.join(m.tests)}")
        return 0
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="nnxp-mutants-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        for tests in dict.fromkeys(m.tests for m in mutants):  # each distinct selection once, unmutated
            rc, last, secs = _pytest(tree, tests, args.timeout)
            print(f"baseline  {' '.join(tests)}: {'pass' if rc == 0 else 'FAIL'} ({secs:.0f} s) {last}", flush=True)
            if rc != 0:
                print("the unmutated tree fails these tests; fix that first", file=sys.stderr)
                return 2
        for m in mutants:
            target = tree / m.path
            original = target.read_text()
            mutated = _apply(original, m)
            if mutated is None:
                results.append((m, "STALE", 0.0, "the line is not in the source any more"))
                print(f"{m.key:3} STALE     {m.why}", flush=True)
                continue
            target.write_text(mutated)
            try:
                rc, last, secs = _pytest(tree, m.tests, args.timeout)
            finally:
                target.write_text(original)
            status = "killed" if rc not in (0, -1) else ("TIMEOUT" if rc == -1 else "SURVIVED")
            if status == "killed" and " failed" not in last:  # an error, e.g. the emulator's -Werror build
                status = "ERRORED"  # counted as not killed: the tests, not the compiler, must catch it
            results.append((m, status, secs, last))
            print(f"{m.key:3} {status:9} {secs:6.0f} s  {m.why}  [{last}]", flush=True)
    killed = sum(1 for _, s, _, _ in results if s == "killed")
    live = [m.key for m, s, _, _ in results if s != "killed"]
    print(f"\n{killed}/{len(results)} mutants killed in {time.perf_counter() - start:.0f} s"
          + (f"; not killed: {', '.join(live)}" if live else ""))
    return 0 if not live else 1


if __name__ == "__main__":
    sys.exit(main())
