"""Model files: one zip holding ``config.json`` and ``weights.npz``; never pickle.

Saving writes a short-named temporary in the target folder, fsyncs it and renames it over the target, so a
crash mid-save leaves the previous file intact; it writes through symlinks, respects the umask, keeps a
replaced file's mode, and removes temporaries that killed nnxp processes left behind.

Loading validates every field of the config (type, range, finiteness, consistency), works out the arrays the
config implies, checks every stored array's header (name, dtype, shape, size) against them with no data read,
and only then reads the data, straight into the model's buffers, checking it is finite (and, for second
moments, non-negative). A file therefore costs at most about the size of the model it truly describes, and
any fault is a :class:`ModelFileError` naming the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import secrets
import socket
import stat
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Device
from .errors import DeviceError, ModelFileError, ModelSaveError, NnxpError, NnxpTypeError

FORMAT = "nnxp-model"
FORMAT_VERSION = 1
_MAX_MEMBER_BYTES = 4 * 2**30  # refuse members that claim more than 4 GiB uncompressed
_MAX_CONFIG_BYTES = 2**20


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise NnxpTypeError(f"`path` must be a file path (str, bytes or PathLike). Received: path={path!r}")
    text = os.fspath(path)
    if "\0" in (text if isinstance(text, str) else text.decode("latin-1")):
        raise NnxpError(f"`path` must not contain a NUL byte. Received: path={text!r}")
    return Path(os.fsdecode(text))


# Temporaries are named .nnxp-<host>-<pid>-<random>.tmp: short whatever the target's name (so a target name at
# the length limit still works), and recognisable, so that ones left by a killed process can be removed later.
_TMP_RE = re.compile(r"^\.nnxp-([0-9a-f]{6})-(\d+)-[0-9a-f]{8}\.tmp$")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_live_temporaries: set[str] = set()  # this process's saves in progress (threads may save at once)
_live_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, as another user
        return True
    return True


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete nnxp temporaries in `folder` whose writer, a process on this host, no longer runs.

    Only this naming pattern, only this host's (a pid means nothing on another machine sharing the folder),
    and never one this process is writing.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    with _live_lock:
        live = set(_live_temporaries)
    for entry in entries:
        m = _TMP_RE.match(entry.name)
        if not m or m.group(1) != _HOST or entry.path in live:
            continue
        pid = int(m.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            pass


def _check_name_length(path: Path) -> None:
    try:
        name_max = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    size = len(os.fsencode(path.name))
    if size > name_max:
        raise NnxpError(f"`path` has a file name of {size} bytes; its folder allows {name_max}. "
                        f"Received: path={str(path)!r}")


def _save_error(exc: OSError, path: Path, what: str) -> ModelSaveError:
    reason = exc.strerror or str(exc)
    return ModelSaveError(exc.errno or 0, f"cannot save the model to {str(path)!r}: {what} failed ({reason}); "
                          "any previous file there is unchanged", str(path))


def _snapshot(state: dict, version: str) -> tuple[dict, dict]:
    """The config and arrays a save writes, from :meth:`Sequential.get_state`."""
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnxp_version": version,
        "model": state["config"],
        "epochs_trained": state["epochs_trained"],
        "compile": None,
    }
    arrays = {f"param/{i}": w for i, w in enumerate(state["weights"])}
    if state["compile"] is not None:
        ccfg = dict(state["compile"])
        arrays.update({f"optimizer/{k}": v for k, v in ccfg.pop("optimizer_state").items()})
        config["compile"] = ccfg
    return config, arrays


# the model classes a file can hold, registered by nnxp.model at import (io sits below model: it cannot import it)
_MODEL_CLASSES: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Let :func:`load_model` rebuild models of `cls` (a class decorator; Keras's register_keras_serializable).
    `cls` provides ``from_config(config, device)``, ``weight_layout()``, ``set_flat_weights(flat)`` and
    ``get_state()``."""
    _MODEL_CLASSES[cls.__name__] = cls
    return cls


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (see the module docstring).

    Like a careful editor: a symlink is written through (the link stays, its target is replaced); a new file
    gets the umask's permissions and a replaced file keeps its mode (and owner where allowed).
    """
    from ._version import __version__

    path = _check_path(path)
    _check_name_length(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
        _check_name_length(path)
    if path.is_dir():
        raise NnxpError(f"`path` must be a file name, not a folder. Received: path={str(path)!r}")
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        mode = None  # a new file
    # the rename would replace a FIFO, a device (as root: /dev/null itself) or a link that loops with a file
    if mode is not None and not stat.S_ISREG(mode):
        what = "a symlink that loops" if stat.S_ISLNK(mode) else "a FIFO, device or socket"
        raise NnxpError(f"`path` must be a regular file or a new name; {str(path)!r} is {what}, which a save "
                        f"would replace. Received: path={str(path)!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise NnxpError(f"`path` must be in an existing folder. Received: path={str(path)!r} "
                        f"({str(folder)!r} does not exist)")
    # (get_state refuses to run mid-step from another thread: the file would hold a partial epoch)
    config, arrays = _snapshot(model.get_state(), __version__)
    _remove_stale_temporaries(folder)
    try:
        old = os.stat(path)
    except OSError:
        old = None
    tmp = str(folder / f".nnxp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 lets the umask decide for a new file; a replaced file's mode is restored exactly below
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise _save_error(exc, path, "creating a file in its folder") from None
    with _live_lock:
        _live_temporaries.add(tmp)
    try:
        try:
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    try:
                        os.fchown(fd, old.st_uid, old.st_gid)
                    except OSError:  # only root may give a file away; keep ours
                        pass
            with os.fdopen(fd, "wb") as fh:
                with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr("config.json", json.dumps(config, indent=1))
                    zf.writestr("weights.npz", _npz_bytes(arrays))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise _save_error(exc, path, "writing") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        with _live_lock:
            _live_temporaries.discard(tmp)
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ModelFileError(f"model file must contain {name!r}. Received members: {zf.namelist()[:10]}") from None
    if info.file_size > limit:
        raise ModelFileError(f"model file member {name!r} claims {info.file_size} bytes, more than the {limit} allowed")
    with zf.open(info) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ModelFileError(f"model file member {name!r} is larger than the {limit} bytes allowed")
    return data


def load_model(path: str | os.PathLike, device: str | Device | None = None) -> Any:
    """Rebuild a model saved with ``model.save(path)`` on `device` (default: NNXP_DEVICE or CPU)."""
    p = _check_path(path)
    if not p.is_file():
        raise ModelFileError(f"`path` must be an existing model file. Received: path={str(path)!r}")
    try:
        return _load(p, device)
    except NnxpError as exc:
        if isinstance(exc, (ModelFileError, DeviceError)):
            raise
        raise ModelFileError(f"model file {str(path)!r} is not a valid nnxp model: {exc}") from None
    except Exception as exc:  # zip/json/npz faults of every kind become one clear error
        raise ModelFileError(
            f"model file {str(path)!r} is damaged or not an nnxp model ({type(exc).__name__}: {exc})"
        ) from None


# ------------------------------------------------------------------------------------------------
# Loading. Nothing is allocated until the config has been validated field by field and every stored
# array's header (name, dtype, shape) matches what the config implies; the data are then read straight
# into the model's buffers, so a load costs about the size of the model the file truly describes.
# ------------------------------------------------------------------------------------------------
_REQUIRED = object()
_MAX_INT = 2**63 - 1
_MAX_NPY_HEADER = 4096  # numpy writes 64- or 128-byte headers; anything longer is not from np.save
_ZIP_OVERHEAD = 512  # local header + central directory entry of one member (name length included)
# up to this, weights.npz is unpacked into memory before its arrays are read (one pass, so fast; at most this
# much beyond the model's own buffers); a larger one is streamed (a few passes, a chunk in memory at a time)
_BUFFERED_NPZ_BYTES = 64 * 2**20


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _integer(low: int, high: int = _MAX_INT):
    def check(field: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ModelFileError(f"`{field}` must be an integer in [{low}, {high}]. Received: {field}={_short(value)}")
        return value
    return check


def _choice(*options: Any):
    def check(field: str, value: Any) -> Any:
        if not isinstance(value, str) or value not in options:
            raise ModelFileError(f"`{field}` must be one of {list(options)}. Received: {field}={_short(value)}")
        return value
    return check


def _string(max_len: int = 1000):
    def check(field: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > max_len:
            raise ModelFileError(f"`{field}` must be a string of at most {max_len} characters. "
                                 f"Received: {field}={_short(value)}")
        return value
    return check


def _of_type(kind: type, what: str):
    def check(field: str, value: Any) -> Any:
        if not isinstance(value, kind):
            raise ModelFileError(f"`{field}` must be {what}. Received: {field}={_short(value)}")
        return value
    return check


def _optional(check):
    return lambda field, value: None if value is None else check(field, value)


# One table per JSON object: key -> (check, default or _REQUIRED). Unknown keys are refused: a field this
# version does not know means damage or a newer writer (which bumps format_version).
_TOP_FIELDS = {
    "format": (_choice(FORMAT), _REQUIRED),
    "format_version": (_integer(1, FORMAT_VERSION), _REQUIRED),
    "nnxp_version": (_string(100), None),
    "model": (_of_type(dict, "a JSON object"), _REQUIRED),
    "epochs_trained": (_integer(0, 2**31), 0),
    "compile": (_optional(_of_type(dict, "a JSON object or null")), None),
}
_MODEL_FIELDS = {
    "name": (_optional(_string()), None),
    "dtype": (_choice("float32", "float64"), _REQUIRED),
    "precision": (_choice("highest", "tf32"), "highest"),
    "seed": (_integer(0), _REQUIRED),
    # a saved model is always built, so its input width is always known: null would drop the weights
    "input_dim": (_integer(1, 2**31), _REQUIRED),
    "layers": (_of_type(list, "a list of layers"), _REQUIRED),
}
_LAYER_FIELDS = {
    "class_name": (_string(100), _REQUIRED),
    "config": (_of_type(dict, "a JSON object"), _REQUIRED),
}
_COMPILE_FIELDS = {
    "loss": (_string(100), _REQUIRED),
    "metrics": (_of_type(list, "a list of metric names"), []),
    "optimizer": (_of_type(dict, "a JSON object"), _REQUIRED),
    "optimizer_iterations": (_integer(0, 2**53), 0),
}
# optimizer state slots that are running averages of squares (or maxima of magnitudes): never negative
_NON_NEGATIVE_SLOTS = {"v", "u", "avg_sq", "accumulator", "accumulated_grad", "accumulated_delta"}


def _fields(where: str, obj: Any, table: dict) -> dict:
    """`obj` checked against `table`: every key known, every value valid, defaults filled in."""
    if not isinstance(obj, dict):
        raise ModelFileError(f"`{where or 'config.json'}` must be a JSON object. Received: {_short(obj)}")
    unknown = sorted(set(obj) - set(table))
    if unknown:
        raise ModelFileError(f"`{where or 'config.json'}` has unknown keys {unknown[:5]}; the known keys are "
                             f"{sorted(table)}")
    out = {}
    for key, (check, default) in table.items():
        field = f"{where}.{key}" if where else key
        if key in obj:
            out[key] = check(field, obj[key])
        elif default is _REQUIRED:
            raise ModelFileError(f"`{field}` is missing from the model file")
        else:
            out[key] = default
    return out


def _refuse_constant(name: str) -> Any:
    raise ModelFileError(f"config.json holds {name}, which is not valid JSON")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > 30:  # no field needs more; int() of a huge literal costs quadratic time
        raise ModelFileError(f"config.json holds an integer with {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ModelFileError(f"config.json holds a number that overflows a float: {_short(text)}")
    return value


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all distinct (json.loads would silently keep the last of two)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ModelFileError(f"config.json defines the key {_short(twice)} twice in one object")
    return obj


def _read_config(zf: zipfile.ZipFile) -> dict:
    raw = _read_member(zf, "config.json", _MAX_CONFIG_BYTES)
    try:
        return json.loads(raw.decode("utf-8"), parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ModelFileError("config.json is nested too deeply to be an nnxp model") from None


class _Plan:
    """What the config implies: the unbuilt model, its parameter slices and the arrays the file must hold."""

    def __init__(self, config: dict, device: Any) -> None:
        top = _fields("", config, _TOP_FIELDS)
        mcfg = _fields("model", top["model"], _MODEL_FIELDS)
        for i, entry in enumerate(mcfg["layers"]):
            entry = _fields(f"model.layers[{i}]", entry, _LAYER_FIELDS)
            _optional(_string())(f"model.layers[{i}].config.name", entry["config"].get("name"))
        self.top, self.mcfg = top, mcfg
        self.dtype = np.dtype(mcfg["dtype"])
        try:  # the unbuilt model with its layers sized: the parameter layout, without allocating it
            model = _MODEL_CLASSES["Sequential"].from_config(mcfg, device=device)
            self.slices = model.weight_layout()
        except DeviceError:
            raise
        except NnxpError as exc:
            raise ModelFileError(f"`model` is invalid: {exc}") from None
        offset = sum(math.prod(shape) for *_, shape in self.slices)
        self.size = offset
        self.expected = {f"param/{i}": shape for i, (_, _, _, shape) in enumerate(self.slices)}
        self.optional: dict[str, tuple] = {}
        self.compile = None
        if top["compile"] is not None:
            ccfg = self.compile = _fields("compile", top["compile"], _COMPILE_FIELDS)
            try:
                model.compile(ccfg["optimizer"], ccfg["loss"], ccfg["metrics"])
            except NnxpError as exc:
                raise ModelFileError(f"`compile` is invalid: {exc}") from None
            # the state exists once a step has run: all of its slots, or none
            self.optional = {f"optimizer/{slot}": (self.size,) for slot in model.optimizer.slot_names()}
        self.model = model

    def max_npz_bytes(self) -> int:
        """The largest weights.npz these arrays can make: data, .npy headers and zip records."""
        n_arrays = len(self.expected) + len(self.optional)
        n_values = sum(math.prod(s) for s in self.expected.values()) + self.size * len(self.optional)
        return n_arrays * (_MAX_NPY_HEADER + _ZIP_OVERHEAD) + 22 + n_values * self.dtype.itemsize


def _npy_header(fh: Any, name: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header length) of the .npy stream `fh`, reading only its header."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            reader = np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(fh, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise ModelFileError(f"array {name!r} has a damaged .npy header ({exc})") from None
    return shape, fortran, dtype, fh.tell()


def _check_arrays(npz: zipfile.ZipFile, plan: _Plan) -> dict[str, zipfile.ZipInfo]:
    """Every stored array's name, size, dtype and shape against the plan; reads headers only."""
    infos = npz.infolist()
    names = [info.filename for info in infos]
    stored = {n[:-4] if n.endswith(".npy") else n: info for n, info in zip(names, infos)}
    if len(stored) != len(names):  # "a" and "a.npy" are the same array to np.load, as to us
        raise ModelFileError("weights.npz holds two arrays of the same name")
    unexpected = [k for k in stored if k not in plan.expected and k not in plan.optional]
    if unexpected:
        raise ModelFileError(f"model file holds unexpected arrays: {unexpected[:5]}")
    missing = [k for k in plan.expected if k not in stored]
    if missing:
        raise ModelFileError(f"model file holds {len(plan.expected) - len(missing)} of the {len(plan.expected)} "
                             f"parameter arrays the layers need; missing: {missing[:5]}")
    opt = [k for k in plan.optional if k in stored]
    if opt and len(opt) != len(plan.optional):
        raise ModelFileError(f"optimizer state must hold all of {sorted(plan.optional)} or none. Received: {opt}")
    iterations = plan.compile["optimizer_iterations"] if plan.compile else 0
    if plan.optional and not opt and iterations > 0:
        raise ModelFileError(f"`compile.optimizer_iterations`={iterations} but the optimizer state "
                             f"{sorted(plan.optional)} is missing")
    for key, info in sorted(stored.items(), key=lambda kv: kv[1].header_offset):  # forward through the stream
        shape = plan.expected.get(key) or plan.optional[key]
        nbytes = math.prod(shape) * plan.dtype.itemsize
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"array {key!r} uses an unsupported compression ({info.compress_type})")
        if info.file_size > nbytes + _MAX_NPY_HEADER:  # checked before a byte is unpacked
            raise ModelFileError(f"array {key!r} claims {info.file_size} bytes; shape {shape} of {plan.dtype} "
                                 f"needs {nbytes}")
        with npz.open(info) as fh:
            got_shape, fortran, dtype, header = _npy_header(fh, key)
        if dtype != plan.dtype:
            raise ModelFileError(f"array {key!r} must have dtype {plan.dtype}. Received: dtype {dtype}")
        if tuple(got_shape) != shape:
            raise ModelFileError(f"array {key!r} must have shape {shape}. Received: shape {tuple(got_shape)}")
        if fortran and len(shape) > 1:
            raise ModelFileError(f"array {key!r} must be stored in C order")
        if info.file_size != header + nbytes:
            raise ModelFileError(f"array {key!r} holds {info.file_size - header} data bytes; its header says {nbytes}")
    return stored


