"""Model files: exact round trips, resumed training, atomic writes, clear errors for bad files."""

import io
import json
import zipfile

import numpy as np
import pytest

import nnxp
from nnxp import Dense, Dropout, Sequential
from nnxp.errors import ModelFileError


def _data(n=200, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] ** 2 > 0.5).astype(np.int64)


def _model(seed=3, optimizer="adam"):
    m = Sequential([Dense(16, "relu", input_dim=5), Dropout(0.25), Dense(2, "softmax")], seed=seed)
    m.compile(optimizer, "sparse_categorical_crossentropy", ["accuracy"])
    return m


def test_round_trip_is_exact(tmp_path):
    x, y = _data()
    m = _model()
    m.fit(x, y, epochs=2, verbose=0)
    m.save(tmp_path / "m.nnxp")
    back = nnxp.load_model(tmp_path / "m.nnxp")
    np.testing.assert_array_equal(back.predict(x), m.predict(x))
    for a, b in zip(m.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert back.get_config() == m.get_config()
    assert back.optimizer.get_config() == m.optimizer.get_config()
    assert back.metrics == ["accuracy"] and back.epochs_trained == 2


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop", "adadelta", "adamax"])
def test_resumed_training_equals_uninterrupted(tmp_path, optimizer):
    x, y = _data()
    straight = _model(optimizer=optimizer)
    straight.fit(x, y, epochs=4, batch_size=16, verbose=0)

    first = _model(optimizer=optimizer)
    first.fit(x, y, epochs=2, batch_size=16, verbose=0)
    first.save(tmp_path / "ckpt.nnxp")
    resumed = nnxp.load_model(tmp_path / "ckpt.nnxp")
    resumed.fit(x, y, epochs=4, batch_size=16, verbose=0, initial_epoch=2)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_uncompiled_model_round_trip(tmp_path):
    m = Sequential([Dense(3, "tanh", input_dim=2, kernel_regularizer="l2")], seed=1, dtype="float64")
    m.save(tmp_path / "u.nnxp")
    back = nnxp.load_model(tmp_path / "u.nnxp")
    assert back.loss is None and back.dtype == np.float64
    assert back.layers[0].kernel_regularizer.l2 == 0.01
    np.testing.assert_array_equal(back.get_weights()[0], m.get_weights()[0])


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    x, y = _data()
    m = _model()
    path = tmp_path / "m.nnxp"
    m.save(path)
    before = path.read_bytes()
    m.fit(x, y, epochs=1, verbose=0)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        m.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnxp"]  # no temporary file left


def _rewrite(path, config=None, arrays=None):
    with zipfile.ZipFile(path) as zf:
        cfg = json.loads(zf.read("config.json"))
        npz = dict(np.load(io.BytesIO(zf.read("weights.npz"))))
    cfg = config(cfg) if config else cfg
    npz = arrays(npz) if arrays else npz
    buf = io.BytesIO()
    np.savez(buf, **npz)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(cfg))
        zf.writestr("weights.npz", buf.getvalue())


