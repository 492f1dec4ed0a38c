"""nnxp's CPU training speed in two source trees, interleaved in one run: "same run, before and after".

Each tree runs in its own worker process (its directory first on ``sys.path``, so ``import nnxp`` is that tree's),
and the parent asks the two for one ``fit`` epoch of the same data in turn, A B A B ..., so a slow spell on a
shared machine hits both alike. The model is bench/train_cpu.py's (784-512-256-10 ReLU MLP, softmax
cross-entropy, Adam lr 1e-3 eps 1e-7, float32, seed 0), built through the public API only, so any two trees
whose ``Sequential.fit`` takes these arguments can be compared.

    git archive 648889d | tar -x -C /tmp/nnxp-648889d
    python bench/compare_trees.py --against /tmp/nnxp-648889d [--batches 128,1024] [--modes numpy,fast]
                                  [--repeats 5] [--samples 60000] [--threads N] [--json OUT]

Mode ``numpy`` sets NNXP_NUMBA=0 in both workers (NumPy alone), ``fast`` leaves the compiled loops on. Each
sample also measures the CPUs other processes used meanwhile; a pair taken while they used more than
``--max-foreign`` is retaken (a few times at most, then kept and counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


# --- the worker: one tree's nnxp, driven over stdin/stdout in JSON lines ---------------------------------------


def worker(tree: str, data: str) -> None:
    sys.path.insert(0, tree)
    import numpy as np

    import nnxp

    x, y = np.load(Path(data) / "x.npy"), np.load(Path(data) / "y.npy")
    models: dict[int, Any] = {}

    def model_for(batch: int) -> Any:
        if batch not in models:
            m = nnxp.Sequential([nnxp.Dense(512, "relu", input_dim=784), nnxp.Dense(256, "relu"),
                                 nnxp.Dense(10, "softmax")], seed=0, dtype="float32")
            m.compile(nnxp.optimizers.Adam(learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
                      "sparse_categorical_crossentropy")
            m.fit(x[: 4 * batch], y[: 4 * batch], epochs=1, batch_size=batch, verbose=0)  # buffers, loops
            models[batch] = m
        return models[batch]

    print(json.dumps({"nnxp": nnxp.__file__, "version": getattr(nnxp, "__version__", None),
                      "NNXP_NUMBA": os.environ.get("NNXP_NUMBA")}), flush=True)
    for line in sys.stdin:
        batch = json.loads(line)["batch"]
        model = model_for(batch)
        c0, t0 = os.times(), time.perf_counter()
        hist = model.fit(x, y, epochs=1, batch_size=batch, shuffle=True, verbose=0)
        wall, c1 = time.perf_counter() - t0, os.times()
        loss = float(hist.history["loss"][-1])
        print(json.dumps({"s": wall, "cpu_s": (c1.user + c1.system) - (c0.user + c0.system), "loss": loss}),
              flush=True)


# --- the parent -----------------------------------------------------------------------------------------------


def _system_busy_s() -> float | None:
    """CPU-seconds all processes have used since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


