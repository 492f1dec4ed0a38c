"""Model files: exact round trips, resumed training, atomic writes, clear errors for bad files."""

import functools
import io
import json
import os
import stat
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
                     "dtype object"),  # refused from its header, before any data (was np.load's allow_pickle)
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


# --- hostile files: every field validated, bounded memory and time -------------------------------------------------
def _saved(tmp_path, optimizer="adam", fit=True):
    m = _model(optimizer=optimizer)
    if fit:
        m.fit(*_data(50), epochs=1, verbose=0)
    path = tmp_path / "m.nnxp"
    m.save(path)
    return m, path


def _set(cfg, dotted, value):
    """A deep copy of `cfg` with the field at `dotted` ("model.layers.0.config.units") set; DELETE removes it."""
    cfg = json.loads(json.dumps(cfg))
    keys = [int(k) if k.isdigit() else k for k in dotted.split(".")]
    node = cfg
    for k in keys[:-1]:
        node = node[k]
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


DELETE = object()

# (field, value, what the error must name): type, range, finiteness and consistency of each field
BAD_FIELDS = [
    ("model.input_dim", None, "model.input_dim"),  # used to drop the stored weights silently
    ("model.input_dim", 6, "input_dim"),
    ("model.input_dim", "5", "model.input_dim"),
    ("model.input_dim", 5.0, "model.input_dim"),
    ("model.input_dim", True, "model.input_dim"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.dtype", None, "model.dtype"),
    ("model.precision", "fast", "model.precision"),
    ("model.seed", -1, "model.seed"),
    ("model.seed", 2**64, "model.seed"),
    ("model.seed", DELETE, "model.seed"),
    ("model.name", 3, "model.name"),
    ("model.layers", {}, "model.layers"),
    ("model.layers.0", [], r"model.layers\[0\]"),
    ("model.layers.0.class_name", 3, r"model.layers\[0\].class_name"),
    ("model.layers.0.config.units", 0, "units"),
    ("model.layers.0.config.units", 17, "shape"),
    ("model.layers.0.config.activation", "relux", "activation"),
    ("model.layers.0.config.evil", 1, "evil"),
    ("model.layers.0.config.name", ["x"], r"model.layers\[0\].config.name"),
    ("model.layers.0.config.name", "x" * 5000, r"model.layers\[0\].config.name"),
    ("model.layers.1.config.rate", 1.5, "rate"),
    ("model.layers.0.config.kernel_regularizer", {"name": "l2", "l2": -1.0}, "l2"),
    ("model.layers.0.config.kernel_regularizer", {"name": "evil", "l2": 0.1}, "kernel_regularizer"),
    ("model.extra", 1, "extra"),
    ("epochs_trained", -1, "epochs_trained"),
    ("epochs_trained", 1.5, "epochs_trained"),
    ("nnxp_version", ["x"], "nnxp_version"),
    ("compile", [], "compile"),
    ("compile.loss", "hinge", "loss"),
    ("compile.metrics", "accuracy", "compile.metrics"),
    ("compile.metrics", ["precision"], "metrics"),
    ("compile.optimizer_iterations", -1, "optimizer_iterations"),
    ("compile.optimizer_iterations", 2.5, "optimizer_iterations"),
    ("compile.optimizer_iterations", "7", "optimizer_iterations"),
    ("compile.optimizer", "adam", "compile.optimizer"),
    ("compile.optimizer.name", "adamz", "optimizer"),
    ("compile.optimizer.beta_1", 1.5, "beta_1"),
    ("compile.optimizer.epsilon", -1.0, "epsilon"),
    ("compile.optimizer.learning_rate", -0.1, "learning_rate"),
    ("compile.optimizer.learning_rate", {"name": "ExponentialDecay", "initial_learning_rate": 0.1}, "decay_steps"),
    ("compile.optimizer.learning_rate", {"name": "ExponentialDecay", "initial_learning_rate": 0.1,
                                         "decay_steps": 1, "decay_rate": 1e308}, "learning_rate"),
    ("compile.optimizer.learning_rate", {"name": "StepDecay", "initial_learning_rate": 1e300, "step_size": 1,
                                         "gamma": 1e300}, "learning_rate"),
    ("compile.optimizer.learning_rate", {"name": "Evil"}, "schedule"),
    ("compile.optimizer.learning_rate", 1e39, "cannot use"),  # finite as a float, inf in this float32 model
    ("compile.optimizer.learning_rate", {"name": "ExponentialDecay", "initial_learning_rate": 1e-3,
                                         "decay_steps": 2, "decay_rate": 1e300}, "cannot use"),  # 1e297 at step 2
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=[f"{f}={v!r}"[:60] for f, v, _ in BAD_FIELDS])
def test_every_config_field_is_validated(tmp_path, field, value, message):
    m, path = _saved(tmp_path)
    _rewrite(path, lambda c: _set(c, field, value))
    with pytest.raises(ModelFileError, match=message):
        nnxp.load_model(path)


def _state_case(slot, values):
    def mutate(a):
        a = dict(a)
        v = a[f"optimizer/{slot}"].copy()
        if isinstance(values, np.ndarray):
            return {**a, f"optimizer/{slot}": values}
        v[: len(values)] = values
        return {**a, f"optimizer/{slot}": v}
    return mutate


# (optimizer, change to the stored arrays, what the error must name)
BAD_STATE = [
    ("adam", _state_case("m", [np.nan]), "finite"),
    ("adam", _state_case("v", [np.inf]), "finite"),
    ("adam", _state_case("v", [-1e-3]), ">= 0"),
    ("adamax", _state_case("u", [-1.0]), ">= 0"),
    ("rmsprop", _state_case("avg_sq", [-2.0]), ">= 0"),
    ("adadelta", _state_case("accumulated_grad", [-1.0]), ">= 0"),
    ("adadelta", _state_case("accumulated_delta", [-1.0]), ">= 0"),
    ("adam", _state_case("m", np.zeros(3, np.complex64)), "dtype"),
    ("adam", _state_case("m", np.array(["1.0"] * 3)), "dtype"),
    ("adam", _state_case("m", np.zeros(3, np.float64)), "dtype"),
    ("adam", _state_case("m", np.zeros(7, np.float32)), "shape"),
    ("adam", lambda a: {k: v for k, v in a.items() if k != "optimizer/v"}, "optimizer state"),
    ("adam", lambda a: {k: v for k, v in a.items() if not k.startswith("optimizer/")}, "optimizer state"),
    ("sgd", lambda a: {**a, "optimizer/velocity": np.zeros(1, np.float32)}, "unexpected"),
]


@pytest.mark.parametrize("optimizer, change, message", BAD_STATE, ids=[f"{o}-{i}" for i, (o, _, _) in
                                                                       enumerate(BAD_STATE)])
def test_damaged_optimizer_state_is_refused(tmp_path, optimizer, change, message):
    _, path = _saved(tmp_path, optimizer)
    _rewrite(path, arrays=change)
    with pytest.raises(ModelFileError, match=message):
        nnxp.load_model(path)


def test_valid_edge_values_still_load(tmp_path):
    """The checks refuse damage, not unusual but valid files: no state before the first step, zero moments."""
    m, path = _saved(tmp_path, fit=False)
    back = nnxp.load_model(path)
    assert back.optimizer.iterations == 0 and back.optimizer.state == {}
    m, path = _saved(tmp_path)
    _rewrite(path, arrays=_state_case("v", np.zeros_like(m.optimizer.get_state()["v"])))
    assert nnxp.load_model(path).optimizer.iterations == m.optimizer.iterations


# --- bombs: any file of at most 1 MB is loaded or refused fast, in memory bounded by the model it describes ------
def _raw_zip(members):
    """A zip built by hand from (name, method, crc, compressed bytes, claimed size): sizes may lie."""
    import struct

    out, central = bytearray(), bytearray()
    for name, method, crc, data, size in members:
        name = name.encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(name), 0)
        out += name + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
                               len(name), 0, 0, 0, 0, 0, offset)
        central += name
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(out), 0)
    return bytes(out + central + eocd)


