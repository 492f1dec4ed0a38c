"""Device resolution, the NumPy/CuPy shim helpers, and importing nnxp without CuPy."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nnxp import backend
from nnxp.backend import Device, device_of, get_device, to_device, to_numpy, xp_of
from nnxp.errors import DeviceError, NnxpError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec", ["cpu", "CPU", " cpu ", "cpu:0", "Cpu:0"])
def test_cpu_specs_resolve_to_the_cpu(spec):
    dev = get_device(spec)
    assert dev == Device("cpu")
    assert dev.name == "cpu" and dev.kind == "cpu" and not dev.is_cuda
    assert dev.xp is np


def test_a_device_is_returned_as_is():
    dev = Device("cpu")
    assert get_device(dev) is dev


def test_none_uses_the_environment_variable_else_cpu(monkeypatch):
    monkeypatch.delenv("NNXP_DEVICE", raising=False)
    assert get_device(None).name == "cpu"
    monkeypatch.setenv("NNXP_DEVICE", "")
    assert get_device().name == "cpu"
    monkeypatch.setenv("NNXP_DEVICE", " CPU:0 ")
    assert get_device(None).name == "cpu"
    monkeypatch.setenv("NNXP_DEVICE", "tpu")
    with pytest.raises(DeviceError, match=r"`NNXP_DEVICE` must be .*Received: NNXP_DEVICE='tpu'"):
        get_device(None)


def test_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(backend, "cuda_available", lambda: False)
    assert get_device("auto").name == "cpu"
    assert get_device(" AUTO ").name == "cpu"


def test_auto_matches_what_the_machine_has():
    expected = "cuda:0" if backend.cuda_available() else "cpu"
    assert get_device("auto").name == expected


@pytest.mark.parametrize(
    "spec, pattern",
    [
        ("gpu", r"`device` must be 'cpu', 'cuda', 'cuda:N' or 'auto'\. Received: device='gpu'"),
        ("cuda:x", r"`device` must be .*Received: device='cuda:x'"),
        ("cuda:-1", r"`device` must be .*Received: device='cuda:-1'"),
        ("", r"`device` must be .*Received: device=''"),
        ("cpu:1", r"`device` 'cpu' takes no index other than 0\. Received: device='cpu:1'"),
        (3, r"`device` must be .*Received: device=3 of type int"),
        (["cpu"], r"`device` must be .*of type list"),
    ],
)
def test_malformed_specs_raise_device_error_naming_device(spec, pattern):
    with pytest.raises(DeviceError, match=pattern) as info:
        get_device(spec)
    assert isinstance(info.value, NnxpError)


def test_cuda_without_cupy_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", None)
    with pytest.raises(DeviceError, match=r"device 'cuda' needs CuPy.*pip install \"nnxp\[cuda12\]\""):
        get_device("cuda")
    with pytest.raises(DeviceError, match=r"nnxp\[cuda13\]"):
        get_device("cuda:1")


def test_cuda_here_fails_with_a_fix_unless_a_gpu_exists():
    if backend.cuda_available():
        pytest.skip("a GPU is available: 'cuda' resolves")
    with pytest.raises(DeviceError) as info:
        get_device("cuda")
    message = str(info.value)
    if backend.cupy_module() is None:
        assert 'pip install "nnxp[cuda12]"' in message
    else:  # CuPy installed but no driver/device
        assert "device='cpu'" in message and "device='auto'" in message


def test_a_broken_cupy_import_is_reported(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_CUPY_IMPORT_ERROR", RuntimeError("libcudart.so.12 missing"))
    with pytest.raises(DeviceError, match=r"importing it failed: libcudart\.so\.12 missing"):
        get_device("cuda")


def test_cuda_with_cupy_but_no_gpu_suggests_cpu_or_auto(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", object())
    monkeypatch.setattr(backend, "cuda_device_count", lambda: 0)
    with pytest.raises(DeviceError, match=r"no usable GPU.*device='cpu' or device='auto'"):
        get_device("cuda")


def test_cuda_index_beyond_the_gpu_count_names_the_range(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", object())
    monkeypatch.setattr(backend, "cuda_device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"`device` must name an existing GPU \(0\.\.1\)\. Received: device='cuda:2'"):
        get_device("CUDA:2")


def test_device_equality_hash_and_repr():
    a, b = Device("cpu"), get_device("cpu:0")
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != "cpu"  # only devices compare equal to devices
    assert repr(a) == "Device('cpu')"


def test_cpu_asarray_converts_casts_and_avoids_needless_copies():
    dev = get_device("cpu")
    out = dev.asarray([[1, 2], [3, 4]], dtype="float32")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])
    a = np.arange(6.0)
    assert dev.asarray(a) is a  # already a host float64 array: no copy
    cast = dev.asarray(a, dtype="float32")
    assert cast.dtype == np.float32 and not np.shares_memory(cast, a)


def test_to_numpy_and_device_helpers():
    dev = get_device("cpu")
    out = dev.to_numpy([1.5, 2.5])
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [1.5, 2.5])
    assert to_numpy(3).shape == ()
    assert dev.synchronize() is None
    with dev.use():
        pass
    dev.free_memory()  # a no-op on the CPU


def test_random_generator_is_deterministic_per_seed():
    dev = get_device("cpu")
    a = dev.random_generator(7).random(5)
    b = dev.random_generator(7).random(5)
    c = dev.random_generator(8).random(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    s1 = dev.random_generator(np.random.SeedSequence([1, 2])).random(3)
    s2 = dev.random_generator(np.random.SeedSequence([1, 2])).random(3)
    np.testing.assert_array_equal(s1, s2)


def test_xp_of_to_device_and_device_of_on_host_arrays():
    a = np.ones(3)
    assert xp_of(a) is np
    assert xp_of([1, 2]) is np
    assert device_of(a) == Device("cpu")
    moved = to_device([1, 2, 3], "cpu", dtype="float64")
    assert isinstance(moved, np.ndarray) and moved.dtype == np.float64
    with pytest.raises(DeviceError, match="`device`"):
        to_device(a, "gpu")


def _run_python(code: str, tmp_path: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("NNXP_DEVICE", None)
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_import_works_when_cupy_cannot_be_imported(tmp_path):
    code = """
        import sys
        sys.modules["cupy"] = None  # makes `import cupy` raise ImportError
        import numpy as np
        import nnxp
        from nnxp import backend
        assert backend.cupy_module() is None
        assert not nnxp.cuda_available()
        assert nnxp.get_device("auto").name == "cpu"
        try:
            nnxp.get_device("cuda")
        except nnxp.NnxpError as exc:
            assert 'pip install "nnxp[cuda12]"' in str(exc), exc
        else:
            raise SystemExit("cuda resolved without CuPy")
        m = nnxp.Sequential([nnxp.Dense(1, input_dim=2)], seed=0)
        m.compile("sgd", "mse")
        m.fit(np.ones((4, 2)), np.ones(4), epochs=1, verbose=0)
        print("ok")
    """
    proc = _run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_import_works_when_cupy_is_broken(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "cupy.py").write_text("raise RuntimeError('CUDA driver version is insufficient')\n")
    code = """
        import nnxp
        try:
            nnxp.get_device("cuda")
        except nnxp.NnxpError as exc:
            assert "CUDA driver version is insufficient" in str(exc), exc
        else:
            raise SystemExit("cuda resolved with a broken CuPy")
        print("ok")
    """
    proc = _run_python(code, tmp_path, extra_path=fake)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_device_round_trip(device):  # the "cuda" run is marked gpu by the fixture
    dev = get_device(device)
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    arr = dev.asarray(host)
    assert xp_of(arr) is dev.xp
    assert device_of(arr) == dev
    back = to_numpy(arr)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, host)
    np.testing.assert_array_equal(dev.to_numpy(to_device(host, dev, dtype="float64")), host.astype(np.float64))
    dev.synchronize()
    a = to_numpy(dev.random_generator(3).random(4))
    b = to_numpy(dev.random_generator(3).random(4))
    np.testing.assert_array_equal(a, b)


# --- CUDA scopes on the stand-in CuPy (tests/_stand_in_cupy.py) ----------------------------------------------


def test_highest_precision_overrides_cupy_tf32_and_restores_it(fake_cupy, monkeypatch):
    from nnxp import Dense, Sequential

    monkeypatch.setenv("CUPY_TF32", "1")  # CuPy then runs every float32 matmul in TF32 (get_compute_type)
    core, linalg = fake_cupy._core, fake_cupy._core._routines_linalg
    dev = Device("cuda", 0)
    with dev.use(tf32=False):
        assert core.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
        with dev.use(tf32=True):
            assert backend.tf32_active()
        assert not backend.tf32_active()
    assert core.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32  # the user's setting, restored
    with dev.use():  # no precision asked: CuPy's setting stands
        assert backend.tf32_active()

    seen = []
    matmul = fake_cupy.matmul

    def spy(a, b, out=None, **kw):
        if a.dtype == np.float32:
            seen.append(core.get_compute_type(np.float32))
        return matmul(a, b, out=out, **kw)

    monkeypatch.setattr(fake_cupy, "matmul", spy)
    model = Sequential([Dense(4, "tanh", input_dim=3), Dense(1)], device="cuda", dtype="float32")
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 3))
    model.fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0)
    model.predict(x)
    assert seen and set(seen) == {linalg.COMPUTE_TYPE_DEFAULT}, seen  # precision="highest": no TF32 anywhere
    assert core.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32


def test_is_out_of_memory_never_raises_on_the_stand_in(fake_cupy, monkeypatch):
    from types import SimpleNamespace

    assert not backend.is_out_of_memory(ValueError("not memory"))
    import _stand_in_cupy

    monkeypatch.setitem(_stand_in_cupy._ERRORS, 2, "cudaErrorMemoryAllocation: out of memory")
    runtime_error = fake_cupy.cuda.runtime.CUDARuntimeError
    assert backend.is_out_of_memory(runtime_error(2))  # cudaErrorMemoryAllocation
    assert not backend.is_out_of_memory(runtime_error(700))  # cudaErrorIllegalAddress

    class CUBLASError(RuntimeError):  # cupy_backends/cuda/libs/cublas.pyx: CUBLASError(status), .status
        def __init__(self, status):
            self.status = status
            super().__init__(str(status))

    class OutOfMemoryError(MemoryError):
        pass

    monkeypatch.setattr(fake_cupy.cuda, "cublas", SimpleNamespace(CUBLASError=CUBLASError), raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "memory", SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
                        raising=False)
    assert backend.is_out_of_memory(CUBLASError(3))  # CUBLAS_STATUS_ALLOC_FAILED
    assert not backend.is_out_of_memory(CUBLASError(13))
    assert backend.is_out_of_memory(OutOfMemoryError())


def test_is_out_of_memory_knows_real_cupys_error_classes():
    cupy = pytest.importorskip("cupy")  # importable without a GPU
    runtime = cupy.cuda.runtime
    assert backend.is_out_of_memory(runtime.CUDARuntimeError(2)) == (backend.cupy_module() is cupy)
    assert not backend.is_out_of_memory(runtime.CUDARuntimeError(700))


def test_the_install_hint_names_extras_that_bring_the_cuda_libraries():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for major in ("12", "13"):
        assert f'"nnxp[cuda{major}]"' in backend._INSTALL_HINT
        # CuPy's `ctk` extra: NVRTC, cuBLAS and the runtime headers, without which the first compile fails
        assert extras[f"cuda{major}"] == [f"cupy-cuda{major}x[ctk]>=14.2,<15"]
    assert "nnxp selftest --device cuda" in backend._INSTALL_HINT
