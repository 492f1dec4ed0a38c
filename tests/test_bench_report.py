"""The benchmark report (bench/report.py) on synthetic pytest-benchmark JSON, and the suite's smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = [784, 512, 256, 10]


@pytest.fixture
def report(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench import report

    return report


def bench_record(device, impl, batch, median, kind="train", samples=None, floor=None, model="small"):
    """One entry as pytest-benchmark writes it, with the extra_info the suite records."""
    samples = samples or batch
    return {
        "group": f"{kind} {device} {model} b{batch}",
        "name": f"test_x[{device}-{model}-b{batch}-{impl}]",
        "param": f"{device}-{model}-b{batch}-{impl}",
        "extra_info": {
            "device": device, "model": model, "layers": SMALL, "batch": batch, "impl": impl, "kind": kind,
            "samples_per_call": samples, "flops_per_call": 1e9 * median, "gemm_floor_s": floor,
            "peak_mem_bytes": 3 * 2**20, "first_call_s": 0.5, "dtype": "float32", "other_cpu_share": 0.05,
        },
        "stats": {"median": median, "mean": median, "min": median / 2, "max": median, "rounds": 5,
                  "iqr": median / 10},
    }


def write_run(path: Path, benchmarks: list, when: str, **env) -> Path:
    machine = {"nnxp_bench": {"cpu": "Test CPU 9000", "logical_cpus": 2, "numpy": "2.0", "nnxp": "0.1.0",
                              "torch": "2.13.0", "python": "3.11", "blas": "openblas 0.3 (Zen), 2 threads",
                              "env": {"OPENBLAS_CORETYPE": None}, "gpu": {"name": "Test GPU", "driver": "555.1",
                                                                         "cuda_runtime": "12.4"}, **env}}
    path.write_text(json.dumps({"machine_info": machine, "commit_info": {}, "benchmarks": benchmarks,
                                "datetime": when, "version": "5.2.3"}))
    return path


CPU_RUN = [
    bench_record("cpu", "nnxp", 32, 0.001, floor=0.0008),   # 32,000 samples/s, 1.25x the GEMM floor
    bench_record("cpu", "torch", 32, 0.002),                # 16,000 -> nnxp 2.00x
    bench_record("cpu", "sklearn_f64", 32, 0.004),          # 8,000 -> nnxp 4.00x
    bench_record("cpu", "nnxp", 128, 0.002),                # 64,000
    bench_record("cpu", "torch", 128, 0.0016),              # 80,000 -> nnxp 0.80x
    bench_record("cpu", "per_sample", 1, 0.064, samples=128),  # 2,000 -> best nnxp 32.00x
    bench_record("cpu", "nnxp", 32, 0.0005, kind="infer"),  # 64,000
    bench_record("cpu", "torch", 32, 0.00025, kind="infer"),  # 128,000 -> 0.50x
]
GPU_RUN = [
    bench_record("cuda", "nnxp", 32, 0.0001),               # 320,000 -> 10.00x the CPU
    bench_record("cuda", "torch", 32, 0.0002),              # 160,000 -> nnxp 2.00x; torch GPU/CPU 10.00x
    bench_record("cuda", "torch_cudagraph", 32, 0.00008),   # 400,000 -> nnxp 0.80x
]


def _png_ok(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0.01  # not blank


def test_report_tables_speedups_and_plots(report, tmp_path):
    pytest.importorskip("matplotlib")
    cpu = write_run(tmp_path / "cpu.json", CPU_RUN, "2026-01-02T10:00:00+00:00")
    gpu = write_run(tmp_path / "gpu.json", GPU_RUN, "2026-01-03T10:00:00+00:00")
    out = tmp_path / "out"
    assert report.main([str(cpu), str(gpu), "--out", str(out), "--quiet"]) == 0
    md = (out / "REPORT.md").read_text()
    # training table: samples/s per implementation, then nnxp / each peer
    assert "| small | 32 | 32,000 | 16,000 | 8,000 | 2.00× | 4.00× |" in md
    assert "| small | 128 | 64,000 | 80,000 | – | 0.80× | – |" in md
    # inference table
    assert "| small | 32 | 64,000 | 128,000 | 0.50× |" in md
    # what batching buys: per-sample loop vs nnxp at 32 and at its best batch
    assert "| small | 2,000 | 32,000 | 64,000 (128) | 32.00× |" in md
    # GPU table, and GPU over CPU
    assert "| small | 32 | 320,000 | 160,000 | 400,000 | 2.00× | 0.80× |" in md
    assert "| train | small | 32 | nnxp | 32,000 | 320,000 | 10.00× |" in md
    assert "| train | small | 32 | torch eager | 16,000 | 160,000 | 10.00× |" in md
    # details: ms per call, GFLOP/s from the recorded FLOPs, ratio to the GEMM floor, MiB, first call
    assert "| train | small | 32 | nnxp | 1.00 | 10 | 32,000 | 1.0 | 1.25 | 3.0 | 500.0 | 5 | 5 |" in md
    assert "Note:" not in md  # no case competed with other processes
    assert "Test CPU 9000" in md and "Test GPU" in md and "OPENBLAS_CORETYPE unset" in md
    for name in ("throughput_cpu.png", "throughput_cuda.png", "speedups.png"):
        _png_ok(out / name)


def test_report_can_use_the_minimum(report, tmp_path):
    cpu = write_run(tmp_path / "cpu.json", CPU_RUN, "2026-01-02T10:00:00+00:00")
    assert report.main([str(cpu), "--out", str(tmp_path), "--stat", "min", "--no-plots", "--quiet"]) == 0
    md = (tmp_path / "REPORT.md").read_text()
    assert "from the min time per call" in md and "| small | 32 | 64,000 | 32,000 | 16,000 | 2.00× | 4.00× |" in md


def test_report_flags_cases_timed_on_a_busy_machine(report, tmp_path):
    busy = json.loads(json.dumps(CPU_RUN))
    busy[1]["extra_info"]["other_cpu_share"] = 0.5
    cpu = write_run(tmp_path / "cpu.json", busy, "2026-01-02T10:00:00+00:00")
    assert report.main([str(cpu), "--out", str(tmp_path), "--no-plots", "--quiet"]) == 0
    md = (tmp_path / "REPORT.md").read_text()
    assert "Note: 1 of 8 cases ran while other processes used more than 20% of the CPUs" in md
    assert "| train | small | 32 | torch eager | 2.00 | 10 | 16,000 | 1.0 | – | 3.0 | 500.0 | 5 | 50 |" in md


def test_report_defaults_to_the_newest_run_per_device(report, tmp_path):
    old = [bench_record("cpu", "nnxp", 32, 0.01)]
    write_run(tmp_path / "a-old.json", old, "2026-01-01T00:00:00+00:00")
    write_run(tmp_path / "b-new.json", CPU_RUN, "2026-02-01T00:00:00+00:00")
    write_run(tmp_path / "c-gpu.json", GPU_RUN, "2026-01-15T00:00:00+00:00")
    (tmp_path / "broken.json").write_text("{not json")
    rows, runs = report.load(None, tmp_path)
    assert sorted(run.path.name for run in runs) == ["b-new.json", "c-gpu.json"]
    nnxp_cpu = [r for r in rows if r.key == ("cpu", "train", "small", 32, "nnxp")]
    assert len(nnxp_cpu) == 1 and nnxp_cpu[0].samples_per_s == pytest.approx(32000)


def test_report_without_results_says_how_to_make_them(report, tmp_path, capsys):
    assert report.main(["--results-dir", str(tmp_path), "--no-plots"]) == 1
    assert "python -m pytest bench" in capsys.readouterr().err


def test_nnxp_bench_command_runs_the_report(report, tmp_path, monkeypatch, capsys):
    from nnxp import cli

    path = write_run(tmp_path / "cpu.json", CPU_RUN, "2026-01-02T10:00:00+00:00")
    monkeypatch.chdir(REPO)  # `nnxp bench` imports bench.report from the current directory
    # a file first: the bench sub-command hands everything after it to the report
    assert cli.main(["bench", str(path), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert "| small | 32 | 32,000 | 16,000 | 8,000 | 2.00× | 4.00× |" in capsys.readouterr().out
    assert (tmp_path / "out" / "REPORT.md").exists()


def _run_suite(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "NNXP_BENCH_QUICK": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_suite_passes():
    """What CI runs so the suite cannot rot: every case at tiny sizes, each call once (~20-60 s)."""
    pytest.importorskip("pytest_benchmark")
    proc = _run_suite("--benchmark-disable")
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "error" not in proc.stdout.lower(), tail


@pytest.mark.slow
def test_smoke_json_feeds_the_report(report, tmp_path):
    """A real (tiny) pytest-benchmark JSON from the suite turns into a report with nnxp's numbers."""
    pytest.importorskip("pytest_benchmark")
    out = tmp_path / "quick.json"
    proc = _run_suite("-k", "test_train_step and b32 and (nnxp or torch)", f"--benchmark-json={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    env = data["machine_info"]["nnxp_bench"]
    assert env["quick"] is True and env["numpy"] and "openblas_coretype_set" in env
    info = next(b["extra_info"] for b in data["benchmarks"] if b["extra_info"]["impl"] == "nnxp")
    assert info["flops_per_call"] > 0 and info["gemm_floor_s"] > 0 and info["first_call_s"] > 0
    assert info["peak_mem_source"] == "rss" and "other_cpu_share" in info
    assert report.main([str(out), "--out", str(tmp_path), "--no-plots", "--quiet"]) == 0
    md = (tmp_path / "REPORT.md").read_text()
    assert "smoke run" in md and "| small | 32 |" in md