def _deflate(data):
    import zlib

    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _npy(shape, dtype="<f4", data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


@functools.lru_cache(maxsize=8)  # the 1 GiB members take a second each to checksum; several bombs share them
def _zeros_member(name, shape, dtype="<f4", n=None):
    """A deflated .npy of zeros (`n` bytes of data, or what `shape` needs), built without ever holding it."""
    import zlib

    head = _npy(shape, dtype)
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize if n is None else n
    block = bytes(16 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n, len(block))
    same = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    body = first + same * full + c.compress(block[:rest]) + c.flush()
    crc = zlib.crc32(head)
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    crc = zlib.crc32(block[:rest], crc)
    return (name, 8, crc, body, len(head) + n)


def _plain_member(name, data, deflate=True):
    import zlib

    return (name, 8 if deflate else 0, zlib.crc32(data), _deflate(data) if deflate else data, len(data))


def _model_file(path, config, npz_members, config_bytes=None):
    raw_cfg = config_bytes if config_bytes is not None else json.dumps(config).encode()
    npz = _raw_zip(npz_members)
    path.write_bytes(_raw_zip([_plain_member("config.json", raw_cfg), _plain_member("weights.npz", npz)]))
    return path


def _dense_config(units=16, input_dim=5, n_dropout=0, dtype="float32"):
    layers = [{"class_name": "Dense", "config": {"units": units, "input_dim": input_dim, "activation": "relu"}}]
    layers += [{"class_name": "Dropout", "config": {"rate": 0.0}}] * n_dropout
    return {"format": "nnxp-model", "format_version": 1, "epochs_trained": 0, "compile": None,
            "model": {"dtype": dtype, "seed": 0, "input_dim": input_dim, "layers": layers}}


WIDE = _dense_config(input_dim=20000)  # 1.3 MB of weights: room for a 1 MB compressed member in weights.npz
WIDE_BIAS = _plain_member("param/1.npy", _npy((16,), data=bytes(64)))


def _bomb_inner_compressed(path):  # the case: a small file whose inner array unpacks to 1 GiB
    return _model_file(path, WIDE, [_zeros_member("param/0.npy", (2**28,)), WIDE_BIAS]), 0


def _bomb_inner_lying_size(path):  # the same array with its zip entry claiming the size the config expects
    name, method, crc, body, _ = _zeros_member("param/0.npy", (2**28,))
    return _model_file(path, WIDE, [(name, method, crc, body, 128 + 20000 * 16 * 4), WIDE_BIAS]), 0


def _bomb_inner_past_claim(path):  # the right header and claimed size, data inflating to 1 GiB past them
    name, method, crc, body, _ = _zeros_member("param/0.npy", (20000, 16), n=2**30)
    return _model_file(path, WIDE, [(name, method, crc, body, 128 + 20000 * 16 * 4), WIDE_BIAS]), 0


def _bomb_outer_compressed(path):  # weights.npz itself unpacking to 1 GiB
    return _model_file(path, _dense_config(), [_zeros_member("param/0.npy", (5, 16), n=2**30), WIDE_BIAS]), 0


def _bomb_huge_units(path):  # a config describing a 1.6 GB layer next to small arrays
    return _model_file(path, _dense_config(units=20000, input_dim=20000),
                       [_plain_member("param/0.npy", _npy((5, 16), data=bytes(320))),
                        _plain_member("param/1.npy", _npy((16,), data=bytes(64)))]), 0


def _bomb_huge_header_claims(path):  # headers that match the huge config, data that is not there
    return _model_file(path, _dense_config(units=20000, input_dim=20000),
                       [("param/0.npy", 8, 0, _deflate(_npy((20000, 20000))), 128 + 20000 * 20000 * 4),
                        _plain_member("param/1.npy", _npy((20000,), data=bytes(80000)))]), 0


def _bomb_many_layers(path):  # 20,000 layers: a valid model that used to take 46 s to load
    return _model_file(path, _dense_config(n_dropout=20000),
                       [_plain_member("param/0.npy", _npy((5, 16), data=bytes(320))),
                        _plain_member("param/1.npy", _npy((16,), data=bytes(64)))]), 400


def _bomb_many_dense_layers(path):  # 20,000 Dense(1) in a 3 KB file, none of their 40,000 arrays stored
    config = _dense_config()
    config["model"]["layers"] += [{"class_name": "Dense", "config": {"units": 1}}] * 20000
    return _model_file(path, config, []), 0


def _bomb_deep_json(path):
    return _model_file(path, None, [], config_bytes=b"[" * 900_000), 0


def _bomb_huge_int(path):
    cfg = json.dumps(_dense_config()).replace('"seed": 0', '"seed": ' + "9" * 900_000)
    return _model_file(path, None, [], config_bytes=cfg.encode()), 0


def _bomb_huge_float(path):
    cfg = json.dumps(_dense_config()).replace('"seed": 0', '"seed": 1' + "0" * 900_000 + ".5")
    return _model_file(path, None, [], config_bytes=cfg.encode()), 0


def _bomb_config_inflates(path):  # config.json claiming 1 KB, inflating to 1 GiB
    name, method, crc, body, _ = _zeros_member("config.json", (2**28,))
    npz = _raw_zip([])
    path.write_bytes(_raw_zip([(name, method, crc, body, 1000), _plain_member("weights.npz", npz)]))
    return path, 0


def _bomb_many_members(path):
    members = [_plain_member(f"param/{i}.npy", _npy((1,), data=bytes(4)), deflate=False) for i in range(6000)]
    return _model_file(path, _dense_config(), members), 0


def _bomb_huge_npy_header(path):
    head = b"\x93NUMPY\x01\x00" + (65535).to_bytes(2, "little") + b"{" + b" " * 65534
    return _model_file(path, _dense_config(), [_plain_member("param/0.npy", head),
                                               _plain_member("param/1.npy", _npy((16,), data=bytes(64)))]), 0


def _true_model(path, n, stream):
    """Legitimately n*n float32 weights (zeros) in a file of a few KB: it must load.

    `stream`: the arrays are stored uncompressed in a weights.npz larger than nnxp buffers, so it is read as a
    stream; otherwise they are compressed inside a small weights.npz, which is unpacked in memory.
    """
    bias = _plain_member("param/1.npy", _npy((n,), data=bytes(n * 4)), deflate=not stream)
    if stream:
        kernel = _plain_member("param/0.npy", _npy((n, n), data=bytes(n * n * 4)), deflate=False)
    else:
        kernel = _zeros_member("param/0.npy", (n, n))
    return _model_file(path, _dense_config(units=n, input_dim=n), [kernel, bias]), 2 * (n * n + n) * 4  # + grads


def _true_mid_model(path):  # 16 MiB of weights compressed inside a small weights.npz
    return _true_model(path, 2048, stream=False)


def _true_big_model(path):  # 64 MiB of weights in a 64 MiB weights.npz (compressed in the file): streamed
    return _true_model(path, 4096, stream=True)


BOMBS = {f.__name__.removeprefix("_bomb_").lstrip("_"): f for f in (
    _bomb_inner_compressed, _bomb_inner_lying_size, _bomb_inner_past_claim, _bomb_outer_compressed, _bomb_huge_units,
    _bomb_huge_header_claims, _bomb_many_layers, _bomb_many_dense_layers, _bomb_deep_json, _bomb_huge_int,
    _bomb_huge_float,
    _bomb_config_inflates, _bomb_many_members, _bomb_huge_npy_header, _true_mid_model, _true_big_model)}


def _measure_load(path, conn):
    import resource
    import time

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    try:
        nnxp.load_model(path)
        outcome = "loaded"
    except ModelFileError as exc:
        outcome = f"refused: {exc}"
    except BaseException as exc:  # anything else is a failure of the test
        outcome = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    conn.send((outcome, seconds, grown))


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_files_up_to_1mb_load_or_fail_in_bounded_time_and_memory(tmp_path, bomb):
    """The issue's goal: within 2 s and 100 MiB beyond the model the file truly describes.

    The model's size is what building it allocates: its parameters and their gradients.

    Memory is the peak RSS growth of a forked child doing only the load. The time bound asserted is 10 s (a
    5x margin for a shared CI machine; the unguarded loader took 12 s to 46 s on these files), and the time is
    printed so the 2 s goal can be read off with ``-s``.
    """
    import multiprocessing

    path, model_bytes = BOMBS[bomb](tmp_path / "bomb.nnxp")
    assert path.stat().st_size <= 2**20
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_measure_load, args=(path, child))
    proc.start()
    assert parent.poll(60), "load did not finish within 60 s"
    outcome, seconds, grown = parent.recv()
    proc.join()
    print(f"{bomb}: {path.stat().st_size} bytes, {seconds:.3f} s, peak RSS +{grown / 2**20:.1f} MiB, {outcome[:90]}")
    assert outcome == "loaded" if bomb in ("many_layers", "true_mid_model", "true_big_model") else \
        outcome.startswith("refused")
    assert seconds < 10
    assert grown <= model_bytes + 100 * 2**20


