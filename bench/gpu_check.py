"""One command for GPU boxes: GPU tests, CPU/CUDA parity, GPU benchmarks, one report.

    python bench/gpu_check.py [--out DIR] [--quick]      (or: bash bench/gpu_check.sh)

Runs, in this order, each as its own process so one failure does not hide the rest:
  0. ``nnxp selftest --device cuda --json`` (environment, kernels, fused ops, training and replay parity); the
     kernels' first-call compile times come from this child, the process that compiled them;
  1. the GPU-marked tests (fused-kernel parity against the NumPy references, model-level CPU/CUDA
     parity, out-of-memory handling, device moves);
  2. the GPU benchmark cases of bench/ (nnxp vs PyTorch eager and CUDA graphs);
  3. bench.report over those results;
  4. the paper model's prediction beside each measured training step (bench/gpu_model.py over
     bench/results/gpu-trace.json), for the GPUs the model knows (H100 SXM, H200).
Writes DIR/report.json and DIR/REPORT.md with the GPU name, driver, CUDA, CuPy, date, test counts
and the benchmark table. Exits 0 only when a GPU was found and every step passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(cmd: list[str], log: Path) -> dict:
    """Run `cmd` from the repository root, tee its output to `log`, and parse pytest's summary."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    log.write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    print(tail[0], flush=True)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|xfailed)", tail[0])}
    return {"command": " ".join(cmd), "returncode": proc.returncode, "summary": tail[0], "counts": counts,
            "log": log.name}


def run_selftest(out: Path) -> tuple[dict, dict]:
    """`nnxp selftest --device cuda --json` in a child process: (step record, compile seconds it measured)."""
    cmd = [sys.executable, "-m", "nnxp", "selftest", "--device", "cuda", "--json"]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    (out / "selftest.json").write_text(proc.stdout)
    (out / "selftest.log").write_text(proc.stderr)
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        data = {"checks": [], "compile_seconds": {}}
    failed = [f"{c['section']}: {c['name']}" for c in data["checks"] if c["status"] == "FAIL"]
    summary = (f"{len(failed)} of {len(data['checks'])} checks failed: {', '.join(failed)}" if failed
               else f"{len(data['checks'])} checks, none failed") if data["checks"] else "no output (see selftest.log)"
    print(summary, flush=True)
    step = {"command": " ".join(cmd), "returncode": proc.returncode, "summary": summary,
            "counts": {"failed": len(failed)}, "log": "selftest.json"}
    return step, data.get("compile_seconds", {})


# bench implementation -> the model's name for it (PyTorch with CUDA graphs has no model)
MODELLED = {"nnxp": "eager", "nnxp_cudagraph": "graph", "torch": "torch"}


def model_hardware(gpu_name: str | None) -> str | None:
    """The model's name (bench/gpu_model.HARDWARE) for a GPU as CUDA or nvidia-smi names it; None when unmodelled
    (an H100 PCIe or NVL has other clocks and bandwidth than the SXM part)."""
    name = (gpu_name or "").upper()
    if "H200" in name:
        return "H200"
    if "H100" in name and "PCIE" not in name and "NVL" not in name:
        return "H100 SXM"
    return None


def side_by_side(bench: dict, trace: dict, gpu_name: str | None) -> list[str]:
    """Markdown: each measured CUDA training case beside the model's predicted step (per optimizer step: a timed
    call is one fit over steps_per_call batches, so its median is divided by that)."""
    from bench import gpu_model

    hw_name = model_hardware(gpu_name)
    if hw_name is None:
        return [f"No prediction: the model knows {', '.join(gpu_model.HARDWARE)}, this GPU is {gpu_name!r}."]
    hw, assumptions = gpu_model.HARDWARE[hw_name], gpu_model.Assumptions()
    lines = [f"Predicted (model: {hw_name}) and measured time per training step:", "",
             "| model | batch | impl | predicted µs | measured µs | measured / predicted | predicted bound |",
             "|---|---|---|---|---|---|---|"]
    for record in sorted(bench.get("benchmarks", []), key=lambda r: (r["extra_info"]["model"],
                                                                     r["extra_info"]["batch"],
                                                                     r["extra_info"]["impl"])):
        info = record["extra_info"]
        if info.get("kind") != "train" or info.get("device") != "cuda" or info["impl"] not in MODELLED:
            continue
        measured = record["stats"]["median"] / max(1, info["steps_per_call"])
        ops = next((case["batches"][info["batch"]].get(MODELLED[info["impl"]]) for case in trace.values()
                    if list(case["layers"]) == list(info["layers"]) and info["batch"] in case["batches"]), None)
        if ops is None:
            lines.append(f"| {info['model']} | {info['batch']} | {info['impl']} | — | {measured * 1e6:,.1f} | — | "
                         "not modelled |")
            continue
        p = gpu_model.predict(ops, hw, assumptions, gpu_model.IMPLS[MODELLED[info["impl"]]], info["batch"])
        lines.append(f"| {info['model']} | {info['batch']} | {info['impl']} | {p.step_s * 1e6:,.1f} | "
                     f"{measured * 1e6:,.1f} | {measured / p.step_s:.2f}x | {p.bound} |")
    return lines


