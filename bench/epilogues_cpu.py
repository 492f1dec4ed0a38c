"""The fast extra's CPU epilogue loops alone, at the benchmark MLP's shapes, in one or two source trees.

Times nnxp's compiled forward epilogue (bias + activation in place on a GEMM's output, ``bias_act``) and backward
epilogue (activation gradient + bias gradient, ``act_grad``) on (B, 512) and (B, 256) float32 arrays, beside the
NumPy references they are tested against (``bias_act_ref``, ``act_grad_ref``), as the median of many calls; and
NumPy alone's own forward epilogue (``bias_act_numpy``: the reference's bias + ReLU with the ReLU against a zero
row, nnxp.ops.dense.bias_relu_numpy) where the tree has it. The clock is the calling thread's CPU time
(``time.thread_time``): the loops are serial, so on a shared machine a call that waits for a core is not charged the
wait. With ``--against TREE`` the same loops from another source tree (say, ``git archive`` of an earlier commit)
are timed in the same process, call for call interleaved with this tree's.

    python bench/epilogues_cpu.py [--batches 128,1024] [--calls 300] [--against /tmp/nnxp-before] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parents[1]
WIDTHS = (512, 256)  # the benchmark MLP's hidden layers (ReLU)


def load_tree(tree: Path, alias: str) -> Any:
    """nnxp.ops.dense and nnxp.ops._cpu from `tree`, imported under a package name of their own."""
    saved = {k: v for k, v in sys.modules.items() if k == "nnxp" or k.startswith("nnxp.")}
    for k in saved:
        del sys.modules[k]
    sys.path.insert(0, str(tree))
    try:
        dense = importlib.import_module("nnxp.ops.dense")
        cpu = importlib.import_module("nnxp.ops._cpu")
        mods = {k: v for k, v in sys.modules.items() if k == "nnxp" or k.startswith("nnxp.")}
    finally:
        sys.path.remove(str(tree))
        for k in [k for k in sys.modules if k == "nnxp" or k.startswith("nnxp.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    del mods
    return alias, dense, cpu


def calls_for(dense: Any, cpu: Any, batch: int, width: int, rng: np.random.Generator) -> dict:
    """name -> a call of one loop (or reference) on fresh-enough arrays of shape (batch, width)."""
    z0 = rng.standard_normal((batch, width), dtype=np.float32)
    b = rng.standard_normal(width, dtype=np.float32) * np.float32(0.1)
    z, dy0 = z0.copy(), rng.standard_normal((batch, width), dtype=np.float32)
    y = np.maximum(z0, 0)
    dy, db = dy0.copy(), np.empty(width, np.float32)
    c = dense._constants(z.dtype)
    act = dense.LOOP_ACT_CODES["relu"]

    def bias_act() -> None:
        cpu.call("bias_act", dense._bias_act_loop, z, b, True, act, z, c, dense.PARALLEL_CHUNK)

    def act_grad() -> None:
        cpu.call("act_grad", dense._act_grad_loop, dy, y, dy, db, True, act, c, width)

    def bias_act_ref() -> None:
        dense.bias_activation_forward_ref(z, b, "relu")

    def act_grad_ref() -> None:
        dense.activation_backward_bias_ref(dy, y, None, "relu", db)

    def reset() -> None:  # the inputs again, so every call sees the same values
        np.copyto(z, z0)
        np.copyto(dy, dy0)

    out = {"bias_act": bias_act, "act_grad": act_grad, "bias_act_ref": bias_act_ref, "act_grad_ref": act_grad_ref,
           "_reset": reset}
    if hasattr(dense, "bias_relu_numpy"):  # NumPy alone's forward epilogue (trees from issue 15's session 6 on)
        out["bias_act_numpy"] = lambda: dense.bias_relu_numpy(z, b)
    return out


def run(trees: dict[str, Path], batches: list[int], calls: int) -> dict:
    loaded = [load_tree(path, name) for name, path in trees.items()]
    out: dict = {"clock": "thread CPU time (time.thread_time), median over calls", "calls": calls,
                 "trees": {k: str(v) for k, v in trees.items()}, "batches": {}}
    for batch in batches:
        row: dict = {}
        for width in WIDTHS:
            fns = {}
            for name, dense, cpu in loaded:
                cpu.set_numba(True)
                if not cpu.numba_enabled():
                    raise SystemExit("Numba is not importable here: the fast extra's loops cannot run")
                for k, f in calls_for(dense, cpu, batch, width, np.random.default_rng(0)).items():
                    fns[(name, k)] = f
            for f in fns.values():  # compile or load from the disk cache, warm up
                f()
            times: dict = {k: [] for k in fns if not k[1].startswith("_")}
            for _ in range(calls):
                for k in times:
                    fns[(k[0], "_reset")]()
                    t = time.thread_time()
                    fns[k]()
                    times[k].append(time.thread_time() - t)
            for (name, k), v in times.items():
                row.setdefault(name, {}).setdefault(k, {})[str(width)] = 1e3 * statistics.median(v)
        for per in row.values():
            for k in list(per):
                per[k]["total"] = sum(per[k][str(w)] for w in WIDTHS)
        out["batches"][str(batch)] = row
    return out


def markdown(result: dict) -> str:
    names = list(result["trees"])
    first = next(iter(result["batches"].values()), {})
    cols = [(n, k) for n in names for k in ("bias_act", "act_grad", "bias_act_ref", "act_grad_ref", "bias_act_numpy")
            if k in first.get(n, {})]
    lines = [f"Epilogue loops alone, ms ({result['clock']}, {result['calls']} calls), ReLU, float32, widths "
             f"{' + '.join(map(str, WIDTHS))}; trees: " + ", ".join(f"{k} = {v}" for k, v in result["trees"].items())
             + " (bias_act_numpy: NumPy alone's bias + ReLU, where the tree has it)",
             "", "| batch | " + " | ".join(f"{n}: {k}" for n, k in cols) + " |", "|---:|" + "---:|" * len(cols)]
    for batch, row in result["batches"].items():
        lines.append(f"| {batch} | " + " | ".join(f"{row[n][k]['total']:.3f}" for n, k in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    ap.add_argument("--calls", type=int, default=300, help="timed calls per loop and shape (median)")
    ap.add_argument("--against", type=Path, default=None, help="another source tree (a directory holding nnxp/)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    trees = {"this": HERE}
    if args.against is not None:
        if not (args.against / "nnxp" / "__init__.py").is_file():
            ap.error(f"--against must be a source tree holding nnxp/__init__.py. Received: {args.against}")
        trees["against"] = args.against.resolve()
    result = run(trees, [int(b) for b in args.batches.split(",") if b.strip()], max(1, args.calls))
    print(markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
