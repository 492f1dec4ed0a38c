"""fit time of nnxp.sklearn.MLPClassifier against scikit-learn's MLPClassifier, at equal epochs, on the CPU.

Fashion-MNIST (60,000 training images, pixels scaled to [0, 1]), a 784-(256, 128)-10 ReLU network, Adam
(scikit-learn's defaults), batch 200 (``batch_size="auto"``), the same ``random_state`` (so the same initial
weights), ``max_iter`` epochs each, in float64 (scikit-learn's default: float64 input) and float32 (float32
input for scikit-learn; ``dtype="float32"``, nnxp's default, for nnxp). The two libraries' fits alternate in
one process, on one machine, with NumPy's BLAS threads for both, each after one small untimed fit (imports,
Numba's compile of nnxp's Adam step or its load from the cache). Test accuracy on the 10,000 test images is
recorded beside each time, to show both trained the same network equally well.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/sklearn_fit.py [--epochs 3] [--repeats 1] \\
        [--json bench/results/sklearn_fit.json] [--quick]

Every timed fit also records the CPUs other processes used meanwhile (``foreign_cpus``, from /proc/stat):
shared machines are noisy, and a fit measured while they were busy says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.train_cpu import Timer, environment, load_data  # noqa: E402

HIDDEN = (256, 128)
BATCH = 200


def _test_data(quick: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from nnxp.datasets import load_fashion_mnist

        _, (x, y) = load_fashion_mnist(download=False)
    except Exception:  # no test split available: the accuracy column stays empty
        return np.empty((0, 784), np.float32), np.empty(0, np.int64)
    n = 500 if quick else len(x)
    return np.ascontiguousarray(x[:n].reshape(n, -1), dtype=np.float32) / np.float32(255.0), np.asarray(y[:n])


def _estimator(impl: str, dtype: str, epochs: int):
    kw = dict(hidden_layer_sizes=HIDDEN, batch_size=BATCH, max_iter=epochs, random_state=0)
    if impl == "nnxp":
        from nnxp.sklearn import MLPClassifier

        return MLPClassifier(dtype=dtype, device="cpu", **kw)
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(**kw)


def run(epochs: int, repeats: int, quick: bool) -> dict:
    import sklearn

    n = 1000 if quick else 60000
    x32, y, source = load_data(n)
    x_test, y_test = _test_data(quick)
    data = {"float64": x32.astype(np.float64), "float32": x32}
    env = environment()
    env["scikit_learn"] = sklearn.__version__
    result = {"quick": quick, "epochs": epochs, "repeats": repeats, "batch_size": BATCH, "hidden": list(HIDDEN),
              "data": {"source": source, "samples": int(len(y)), "test_samples": int(len(y_test))},
              "environment": env, "cases": {}}
    for dtype, x in data.items():
        warm = {}
        for impl in ("nnxp", "sklearn"):  # one small untimed fit first: imports, Numba's compile (or cache load)
            with warnings.catch_warnings(), Timer() as t:
                warnings.simplefilter("ignore")
                _estimator(impl, dtype, 1).fit(x[:400], y[:400])
            warm[impl] = round(t.wall, 3)
        runs: dict[str, list] = {"nnxp": [], "sklearn": []}
        for _ in range(repeats):
            for impl in ("nnxp", "sklearn"):  # interleaved, so slow phases of the machine hit both
                est = _estimator(impl, dtype, epochs)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ConvergenceWarning: a few epochs are meant
                    with Timer() as t:
                        est.fit(x, y)
                acc = float(est.score(x_test.astype(dtype), y_test)) if len(y_test) else None
                runs[impl].append({"fit_s": t.wall, "foreign_cpus": round(t.foreign, 2), "n_iter": est.n_iter_,
                                   "final_loss": float(est.loss_), "test_accuracy": acc})
                print(f"{dtype} {impl}: {t.wall:.2f} s for {est.n_iter_} epochs (others used {t.foreign:.2f} CPUs), "
                      f"test accuracy {acc}", flush=True)
        case = {}
        for impl, rows in runs.items():
            fit_s = statistics.median(r["fit_s"] for r in rows)
            case[impl] = {"runs": rows, "fit_s": fit_s, "s_per_epoch": fit_s / epochs,
                          "samples_per_s": len(y) * epochs / fit_s, "warm_up_fit_s": warm[impl]}
        case["speedup_nnxp_over_sklearn"] = case["sklearn"]["fit_s"] / case["nnxp"]["fit_s"]
        result["cases"][dtype] = case
    env["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["finished_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    return result


def markdown(result: dict) -> str:
    env = result["environment"]
    blas = env.get("numpy_blas") or {}
    lines = [
        f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs; NumPy {env['numpy']} ({blas.get('internal_api', '?')} "
        f"{blas.get('version', '')}, kernel {blas.get('architecture', '?')}, {env.get('numpy_threads', '?')} threads); "
        f"scikit-learn {env['scikit_learn']}; nnxp {env['nnxp']}. OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}, "
        f"OPENBLAS_L2_SIZE={env['env']['OPENBLAS_L2_SIZE']}. Load average at start {env['load_average_at_start']}, "
        f"at end {env.get('load_average_at_end')}.",
        f"Data: {result['data']['source']}, {result['data']['samples']:,} samples; MLPClassifier(hidden_layer_sizes="
        f"{tuple(result['hidden'])}, batch_size={result['batch_size']}, max_iter={result['epochs']}, random_state=0), "
        f"Adam; median of {result['repeats']} fit(s) each, the two libraries alternating.",
        "",
        "| dtype | nnxp fit s | scikit-learn fit s | nnxp / scikit-learn speed | nnxp samples/s "
        "| scikit-learn samples/s | test acc. nnxp | test acc. scikit-learn | others' CPUs (nnxp / sklearn) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dtype, case in result["cases"].items():
        a, b = case["nnxp"], case["sklearn"]
        acc = lambda c: "-" if c["runs"][0]["test_accuracy"] is None else f"{c['runs'][0]['test_accuracy']:.4f}"  # noqa: E731
        foreign = lambda c: max(r["foreign_cpus"] for r in c["runs"])  # noqa: E731
        lines.append(f"| {dtype} | {a['fit_s']:.2f} | {b['fit_s']:.2f} | {case['speedup_nnxp_over_sklearn']:.2f}x | "
                     f"{a['samples_per_s']:,.0f} | {b['samples_per_s']:,.0f} | {acc(a)} | {acc(b)} | "
                     f"{foreign(a):.2f} / {foreign(b):.2f} |")
    lines += ["", "Each library's quickest fit (least disturbed by other processes; their CPU use meanwhile):", "",
              "| dtype | nnxp fit s | scikit-learn fit s | nnxp / scikit-learn speed | others' CPUs (nnxp / sklearn) |",
              "|---|---:|---:|---:|---:|"]
    for dtype, case in result["cases"].items():
        a = min(case["nnxp"]["runs"], key=lambda r: r["fit_s"])
        b = min(case["sklearn"]["runs"], key=lambda r: r["fit_s"])
        lines.append(f"| {dtype} | {a['fit_s']:.2f} | {b['fit_s']:.2f} | {b['fit_s'] / a['fit_s']:.2f}x | "
                     f"{a['foreign_cpus']:.2f} / {b['foreign_cpus']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3, help="max_iter of every fit")
    ap.add_argument("--repeats", type=int, default=1, help="fits per library and dtype (median)")
    ap.add_argument("--quick", action="store_true", help="1,000 samples, for smoke runs")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON (and a .md beside it)")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the .md of a saved JSON (no timing)")
    args = ap.parse_args(argv)
    if args.render is not None:
        text = markdown(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(text + "\n")
        print(text)
        return 0
    result = run(max(1, args.epochs), max(1, args.repeats), args.quick)
    text = markdown(result)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        args.json.with_suffix(".md").write_text(text + "\n")
        print(f"\nwrote {args.json} and {args.json.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
