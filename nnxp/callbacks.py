"""Callbacks: hooks that run around epochs and batches of ``fit``.

History records per-epoch logs; ProgbarLogger prints progress; CSVLogger writes
them to a file; EarlyStopping, ModelCheckpoint and LearningRateScheduler act on
the model between epochs.
Logs are plain dicts of Python floats, read once per epoch.
"""

from __future__ import annotations

import csv
import math
import numbers
import os
import string
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from . import distributed
from .errors import NnxpError, NnxpTypeError


class Callback:
    """Base class: override the hooks you need. ``fit`` sets ``self.model`` (:meth:`set_model`) and ``self.params``
    (:meth:`set_params`: ``epochs``, ``steps`` per epoch, ``samples``, ``batch_size``, ``verbose`` and ``metrics``,
    the names the epoch logs will hold) before ``on_train_begin``, as Keras does.

    A callback that adds entries to the epoch logs lists their names in `log_keys`, so that others
    (ModelCheckpoint's file name) can rely on them before training starts.
    """

    model: Any = None
    params: dict | None = None
    log_keys: tuple[str, ...] = ()

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None: ...

    def on_train_end(self, logs: dict | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None: ...

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None: ...


class History(Callback):
    """``history[key]`` is the list of that log's values per epoch ("loss", "accuracy", "val_loss", ...)."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def plot(self, path: str, title: str | None = None) -> str:
        """Save train/validation curves to a PNG at `path` (needs matplotlib: ``nnxp[plot]``)."""
        from .plot import plot_history

        if not distributed.current().is_main:  # under MPI only the main rank draws
            return path
        return plot_history(self, path, title)

    def __repr__(self) -> str:
        note = ", interrupted" if self.interrupted else ""
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)}{note})"


def _format_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """One line per epoch with loss, metrics, samples/s and time; a tqdm bar while it runs when available."""

    def __init__(self, verbose: int = 1, stream: Any = None) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self._bar = None
        self.epochs: int | None = None  # unknown until set_params (fit calls it): the line then leaves them out
        self.samples: int | None = None
        self._t0 = time.perf_counter()

    def on_train_begin(self, logs=None):
        params = self.params or {}
        self.epochs, self.samples = params.get("epochs"), params.get("samples")

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._bar = None
        if self.verbose == 1:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=self.samples, desc=self._epoch_name(epoch), unit="sample",
                             unit_scale=True, leave=False, file=self.stream, dynamic_ncols=True,
                             disable=None)  # None: no bar when the stream is not a terminal

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(logs["size"])  # a host int: no device sync

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        if self._bar is not None:
            self._bar.close()
        if self.verbose:
            head = f"{self._epoch_name(epoch)} - {seconds:.2f}s"
            if self.samples is not None:
                rate = self.samples / seconds if seconds > 0 else float("inf")
                head += f" - {rate:,.0f} samples/s"
            line = f"{head} - {_format_logs(logs or {})}"
            print(line, file=self.stream, flush=True)

    def _epoch_name(self, epoch: int) -> str:
        return f"Epoch {epoch + 1}" + ("" if self.epochs is None else f"/{self.epochs}")


def _real(name: str, value: Any, low: float = -math.inf) -> float:
    """`value` as a finite float >= `low`; any real number type (int, float, NumPy scalars) is fine."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(value) or value < low:
        rule = "a finite number" + (f" >= {low:g}" if low > -math.inf else "")
        raise NnxpError(f"`{name}` must be {rule}. Received: {name}={value!r}")
    return float(value)


def _check_monitor(monitor: Any) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise NnxpTypeError(f"`monitor` must be the name of a logged value such as 'val_loss'. "
                            f"Received: monitor={monitor!r}")
    return monitor


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise NnxpTypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return bool(value)


def _check_verbose(verbose: Any) -> int:
    if not isinstance(verbose, numbers.Integral) or verbose < 0:  # True/False are fine (1/0)
        raise NnxpError(f"`verbose` must be an integer >= 0. Received: verbose={verbose!r}")
    return int(verbose)


def _mode_better(mode: str, monitor: str) -> Callable[[float, float], bool]:
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise NnxpError(f"`mode` must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor and "loss" not in monitor) else "min"
    return (lambda a, b: a > b) if mode == "max" else (lambda a, b: a < b)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs."""

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        verbose: int = 0,
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise NnxpError(f"`patience` must be an integer >= 0. Received: patience={patience!r}")
        monitor = _check_monitor(monitor)
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(_real("min_delta", min_delta))
        self.restore_best_weights = _check_flag("restore_best_weights", restore_best_weights)
        self.verbose = _check_verbose(verbose)
        self._better = _mode_better(mode, monitor)
        self.mode = mode

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.best = math.nan
        self.best_weights = None
        self.best_epoch = None
        self.stopped_epoch = None

    def _improved(self, value: float) -> bool:
        if math.isnan(self.best):
            return True
        shift = -self.min_delta if self._better(0.0, 1.0) else self.min_delta
        return self._better(value, self.best + shift)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"EarlyStopping monitors {self.monitor!r}, which is not in the logs ({list(logs or {})}).",
                          stacklevel=2)
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
            if self.verbose:
                print(f"Early stopping at epoch {epoch + 1}; best {self.monitor}={self.best:.4f} "
                      f"at epoch {self.best_epoch + 1}")


def _template_fields(template: str) -> list[str]:
    """The names `template` formats (``{epoch:02d}`` -> "epoch"); refuses what str.format would choke on."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise NnxpError(f"`filepath` is not a valid format template ({exc}). Received: filepath={template!r}; "
                        "write a literal brace as '{{' or '}}'") from None
    fields = []
    for _, field, spec, _ in parts:
        if field is None:
            continue
        if not field.isidentifier() or "{" in (spec or ""):
            raise NnxpError(f"`filepath` fields must be log names such as {{epoch}} or {{val_loss:.2f}}. "
                            f"Received: {{{field}}} in filepath={template!r}")
        fields.append(field)
    return fields


class ModelCheckpoint(Callback):
    """Save the model (atomically) after each epoch, or only when `monitor` improves.

    `filepath` may name the epoch and any logged value, e.g. ``"m-{epoch:02d}-{val_loss:.3f}.nnxp"``; the
    template and the values it uses are checked when training begins, before an epoch is spent.
    """

    def __init__(self, filepath: str, monitor: str = "val_loss", save_best_only: bool = False, mode: str = "auto",
                 verbose: int = 0) -> None:
        if not isinstance(filepath, (str, bytes)) and not hasattr(filepath, "__fspath__"):
            raise NnxpTypeError(f"`filepath` must be a path. Received: filepath={filepath!r}")
        self._template = os.fsdecode(filepath)
        self._fields = _template_fields(self._template)
        self.filepath, self.monitor = filepath, _check_monitor(monitor)
        self.save_best_only = _check_flag("save_best_only", save_best_only)
        self.verbose = _check_verbose(verbose)
        self._better = _mode_better(mode, monitor)
        self.best = math.nan

    def on_train_begin(self, logs=None):
        keys = (self.params or {}).get("metrics")
        if keys is None:  # driven by hand, not by fit: nothing to check against
            return
        available = ["epoch", "lr", *keys]
        missing = [f for f in self._fields if f not in available]
        if missing:
            hint = " (validation values need validation_data or validation_split)" if any(
                f.startswith("val_") for f in missing) else ""
            raise NnxpError(f"`filepath` uses {missing}, which this fit does not log{hint}. Available: "
                            f"{available}. Received: filepath={self._template!r}")
        try:  # the format specs, against the types fit will pass (epoch an int, logged values floats)
            path = self._template.format(**{k: 1 if k == "epoch" else 0.5 for k in available})
        except (ValueError, TypeError) as exc:
            raise NnxpError(f"`filepath` cannot be formatted with the logged values ({exc}). "
                            f"Received: filepath={self._template!r}") from None
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            raise NnxpError(f"`filepath` must be in an existing folder. Received: filepath={self._template!r} "
                            f"({folder!r} does not exist)")
        try:  # a name the folder cannot hold would fail only at the first save, after an epoch has trained
            name_max = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            name_max = 255
        size = len(os.fsencode(os.path.basename(path)))
        if size > name_max:
            raise NnxpError(f"`filepath` makes file names of about {size} bytes; its folder allows {name_max}. "
                            f"Received: filepath={self._template!r}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        values = dict(logs)
        if "lr" in self._fields and "lr" not in values:  # the scheduler may run after this callback
            values["lr"] = self.model.optimizer.current_learning_rate()
        path = self._template.format(epoch=epoch + 1, **{k: v for k, v in values.items() if k != "epoch"})
        value = logs.get(self.monitor)
        if self.save_best_only:
            if value is None:
                warnings.warn(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the logs.", stacklevel=2)
                return
            if not (math.isnan(self.best) or self._better(value, self.best)):
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}")
                return
            previous, self.best = self.best, value
        self.model.save(path)
        if self.verbose:  # Keras's wording: the epoch, the metric and what happened to it
            if self.save_best_only:
                start = "-inf" if self._better(1.0, 0.0) else "inf"  # Keras's starting best, by the mode
                was = start if math.isnan(previous) else f"{previous:.5f}"
                print(f"Epoch {epoch + 1}: {self.monitor} improved from {was} to {value:.5f}, saving model to {path}")
            else:
                metric = f" ({self.monitor}={value:.5f})" if value is not None else ""
                print(f"Epoch {epoch + 1}: saving model to {path}{metric}")


class LearningRateScheduler(Callback):
    """Set the optimizer's rate each epoch to ``schedule(epoch, current_rate)``."""

    log_keys = ("lr",)

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise NnxpTypeError(f"`schedule` must be callable as schedule(epoch, lr). Received: {schedule!r}")
        self.schedule, self.verbose = schedule, _check_verbose(verbose)

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        lr = self.schedule(epoch, opt.current_learning_rate())
        # any real number type: np.float32(0.01) is as good as 0.01
        ok = isinstance(lr, numbers.Real) and not isinstance(lr, (bool, np.bool_)) and math.isfinite(lr) and lr >= 0
        if not ok:
            raise NnxpError(f"`schedule` must return a finite learning rate >= 0. Received: {lr!r} at epoch {epoch}")
        opt.learning_rate = float(lr)
        if self.verbose:
            print(f"Epoch {epoch + 1}: learning rate {lr:.6g}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.model.optimizer.current_learning_rate()


class CSVLogger(Callback):
    """Write one CSV row per epoch: ``epoch`` (counted from 0, as Keras) and every value the epoch logs.

    The columns are fixed when training begins, from ``params["metrics"]`` (the loss, the compiled metrics, their
    ``val_`` twins and what other callbacks declare in `log_keys`, such as ``lr``); a value an epoch did not log
    is written as ``NA``. With ``append=True`` a later fit adds rows to the same file (its header must match);
    otherwise the file is replaced. Rows are flushed as they are written, so an interrupted run keeps its
    finished epochs. Under MPI only the main rank writes.
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",", append: bool = False) -> None:
        if not isinstance(filename, (str, bytes)) and not hasattr(filename, "__fspath__"):
            raise NnxpTypeError(f"`filename` must be a path. Received: filename={filename!r}")
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n\"":
            raise NnxpError(f"`separator` must be one character other than a quote or a line break. "
                            f"Received: separator={separator!r}")
        self.filename = os.fsdecode(filename)
        self.separator = separator
        self.append = _check_flag("append", append)
        self._file: Any = None
        self._writer: Any = None
        self._columns: list[str] = []

    def on_train_begin(self, logs=None):
        keys = (self.params or {}).get("metrics")
        self._columns = ["epoch", *(keys if keys is not None else ["loss"])]
        if not distributed.current().is_main:
            return
        folder = os.path.dirname(self.filename) or "."
        if not os.path.isdir(folder):
            raise NnxpError(f"`filename` must be in an existing folder. Received: filename={self.filename!r} "
                            f"({folder!r} does not exist)")
        header_needed = True
        if self.append and os.path.isfile(self.filename) and os.path.getsize(self.filename) > 0:
            with open(self.filename, newline="", encoding="utf-8") as f:
                found = next(csv.reader(f, delimiter=self.separator), [])
            if found != self._columns:  # rows under a different header would be misread later
                raise NnxpError(f"`filename` holds columns {found}, but this fit logs {self._columns}; append to "
                                f"a file of the same columns or use append=False. Received: filename={self.filename!r}")
            header_needed = False
        self._file = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file, delimiter=self.separator, lineterminator="\n")
        if header_needed:
            self._writer.writerow(self._columns)
            self._file.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            return
        values = dict(logs or {})
        if "lr" in self._columns and "lr" not in values and self.model is not None:
            values["lr"] = self.model.optimizer.current_learning_rate()  # the scheduler may run after this callback
        values["epoch"] = epoch
        self._writer.writerow([values.get(k, "NA") for k in self._columns])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None