# --- saving like a careful editor: symlinks, permissions, temporaries, hostile paths ------------------------------
def test_save_through_a_symlink_replaces_its_target(tmp_path):
    m, _ = _saved(tmp_path)
    target = tmp_path / "real.nnxp"
    target.write_bytes(b"old")
    link = tmp_path / "link.nnxp"
    link.symlink_to("real.nnxp")
    m.save(link)
    assert link.is_symlink() and os.readlink(link) == "real.nnxp"
    np.testing.assert_array_equal(nnxp.load_model(target).get_weights()[0], m.get_weights()[0])
    dangling = tmp_path / "dangling.nnxp"
    dangling.symlink_to("new-target.nnxp")
    m.save(dangling)
    assert dangling.is_symlink() and (tmp_path / "new-target.nnxp").is_file()


@pytest.mark.parametrize("umask, existing_mode, expected", [
    (0o022, None, 0o644), (0o077, None, 0o600), (0o002, None, 0o664),
    (0o077, 0o644, 0o644), (0o022, 0o640, 0o640), (0o022, 0o600, 0o600), (0o000, 0o444, 0o444),
])
def test_saved_files_respect_the_umask_and_keep_a_replaced_files_mode(tmp_path, umask, existing_mode, expected):
    m, _ = _saved(tmp_path)
    path = tmp_path / "perm.nnxp"
    if existing_mode is not None:
        path.write_bytes(b"old")
        path.chmod(existing_mode)
    previous = os.umask(umask)
    try:
        m.save(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == expected
    nnxp.load_model(path)


def _temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".nnxp-"))


