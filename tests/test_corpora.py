"""The data registry: lookup order, checksums, and real downloads from a local server."""

import hashlib
import http.server
import socket
import threading

import pytest

from course_utils import corpora as data
from course_utils.corpora import DataError, DataFile, fetch


def test_tinyshakespeare_offline_copy_is_verified(shakespeare_text):
    assert len(shakespeare_text) == 1_115_394
    assert shakespeare_text.startswith("First Citizen:")


def test_unknown_name_lists_the_registry():
    with pytest.raises(KeyError, match="tinyshakespeare"):
        fetch("no-such-corpus")


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving files from a temporary folder."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(cache))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    return cache


def test_download_good_file(server, empty_cache):
    root, url = server
    payload = b"hello, world\n" * 1000
    (root / "good.txt").write_bytes(payload)
    entry = DataFile("good", "good.txt", f"{url}/good.txt", hashlib.sha256(payload).hexdigest())
    path = fetch(entry, progress=False)
    assert path == empty_cache / "good.txt"
    assert path.read_bytes() == payload
    assert sorted(p.name for p in empty_cache.iterdir()) == ["good.txt"]
    # second call is served from the cache: the server no longer has the file
    (root / "good.txt").unlink()
    assert fetch(entry, progress=False).read_bytes() == payload


def test_download_wrong_bytes_leaves_nothing(server, empty_cache):
    root, url = server
    (root / "bad.txt").write_bytes(b"not what was promised")
    expected = hashlib.sha256(b"the real file").hexdigest()
    entry = DataFile("bad", "bad.txt", f"{url}/bad.txt", expected)
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False)
    msg = str(err.value)
    assert "bad.txt" in msg and entry.url in msg and expected in msg
    assert hashlib.sha256(b"not what was promised").hexdigest() in msg
    assert list(empty_cache.iterdir()) == []  # no temp file, no cached file


def test_connection_refused_explains_how_to_supply_the_file(empty_cache):
    with socket.socket() as s:  # find a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = DataFile("gone", "gone.txt", f"http://127.0.0.1:{port}/gone.txt", "0" * 64)
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False, timeout=5)
    msg = str(err.value)
    assert entry.url in msg and data.DATA_DIR_ENV in msg and str(empty_cache) in msg
    assert list(empty_cache.iterdir()) == []


def test_data_dir_is_searched_before_cache_and_checked(tmp_path, empty_cache, monkeypatch):
    offline = tmp_path / "offline"
    offline.mkdir()
    (offline / "x.txt").write_bytes(b"offline copy")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(offline))
    good = DataFile("x", "x.txt", "http://127.0.0.1:9/x.txt",
                    hashlib.sha256(b"offline copy").hexdigest())
    assert fetch(good) == offline / "x.txt"
    corrupted = DataFile("x", "x.txt", "http://127.0.0.1:9/x.txt", "f" * 64)
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(corrupted)
