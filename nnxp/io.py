"""Model files: one zip holding ``config.json`` and ``weights.npz``; never pickle.

Saving writes a temporary file in the target folder, fsyncs it and renames it
over the target, so a crash mid-save leaves the previous file intact. Loading
checks the format version, the layer configuration and every array's name,
shape and dtype, and turns any fault into a :class:`ModelFileError`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Device
from .errors import DeviceError, ModelFileError, NnxpError, NnxpTypeError

FORMAT = "nnxp-model"
FORMAT_VERSION = 1
_MAX_MEMBER_BYTES = 4 * 2**30  # refuse members that claim more than 4 GiB uncompressed
_MAX_CONFIG_BYTES = 2**20


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise NnxpTypeError(f"`path` must be a file path (str or PathLike). Received: path={path!r}")
    return Path(path)


def save_model(model: Any, path: str | os.PathLike) -> None:
    """Write `model` to `path` atomically (see the module docstring)."""
    from ._version import __version__

    path = _check_path(path)
    if path.is_dir():
        raise NnxpError(f"`path` must be a file name, not a folder. Received: path={str(path)!r}")
    if not path.parent.is_dir():
        raise NnxpError(f"`path` must be in an existing folder. Received: path={str(path)!r} "
                        f"({str(path.parent)!r} does not exist)")
    model._require_built()  # builds from the first layer's input_dim, or says there are no weights yet
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "nnxp_version": __version__,
        "model": model.get_config(),
        "epochs_trained": model.epochs_trained,
        "compile": None,
    }
    arrays = {f"param/{i}": w for i, w in enumerate(model.get_weights())}
    if model.loss is not None:
        opt = model.optimizer
        config["compile"] = {
            "loss": model.loss.name,
            "metrics": list(model.metrics),
            "optimizer": opt.get_config(),
            "optimizer_iterations": opt.iterations,
        }
        arrays.update({f"optimizer/{k}": v for k, v in opt.get_state().items()})
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("config.json", json.dumps(config, indent=1))
                zf.writestr("weights.npz", _npz_bytes(arrays))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def _load(path: Path, device: Any) -> Any:
    from .layers import from_config as layer_from_config
    from .model import Sequential

    with zipfile.ZipFile(path) as zf:
        config = json.loads(_read_member(zf, "config.json", _MAX_CONFIG_BYTES).decode("utf-8"))
        raw = _read_member(zf, "weights.npz", _MAX_MEMBER_BYTES)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelFileError(f"file {str(path)!r} is not an nnxp model (no format marker {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ModelFileError(
            f"model file format_version must be 1..{FORMAT_VERSION} for this nnxp. Received: {version!r}; "
            "upgrade nnxp to read files written by a newer version"
        )
    mcfg = config["model"]
    layers = [layer_from_config(entry["class_name"], entry["config"]) for entry in mcfg["layers"]]
    model = Sequential(layers, device=device, seed=mcfg["seed"], dtype=mcfg["dtype"], name=mcfg.get("name"),
                       precision=mcfg.get("precision", "highest"))
    input_dim = mcfg.get("input_dim")
    with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    n_params = sum(1 for k in arrays if k.startswith("param/"))
    if input_dim is not None:
        model.build(input_dim)
    weights = [arrays.get(f"param/{i}") for i in range(n_params)]
    if any(w is None for w in weights) or (model.built and n_params != len(model._slices)):
        raise ModelFileError(f"model file holds {n_params} parameter arrays; the layers need "
                             f"{len(model._slices) if model.built else '?'}")
    for i, w in enumerate(weights):
        if w.dtype != model.dtype:
            raise ModelFileError(f"parameter {i} must have dtype {model.dtype}. Received: {w.dtype}")
    if model.built:
        model.set_weights(weights)
    compile_cfg = config.get("compile")
    if compile_cfg:
        model.compile(compile_cfg["optimizer"], compile_cfg["loss"], compile_cfg["metrics"])
        state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("optimizer/")}
        if state:
            model.optimizer.set_state(state, model.params)
        model.optimizer.iterations = int(compile_cfg["optimizer_iterations"])
    model.epochs_trained = int(config.get("epochs_trained", 0))
    unexpected = [k for k in arrays if not (k.startswith("param/") or k.startswith("optimizer/"))]
    if unexpected:
        raise ModelFileError(f"model file holds unexpected arrays: {unexpected[:5]}")
    return model