_SAVE_LOOP = """
import sys, nnxp
m = nnxp.Sequential([nnxp.Dense(1500, "relu", input_dim=1500), nnxp.Dense(2)], seed=0)
m.compile("adam", "mse")
m.optimizer.build(m.params)
while True:
    print("saving", flush=True)
    m.save(sys.argv[1])
"""


def test_temporaries_left_by_sigkill_are_removed_by_the_next_save(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "ckpt"
    folder.mkdir()
    target = folder / "m.nnxp"
    left = []
    # a loaded machine can stretch the first save's set-up past a short delay: longer ones until a kill lands
    for delay in (0.3, 0.1, 0.5, 1.0, 2.0, 3.0):
        if len(left) >= 3 and any(left):
            break
        proc = subprocess.Popen([sys.executable, "-c", _SAVE_LOOP, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "saving"
        time.sleep(delay)  # a save of these 27 MB takes about a second: the kill lands inside it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        left.append(_temporaries(folder))
    assert any(left), "no kill landed inside a save: the test proved nothing"
    assert all(len(names) <= 1 for names in left), left  # each save removed the temporaries of the killed ones
    # a temporary of a live process (this one's parent stands in) and one from another host stay untouched
    live = folder / f".nnxp-{nnxp.io._HOST}-{os.getppid()}-0123abcd.tmp"
    foreign = folder / f".nnxp-{'f' if nnxp.io._HOST[0] != 'f' else 'e'}{nnxp.io._HOST[1:]}-999999-0123abcd.tmp"
    unrelated = folder / ".m.nnxp.abc.tmp"
    for p in (live, foreign, unrelated):
        p.write_bytes(b"x")
    m, _ = _saved(tmp_path)
    m.save(target)
    assert _temporaries(folder) == sorted([live.name, foreign.name]), (left, _temporaries(folder))
    assert unrelated.exists()
    nnxp.load_model(target)


HOSTILE_PATHS = {
    "NUL byte": (lambda tmp: str(tmp / "a\0b.nnxp"), nnxp.NnxpError, "NUL"),
    "bytes NUL": (lambda tmp: os.fsencode(tmp / "a\0b.nnxp"), nnxp.NnxpError, "NUL"),
    "name too long": (lambda tmp: tmp / ("n" * 256), nnxp.NnxpError, "256 bytes"),
    "/proc": (lambda tmp: "/proc/m.nnxp", OSError, "/proc/m.nnxp"),
    "/sys": (lambda tmp: "/sys/m.nnxp", OSError, "/sys/m.nnxp"),
    "missing folder": (lambda tmp: tmp / "nope" / "m.nnxp", nnxp.NnxpError, "does not exist"),
    "a folder": (lambda tmp: tmp, nnxp.NnxpError, "folder"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PATHS))
def test_saves_to_hostile_paths_name_the_path_and_lose_nothing(tmp_path, case):
    make, error, message = HOSTILE_PATHS[case]
    m, path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(error, match=message) as info:
        m.save(make(tmp_path))
    assert isinstance(info.value, nnxp.NnxpError)
    assert path.read_bytes() == before
    assert _temporaries(tmp_path) == []


def test_a_name_at_the_length_limit_saves(tmp_path):
    """The temporary's name is short whatever the target's: a 255-byte name (legal) saves and loads."""
    m, _ = _saved(tmp_path)
    m.save(tmp_path / ("n" * 255))
    nnxp.load_model(tmp_path / ("n" * 255))


def test_a_failed_write_is_a_model_save_error_that_is_an_oserror(tmp_path, monkeypatch):
    import errno

    from nnxp.errors import ModelSaveError

    m, path = _saved(tmp_path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(ModelSaveError, match="No space left") as info:
        m.save(path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_bytes() == before and _temporaries(tmp_path) == []


def _two_definitions_file(path, tmp_path, variant):
    """A saved model rewritten so that one field or array is defined twice, with a different second value."""
    m = _model(seed=4, optimizer="sgd")
    x, y = _data(40)
    m.fit(x, y, epochs=1, verbose=0)
    m.save(tmp_path / "ok.nnxp")
    with zipfile.ZipFile(tmp_path / "ok.nnxp") as zf:
        cfg, npz = zf.read("config.json"), zf.read("weights.npz")
    if variant == "json key":  # json.loads keeps the last of two equal keys; a careful reader refuses the file
        cfg = cfg.replace(b'"epochs_trained"', b'"epochs_trained": 7, "epochs_trained"', 1)
    else:  # np.load and nnxp both accept a member with and without .npy: two arrays named param/0
        with zipfile.ZipFile(io.BytesIO(npz)) as inner:
            members = {n: inner.read(n) for n in inner.namelist()}
        buf = io.BytesIO()
        np.save(buf, np.full(np.load(io.BytesIO(members["param/0.npy"])).shape, 7.0, np.float32))
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as inner:
            for n, d in members.items():
                inner.writestr(n, d)
            inner.writestr("param/0", buf.getvalue())
        npz = out.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", cfg)
        zf.writestr("weights.npz", npz)
    return path


@pytest.mark.parametrize("variant, message", [("json key", "twice"), ("npy name", "two arrays")])
def test_a_field_or_array_defined_twice_is_refused(tmp_path, variant, message):
    path = _two_definitions_file(tmp_path / "twice.nnxp", tmp_path, variant)
    with pytest.raises(ModelFileError, match=message):
        nnxp.load_model(path)


@pytest.mark.parametrize("kind", ["fifo", "symlink loop"])
def test_save_refuses_to_replace_what_is_not_a_regular_file(tmp_path, kind):
    # the rename replaced a FIFO, a symlink loop, or (run as root, as in many containers) /dev/null itself with a
    # regular file; a careful editor refuses, and the thing at the path stays what it was
    m = _model()
    m.fit(*_data(40), epochs=1, verbose=0)
    path = tmp_path / "m.nnxp"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink(tmp_path / "other", path)
        os.symlink(path, tmp_path / "other")
    with pytest.raises(nnxp.NnxpError, match="regular file"):
        m.save(path)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    else:
        assert os.path.islink(path) and os.path.islink(tmp_path / "other")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".nnxp-")] == []
