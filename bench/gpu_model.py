"""A performance model on paper: what one training step should cost on an H100 SXM and an H200, before any GPU run.

Inputs: the launch list of one steady-state step (bench/gpu_trace.py: nnxp eager and ``fit(cuda_graph=True)``
traced on the stand-in CuPy, PyTorch eager from torch.profiler on the CPU), the FLOPs and bytes of each op, the
published peaks in :data:`HARDWARE` and the overheads in :class:`Assumptions`. Everything here is a pure function
of those inputs (no GPU, no clock), so tests check its numbers.

    python bench/gpu_model.py [--trace bench/results/gpu-trace.json] [--out bench/results]   # gpu-model.md + .png

The model: the host issues the step's launches one after another (a fixed cost per launch by kind, plus the
framework's own Python per step) while the device runs them; without a synchronisation the two overlap, so a step
takes max(host, device). A device-to-host read in the step serialises them (host + device). Each op takes on the
device the largest of its FLOP time (GEMMs, with wave quantisation), its byte time, and a minimum kernel duration,
plus a gap per launch (smaller per graph node). What bounds a case is the largest of host launches, device FLOPs,
device bytes and device per-kernel latency.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_trace import Op  # noqa: E402


@dataclass(frozen=True)
class Hardware:
    """Published peaks of one GPU (dense, no sparsity)."""

    name: str
    hbm_bytes_s: float
    fp32_flops: float  # CUDA cores (FFMA)
    tf32_flops: float  # tensor cores, dense
    sms: int
    source: str


HARDWARE = {
    "H100 SXM": Hardware("H100 SXM", 3.35e12, 66.9e12, 494.7e12, 132,
                         "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 3.35 TB/s HBM3, FP32 67 TFLOPS, TF32 989 "
                         "TFLOPS with sparsity = 494.7 dense) and NVIDIA H100 Tensor Core GPU Architecture "
                         "whitepaper (132 SMs, FP32 66.9 / TF32 dense 494.7 TFLOPS at 1.98 GHz boost)"),
    "H200": Hardware("H200", 4.8e12, 66.9e12, 494.7e12, 132,
                     "NVIDIA H200 Tensor Core GPU datasheet (SXM: 4.8 TB/s HBM3e, FP32 67 TFLOPS, TF32 989 "
                     "TFLOPS with sparsity); the same GH100 die and clocks as H100 SXM (132 SMs)"),
}

# cost of one host-side launch, by framework and op kind (seconds); see Assumptions.table()
NNXP_HOST = {"kernel": 5e-6, "gemm": 10e-6, "elementwise": 10e-6, "reduction": 15e-6, "copy": 8e-6,
             "memset": 5e-6, "h2d": 10e-6, "d2h": 15e-6, "graph": 5e-6}
TORCH_HOST = {"kernel": 6e-6, "gemm": 6e-6, "elementwise": 6e-6, "reduction": 6e-6, "copy": 6e-6, "memset": 6e-6,
              "h2d": 10e-6, "d2h": 15e-6, "graph": 5e-6}


@dataclass(frozen=True)
class Assumptions:
    """Every number the model takes that is not a published peak (seconds, fractions)."""

    nnxp_host: dict = field(default_factory=lambda: dict(NNXP_HOST))
    torch_host: dict = field(default_factory=lambda: dict(TORCH_HOST))
    # nnxp's own Python per eager step, the step launched from its list (issue 11: bench/step_overhead.py on the
    # stand-in, upper bound, on a CPU about half as fast as a current desktop; 85e-6 made call by call before)
    nnxp_python_eager: float = 20e-6
    nnxp_python_graph: float = 30e-6  # per graphed step: the loop, the scalars' copy, the graph launch call
    torch_python: float = 40e-6  # per step: nn.Module calls, autograd engine, Optimizer.step bookkeeping
    gap_eager: float = 1.0e-6  # device idle between two back-to-back launched kernels
    gap_graph: float = 0.5e-6  # the same between two nodes of a graph
    kernel_min: float = 2.0e-6  # shortest kernel, however little it does
    gemm_min: float = 4.0e-6  # shortest cuBLAS GEMM
    gemm_efficiency: float = 0.7  # of the peak a well-shaped GEMM reaches
    bandwidth_efficiency: float = 0.8  # of peak HBM bandwidth a streaming kernel reaches
    tiles: tuple = (128, 64, 32)  # square GEMM output tiles cuBLAS may pick, one per SM at a time ...
    split_k: tuple = (1, 2, 4, 8, 16)  # ... and how many ways it may split k (each part at least a tile deep)
    pcie_bytes_s: float = 25e9  # host<->device copies (pageable memory, PCIe 5 x16)
    precision: str = "fp32"  # "fp32" (nnxp's "highest", PyTorch's default) or "tf32"

    def host(self, framework: str) -> dict:
        return self.torch_host if framework == "torch" else self.nnxp_host


def gemm_flops(op: Op) -> int:
    """2mnk for a GEMM; the model counts no FLOPs for other ops (they are bound by bytes or latency)."""
    return 2 * op.m * op.n * op.k if op.kind == "gemm" else 0


def op_times(op: Op, hw: Hardware, a: Assumptions) -> dict:
    """The device-time terms of one op: {"flops": s, "bytes": s, "latency": s}; the op takes their max."""
    if op.kind in ("h2d", "d2h"):
        return {"flops": 0.0, "bytes": op.bytes / a.pcie_bytes_s, "latency": a.kernel_min}
    byte_time = op.bytes / (hw.hbm_bytes_s * a.bandwidth_efficiency)
    if op.kind != "gemm":
        return {"flops": 0.0, "bytes": byte_time, "latency": a.kernel_min}
    peak = hw.tf32_flops if a.precision == "tf32" else hw.fp32_flops
    per_sm = peak * a.gemm_efficiency / hw.sms
    flop_time = math.inf
    for tile in a.tiles:  # cuBLAS picks the tile and split-K that fill the SMs best
        for split in a.split_k:
            if split > 1 and op.k / split < tile:
                break
            units = math.ceil(op.m / tile) * math.ceil(op.n / tile) * split
            waves = math.ceil(units / hw.sms)  # a partly filled last wave costs a full one
            flop_time = min(flop_time, waves * 2 * tile * tile * math.ceil(op.k / split) / per_sm)
    return {"flops": flop_time, "bytes": byte_time, "latency": a.gemm_min}


def op_time(op: Op, hw: Hardware, a: Assumptions) -> float:
    """The roofline: an op takes the longest of its FLOP time, byte time and minimum duration."""
    return max(op_times(op, hw, a).values())


@dataclass
class Prediction:
    """One step of one implementation on one GPU."""

    impl: str
    hardware: str
    batch: int
    launches: int  # host-side launch calls (a graph launch is one)
    kernels: int  # ops the device runs (graph nodes counted)
    host_s: float
    device_s: float
    step_s: float
    gemm_s: float  # the GEMMs alone on the device
    flops: int
    bytes: int
    terms: dict  # device seconds by what bounds each op: flops, bytes, latency (min duration + gaps)
    bound: str

    @property
    def samples_per_s(self) -> float:
        return self.batch / self.step_s


def predict(ops: list[Op], hw: Hardware, a: Assumptions, impl: str, batch: int) -> Prediction:
    """Predicted step of `ops` (one step's launch list) for implementation `impl` ("nnxp", "nnxp_graph", "torch")."""
    framework = "torch" if impl.startswith("torch") else "nnxp"
    host_cost = a.host(framework)
    python = {"nnxp": a.nnxp_python_eager, "nnxp_graph": a.nnxp_python_graph}.get(impl, a.torch_python)
    host = python + sum(host_cost[op.kind] for op in ops)
    terms = {"flops": 0.0, "bytes": 0.0, "latency": 0.0}
    device = gemm = 0.0
    kernels = flops = nbytes = 0
    for op in ops:
        inner, gap = (op.nodes, a.gap_graph) if op.kind == "graph" else ([op], a.gap_eager)
        for node in inner:
            t = op_times(node, hw, a)
            kind = max(t, key=t.get)
            terms[kind] += t[kind]
            terms["latency"] += gap
            device += t[kind] + gap
            gemm += t[kind] if node.kind == "gemm" else 0.0
            kernels += 1
            flops += gemm_flops(node)
            nbytes += node.bytes
    synced = any(op.kind == "d2h" for op in ops)
    step = host + device if synced else max(host, device)
    bound = "launches (host)" if host >= device else {"flops": "FLOPs", "bytes": "bandwidth",
                                                      "latency": "kernel latency"}[max(terms, key=terms.get)]
    return Prediction(impl, hw.name, batch, len(ops), kernels, host, device, step, gemm, flops, nbytes, terms, bound)


def load_trace(path: Path) -> dict:
    """The trace JSON with its ops as Op objects: {case: {"layers": [...], "batches": {b: {impl: [Op]}}}}."""
    data = json.loads(Path(path).read_text())
    for case in data.values():
        case["batches"] = {int(b): {mode: [Op.from_json(o) for o in ops] for mode, ops in modes.items()}
                           for b, modes in case["batches"].items()}
    return data


PLOT_NAME = "gpu-model.png"
IMPLS = {"eager": "nnxp", "graph": "nnxp_graph", "torch": "torch"}


def predict_all(trace: dict, a: Assumptions | None = None, hardware: dict | None = None) -> list[Prediction]:
    a = a or Assumptions()
    out = []
    for hw in (hardware or HARDWARE).values():
        for case in trace.values():
            for batch, modes in sorted(case["batches"].items()):
                out.extend(predict(ops, hw, a, IMPLS[mode], batch) for mode, ops in modes.items())
    return out


def speedup(preds: list[Prediction], hw: str, batch: int, impl: str, over: str) -> float | None:
    """How many times faster `impl` is than `over` (samples/s ratio); None when either is missing."""
    found = {p.impl: p for p in preds if p.hardware == hw and p.batch == batch}
    if impl not in found or over not in found:
        return None
    return found[over].step_s / found[impl].step_s


# --- the report -----------------------------------------------------------------------------------------------


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def assumptions_table(a: Assumptions) -> list[str]:
    rows = [("HBM bandwidth", "; ".join(f"{h.name} {h.hbm_bytes_s / 1e12:.2f} TB/s" for h in HARDWARE.values()),
             "NVIDIA datasheets (see Sources)"),
            ("FP32 peak (CUDA cores)", "; ".join(f"{h.name} {h.fp32_flops / 1e12:.1f} TFLOPS" for h in
                                                 HARDWARE.values()), "datasheets, H100 whitepaper"),
            ("TF32 dense peak (tensor cores)", "; ".join(f"{h.name} {h.tf32_flops / 1e12:.1f} TFLOPS" for h in
                                                         HARDWARE.values()),
             "datasheets list 989 TFLOPS with 2:4 sparsity; dense is half (whitepaper)"),
            ("SMs", "132 on both", "H100 whitepaper (SXM5); H200 is the same die"),
            ("matmul precision", a.precision.upper(), "nnxp's default precision='highest'; PyTorch's default "
                                                      "allow_tf32=False for matmuls"),
            ("GEMM efficiency", f"{a.gemm_efficiency:.0%} of peak per SM, in waves of output tiles (one per SM; a "
                                "partial last wave costs a full one); the tile (" + "/".join(f"{t}²" for t in a.tiles)
             + ") and split-K (" + "/".join(map(str, a.split_k)) + ") that fill the SMs best, all at that "
                                                                   "efficiency, split-K's reduction free",
             "assumption (cuBLAS's heuristics choose among such kernels)"),
            ("streaming kernels", f"{a.bandwidth_efficiency:.0%} of peak HBM bandwidth", "assumption (copy "
                                                                                            "kernels reach ~90%)"),
            ("bytes per op", "nnxp kernels: each array argument once if `const`, twice (read + write) otherwise; "
                             "GEMM: A, B, C once; CuPy ops: inputs + output; PyTorch: inputs + an output as large "
                             "as the largest input; fused Adam: 28 bytes per parameter", "assumption (an upper "
                                                                                         "bound for pure outputs)"),
            ("FLOPs", "2mnk per GEMM; none for other ops", "exact for GEMMs"),
            ("shortest kernel / GEMM on the device", f"{_us(a.kernel_min)} / {_us(a.gemm_min)} µs", "assumption"),
            ("device gap per eager launch / per graph node", f"{_us(a.gap_eager)} / {_us(a.gap_graph)} µs",
             "NVIDIA 'Getting Started with CUDA Graphs' (back-to-back 2.9 µs kernels: 3.8 µs each when "
             "launched, 3.4 µs as a graph)"),
            ("nnxp host cost per launch", ", ".join(f"{k} {_us(v)}" for k, v in a.nnxp_host.items()) + " µs",
             "assumption: cudaLaunchKernel ~2-4 µs plus CuPy's Python (RawKernel call, ufunc/reduction "
             "dispatch, cuBLAS wrapper)"),
            ("PyTorch host cost per launch", f"{_us(a.torch_host['kernel'])} µs per ATen op",
             "assumption: dispatcher + autograd + cudaLaunchKernel"),
            ("framework Python per step", f"nnxp eager {_us(a.nnxp_python_eager)}, nnxp graphed "
                                          f"{_us(a.nnxp_python_graph)}, PyTorch {_us(a.torch_python)} µs",
             "nnxp eager: issue 11 (stand-in measurement); others assumed"),
            ("PyTorch launches", "one per ATen op that would launch a CUDA kernel (torch.profiler on the CPU; "
                                 "views, metadata and allocations launch none; addmm's bias copy and sum's "
                                 "zero-fill are CPU-only; _foreach_/_fused_ ops are one multi-tensor launch)",
             "assumption stated by issue 11"),
            ("host/device overlap", "step = max(host, device); host + device when the step reads the device",
             "assumption (no sync per step: 0 in nnxp's traces)"),
            ("host<->device copies", f"{a.pcie_bytes_s / 1e9:.0f} GB/s", "assumption (PCIe 5 x16, pageable)")]
    lines = ["| quantity | value | source |", "|---|---|---|"]
    lines += [f"| {q} | {v} | {s} |" for q, v, s in rows]
    return lines


def launch_list(ops: list[Op]) -> list[str]:
    lines = ["| # | kind | name | grid / m,n,k | MB |", "|---|---|---|---|---|"]
    flat = []
    for op in ops:
        flat.append((op, ""))
        flat.extend((n, "↳ ") for n in op.nodes)
    for i, (op, prefix) in enumerate(flat, 1):
        shape = f"{op.m}x{op.n}x{op.k}" if op.kind == "gemm" else (f"{list(op.grid)}x{list(op.block)}"
                                                                   if op.grid else "")
        lines.append(f"| {i} | {prefix}{op.kind} | {op.name} | {shape} | {op.bytes / 1e6:.3f} |")
    return lines


KINDS = ("kernel", "gemm", "elementwise", "reduction", "copy", "memset", "h2d", "d2h", "graph")


def launch_counts(trace: dict) -> list[str]:
    """Host-side launches per step by kind (a graph launch is one; its nodes are counted in brackets)."""
    lines = ["| model | batch | impl | " + " | ".join(KINDS) + " | total | graph nodes |",
             "|---|---|---|" + "---|" * (len(KINDS) + 2)]
    for case in trace.values():
        batch = 128 if 128 in case["batches"] else min(case["batches"])
        for mode, ops in case["batches"][batch].items():
            counts = [sum(op.kind == k for op in ops) for k in KINDS]
            nodes = sum(len(op.nodes) for op in ops)
            lines.append(f"| {'-'.join(map(str, case['layers']))} | {batch} | {IMPLS[mode]} | "
                         + " | ".join(str(c) for c in counts) + f" | {len(ops)} | {nodes or ''} |")
    return lines


def targets(trace: dict, a: Assumptions) -> list[str]:
    """The issue's CUDA targets as the model sees them: the big MLP at batch 4096, the small one at 128."""
    lines = []
    big_case = next(c for c in trace.values() if 4096 in c["batches"] and max(c["layers"]) >= 4096)
    small_case = next(c for c in trace.values() if 128 in c["batches"])
    for hw in HARDWARE:
        preds = predict_all({"big": {**big_case, "batches": {4096: big_case["batches"][4096]}},
                             "small": {**small_case, "batches": {128: small_case["batches"][128]}}}, a,
                            {hw: HARDWARE[hw]})
        big = speedup(preds, hw, 4096, "nnxp", "torch")
        big_g = speedup(preds, hw, 4096, "nnxp_graph", "torch")
        small = speedup(preds, hw, 128, "nnxp_graph", "torch")
        small_e = speedup(preds, hw, 128, "nnxp", "torch")
        large = [p for p in preds if p.hardware == hw and p.batch == 4096 and p.flops > 1e11]
        tf32 = replace(a, precision="tf32")
        big_tf32 = [predict(big_case["batches"][4096][m], HARDWARE[hw], tf32, IMPLS[m], 4096) for m in
                    ("eager", "torch")]
        lines.append(f"- **{hw}**: big MLP b4096 nnxp eager / PyTorch eager = {big:.2f}x (graphed {big_g:.2f}x; "
                     f"both in TF32: {big_tf32[1].step_s / big_tf32[0].step_s:.2f}x); small MLP b128 nnxp graphed "
                     f"/ PyTorch eager = {small:.2f}x (nnxp eager {small_e:.2f}x); big MLP step / GEMM time: "
                     + ", ".join(f"{p.impl} {p.step_s / p.gemm_s:.3f}x" for p in large)
                     + f" (TF32: nnxp {big_tf32[0].step_s / big_tf32[0].gemm_s:.3f}x)")
    return lines


def render(trace: dict, a: Assumptions | None = None, plot: Path | None = None) -> str:
    """The markdown report (and the plot at `plot` when given)."""
    a = a or Assumptions()
    out = ["# GPU performance model (paper, no GPU)", "",
           "Written by `python bench/gpu_model.py` from `bench/results/gpu-trace.json` (written by "
           "`python bench/gpu_trace.py`). Predictions, not measurements: `bench/gpu_check.sh` prints them beside "
           "the measured numbers when a GPU is at hand.", "",
           "## Predicted step time and throughput", "",
           "| model | batch | GPU | impl | launches | kernels | host µs | device µs | step µs | samples/s | "
           "bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in trace.values():
        for batch, modes in sorted(case["batches"].items()):
            for hw in HARDWARE.values():
                for mode, ops in modes.items():
                    p = predict(ops, hw, a, IMPLS[mode], batch)
                    out.append(f"| {'-'.join(map(str, case['layers']))} | {p.batch} | {hw.name} | {p.impl} | "
                               f"{p.launches} | {p.kernels} | {_us(p.host_s)} | {_us(p.device_s)} | "
                               f"{_us(p.step_s)} | {p.samples_per_s:,.0f} | {p.bound} |")
    out += ["", "## What it means for the CUDA targets", ""] + targets(trace, a) + ["", _ARGUMENT, ""]
    out += ["## Launches per step by kind", ""] + launch_counts(trace) + ["",
            "## Assumptions", ""] + assumptions_table(a) + ["", _SOURCES, ""]
    for name, case in trace.items():
        batch = 128 if 128 in case["batches"] else min(case["batches"])
        for mode, ops in case["batches"][batch].items():
            out += [f"## Launch list: {name} {'-'.join(map(str, case['layers']))}, batch {batch}, {IMPLS[mode]}",
                    ""] + launch_list(ops) + [""]
    if plot is not None:
        _plot(trace, plot)
    out[4:4] = [f"![predicted samples/s, small MLP]({PLOT_NAME})", ""]
    return "\n".join(out) + "\n"


_ARGUMENT = """How to read it (numbers from the tables above, H100 SXM; the H200 differs only where bytes matter).

- **Small MLP, batch 32 to 512: launches bound every eager case.** The device needs ~85-100 µs per step (22-23
  short kernels at 2-3 µs each); the host needs 170 µs for nnxp eager (20 µs of nnxp's Python, the step launched
  from its kept list, then 22 launches: nnxp's kernels at ~5 µs, cuBLAS GEMMs and CuPy's calls at ~10 µs) and
  226 µs for PyTorch (31 ATen ops). So nnxp eager is predicted at 1.33x PyTorch eager at batch 128. (Before
  issue 11's launch lists: 313 µs, 85 µs of it nnxp's Python made call by call, 27 launches: ~0.7x.) What is
  left on the host is CuPy's own cost per launch, which only a graph removes.
- **`cuda_graph=True` at batch 128: predicted 2.93x PyTorch eager (target >= 1.5x).** The step is one launch
  (5 µs) and nothing else: its 23 captured nodes include the gathers, the row of the optimizer's scalars, the
  accuracy count and the record of the loss and metric sums, read at a device step counter (nnxp/_graph.py).
  With the loop's Python (30 µs, assumed) the host needs ~35 µs, so the step is device-bound at ~77 µs (23
  nodes of 2-3 µs): from here fewer, fused kernels are what speeds it up, not fewer launches. (Before: 6 host
  ops beside the graph, 81 µs of host time, 2.6x.)
- **Small MLP at batch 8192 and big MLP at batch 4096: FLOPs.** Both frameworks run the same 8 GEMMs, so nnxp
  and PyTorch eager are predicted equal (1.00x; target >= 1.0x holds if nnxp's cuBLAS calls are as fast as
  PyTorch's, which the GEMM-floor column of the benchmark checks). In FP32 (the default) the step is 1.07x its
  GEMM time on an H100 and 1.05x on an H200 (target <= 1.15x holds). In TF32 the GEMMs take 1.42 ms and the
  non-GEMM kernels 0.67 ms, so the step is 1.47x its GEMM time: Adam alone moves 561 MB (28 bytes per
  parameter, 0.21 ms at 80% of 3.35 TB/s), as much as the whole 15% allowance. The <= 1.15x target can hold in
  TF32 only with less optimizer traffic (e.g. Adam fused into the weight-gradient pass) or more FLOPs per step.
- **Fused kernels >= 70% of copy bandwidth.** The model assumes 80% of peak for every streaming kernel (bias +
  activation, activation gradient + bias gradient, Adam, the gathers); on the big MLP they are 33% of the step's
  device time in TF32 and 6% in FP32, so that target decides the TF32 case.
- **Bytes are an upper bound**: an nnxp kernel's non-const pointer is counted as read and written, so the
  forward bias + activation kernel's saved pre-activation counts twice (268 MB where 201 MB is exact at 4096 x
  4096). The measured bandwidth of these kernels, not this count, is what the 70% target is checked against."""

_SOURCES = """## Sources
- NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM: 3.35 TB/s,
  FP32 67 TFLOPS, TF32 Tensor Core 989 TFLOPS with sparsity).
- NVIDIA H200 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: 141 GB HBM3e,
  4.8 TB/s; compute as H100 SXM).
- NVIDIA H100 Tensor Core GPU Architecture whitepaper (GH100; H100 SXM5 132 SMs; FP32 66.9, TF32 494.7 dense
  TFLOPS), https://resources.nvidia.com/en-us-tensor-core
- A. Gray, "Getting Started with CUDA Graphs", NVIDIA Technical Blog (2019),
  https://developer.nvidia.com/blog/cuda-graphs/ (launch overhead per short kernel, with and without a graph).
The peaks match NVIDIA's datasheet figures as third-party summaries quote them (the datasheet pages themselves
were not reachable from where this was written); the blog's per-kernel times are quoted from the post as
remembered, not re-read. The per-launch host costs and efficiencies are assumptions (table above), to be
replaced by the first measurement: `bench/gpu_check.sh` prints prediction and measurement side by side."""


def _plot(trace: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = next((c for c in trace.values() if len(c["batches"]) > 1), None)
    preds = predict_all({"small": small}) if small else []
    fig, axes = plt.subplots(1, len(HARDWARE), figsize=(11, 4), sharey=True)
    for ax, hw in zip(axes, HARDWARE):
        for impl, style in (("nnxp", "o-"), ("nnxp_graph", "s-"), ("torch", "^--")):
            pts = sorted((p.batch, p.samples_per_s) for p in preds if p.hardware == hw and p.impl == impl)
            if pts:
                ax.plot(*zip(*pts), style, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{hw}: {'-'.join(map(str, small['layers'])) if small else ''}")
        ax.set_xlabel("batch")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("predicted samples/s")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", type=Path, default=ROOT / "bench" / "results" / "gpu-trace.json")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    trace = load_trace(args.trace)
    md = render(trace, plot=None if args.no_plot else args.out / PLOT_NAME)
    (args.out / "gpu-model.md").write_text(md)
    print(f"wrote {args.out / 'gpu-model.md'}")
    return 0


__all__ = ["HARDWARE", "Assumptions", "Hardware", "Prediction", "asdict", "gemm_flops", "load_trace", "op_time",
           "op_times", "predict", "predict_all", "render", "replace", "speedup"]

if __name__ == "__main__":
    sys.exit(main())