def _read_into(npz: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, out: np.ndarray) -> None:
    """Fill the flat host array `out` with the data of member `info` (CRC-checked to its end)."""
    with npz.open(info) as fh:
        _npy_header(fh, key)
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):  # in 1 MiB chunks: zipfile's readinto would build the whole array as bytes first
            chunk = fh.read(min(len(view) - done, 2**20))
            if not chunk:
                raise ModelFileError(f"array {key!r} ends early")
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
        if fh.read(1):  # reading to the end makes zipfile check the CRC
            raise ModelFileError(f"array {key!r} holds more data than its shape")


def _finite(key: str, a: np.ndarray, field: str) -> None:
    if not np.isfinite(a).all():
        raise ModelFileError(f"`{field}` (array {key!r}) must be finite. Received "
                             f"{int((~np.isfinite(a)).sum())} NaN or infinite values")


def _load(path: Path, device: Any) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if sorted(names) != ["config.json", "weights.npz"]:
            raise ModelFileError(f"model file must hold exactly config.json and weights.npz. Received: "
                                 f"{names[:10]}")
        config = _read_config(zf)
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ModelFileError(f"file {str(path)!r} is not an nnxp model (no format marker {FORMAT!r})")
        version = config.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise ModelFileError(
                f"model file format_version must be 1..{FORMAT_VERSION} for this nnxp. Received: {version!r}; "
                "upgrade nnxp to read files written by a newer version"
            )
        plan = _Plan(config, device)
        info = zf.getinfo("weights.npz")
        limit = plan.max_npz_bytes()
        if info.file_size > limit:
            raise ModelFileError(f"model file member 'weights.npz' claims {info.file_size} bytes; the arrays the "
                                 f"config describes need at most {limit}")
        if info.file_size <= _BUFFERED_NPZ_BYTES:
            raw: Any = io.BytesIO(_read_member(zf, "weights.npz", limit))
        else:
            n_arrays = len(plan.expected) + len(plan.optional)
            raw = _TailCached(zf.open(info), info.file_size, 2**20 + n_arrays * _ZIP_OVERHEAD)
        with raw, zipfile.ZipFile(raw) as npz:
            stored = _check_arrays(npz, plan)
            return _assemble(plan, npz, stored)