class Tree:
    """A worker process running one tree's nnxp."""

    def __init__(self, path: Path, data: Path, env: dict) -> None:
        self.path = path
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(path), str(data)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=path,
                                     env={**os.environ, "PYTHONPATH": str(path), **env})
        self.info = self._read()
        if not Path(self.info["nnxp"]).resolve().is_relative_to(path.resolve()):
            raise RuntimeError(f"the worker for {path} imported nnxp from {self.info['nnxp']}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker for {self.path} stopped (exit code {self.proc.wait()})")
        return json.loads(line)

    def epoch(self, batch: int) -> dict:
        """One timed epoch; adds `foreign`, the CPUs other processes used meanwhile."""
        busy0 = _system_busy_s()
        self.proc.stdin.write(json.dumps({"batch": batch}) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        busy1 = _system_busy_s()
        out["foreign"] = (0.0 if busy0 is None or busy1 is None
                          else max(0.0, busy1 - busy0 - out["cpu_s"]) / max(out["s"], 1e-9))
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def compare(this: Path, against: Path, batches: list[int], modes: list[str], repeats: int, samples: int,
            max_foreign: float, max_retakes: int = 2, threads: int | None = None) -> dict:
    import numpy as np

    sys.path.insert(0, str(HERE))
    from bench.train_cpu import load_data  # this tree's loader, run once: both workers read the same arrays

    x, y, source = load_data(samples)
    result: dict = {"benchmark": "compare_trees", "this": str(this), "against": str(against),
                    "data": {"source": source, "samples": int(x.shape[0])}, "repeats": repeats,
                    "max_foreign_cpus": max_foreign, "threads": threads, "load_average_at_start": os.getloadavg(),
                    "modes": {}}
    retaken = kept_noisy = 0
    with tempfile.TemporaryDirectory(prefix="nnxp-compare-") as data:
        np.save(Path(data) / "x.npy", x)
        np.save(Path(data) / "y.npy", y)
        for mode in modes:
            env = {"NNXP_NUMBA": "0"} if mode == "numpy" else {}
            if threads is not None:  # both libraries' pools; one thread keeps a loaded machine's noise down
                env.update({k: str(threads) for k in THREAD_VARIABLES})
            trees = {"this": Tree(this, Path(data), env), "against": Tree(against, Path(data), env)}
            try:
                rows = {}
                for batch in batches:
                    times: dict[str, list[float]] = {"this": [], "against": []}
                    losses: dict[str, list[float]] = {"this": [], "against": []}
                    for r in range(repeats):
                        # alternate which goes first, so neither always follows the other
                        order = ("this", "against") if r % 2 == 0 else ("against", "this")
                        for attempt in range(max_retakes + 1):
                            got = {k: trees[k].epoch(batch) for k in order}
                            if max(g["foreign"] for g in got.values()) <= max_foreign:
                                break
                            if attempt == max_retakes:
                                kept_noisy += 1
                            else:
                                retaken += 1
                        for k, g in got.items():
                            times[k].append(g["s"])
                            losses[k].append(g["loss"])
                    med = {k: statistics.median(v) for k, v in times.items()}
                    rows[str(batch)] = {
                        "epoch_s": times, "median_epoch_s": med, "last_loss": {k: v[-1] for k, v in losses.items()},
                        # > 1: this tree trains faster than the other
                        "this_over_against_speed": med["against"] / med["this"],
                        "pairwise_speed_ratios": [a / t for t, a in zip(times["this"], times["against"], strict=True)],
                    }
                result["modes"][mode] = {"workers": {k: t.info for k, t in trees.items()}, "batches": rows}
            finally:
                for t in trees.values():
                    t.close()
    result["samples_retaken"], result["samples_kept_noisy"] = retaken, kept_noisy
    result["load_average_at_end"] = os.getloadavg()
    return result


def markdown(result: dict) -> str:
    lines = [f"This tree ({result['this']}) against {result['against']}: one `fit` epoch of "
             f"{result['data']['samples']:,} samples ({result['data']['source']}), median of {result['repeats']}, "
             f"interleaved, threads: {result['threads'] or 'default'}. Load average "
             f"{result['load_average_at_start']} at the start, "
             f"{result['load_average_at_end']} at the end; pairs retaken for others' load: "
             f"{result['samples_retaken']} (kept noisy: {result['samples_kept_noisy']}).", "",
             "| mode | batch | this (s) | against (s) | this / against speed | pairwise ratios (min-max) |",
             "|:--|---:|---:|---:|---:|:--|"]
    for mode, m in result["modes"].items():
        for batch, row in m["batches"].items():
            med, pr = row["median_epoch_s"], row["pairwise_speed_ratios"]
            lines.append(f"| {mode} | {batch} | {med['this']:.3f} | {med['against']:.3f} | "
                         f"{row['this_over_against_speed']:.3f}x | {min(pr):.3f}-{max(pr):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", type=Path, help="the other source tree (a directory holding nnxp/)")
    ap.add_argument("--this", type=Path, default=HERE, help="the tree to judge (default: this checkout)")
    ap.add_argument("--batches", default="128,1024", help="comma-separated batch sizes")
    ap.add_argument("--modes", default="numpy", help="numpy (NNXP_NUMBA=0), fast, or both: numpy,fast")
    ap.add_argument("--repeats", type=int, default=5, help="epochs per tree and batch size (median)")
    ap.add_argument("--samples", type=int, default=60000, help="training samples (Fashion-MNIST's train set)")
    ap.add_argument("--max-foreign", type=float, default=0.5,
                    help="retake a pair when other processes used more CPUs than this meanwhile")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS and Numba threads in both workers (default: their own choice)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    if args.against is None or not (args.against / "nnxp" / "__init__.py").is_file():
        ap.error(f"--against must be a source tree holding nnxp/__init__.py. Received: {args.against}")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - {"numpy", "fast"}:
        ap.error(f"--modes must name numpy and/or fast. Received: {args.modes}")
    result = compare(args.this, args.against, [int(b) for b in args.batches.split(",") if b.strip()], modes,
                     max(1, args.repeats), args.samples, args.max_foreign, threads=args.threads)
    sys.path.insert(0, str(HERE))  # bench._env (this process imports no nnxp: its workers do, each its own tree)
    from bench._env import emit

    emit(result, markdown(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