def environment() -> dict:
    from nnxp.cli import info

    env = info()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False, timeout=30)
        env["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = None
    env["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"gpu-check-{dt.date.today()}")
    ap.add_argument("--quick", action="store_true", help="benchmark smoke mode (small model, few batches)")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    report: dict = {"environment": env, "steps": {}}
    if not env.get("gpus"):
        report["error"] = "no CUDA GPU found (CuPy missing or no device): nothing GPU-specific could run"
        print(report["error"], file=sys.stderr)
    else:
        py = sys.executable
        report["steps"]["selftest"], report["kernel_compile_seconds"] = run_selftest(out)
        report["steps"]["gpu_tests"] = _run(
            [py, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider",
             "--continue-on-collection-errors",  # the device image may lack hypothesis or onnx
             "--junitxml", str(out / "gpu-tests.xml")], out / "gpu-tests.log")
        bench_cmd = [py, "-m", "pytest", "bench", "-k", "cuda", "-q", "-p", "no:cacheprovider",
                     "--benchmark-json", str(out / "gpu-bench.json")]
        if args.quick:
            bench_cmd.append("--quick")
        report["steps"]["gpu_bench"] = _run(bench_cmd, out / "gpu-bench.log")
        if (out / "gpu-bench.json").exists():
            cpu_runs = sorted((ROOT / "bench" / "results").glob("cpu-*.json"))
            files = [str(out / "gpu-bench.json")] + [str(p) for p in cpu_runs[-1:]]
            report["steps"]["report"] = _run([py, "-m", "bench.report", *files, "--out", str(out), "--quiet"],
                                             out / "report.log")
            trace_path = ROOT / "bench" / "results" / "gpu-trace.json"
            if trace_path.exists():
                from bench import gpu_model

                gpu = (env.get("nvidia_smi") or "").split(",")[0] or str(env.get("gpus"))
                report["model_vs_measured"] = side_by_side(json.loads((out / "gpu-bench.json").read_text()),
                                                           gpu_model.load_trace(trace_path), gpu)
                print("\n".join(report["model_vs_measured"]), flush=True)
    ok = bool(env.get("gpus")) and all(step["returncode"] == 0 for step in report["steps"].values())
    report["ok"] = ok
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# GPU check {env['date']}", "", f"- GPU: {env.get('nvidia_smi') or env.get('gpus')}",
             f"- CUDA runtime/driver: {env.get('cuda_runtime')}/{env.get('cuda_driver')}, CuPy {env.get('cupy')}, "
             f"NumPy {env.get('numpy')}, nnxp {env.get('nnxp')}", ""]
    for name, step in report["steps"].items():
        lines.append(f"- {name}: `{step['summary']}` (exit {step['returncode']}; log {step['log']})")
    if "error" in report:
        lines.append(f"- {report['error']}")
    if report.get("model_vs_measured"):
        lines += ["", *report["model_vs_measured"]]
    if report.get("kernel_compile_seconds"):
        lines.append(f"- first-call kernel compile (s): {report['kernel_compile_seconds']}")
    bench_md = out / "REPORT.md"
    if bench_md.exists() and "steps" in report and "report" in report["steps"]:
        lines += ["", bench_md.read_text()]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
