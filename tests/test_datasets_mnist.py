"""MNIST / Fashion-MNIST loaders: search order, downloads from a local server, clean failures.

Nothing here touches the internet or the real user cache: files are tiny IDX sets
written to tmp_path and served by a real ``http.server`` on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from nnxp.datasets import load_fashion_mnist, load_mnist, write_idx
from nnxp.datasets import mnist as mnist_module
from nnxp.errors import DatasetError

PARTS = mnist_module._PARTS
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def tiny_set(fill: int) -> dict[str, np.ndarray]:
    """Six training and four test images; every pixel equals `fill` so sets can be told apart."""
    labels = np.random.default_rng(fill).integers(0, 10, 10, dtype=np.uint8)
    return {
        PARTS[0]: np.full((6, 28, 28), fill, np.uint8),
        PARTS[1]: labels[:6],
        PARTS[2]: np.full((4, 28, 28), fill, np.uint8),
        PARTS[3]: labels[6:],
    }


def write_set(folder: Path, arrays: dict[str, np.ndarray], suffix: str = ".gz", dotted: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, array in arrays.items():
        name = part.replace("-idx", ".idx") if dotted else part
        write_idx(folder / (name + suffix), array)
    return folder


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolate every search location: cache and $NNXP_DATA under tmp_path, no system folders."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("NNXP_DATA", "NNXP_MNIST_URL", "NNXP_FASHION_MNIST_URL"):
        monkeypatch.delenv(var, raising=False)
    for key, src in list(mnist_module._SOURCES.items()):
        monkeypatch.setitem(mnist_module._SOURCES, key, dataclasses.replace(src, system_dirs=()))
    return tmp_path


def trust(monkeypatch, key: str, served: dict[str, bytes]) -> None:
    """Make the loader expect the SHA-256 of the files our test server hands out."""
    src = mnist_module._SOURCES[key]
    hashes = {name.lstrip("/"): hashlib.sha256(body).hexdigest() for name, body in served.items()}
    monkeypatch.setitem(mnist_module._SOURCES, key, dataclasses.replace(src, sha256=hashes))


@pytest.fixture
def server():
    """A local HTTP server: `routes` maps a path to bytes; paths in `cut` get half a body and a hang-up."""
    routes: dict[str, bytes] = {}
    cut: set[str] = set()
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # An interrupted transfer: promise the full length, send half, close.
            self.wfile.write(body[: len(body) // 2] if self.path in cut else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield url, routes, cut, hits
    httpd.shutdown()
    httpd.server_close()


def serve_set(tmp_path: Path, routes: dict[str, bytes], prefix: str, fill: int) -> dict[str, bytes]:
    folder = write_set(tmp_path / f"served{fill}", tiny_set(fill))
    served = {f"/{part}.gz": (folder / f"{part}.gz").read_bytes() for part in PARTS}
    routes.update({prefix + name: body for name, body in served.items()})
    return served


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens here now: connection refused


# --- finding local files ----------------------------------------------------------


@pytest.mark.parametrize("key", LOADERS)
def test_search_order(env, monkeypatch, key):
    load = LOADERS[key]
    explicit, data = env / "explicit", env / "data"
    monkeypatch.setenv("NNXP_DATA", str(data))
    system = write_set(env / "system", tiny_set(5))
    monkeypatch.setitem(
        mnist_module._SOURCES, key, dataclasses.replace(mnist_module._SOURCES[key], system_dirs=(str(system),))
    )
    folders = [
        write_set(explicit, tiny_set(1)),
        write_set(data / key, tiny_set(2)),
        write_set(data, tiny_set(3)),
        write_set(env / "cache" / "nnxp" / key, tiny_set(4)),
    ]
    for fill, folder in enumerate(folders, start=1):
        (x_train, y_train), (x_test, y_test) = load(path=explicit, download=False)
        assert x_train[0, 0, 0] == x_test[0, 0, 0] == fill
        np.testing.assert_array_equal(y_train, tiny_set(fill)[PARTS[1]])
        np.testing.assert_array_equal(y_test, tiny_set(fill)[PARTS[3]])
        for f in folder.glob("*-ubyte.gz"):  # hide this folder; the next one in line must win
            f.unlink()
    assert load(path=explicit, download=False)[0][0][0, 0, 0] == 5


def test_loaded_arrays_have_keras_shapes_and_dtypes(env):
    write_set(env / "cache" / "nnxp" / "mnist", tiny_set(7))
    (x_train, y_train), (x_test, y_test) = load_mnist(download=False)
    assert x_train.shape == (6, 28, 28) and x_test.shape == (4, 28, 28)
    assert y_train.shape == (6,) and y_test.shape == (4,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}


def test_explicit_path_with_dataset_subfolder(env):
    write_set(env / "mine" / "fashion-mnist", tiny_set(8))
    assert load_fashion_mnist(path=env / "mine", download=False)[0][0][0, 0, 0] == 8


@pytest.mark.parametrize("suffix, dotted", [("", False), ("", True), (".gz", True)])
def test_raw_and_dotted_file_names(env, suffix, dotted):
    write_set(env / "files", tiny_set(9), suffix=suffix, dotted=dotted)
    assert load_mnist(path=env / "files", download=False)[1][0][0, 0, 0] == 9


def test_inconsistent_files_are_rejected(env):
    arrays = tiny_set(1)
    arrays[PARTS[1]] = arrays[PARTS[1]][:5]  # 6 images, 5 labels
    write_set(env / "bad", arrays)
    with pytest.raises(DatasetError, match=r"Received: images uint8 \(6, 28, 28\), labels uint8 \(5,\)"):
        load_mnist(path=env / "bad", download=False)


def test_cache_follows_xdg_and_home(env, monkeypatch):
    src = mnist_module._SOURCES["mnist"]
    assert mnist_module._cache_dir(src) == env / "cache" / "nnxp" / "mnist"
    monkeypatch.setenv("HOME", str(env / "home"))
    for value in ("", "relative/ignored"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert mnist_module._cache_dir(src) == env / "home" / ".cache" / "nnxp" / "mnist"


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_package(env, monkeypatch):
    src = dataclasses.replace(mnist_module._SOURCES["fashion-mnist"], system_dirs=(str(DEBIAN),))
    monkeypatch.setitem(mnist_module._SOURCES, "fashion-mnist", src)
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(download=False)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
    assert x_train.dtype == np.uint8 and x_train.max() == 255


# --- downloading --------------------------------------------------------------------


@pytest.mark.parametrize("via", ["argument", "environment"])
def test_download_into_cache_then_reuse(env, monkeypatch, server, via):
    pytest.importorskip("pooch")
    url, routes, _, hits = server
    served = serve_set(env, routes, "/fashion", fill=3)
    trust(monkeypatch, "fashion-mnist", served)
    kwargs = {}
    if via == "argument":
        kwargs["base_url"] = url + "/fashion/"
    else:
        monkeypatch.setenv("NNXP_FASHION_MNIST_URL", url + "/fashion")
    (x_train, _), _ = load_fashion_mnist(**kwargs)
    assert x_train[0, 0, 0] == 3 and len(hits) == 4
    cache = env / "cache" / "nnxp" / "fashion-mnist"
    assert {p.name: p.read_bytes() for p in files_in(cache)} == {k.lstrip("/"): v for k, v in served.items()}
    load_fashion_mnist(**kwargs)  # found in the cache: no second download
    assert len(hits) == 4


def test_download_falls_through_to_the_next_mirror(env, monkeypatch, server):
    pytest.importorskip("pooch")
    url, routes, _, hits = server
    served = serve_set(env, routes, "/second", fill=6)
    trust(monkeypatch, "mnist", served)
    src = mnist_module._SOURCES["mnist"]
    mirrors = (url + "/first/", url + "/second/")  # /first/ answers 404
    monkeypatch.setitem(mnist_module._SOURCES, "mnist", dataclasses.replace(src, mirrors=mirrors))
    assert load_mnist()[0][0][0, 0, 0] == 6
    assert sum(h.startswith("/first/") for h in hits) == 4 and sum(h.startswith("/second/") for h in hits) == 4


def test_wrong_checksum_leaves_nothing_in_cache(env, server):
    pytest.importorskip("pooch")
    url, routes, _, _ = server
    serve_set(env, routes, "", fill=1)  # tiny files: the official hashes cannot match
    with pytest.raises(DatasetError, match="(?i)hash") as info:
        load_mnist(base_url=url)
    assert "Put the four files" in str(info.value)
    assert files_in(env / "cache") == []


def test_interrupted_download_leaves_no_half_file(env, monkeypatch, server):
    pytest.importorskip("pooch")
    url, routes, cut, _ = server
    served = serve_set(env, routes, "", fill=2)
    trust(monkeypatch, "mnist", served)
    cut.add(f"/{PARTS[0]}.gz")
    with pytest.raises(DatasetError, match="the download failed") as info:
        load_mnist(base_url=url)
    assert "IncompleteRead" in str(info.value)  # the transfer broke; not a checksum failure
    assert files_in(env / "cache") == []
    cut.clear()  # the next try starts clean and succeeds
    assert load_mnist(base_url=url)[0][0][0, 0, 0] == 2
    assert len(files_in(env / "cache")) == 4


def test_offline_and_missing_says_where_to_put_files(env):
    pytest.importorskip("pooch")
    with pytest.raises(DatasetError) as info:
        load_fashion_mnist(base_url=closed_port_url())
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and str(env / "cache" / "nnxp" / "fashion-mnist") in message
    assert "apt-get install dataset-fashion-mnist" in message and "ConnectionError" in message
    assert files_in(env / "cache") == []


def test_download_false_never_touches_the_network(env, monkeypatch, server):
    url, routes, _, hits = server
    monkeypatch.setenv("NNXP_MNIST_URL", url)
    with pytest.raises(DatasetError, match="download=False"):
        load_mnist(download=False)
    assert hits == []


def test_missing_pooch_gives_install_hint(env, monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)  # makes `import pooch` fail
    with pytest.raises(DatasetError, match=r'pip install "nnxp\[data\]"') as info:
        load_mnist()
    assert "$NNXP_DATA/mnist" in str(info.value)
