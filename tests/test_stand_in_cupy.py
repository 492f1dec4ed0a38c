"""The stand-in CuPy (tests/_stand_in_cupy.py) is no kinder than CuPy 14.2: random's shape rule, two devices
without peer access, and allocation on the current device, each as the cited CuPy source does it."""

from __future__ import annotations

import numpy as np
import pytest
from _stand_in_cupy import CUDARuntimeError

from nnxp.backend import cuda_device_count, get_device


def test_random_without_size_draws_one_value_into_out(fake_cupy):
    # cupy/random/_generator_api.pyx Generator.random: size=None -> size=(), then elementwise_copy(y, out)
    rng = fake_cupy.random.default_rng(3)
    out = fake_cupy.empty((4, 5), dtype=np.float32)
    y = rng.random(out=out, dtype=np.float32)
    assert y is out
    assert np.unique(np.asarray(y)).size == 1 and 0.0 <= float(y[0, 0]) < 1.0
    z = rng.random(dtype=np.float32)
    assert isinstance(z, fake_cupy.ndarray) and z.shape == () and z.dtype == np.float32


def test_random_with_size_fills_out_elementwise(fake_cupy):
    rng = fake_cupy.random.default_rng(3)
    out = fake_cupy.empty((40, 50))
    rng.random((40, 50), out=out)
    assert np.unique(np.asarray(out)).size == out.size
    again = fake_cupy.random.default_rng(3).random((40, 50))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


def test_random_refuses_what_cupy_refuses(fake_cupy):
    rng = fake_cupy.random.default_rng(0)
    with pytest.raises(ValueError, match="size must match out.shape"):
        rng.random(7, out=fake_cupy.empty(6))
    with pytest.raises(TypeError, match="wrong type"):
        rng.random(out=fake_cupy.empty(6, dtype=np.float32))  # dtype defaults to float64
    with pytest.raises(ValueError, match="not contiguous"):
        rng.random(out=fake_cupy.empty((6, 6))[:, ::2])


def test_two_devices_and_the_current_one(fake_cupy):
    cuda = fake_cupy.cuda
    assert cuda.runtime.getDeviceCount() == 2 and cuda_device_count() == 2
    assert get_device("cuda:1").name == "cuda:1"
    a0 = fake_cupy.zeros(3)
    with cuda.Device(1):
        assert cuda.runtime.getDevice() == 1
        a1 = fake_cupy.ones(3)
        b1 = fake_cupy.empty_like(a0)  # cupy.empty_like allocates on the current device, not a0's
        with cuda.Device(0):
            assert cuda.runtime.getDevice() == 0
        assert cuda.runtime.getDevice() == 1
    assert cuda.runtime.getDevice() == 0
    assert a0.device.id == 0 and a1.device.id == 1 and b1.device.id == 1
    assert a1[1:].device.id == 1 and a1.reshape(3, 1).device.id == 1  # views keep their device
    with pytest.raises(CUDARuntimeError, match="invalid device ordinal"):
        with cuda.Device(2):
            pass


def test_cross_device_arithmetic_is_refused(fake_cupy):
    # cupy/_core/_kernel.pyx _check_peer_access: every array argument of a kernel on the current device
    a0 = fake_cupy.ones(3)
    with fake_cupy.cuda.Device(1):
        a1 = fake_cupy.ones(3)
        np.testing.assert_array_equal(np.asarray(a1 + a1), 2.0)
        with pytest.raises(ValueError, match=r"resides \(0\).*current device \(1\).*Peer access is unavailable"):
            a1 + a0
        with pytest.raises(ValueError, match="Peer access"):
            a1[...] = a0
        moved = fake_cupy.asarray(a0)  # a peer copy is allowed (core.pyx _array_from_cupy_ndarray)
        assert moved.device.id == 1 and moved is not a0
        assert fake_cupy.asarray(a1) is a1
    with pytest.raises(ValueError, match="Peer access"):
        a1.sum()
    with pytest.raises(ValueError, match="Peer access"):
        np.multiply(a0, 2.0, out=a1)
    with pytest.raises(ValueError, match="Peer access"):
        fake_cupy.matmul(a0.reshape(1, 3), a1.reshape(3, 1))
    with pytest.raises(TypeError, match="Unsupported type"):
        a0 + np.ones(3)  # a host array is no kernel argument (cupy/_core/_scalar.pyx CScalar)
    np.testing.assert_array_equal(fake_cupy.asnumpy(a1), 1.0)  # the host copy works from any device


def test_a_kernel_launch_refuses_another_devices_array(fake_cupy):
    from nnxp.ops import _cuda

    with fake_cupy.cuda.Device(1):
        z = fake_cupy.ones((2, 3))
    with pytest.raises(CUDARuntimeError, match="IllegalAddress"):
        _cuda._launch("nnxp_bias_act_forward", z.dtype, 0, (1,), (32,),
                      (z, z, z, np.int64(6), np.int64(3), np.int32(1), np.int32(0), np.int32(0)))
    y, _ = _cuda.bias_activation_forward(z, None, "relu")  # on its own device it runs
    assert y.device.id == 1