class _TailCached(io.RawIOBase):
    """A seekable view of a compressed zip member that keeps its last `tail` bytes in memory.

    zipfile reads an archive's end (the central directory) before anything else, and every backward seek in a
    compressed member unpacks it again from the start: the cached tail turns those three passes into one.
    """

    def __init__(self, fh: Any, size: int, tail: int) -> None:
        self._fh, self._size, self._pos = fh, size, 0
        self._tail_start = max(0, size - tail)
        self._goto(self._tail_start)
        self._tail = fh.read(size - self._tail_start)

    def _goto(self, pos: int) -> None:
        """Move the member's stream to `pos`, unpacking 1 MiB at a time (zipfile's own seek takes 16 MiB)."""
        here = self._fh.tell()
        if pos < here:
            self._fh.seek(0)  # back to the start of the member: nothing unpacked yet
            here = 0
        while here < pos:
            got = len(self._fh.read(min(pos - here, 2**20)))
            if not got:
                break
            here += got

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, offset + (0, self._pos, self._size)[whence])
        return self._pos

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else n
        if self._pos >= self._tail_start:
            start = self._pos - self._tail_start
            data = self._tail[start : start + n]
        else:  # a short read at the tail's start is fine for zipfile
            if self._fh.tell() != self._pos:
                self._goto(self._pos)
            data = self._fh.read(min(n, self._tail_start - self._pos))
        self._pos += len(data)
        return data

    def close(self) -> None:
        self._fh.close()
        super().close()


