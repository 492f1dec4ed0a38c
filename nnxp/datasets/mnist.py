"""MNIST and Fashion-MNIST: find the four IDX files on disk, or download them once.

Search order: the explicit `path` (and ``path/<name>``), ``$NNXP_DATA/<name>``,
``$NNXP_DATA``, the user cache ``$XDG_CACHE_HOME/nnxp/<name>`` (default
``~/.cache/nnxp/<name>``), then system folders (Debian's ``dataset-fashion-mnist``).
Downloads go to the cache through pooch, which streams into a temporary file and
keeps it only when its SHA-256 matches the official one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnxp.datasets.idx import read_idx
from nnxp.errors import DatasetError

Split = tuple[np.ndarray, np.ndarray]
_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass(frozen=True)
class _Source:
    title: str  # for messages
    name: str  # folder name under $NNXP_DATA and the cache
    url_env: str  # environment variable that overrides the mirrors
    mirrors: tuple[str, ...]  # base URLs, tried in order; all serve the same bytes
    sha256: dict[str, str]  # of the official .gz files, by file name
    system_dirs: tuple[str, ...] = ()
    package_hint: str = ""


_SOURCES = {
    "mnist": _Source(
        title="MNIST",
        name="mnist",
        url_env="NNXP_MNIST_URL",
        # yann.lecun.com often refuses downloads now; these mirrors serve the identical files.
        mirrors=(
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": _Source(
        title="Fashion-MNIST",
        name="fashion-mnist",
        url_env="NNXP_FASHION_MNIST_URL",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # the official host (HTTP only)
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
        # Debian re-compresses the files, so their checksums differ from the official ones;
        # local files are checked by their IDX structure instead.
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        package_hint="apt-get install dataset-fashion-mnist",
    ),
}


def load_mnist(
    path: str | os.PathLike | None = None, download: bool = True, base_url: str | None = None
) -> tuple[Split, Split]:
    """Return ``((x_train, y_train), (x_test, y_test))`` of MNIST digits.

    x is uint8 (N, 28, 28) with values 0..255 and y is uint8 (N,) with labels 0..9;
    N is 60,000 for training and 10,000 for testing. `base_url` (or
    ``$NNXP_MNIST_URL``) replaces the download mirrors.
    """
    return _load(_SOURCES["mnist"], path, download, base_url)


def load_fashion_mnist(
    path: str | os.PathLike | None = None, download: bool = True, base_url: str | None = None
) -> tuple[Split, Split]:
    """Return ``((x_train, y_train), (x_test, y_test))`` of Fashion-MNIST (Zalando, MIT licence).

    Shapes and dtypes as :func:`load_mnist`. `base_url` (or ``$NNXP_FASHION_MNIST_URL``)
    replaces the download mirrors.
    """
    return _load(_SOURCES["fashion-mnist"], path, download, base_url)


def _load(src: _Source, path: str | os.PathLike | None, download: bool, base_url: str | None) -> tuple[Split, Split]:
    searched = _search_dirs(src, path)
    files = next((found for d in searched if (found := _find_files(d))), None)
    if files is None:
        if not download:
            raise DatasetError(_missing_message(src, searched, "download=False was given."))
        files = _download(src, base_url, searched)
    x_train, y_train, x_test, y_test = (read_idx(files[part]) for part in _PARTS)
    for x, y, part in ((x_train, y_train, _PARTS[0]), (x_test, y_test, _PARTS[2])):
        if x.dtype != np.uint8 or x.shape[1:] != (28, 28) or y.dtype != np.uint8 or y.shape != x.shape[:1]:
            raise DatasetError(
                f"{src.title} files beside {files[part]} must hold uint8 images (N, 28, 28) and N uint8 labels. "
                f"Received: images {x.dtype} {x.shape}, labels {y.dtype} {y.shape}"
            )
    return (x_train, y_train), (x_test, y_test)


def _cache_dir(src: _Source) -> Path:
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    root = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(root) if os.path.isabs(root) else Path.home() / ".cache") / "nnxp" / src.name


def _search_dirs(src: _Source, path: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if path is not None:
        dirs += [Path(path), Path(path) / src.name]
    if os.environ.get("NNXP_DATA"):
        dirs += [Path(os.environ["NNXP_DATA"]) / src.name, Path(os.environ["NNXP_DATA"])]
    dirs += [_cache_dir(src), *map(Path, src.system_dirs)]
    return list(dict.fromkeys(dirs))  # drop repeats, keep order


def _find_files(folder: Path) -> dict[str, Path] | None:
    """Map each part to its file in `folder` if all four are there, gzipped or raw, else None."""
    files = {}
    for part in _PARTS:
        # "train-images.idx3-ubyte" is how some unpackers (and Kaggle) spell the raw files.
        names = (f"{part}.gz", part, part.replace("-idx", ".idx"), part.replace("-idx", ".idx") + ".gz")
        found = next((folder / n for n in names if (folder / n).is_file()), None)
        if found is None:
            return None
        files[part] = found
    return files


def _download(src: _Source, base_url: str | None, searched: list[Path]) -> dict[str, Path]:
    try:
        import pooch  # optional: the `data` extra
    except ImportError:
        hint = 'downloading needs pooch: pip install "nnxp[data]".'
        raise DatasetError(_missing_message(src, searched, hint)) from None
    bases = (base_url,) if base_url else (os.environ[src.url_env],) if os.environ.get(src.url_env) else src.mirrors
    files = {}
    for part in _PARTS:
        fname = f"{part}.gz"
        errors = []
        for base in bases:
            url = base.rstrip("/") + "/" + fname
            try:
                # pooch streams into a temporary file in the cache and moves it into place only
                # when complete and its hash matches, so failures leave nothing behind.
                got = pooch.retrieve(url, f"sha256:{src.sha256[fname]}", fname, _cache_dir(src), progressbar=False)
            except Exception as err:  # network, HTTP status, checksum (ValueError), disk: try the next mirror
                errors.append(f"{url}: {type(err).__name__}: {err}")
            else:
                files[part] = Path(got)
                break
        else:
            raise DatasetError(_missing_message(src, searched, "the download failed:\n  " + "\n  ".join(errors)))
    return files


def _missing_message(src: _Source, searched: list[Path], reason: str) -> str:
    names = ", ".join(f"{part}.gz" for part in _PARTS)
    msg = (
        f"{src.title} files not found. Looked in: {', '.join(map(str, searched))}. "
        f"Put the four files ({names}) in $NNXP_DATA/{src.name} or {_cache_dir(src)}, or pass path=..."
    )
    if src.package_hint:
        msg += f" On Debian/Ubuntu you can also run: {src.package_hint}."
    return f"{msg}\nNot downloaded: {reason}"


def load_data() -> tuple[Split, Split]:
    """Keras's spelling, ``from nnxp.datasets import mnist; mnist.load_data()``: :func:`load_mnist`'s arrays."""
    return load_mnist()