BAD_FILES = {
    "newer version": (lambda c: {**c, "format_version": 99}, None, "format_version"),
    "not nnxp": (lambda c: {**c, "format": "other"}, None, "not an nnxp model"),
    "wrong shape": (None, lambda a: {**a, "param/0": np.zeros((4, 16), np.float32)}, "shape"),
    "wrong dtype": (None, lambda a: {**a, "param/0": a["param/0"].astype(np.float64)}, "dtype"),
    "missing array": (None, lambda a: {k: v for k, v in a.items() if k != "param/3"}, "parameter"),
    "extra array": (None, lambda a: {**a, "evil": np.zeros(1)}, "unexpected"),
    "object array": (None, lambda a: {**a, "param/0": np.array([object()] * 80, dtype=object).reshape(5, 16)},
                     "allow_pickle"),
    "NaN weights": (None, lambda a: {**a, "param/0": np.full((5, 16), np.nan, np.float32)}, "finite"),
    "unknown layer": (lambda c: {**c, "model": {**c["model"], "layers": [{"class_name": "Evil", "config": {}}]}},
                      None, "layer class"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_raise_model_file_error(tmp_path, case):
    config, arrays, message = BAD_FILES[case]
    path = tmp_path / "m.nnxp"
    m = _model()
    m.fit(*_data(50), epochs=1, verbose=0)
    m.save(path)
    _rewrite(path, config, arrays)
    with pytest.raises(ModelFileError, match=message):
        nnxp.load_model(path)


def test_truncated_and_garbage_files(tmp_path):
    m = _model()
    m.fit(*_data(50), epochs=1, verbose=0)
    path = tmp_path / "m.nnxp"
    m.save(path)
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            nnxp.load_model(path)
    with pytest.raises(ModelFileError, match="existing model file"):
        nnxp.load_model(tmp_path / "missing.nnxp")


def test_save_before_build_is_an_error(tmp_path):
    with pytest.raises(nnxp.NnxpError, match="no weights"):
        Sequential([Dense(2)]).save(tmp_path / "x.nnxp")


def test_fuzzed_files_load_exactly_or_raise_model_file_error(tmp_path):
    """At least 500 mutations of a saved file: each load gives the original predictions or a ModelFileError."""
    x, y = _data(60)
    m = _model()
    m.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.nnxp"
    m.save(path)
    original = path.read_bytes()
    expected = m.predict(x)
    r = np.random.default_rng(2024)
    outcomes = {"same": 0, "error": 0}
    for i in range(520):
        data = bytearray(original)
        kind = i % 5
        if kind == 0:  # bit flips
            for pos in r.integers(0, len(data), r.integers(1, 4)):
                data[pos] ^= 1 << int(r.integers(0, 8))
        elif kind == 1:  # overwrite a run with random bytes
            start = int(r.integers(0, len(data)))
            data[start : start + int(r.integers(1, 32))] = r.bytes(int(r.integers(1, 32)))
        elif kind == 2:  # truncation
            data = data[: int(r.integers(0, len(data)))]
        elif kind == 3:  # insertion
            pos = int(r.integers(0, len(data)))
            data[pos:pos] = r.bytes(int(r.integers(1, 64)))
        else:  # appended junk
            data += r.bytes(int(r.integers(1, 4096)))
        target = tmp_path / f"fuzz{i}.nnxp"
        target.write_bytes(bytes(data))
        try:
            loaded = nnxp.load_model(target)
        except ModelFileError:
            outcomes["error"] += 1
            continue
        np.testing.assert_array_equal(loaded.predict(x), expected, err_msg=f"mutation {i} (kind {kind}) loaded "
                                      "a silently different model")
        outcomes["same"] += 1
    assert sum(outcomes.values()) == 520 and outcomes["error"] > 100  # the mutations did real damage


def test_hostile_zip_members_are_refused(tmp_path):
    path = tmp_path / "bomb.nnxp"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * (2 * 2**20))  # larger than any real config
        zf.writestr("../../etc/evil", b"x")
    with pytest.raises(ModelFileError, match="config.json"):
        nnxp.load_model(path)
    assert not (tmp_path.parent.parent / "etc" / "evil").exists()


@pytest.mark.gpu
def test_save_on_cuda_load_on_cpu_and_back(tmp_path):
    x, y = _data()
    m = Sequential([Dense(16, "relu", input_dim=5), Dense(2, "softmax")], device="cuda", seed=3)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=2, verbose=0)
    m.save(tmp_path / "gpu.nnxp")
    cpu = nnxp.load_model(tmp_path / "gpu.nnxp", device="cpu")
    np.testing.assert_allclose(cpu.predict(x), m.predict(x), rtol=1e-5, atol=1e-6)
    cpu.save(tmp_path / "cpu.nnxp")
    back = nnxp.load_model(tmp_path / "cpu.nnxp", device="cuda")
    for a, b in zip(m.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    for k, v in m.optimizer.get_state().items():
        np.testing.assert_array_equal(v, back.optimizer.get_state()[k])


def test_bad_device_on_load_is_a_device_error(tmp_path):
    from nnxp.errors import DeviceError

    m = _model()
    m.save(tmp_path / "m.nnxp")
    with pytest.raises(DeviceError, match="device"):
        nnxp.load_model(tmp_path / "m.nnxp", device=0)