def _assemble(plan: _Plan, npz: zipfile.ZipFile, stored: dict) -> Any:
    """Allocate the model's buffers and read the checked arrays into them."""
    model = plan.model
    flat = np.empty(plan.size, dtype=plan.dtype)
    for i, (layer, name, offset, shape) in enumerate(plan.slices):
        key = f"param/{i}"
        part = flat[offset : offset + math.prod(shape)]
        _read_into(npz, stored[key], key, part)
        _finite(key, part, f"{layer}.{name}")
    model.set_flat_weights(flat)
    del flat
    if plan.compile is None:
        model.epochs_trained = plan.top["epochs_trained"]
        return model
    opt = model.optimizer
    iterations = plan.compile["optimizer_iterations"]
    if any(k in stored for k in plan.optional):
        opt.build(model.params)
        host = np.empty(plan.size, dtype=plan.dtype)
        for key in plan.optional:
            slot = key.split("/", 1)[1]
            _read_into(npz, stored[key], key, host)
            _finite(key, host, f"optimizer state {slot!r}")
            if slot in _NON_NEGATIVE_SLOTS and (host < 0).any():
                raise ModelFileError(f"optimizer state {slot!r} (array {key!r}) must be >= 0 (it accumulates "
                                     f"squares). Received {int((host < 0).sum())} negative values")
            with model.device.use():  # the state lives on the model's GPU; CuPy refuses cross-device copies
                opt.state[slot][...] = model.device.asarray(host)
    opt.iterations = iterations
    try:  # a schedule must give a usable rate at the step the file resumes from
        lr = opt.current_learning_rate()
    except (NnxpError, ArithmeticError) as exc:
        raise ModelFileError(f"`compile.optimizer.learning_rate` cannot be evaluated at step {iterations}: "
                             f"{exc}") from None
    if not math.isfinite(lr) or abs(lr) > float(np.finfo(plan.dtype).max):  # finite in the model's dtype too
        raise ModelFileError(f"`compile.optimizer.learning_rate` is {lr} at step {iterations}, which a "
                             f"{plan.dtype} model cannot use")
    model.epochs_trained = plan.top["epochs_trained"]
    return model
