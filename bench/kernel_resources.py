"""Registers, spills, shared memory and occupancy of every kernel in kernels.cu, without a GPU.

    python -m bench.kernel_resources [--out bench/results/kernel-resources.md]

Two compilers report the same numbers that ptxas prints with ``-v``:
  - NVRTC, as CuPy's RawModule calls it for nnxp (exactly its options, see :func:`cupy_raw_module_options`),
    through cupy.cuda.nvrtc with ``--ptxas-options=-v``: what a GPU user's process loads;
  - nvcc (and its ptxas) with the same code-generation options (``--fmad=false -ftz=true``), when on the PATH.
Blocks per SM at 256 threads follow CUDA's occupancy rule (threads, blocks, registers per warp in units of
256, shared memory) for sm_80 and sm_90; nnxp asks the driver for the same number at run time
(nnxp.ops._cuda.LazyKernels.resident_blocks). tests/test_ops_cuda_resources.py allows no spills and checks
that the committed table matches kernels.cu.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnxp.ops import _cuda  # noqa: E402

ARCHS = ("80", "90")
EXPRESSIONS = tuple(f"{name}<{ctype}>" for name in _cuda.KERNELS for ctype in ("float", "double"))
KERNELS_CU = Path(_cuda.__file__).with_name("kernels.cu")
TABLE = ROOT / "bench" / "results" / "kernel-resources.md"
BLOCK = 256  # threads per block of the 1-D kernels (nnxp.ops._cuda._BLOCK)

# CUDA's occupancy limits per SM (CUDA C++ Programming Guide, "Compute Capabilities" table)
SM_LIMITS = {
    "80": {"threads": 2048, "blocks": 32, "registers": 65536, "smem": 167936},
    "90": {"threads": 2048, "blocks": 32, "registers": 65536, "smem": 233472},
}


def source_digest() -> str:
    return hashlib.sha256(KERNELS_CU.read_bytes()).hexdigest()[:16]


def cupy_raw_module_options(arch: str, options: tuple[str, ...] = _cuda.NVRTC_OPTIONS) -> tuple[str, ...]:
    """The options CuPy 14.2 passes to nvrtcCompileProgram for ``RawModule(code=..., options=options,
    name_expressions=...)`` on a device of compute capability `arch`, with CUPY_COMPILE_WITH_PTX,
    CUPY_NVRTC_USE_PCH and CUPY_CUDA_COMPILE_WITH_DEBUG unset:

    - cupy/_core/raw.pyx _get_raw_module -> cupy/_core/core.pyx compile_with_cache ->
      assemble_cupy_compiler_options: the bundled CCCL include paths first, then `options`, ``--std=c++17``
      (none given), ``-I`` CuPy's headers and ``-I`` the CUDA runtime headers (called here: it is CuPy's own);
    - cupy/cuda/compiler.py _compile_with_cache_cuda: ``-ftz=true``;
    - _compile_using_nvrtc_no_warning: ``-arch=sm_XX`` from _get_arch_for_options_for_nvrtc (a cubin, since XX
      is at most _get_max_compute_capability()), and ``--device-as-default-execution-space`` (no jitify).

    _get_arch_for_options_for_nvrtc itself needs a device (it is memoized per device), so its choice is
    restated here.
    """
    from cupy._core import core
    from cupy.cuda import compiler

    assert int(arch) <= int(compiler._get_max_compute_capability())
    assembled = core.assemble_cupy_compiler_options(tuple(options))
    return (*assembled, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


@functools.cache
def nvrtc_build(arch: str) -> dict:
    """kernels.cu compiled by NVRTC for `arch` as CuPy would, plus ``--ptxas-options=-v`` (output only):
    {"options", "log", "cubin", "lowered", "version"}."""
    from cupy.cuda import nvrtc

    options = cupy_raw_module_options(arch)
    program = nvrtc.createProgram(_cuda._source(), "kernels.cu", (), ())
    try:
        for expression in EXPRESSIONS:
            nvrtc.addNameExpression(program, expression)
        try:
            nvrtc.compileProgram(program, (*options, "--ptxas-options=-v"))
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed for sm_{arch}:\n{nvrtc.getProgramLog(program)}") from exc
        return {
            "options": options,
            "log": nvrtc.getProgramLog(program),
            "cubin": nvrtc.getCUBIN(program),
            "lowered": {e: nvrtc.getLoweredName(program, e) for e in EXPRESSIONS},
            "version": "NVRTC {}.{}".format(*nvrtc.getVersion()),
        }
    finally:
        nvrtc.destroyProgram(program)


def nvcc_log(arch: str) -> tuple[str, str] | None:
    """(ptxas -v output, nvcc version) of kernels.cu built by nvcc for sm_`arch`; None without nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", *_cuda.NVRTC_OPTIONS, "-ftz=true", "-std=c++17",
               "-DNNXP_EXPLICIT_INSTANTIATION", "-Xptxas", "-v", "-o", str(Path(tmp) / "k.cubin"), str(KERNELS_CU)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed for sm_{arch}:\n{result.stderr}")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+)", version)
    return result.stderr, f"nvcc {release.group(1) if release else '?'}"


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for 'sm_(\d+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")
_MANGLED = re.compile(r"_Z\d+(nnxp_\w+?)I([fd])E")


