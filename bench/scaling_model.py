"""A model of nnxp's data-parallel scaling on bigger machines (the tables in bench/results/scaling.md).

Per step each GPU computes its share b of the global batch, then one ring all-reduce sums the flat gradient
buffer (no overlap with the backward pass: nnxp reduces once, after it). With N ranks, S bytes and a bus
bandwidth BW (nccl-tests' convention), the all-reduce takes

    t_ar = alpha + 2 (N - 1) / N * S / BW        (alpha: a fixed latency; 0 gives the pure bandwidth model)

and the step's compute t_comp(b) = t0 + b * 6 P / F  (P parameters, 6 P FLOPs per sample for forward and
backward, F the FLOP/s achieved, t0 the per-step launch overhead). Weak-scaling efficiency at per-GPU batch b:

    E = t_comp(b) / (t_comp(b) + t_ar),   E >= 0.9  <=>  b >= (9 t_ar - t0) / (6 P / F)

    python bench/scaling_model.py [--params 535818] [--tflops 67] [--efficiency 0.5] [--overhead-us 150]
"""

from __future__ import annotations

import argparse
import math

NVLINK_GBPS, IB_GBPS = 450.0, 50.0  # per GPU and direction: NVLink 4 (900 GB/s both ways), NDR 400 Gb/s
NVLINK_ALPHA_US, IB_ALPHA_US = 10.0, 20.0  # fixed all-reduce latency (assumed; see scaling.md)


def ring(n: int, size: float, gbps: float) -> float:
    """Microseconds for a ring all-reduce of `size` bytes over `n` ranks at bus bandwidth `gbps`."""
    return 2 * (n - 1) / n * size / (gbps * 1e9) * 1e6


# (name, node counts, GPUs per node, t_bw(nodes, bytes) in us, latency in us)
SCENARIOS = [
    ("1 node, 8 GPUs over NVLink 4", [1], 8, lambda n, s: ring(8, s, NVLINK_GBPS), NVLINK_ALPHA_US),
    ("nodes of 1 GPU + 1 NDR NIC", [2, 4, 8, 16], 1, lambda n, s: ring(n, s, IB_GBPS), IB_ALPHA_US),
    # NCCL's hierarchy: reduce-scatter in the node (NVLink), each GPU all-reduces its 1/8 over its own NIC,
    # all-gather in the node
    ("nodes of 8 GPUs + 8 NDR NICs", [2, 4, 8, 16], 8,
     lambda n, s: ring(8, s, NVLINK_GBPS) + ring(n, s / 8, IB_GBPS), NVLINK_ALPHA_US + IB_ALPHA_US),
]
BATCHES = (32, 128, 512, 2048, 8192)


def table(params: int, tflops: float, efficiency: float, overhead_us: float, dtype_bytes: int = 4) -> str:
    size = (params + 2) * dtype_bytes  # the flat gradient buffer nnxp reduces (+ its loss and Ctrl-C slots)
    per_sample_us = 6 * params / (tflops * 1e12 * efficiency) * 1e6
    lines = [f"S = {size:,} bytes ({params:,} float{8 * dtype_bytes} parameters + 2 slots); compute "
             f"{per_sample_us * 1e3:.1f} ns/sample ({tflops:g} TFLOP/s x {efficiency:g}) + {overhead_us:g} us/step",
             "",
             "| interconnect | nodes | GPUs | t_ar bandwidth only (us) | t_ar + latency (us) | "
             + " | ".join(f"E at b={b}" for b in BATCHES) + " | b for E>=90% (per GPU / global) |",
             "|---|---|---|---|---|" + "---|" * len(BATCHES) + "---|"]
    for name, nodes, per_node, t_of, alpha in SCENARIOS:
        for n in nodes:
            gpus = n * per_node
            t_bw = t_of(n, size)
            t_ar = alpha + t_bw
            effs = []
            for b in BATCHES:
                t_comp = overhead_us + b * per_sample_us
                effs.append(f"{t_comp / (t_comp + t_ar):.0%} ({t_comp / (t_comp + t_bw):.0%})")
            need = max(1, math.ceil((9 * t_ar - overhead_us) / per_sample_us))
            need_bw = max(1, math.ceil((9 * t_bw - overhead_us) / per_sample_us))
            lines.append(f"| {name} | {n} | {gpus} | {t_bw:.1f} | {t_ar:.1f} | " + " | ".join(effs)
                         + f" | {need:,} / {need * gpus:,} ({need_bw:,} / {need_bw * gpus:,}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, default=535_818, help="784-512-256-10 has 535,818")
    ap.add_argument("--tflops", type=float, default=67.0, help="peak FP32 TFLOP/s (H100/H200 SXM datasheet)")
    ap.add_argument("--efficiency", type=float, default=0.5, help="share of the peak the step's GEMMs reach")
    ap.add_argument("--overhead-us", type=float, default=150.0, help="per-step launch overhead (eager)")
    args = ap.parse_args()
    print(table(args.params, args.tflops, args.efficiency, args.overhead_us))


if __name__ == "__main__":
    main()
