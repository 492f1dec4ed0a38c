"""Turn saved pytest-benchmark JSON into a markdown report and PNG plots.

    python -m bench.report [RESULTS.json ...] [--results-dir DIR] [--out DIR] [--no-plots]
    nnxp bench [the same arguments]

Without file arguments it takes, for each device, the newest run (by the JSON's ``datetime``) under
bench/results/ that has results for it, so a CPU reference and a GPU run combine into one report.
Writes REPORT.md, throughput_<device>.png and speedups.png into --out (default: the results folder).
Samples/s is examples per second from the median (or --stat) time per call; a speedup is nnxp's samples/s over
a peer's (above 1: nnxp is faster).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
IMPL_ORDER = ("nnxp", "nnxp_cudagraph", "torch", "torch_cudagraph", "sklearn_f64", "sklearn_f32", "per_sample")
IMPL_LABELS = {"nnxp": "nnxp", "nnxp_cudagraph": "nnxp CUDA graph", "torch": "torch eager",
               "torch_cudagraph": "torch CUDA graph", "sklearn_f64": "sklearn f64", "sklearn_f32": "sklearn f32",
               "per_sample": "per-sample loop"}
MODEL_ORDER = ("small", "large", "deep")
KIND_LABELS = {"train": "Training step", "infer": "Inference"}
DEVICE_ORDER = ("cpu", "cuda")
BUSY_SHARE = 0.2  # cases timed while other processes used more of the CPUs than this are flagged


@dataclass
class Row:
    """One benchmarked case with what the report derives from it."""

    device: str
    model: str
    layers: tuple
    batch: int
    impl: str
    kind: str
    median_s: float
    rounds: int
    samples_per_call: int
    flops_per_call: float
    gemm_floor_s: float | None = None
    peak_mem_bytes: int | None = None
    first_call_s: float | None = None
    iqr_s: float | None = None
    others: float | None = None  # share of all CPUs other processes used while it was timed
    run: str = ""

    @property
    def samples_per_s(self) -> float:
        return self.samples_per_call / self.median_s

    @property
    def gflops(self) -> float:
        return self.flops_per_call / self.median_s / 1e9

    @property
    def floor_ratio(self) -> float | None:
        return self.median_s / self.gemm_floor_s if self.gemm_floor_s else None

    @property
    def key(self) -> tuple:
        return (self.device, self.kind, self.model, self.batch, self.impl)


@dataclass
class Run:
    path: Path
    datetime: str
    env: dict = field(default_factory=dict)
    devices: set = field(default_factory=set)


# --- loading ---------------------------------------------------------------------------------------


def _rows_of(data: dict, run: str, stat: str = "median") -> list[Row]:
    rows = []
    for bench in data.get("benchmarks", []):
        info, stats = bench.get("extra_info") or {}, bench.get("stats") or {}
        if "impl" not in info or not stats.get(stat):
            continue  # not one of ours, or not timed
        rows.append(Row(
            device=info["device"], model=info["model"], layers=tuple(info.get("layers") or ()),
            batch=int(info["batch"]), impl=info["impl"], kind=info["kind"], median_s=float(stats[stat]),
            rounds=int(stats.get("rounds", 0)), samples_per_call=int(info["samples_per_call"]),
            flops_per_call=float(info["flops_per_call"]), gemm_floor_s=info.get("gemm_floor_s"),
            peak_mem_bytes=info.get("peak_mem_bytes"), first_call_s=info.get("first_call_s"),
            iqr_s=stats.get("iqr"), others=info.get("other_cpu_share"), run=run,
        ))
    return rows


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"skipping {path}: {exc}", file=sys.stderr)
        return None
    return data if isinstance(data, dict) and "benchmarks" in data else None


def load(paths: list[Path] | None, results_dir: Path = RESULTS_DIR,
         stat: str = "median") -> tuple[list[Row], list[Run]]:
    """Rows and the runs they came from: the given files (later runs win), else the newest run per device."""
    explicit = bool(paths)
    candidates = list(paths) if explicit else sorted(results_dir.glob("*.json"))
    loaded = []
    for path in candidates:
        data = _read(Path(path))
        if data is None:
            if explicit:
                raise SystemExit(f"{path} is not a pytest-benchmark JSON file")
            continue
        run = Run(Path(path), str(data.get("datetime", "")),
                  (data.get("machine_info") or {}).get("nnxp_bench") or {})
        rows = _rows_of(data, str(path), stat)
        run.devices = {r.device for r in rows}
        if rows:
            loaded.append((run, rows))
    loaded.sort(key=lambda item: item[0].datetime)
    if not explicit:  # newest run per device
        newest = {}
        for run, _ in loaded:
            for device in run.devices:
                newest[device] = run
        loaded = [(run, [r for r in rows if newest.get(r.device) is run]) for run, rows in loaded]
        loaded = [(run, rows) for run, rows in loaded if rows]
    by_key: dict[tuple, Row] = {}
    for _, rows in loaded:
        for row in rows:
            by_key[row.key] = row
    return list(by_key.values()), [run for run, _ in loaded]


# --- formatting ------------------------------------------------------------------------------------


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def fmt_ratio(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def fmt_num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _date(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return iso or "?"


def _index(value, order) -> int:
    return order.index(value) if value in order else len(order)


def _row_order(r: Row) -> tuple:
    return (r.kind != "train", _index(r.model, MODEL_ORDER), r.batch, _index(r.impl, IMPL_ORDER), r.impl)


def _ordered(values, order) -> list:
    return sorted(set(values), key=lambda v: (order.index(v) if v in order else len(order), v))


def describe_env(device: str, env: dict) -> str:
    """One line: hardware, date and versions of a run."""
    versions = [f"nnxp {env.get('nnxp', '?')}", f"NumPy {env.get('numpy', '?')}"]
    if env.get("torch"):
        versions.append(f"PyTorch {env['torch']}")
    if env.get("sklearn"):
        versions.append(f"scikit-learn {env['sklearn']}")
    versions.append(f"Python {env.get('python', '?')}")
    if device == "cpu":
        where = (f"{env.get('cpu', '?')}, {env.get('usable_cpus') or env.get('logical_cpus', '?')} CPUs; "
                 f"BLAS {env.get('blas', '?')}")
        if env.get("torch"):
            where += f"; torch {env.get('torch_threads', '?')} threads ({env.get('torch_cpu_capability', '?')})"
        coretype = (env.get("env") or {}).get("OPENBLAS_CORETYPE")
        where += f"; OPENBLAS_CORETYPE {'=' + coretype if coretype else 'unset'}"
        load = env.get("loadavg_start"), env.get("loadavg_end")
        if all(load):
            where += f"; load average {load[0][0]:.1f} → {load[1][0]:.1f}"
    else:
        gpu = env.get("gpu") or {}
        where = (f"{gpu.get('name', '?')}, driver {gpu.get('driver', '?')}, CUDA {gpu.get('cuda_runtime', '?')}"
                 f", CuPy {gpu.get('cupy', '?')}")
        if env.get("torch_cuda"):
            where += f", torch CUDA {env['torch_cuda']}"
    return f"{where}. {', '.join(versions)}."


# --- tables ----------------------------------------------------------------------------------------


def speed_table(rows: list[Row], device: str, kind: str) -> list[str]:
    """Samples/s per implementation and nnxp's speedup over each peer, one line per (model, batch)."""
    sel = [r for r in rows if r.device == device and r.kind == kind and r.impl != "per_sample"]
    if not sel:
        return []
    impls = _ordered([r.impl for r in sel], IMPL_ORDER)
    peers = [i for i in impls if i != "nnxp"] if "nnxp" in impls else []
    cell = {(r.model, r.batch, r.impl): r for r in sel}
    head = ["model", "batch"] + [IMPL_LABELS.get(i, i) for i in impls] + [f"nnxp / {IMPL_LABELS.get(p, p)}"
                                                                            for p in peers]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for model in _ordered([r.model for r in sel], MODEL_ORDER):
        for batch in sorted({r.batch for r in sel if r.model == model}):
            rates = {i: cell[(model, batch, i)].samples_per_s for i in impls if (model, batch, i) in cell}
            parts = [model, str(batch)] + [fmt_rate(rates.get(i)) for i in impls]
            for p in peers:
                ok = "nnxp" in rates and p in rates
                parts.append(fmt_ratio(rates["nnxp"] / rates[p]) if ok else "–")
            lines.append("| " + " | ".join(parts) + " |")
    return lines