def parse_ptxas(log: str) -> dict[str, dict]:
    """ptxas -v output -> {"name<float|double>": {registers, barriers, smem, stack, spill_stores, spill_loads}}."""
    rows: dict[str, dict] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            name, t = _MANGLED.match(m.group(1)).groups()
            current = rows.setdefault(f"{name}<{'float' if t == 'f' else 'double'}>", {})
        elif current is not None and (m := _FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            current.update(registers=int(m.group(1)), barriers=int(m.group(2) or 0), smem=int(m.group(3) or 0))
    return rows


def blocks_per_sm(registers: int, smem: int, arch: str, block: int = BLOCK) -> int:
    """Resident blocks per SM by CUDA's occupancy rule: threads, blocks, registers (allocated per warp in units
    of 256) and static shared memory (plus 1 KiB the system reserves per block)."""
    limits = SM_LIMITS[arch]
    warps = -(-block // 32)
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = (limits["registers"] // per_warp) // warps if per_warp else limits["blocks"]
    by_smem = limits["smem"] // (smem + 1024)
    return min(limits["blocks"], limits["threads"] // block, by_registers, by_smem)


def table(rows: dict[str, dict], arch: str) -> list[str]:
    lines = ["| kernel | registers | spill stores / loads (bytes) | stack (bytes) | smem (bytes) | "
             f"blocks/SM at {BLOCK} threads |", "|---|---:|---:|---:|---:|---:|"]
    for expression in EXPRESSIONS:
        r = rows[expression]
        lines.append(f"| `{expression}` | {r['registers']} | {r['spill_stores']} / {r['spill_loads']} | "
                     f"{r['stack']} | {r['smem']} | {blocks_per_sm(r['registers'], r['smem'], arch)} |")
    return lines


def report() -> str:
    out = ["# Kernel resources (ptxas -v)", "",
           f"kernels.cu sha256 {source_digest()}; regenerate with `python -m bench.kernel_resources`. "
           "Spills must stay 0 (tests/test_ops_cuda_resources.py). Blocks/SM: CUDA's occupancy rule for a "
           f"{BLOCK}-thread block (sm_80/sm_90: 2048 threads, 32 blocks, 64K registers per SM); the row kernels "
           "launch smaller blocks for narrow rows.", ""]
    for arch in ARCHS:
        build = nvrtc_build(arch)
        out += [f"## sm_{arch}, {build['version']} with CuPy 14.2's RawModule options", "",
                "`" + " ".join(o if not o.startswith("-I") else "-I…/" + Path(o[2:]).name
                               for o in build["options"]) + "`", ""]
        out += table(parse_ptxas(build["log"]), arch) + [""]
    for arch in ARCHS:
        built = nvcc_log(arch)
        if built is None:
            out += [f"## sm_{arch}, nvcc: not on the PATH", ""]
            continue
        log, version = built
        out += [f"## sm_{arch}, {version} (`-cubin --fmad=false -ftz=true -std=c++17`)", ""]
        out += table(parse_ptxas(log), arch) + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args(argv)
    text = report()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