# --- streams and graph capture (cupy/cuda/stream.pyx, cupy/cuda/graph.pyx) -------------------------------------


def test_capture_records_and_replay_computes(fake_cupy):
    cuda = fake_cupy.cuda
    a = fake_cupy.asarray(np.arange(4.0))
    stream = cuda.Stream(non_blocking=True)
    with stream:
        assert cuda.get_current_stream() == stream
        stream.begin_capture()
        assert stream.is_capturing()
        doubled = a * 2.0  # recorded: poison until a replay
        total = doubled.sum()
        a += 1.0
        graph = stream.end_capture()
    assert cuda.get_current_stream() == cuda.Stream.null
    assert np.isnan(np.asarray(doubled)).all() and np.isnan(float(total))
    np.testing.assert_array_equal(fake_cupy.asnumpy(a), np.arange(4.0))  # nothing ran yet
    graph.launch()
    np.testing.assert_array_equal(fake_cupy.asnumpy(doubled), 2 * np.arange(4.0))
    assert float(total) == 12.0
    graph.launch()  # each replay reads the buffers as they are then
    assert float(total) == 20.0 and float(a[0]) == 2.0


def test_capture_records_kernel_launches(fake_cupy):
    z = fake_cupy.asarray(np.full((2, 64), -1.0))
    stream = fake_cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        from nnxp.ops import _cuda

        _cuda.bias_activation_forward(z, None, "relu")
        graph = stream.end_capture()
    assert (fake_cupy.asnumpy(z) == -1.0).all()
    graph.launch()
    assert (fake_cupy.asnumpy(z) == 0.0).all()


def test_capture_refuses_what_cuda_and_cupy_refuse(fake_cupy):
    cuda = fake_cupy.cuda
    with pytest.raises(RuntimeError, match="legacy"):
        cuda.Stream.null.begin_capture()
    a = fake_cupy.ones((2, 2))
    stream = cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="cuBLAS API during stream capture"):
            fake_cupy.matmul(a, a)  # cupy_backends/cuda/libs/cublas.pyx setStream
        stream.end_capture()  # that refusal leaves the capture intact
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="StreamCaptureUnsupported"):
            float(a.sum())  # a device-to-host copy synchronises
        with pytest.raises(CUDARuntimeError, match="StreamCaptureInvalidated"):
            stream.end_capture()
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="StreamCaptureUnsupported"):
            a[...] = np.zeros((2, 2))  # pageable host memory
        with pytest.raises(CUDARuntimeError, match="StreamCaptureInvalidated"):
            stream.end_capture()
    with fake_cupy.cuda.Device(1), pytest.raises(RuntimeError, match="does not match with the current device"):
        with stream:
            pass
    with pytest.raises(NotImplementedError, match="stream capture"):
        cuda.Graph()


def test_allocations_go_through_the_thread_local_allocator(fake_cupy):
    pool = fake_cupy.cuda.MemoryPool()
    with fake_cupy.cuda.using_allocator(pool.malloc):
        fake_cupy.empty(100, dtype=np.float32)
    assert pool.used_bytes() == 512  # rounded up to the allocation unit
    fake_cupy.empty(100, dtype=np.float32)
    assert pool.used_bytes() == 512


def test_compute_type_follows_cupy_tf32_and_set_compute_type(fake_cupy, monkeypatch):
    core = fake_cupy._core
    tf32 = core._routines_linalg.COMPUTE_TYPE_TF32
    monkeypatch.setenv("CUPY_TF32", "1")  # read once, when the compute type is still TBD
    assert core.get_compute_type(np.float32) == tf32
    assert core.get_compute_type(np.float64) == core._routines_linalg.COMPUTE_TYPE_DEFAULT
    rng = np.random.default_rng(0)
    a = fake_cupy.asarray(rng.normal(size=(8, 300)).astype(np.float32))
    b = fake_cupy.asarray(rng.normal(size=(300, 8)).astype(np.float32))
    fast = fake_cupy.asnumpy(fake_cupy.matmul(a, b))
    core.set_compute_type(np.float32, core._routines_linalg.COMPUTE_TYPE_DEFAULT)
    exact = fake_cupy.asnumpy(fake_cupy.matmul(a, b))
    np.testing.assert_array_equal(exact, np.asarray(a) @ np.asarray(b))
    assert not np.array_equal(fast, exact)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=300 * 2.0**-10 * 4)
    with pytest.raises(ValueError, match="Unknown compute type"):
        core.set_compute_type(np.float32, 99)