def batching_table(rows: list[Row], device: str, kind: str) -> list[str]:
    """The per-sample loop against nnxp's batched runs."""
    loops = [r for r in rows if r.device == device and r.kind == kind and r.impl == "per_sample"]
    if not loops:
        return []
    lines = ["| model | per-sample loop samples/s | nnxp at batch 32 | nnxp best (batch) | best / loop |",
             "|---|---:|---:|---:|---:|"]
    for loop in sorted(loops, key=_row_order):
        ours = [r for r in rows if r.key[:3] == (device, kind, loop.model) and r.impl == "nnxp"]
        at32 = next((r.samples_per_s for r in ours if r.batch == 32), None)
        best = max(ours, key=lambda r: r.samples_per_s, default=None)
        lines.append(f"| {loop.model} | {fmt_rate(loop.samples_per_s)} | {fmt_rate(at32)} | "
                     + (f"{fmt_rate(best.samples_per_s)} ({best.batch}) | "
                        f"{fmt_ratio(best.samples_per_s / loop.samples_per_s)} |" if best else "– | – |"))
    return lines


def detail_table(rows: list[Row], device: str) -> list[str]:
    sel = [r for r in rows if r.device == device]
    lines = ["| step | model | batch | implementation | ms / call | IQR % | samples/s | GFLOP/s | × GEMM floor | "
             "peak MiB | first call ms | rounds | others % |", "|---|---|---:|---|" + "---:|" * 9]
    for r in sorted(sel, key=_row_order):
        mem = None if r.peak_mem_bytes is None else r.peak_mem_bytes / 2**20
        first = None if r.first_call_s is None else r.first_call_s * 1e3
        iqr = None if r.iqr_s is None else 100 * r.iqr_s / r.median_s
        lines.append(f"| {r.kind} | {r.model} | {r.batch} | {IMPL_LABELS.get(r.impl, r.impl)} | "
                     f"{fmt_num(r.median_s * 1e3, 2)} | {fmt_num(iqr, 0)} | {fmt_rate(r.samples_per_s)} | "
                     f"{fmt_num(r.gflops)} | {fmt_num(r.floor_ratio, 2)} | {fmt_num(mem)} | {fmt_num(first, 1)} | "
                     f"{r.rounds} | {fmt_num(None if r.others is None else 100 * r.others, 0)} |")
    return lines


