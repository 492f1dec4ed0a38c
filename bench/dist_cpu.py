"""Data-parallel training on this machine: 1 rank x 2 BLAS threads against 2 MPI ranks x 1 thread each.

Trains the 784-512-256-10 ReLU MLP (softmax cross-entropy, Adam lr 1e-3, float32) on Fashion-MNIST's 60,000
training images with ``Sequential.fit`` at global batch 128 and 1024, one epoch per timed sample, the two
configurations interleaved (A B A B ...) so drifting load on a shared machine hits both alike. Under MPI each
rank computes its share of every batch and one all-reduce per step sums the gradients (nnxp.distributed).
It also measures the all-reduce of the flat gradient buffer itself (MPI over shared memory between the two
ranks): time per call and bandwidth, algorithmic (bytes / t) and bus (2(N-1)/N x bytes / t, NCCL's convention).
A third configuration tries PyTorch DDP's overlap (``comm.overlap = True``): per-layer buckets all-reduced
without blocking while the backward pass goes on, to see whether it beats the single all-reduce here.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dist_cpu.py [--epochs 3] [--json OUT]

(OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where set, make a current NumPy pick a slower kernel.) Needs nnxp[mpi]
and Fashion-MNIST (``apt-get install dataset-fashion-mnist`` or ``$NNXP_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (128, 1024)


def worker(batch: int, epochs: int, rows: int | None) -> None:
    """One configuration, launched with its thread count fixed in the environment; rank 0 prints JSON lines."""
    import numpy as np  # after the launcher fixed the BLAS threads

    import nnxp
    from nnxp import Dense, Sequential

    comm = nnxp.distributed.init()
    comm.overlap = os.environ.get("NNXP_BENCH_OVERLAP") == "1"  # per-layer buckets during the backward pass
    (x, y), _ = nnxp.datasets.load_fashion_mnist()
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    y = y.astype(np.int64)
    x, y = x[:rows], y[:rows]
    model = Sequential([Dense(512, "relu", input_dim=784), Dense(256, "relu"), Dense(10, "softmax")], seed=0)
    model.compile(nnxp.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[: batch * 8], y[: batch * 8], epochs=1, batch_size=batch, verbose=0)  # warm-up: buffers, state
    for _ in range(epochs):
        comm.barrier()
        t0 = time.perf_counter()
        hist = model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
        comm.barrier()
        dt = time.perf_counter() - t0
        if comm.is_main:
            print(json.dumps({"seconds": dt, "samples_per_s": len(x) / dt, "loss": hist.history["loss"][-1],
                              "load": os.getloadavg()[0]}), flush=True)
    if comm.size > 1:  # the all-reduce alone, on a buffer like the one fit reduces each step
        out = {}
        for dtype in ("float32", "float64"):
            buf = np.ones(model.count_params() + 2, dtype=dtype)
            for _ in range(5):
                comm.allreduce(buf)
            reps = 50
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                comm.allreduce(buf)
            t = (time.perf_counter() - t0) / reps
            out[dtype] = {"bytes": buf.nbytes, "seconds": t, "algbw_GBps": buf.nbytes / t / 1e9,
                          "busbw_GBps": 2 * (comm.size - 1) / comm.size * buf.nbytes / t / 1e9}
        sweep = []  # time against size: the latency floor and where bandwidth takes over
        for nbytes in (4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20, 32 << 20):
            buf = np.ones(nbytes // 4, dtype=np.float32)
            reps = max(5, min(200, (16 << 20) // nbytes))
            comm.allreduce(buf)
            comm.barrier()
            t0 = time.perf_counter()
            for _ in range(reps):
                comm.allreduce(buf)
            t = (time.perf_counter() - t0) / reps
            busbw = 2 * (comm.size - 1) / comm.size * nbytes / t / 1e9
            sweep.append({"bytes": nbytes, "us": t * 1e6, "busbw_GBps": busbw})
        if comm.is_main:
            print(json.dumps({"allreduce": out, "sweep": sweep, "params": model.count_params()}), flush=True)


def launch(ranks: int, threads: int, batch: int, epochs: int, rows: int | None, overlap: bool) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NNXP_BENCH_OVERLAP": "1" if overlap else "0"}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker", str(batch), "--epochs", str(epochs)]
    cmd += ["--rows", str(rows)] if rows else []
    if ranks > 1:
        mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
        cmd = [mpiexec, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-n", str(ranks), *cmd]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=1800).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per launch")
    ap.add_argument("--rounds", type=int, default=2, help="launches per configuration, interleaved")
    ap.add_argument("--rows", type=int, default=None, help="train on the first ROWS images (a smoke run)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "dist_cpu.json"))
    args = ap.parse_args()
    if args.worker is not None:
        worker(args.worker, args.epochs, args.rows)
        return
    configs = {"1 rank x 2 threads": (1, 2, False), "2 ranks x 1 thread": (2, 1, False),
               "2 ranks x 1 thread, bucketed overlap": (2, 1, True)}
    results: dict = {"env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
                     "cpus": os.cpu_count(), "runs": {}}
    for batch in BATCHES:
        for _ in range(args.rounds):
            for name, (ranks, threads, overlap) in configs.items():
                lines = launch(ranks, threads, batch, args.epochs, args.rows, overlap)
                results["runs"].setdefault(f"{name}, batch {batch}", []).extend(
                    r for r in lines if "seconds" in r)
                for r in lines:
                    if "allreduce" in r and not overlap:
                        results.setdefault("allreduce_runs", []).append(r["allreduce"])
                        results.setdefault("sweeps", []).append(r["sweep"])
                        results["params"] = r["params"]
                print(name, batch, [round(r["samples_per_s"]) for r in lines if "seconds" in r], flush=True)
    summary = {}
    for key, runs in results["runs"].items():
        rates = [r["samples_per_s"] for r in runs]
        summary[key] = {"median_samples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                        "epochs": len(rates), "median_load": statistics.median(r["load"] for r in runs)}
    results["summary"] = summary
    for dtype in ("float32", "float64"):  # the median over the launches
        runs = [a[dtype] for a in results.get("allreduce_runs", [])]
        if runs:
            results.setdefault("allreduce", {})[dtype] = {
                k: statistics.median(r[k] for r in runs) for k in ("bytes", "seconds", "algbw_GBps", "busbw_GBps")}
    Path(args.json).write_text(json.dumps(results, indent=1))
    print(markdown(results))


def markdown(results: dict) -> str:
    """The measured tables for bench/results/scaling.md."""
    lines = ["| configuration | global batch | samples/s (median) | min-max | epochs | load avg |",
             "|---|---|---|---|---|---|"]
    for key, s in results["summary"].items():
        name, batch = key.rsplit(", batch ", 1)
        lines.append(f"| {name} | {batch} | {s['median_samples_per_s']:,.0f} | {s['min']:,.0f}-{s['max']:,.0f} | "
                     f"{s['epochs']} | {s['median_load']:.1f} |")
    lines += ["", "| all-reduce of the flat buffer | bytes | time (ms) | algbw (GB/s) | busbw (GB/s) |",
              "|---|---|---|---|---|"]
    for dtype, a in results.get("allreduce", {}).items():
        lines.append(f"| {dtype}, 2 ranks | {a['bytes']:,.0f} | {a['seconds'] * 1e3:.2f} | {a['algbw_GBps']:.2f} | "
                     f"{a['busbw_GBps']:.2f} |")
    sweeps = results.get("sweeps", [])
    if sweeps:
        lines += ["", "| all-reduce size (2 ranks, float32) | time (us, median of launches) | busbw (GB/s) |",
                  "|---|---|---|"]
        for i, point in enumerate(sweeps[0]):
            us = statistics.median(s[i]["us"] for s in sweeps)
            bw = statistics.median(s[i]["busbw_GBps"] for s in sweeps)
            lines.append(f"| {point['bytes']:,} | {us:,.0f} | {bw:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