def gpu_vs_cpu_table(rows: list[Row]) -> list[str]:
    cell = {r.key: r for r in rows}
    lines = []
    for r in sorted(rows, key=_row_order):
        if r.device != "cuda":
            continue
        cpu = cell.get(("cpu",) + r.key[1:])
        if cpu is None:
            continue
        lines.append(f"| {r.kind} | {r.model} | {r.batch} | {IMPL_LABELS.get(r.impl, r.impl)} | "
                     f"{fmt_rate(cpu.samples_per_s)} | {fmt_rate(r.samples_per_s)} | "
                     f"{fmt_ratio(r.samples_per_s / cpu.samples_per_s)} |")
    if not lines:
        return []
    return ["| step | model | batch | implementation | CPU samples/s | GPU samples/s | GPU / CPU |",
            "|---|---|---:|---|---:|---:|---:|"] + lines


def markdown(rows: list[Row], runs: list[Run], stat: str = "median") -> str:
    out = ["# nnxp benchmark report", "",
           "Generated by `python -m bench.report` (`nnxp bench`) from "
           + ", ".join(f"`{_rel(run.path)}` ({', '.join(sorted(run.devices))}, {_date(run.datetime)})" for run in runs)
           + f". Samples/s: examples per second from the {stat} time per call. `nnxp / peer`: nnxp's samples/s "
           "over the peer's (above 1: nnxp is faster). × GEMM floor: time per call over the same GEMMs timed "
           "alone in the same run (NumPy / CuPy, float64 for sklearn f64). Peak MiB: RSS above the "
           "case's baseline on the CPU, CuPy pool / torch allocator on a GPU. First call: the untimed first "
           "call (buffer allocation, kernel compilation, CUDA-graph capture), reported apart. IQR %: spread of "
           "the timed rounds. Others %: share of all CPUs that other processes used while the case was timed "
           "(the suite waits for a quiet machine before each case, up to --wait-idle seconds).", ""]
    env_of = {}
    for run in runs:
        for device in run.devices:
            env_of[device] = run
    for device in _ordered([r.device for r in rows], DEVICE_ORDER):
        run = env_of.get(device)
        env = run.env if run else {}
        title = "CPU" if device == "cpu" else "GPU"
        name = env.get("cpu", "cpu") if device == "cpu" else (env.get("gpu") or {}).get("name", device)
        quick = " (smoke run: tiny sizes, not a measurement)" if env.get("quick") else ""
        out += [f"## {title}: {name}, {_date(run.datetime) if run else '?'}{quick}", "", describe_env(device, env), ""]
        busy = [r for r in rows if r.device == device and r.others is not None and r.others > BUSY_SHARE]
        if busy:
            out += [f"Note: {len(busy)} of {sum(r.device == device for r in rows)} cases ran while other processes "
                    f"used more than {BUSY_SHARE:.0%} of the CPUs (column others %); their timings are pessimistic.",
                    ""]
        for kind in ("train", "infer"):
            table = speed_table(rows, device, kind)
            if table:
                out += [f"### {KIND_LABELS[kind]}, samples/s", ""] + table + [""]
            batching = batching_table(rows, device, kind)
            if batching:
                out += [f"What batching buys ({KIND_LABELS[kind].lower()}): the tutorials' loop over one example "
                        "at a time, on a small slice, against nnxp's batched step:", ""] + batching + [""]
        out += [f"### Details ({title})", ""] + detail_table(rows, device) + [""]
    both = gpu_vs_cpu_table(rows)
    if both:
        out += ["## GPU vs CPU", ""] + both + [""]
    return "\n".join(out)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- plots -----------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput(rows: list[Row], device: str, path: Path, env: dict) -> None:
    """Samples/s against batch size, one panel per (step, model), one line per implementation."""
    plt = _pyplot()
    from matplotlib import ticker
    sel = [r for r in rows if r.device == device]
    models = _ordered([r.model for r in sel], MODEL_ORDER)
    kinds = [k for k in ("train", "infer") if any(r.kind == k for r in sel)]
    fig, axes = plt.subplots(len(kinds), len(models), figsize=(max(8.0, 4.6 * len(models)), 3.8 * len(kinds)),
                             squeeze=False, sharey="row")
    colors = {impl: f"C{i}" for i, impl in enumerate(IMPL_ORDER)}
    for i, kind in enumerate(kinds):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for impl in _ordered([r.impl for r in sel], IMPL_ORDER):
                pts = sorted((r.batch, r.samples_per_s) for r in sel
                             if r.kind == kind and r.model == model and r.impl == impl)
                if not pts:
                    continue
                label = IMPL_LABELS.get(impl, impl)
                if impl == "per_sample":
                    ax.axhline(pts[0][1], color=colors[impl], ls=":", lw=1.2)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "*", ms=11, color=colors[impl], label=label)
                else:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[impl], label=label)
            layers = next((r.layers for r in sel if r.model == model and r.layers), ())
            arch = "-".join(map(str, layers))
            if len(layers) > 5:
                arch = f"{layers[0]}-{len(layers) - 2}x{layers[1]}-{layers[-1]}"
            ax.set_title(f"{KIND_LABELS[kind]}: {model} ({arch})", fontsize=10)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _short(v)))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("batch size")
            if j == 0:
                ax.set_ylabel("samples / s")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
            labels[lab] = lab
    fig.legend(list(handles.values()), list(labels), loc="lower center", ncol=min(len(labels), 3 * len(models)),
               frameon=False)
    name = env.get("cpu") if device == "cpu" else (env.get("gpu") or {}).get("name", device)
    fig.suptitle(f"nnxp benchmark on {device}: {name}", fontsize=12)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(v: float) -> str:
    """3000 -> '3k', 2.5e6 -> '2.5M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def plot_speedups(rows: list[Row], path: Path) -> None:
    """Bars of nnxp's speedup over each peer per (model, batch), one panel per (device, step), plus GPU/CPU."""
    plt = _pyplot()
    from matplotlib import ticker
    cell = {r.key: r for r in rows}
    panels = []  # (title, labels, {series: [values]})
    for device in _ordered([r.device for r in rows], DEVICE_ORDER):
        for kind in ("train", "infer"):
            configs = sorted({(r.model, r.batch) for r in rows if r.device == device and r.kind == kind
                              and r.impl == "nnxp"}, key=lambda c: (_index(c[0], MODEL_ORDER), c[1]))
            peers = _ordered([r.impl for r in rows if r.device == device and r.kind == kind
                              and r.impl not in ("nnxp", "per_sample")], IMPL_ORDER)
            series = {}
            for peer in peers:
                vals = []
                for model, batch in configs:
                    a, b = cell.get((device, kind, model, batch, "nnxp")), cell.get((device, kind, model, batch, peer))
                    vals.append(a.samples_per_s / b.samples_per_s if a and b else float("nan"))
                series[f"nnxp / {IMPL_LABELS.get(peer, peer)}"] = vals
            if series:
                panels.append((f"{KIND_LABELS[kind]} on {device}: nnxp speedup", configs, series))
    for kind in ("train", "infer"):
        configs = sorted({(r.model, r.batch) for r in rows if r.device == "cuda" and r.kind == kind
                          and ("cpu", kind, r.model, r.batch, r.impl) in cell},
                         key=lambda c: (_index(c[0], MODEL_ORDER), c[1]))
        series = {}
        for impl in ("nnxp", "torch"):
            vals = []
            for model, batch in configs:
                g, c = cell.get(("cuda", kind, model, batch, impl)), cell.get(("cpu", kind, model, batch, impl))
                vals.append(g.samples_per_s / c.samples_per_s if g and c else float("nan"))
            if any(v == v for v in vals):
                series[f"{IMPL_LABELS[impl]} GPU / CPU"] = vals
        if series:
            panels.append((f"{KIND_LABELS[kind]}: GPU over CPU", configs, series))
    if not panels:
        panels = [("no nnxp results with peers", [], {})]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(7, 0.55 * max(len(p[1]) for p in panels) + 3),
                                                      3.4 * len(panels)), squeeze=False)
    for ax, (title, configs, series) in zip(axes[:, 0], panels):
        n = max(1, len(series))
        width = 0.8 / n
        for k, (name, vals) in enumerate(series.items()):
            xs = [i + (k - (n - 1) / 2) * width for i in range(len(configs))]
            bars = ax.bar(xs, vals, width=width, label=name, color=f"C{k + 1}")
            ax.bar_label(bars, labels=[f"{v:.2g}" if v == v else "" for v in vals], fontsize=7, padding=1)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}×" if f"{v:.0e}"[0] in "25" else ""))
        ax.margins(y=0.15)
        ax.set_xticks(range(len(configs)))
        ax.set_xticklabels([f"{m}\n{b}" for m, b in configs], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("× (log scale, >1: faster)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry point -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nnxp bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="pytest-benchmark JSON files (default: newest per device)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where to look for JSON files")
    ap.add_argument("--out", type=Path, default=None, help="where to write REPORT.md and PNGs (default: results dir)")
    ap.add_argument("--no-plots", action="store_true", help="write only the markdown")
    ap.add_argument("--stat", choices=("median", "min", "mean"), default="median",
                    help="which time per call to report (default: median)")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    args = ap.parse_args(argv)
    rows, runs = load(args.files, args.results_dir, args.stat)
    if not rows:
        print(f"no benchmark results found (looked in {args.files or args.results_dir}); run the suite first: "
              "python -m pytest bench --benchmark-json bench/results/<name>.json", file=sys.stderr)
        return 1
    out = args.out or args.results_dir
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, runs, args.stat)
    (out / "REPORT.md").write_text(text + "\n")
    written = [out / "REPORT.md"]
    if not args.no_plots:
        try:
            env_of = {d: run.env for run in runs for d in run.devices}
            for device in _ordered([r.device for r in rows], DEVICE_ORDER):
                path = out / f"throughput_{device}.png"
                plot_throughput(rows, device, path, env_of.get(device, {}))
                written.append(path)
            plot_speedups(rows, out / "speedups.png")
            written.append(out / "speedups.png")
        except ImportError:
            print("matplotlib is not installed: skipping the plots (pip install matplotlib)", file=sys.stderr)
    if not args.quiet:
        print(text)
    print("wrote " + ", ".join(_rel(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
