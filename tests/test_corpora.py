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


# ------------------------------------------------------------------ evaluation sets, folders
@pytest.mark.parametrize("name,lines", [("gsm8k-test", 1319), ("gsm8k-train", 7473),
                                        ("ifeval", 541)])
def test_evaluation_files_offline_copies_are_verified(name, lines):
    path = fetch(name)
    assert path.name == data.REGISTRY[name].filename
    assert len(path.read_text("utf-8").splitlines()) == lines


def test_mmlu_folder_offline_copy_is_verified():
    folder = fetch("mmlu")
    assert sorted(p.name for p in folder.iterdir()) == ["SHA256SUMS", "dev", "test", "val"]
    # the pinned checksum is that of the copy's own SHA256SUMS, which the manifest reproduces
    assert data.manifest(folder) == (folder / "SHA256SUMS").read_text("utf-8")
    assert hashlib.sha256((folder / "SHA256SUMS").read_bytes()).hexdigest() == \
        data.REGISTRY["mmlu"].sha256
    with pytest.raises(ValueError, match="folder"):
        data.load_text("mmlu")


def test_evaluation_sets_are_refused_as_training_corpora():
    from course_utils.datasets import load_corpus

    for name in ("gsm8k-test", "ifeval", "mmlu"):
        with pytest.raises(ValueError, match="held out"):
            load_corpus(name)


def _mmlu_like(root, corrupt: bool = False):
    """A small folder and the tar archive of it, laid out as Hendrycks' data.tar (data/dev ...),
    with members that must not be extracted: another split, a link, a path outside."""
    import io
    import tarfile

    files = {"dev/algebra_dev.csv": b"1+1?,1,2,3,4,B\n", "val/algebra_val.csv": b"q,a,b,c,d,A\n",
             "test/algebra_test.csv": b"2+2?,3,4,5,6,B\n"}
    folder = root / "expected"
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(content)
    pinned = hashlib.sha256(data.manifest(folder).encode()).hexdigest()
    tar_path = root / "served" / "data.tar"
    with tarfile.open(tar_path, "w") as tar:
        def add(name, content):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for rel, content in files.items():
            add(f"data/{rel}", content + (b"x" if corrupt and "test" in rel else b""))
        add("data/auxiliary_train/big_train.csv", b"not wanted\n")
        add("data/test/../../../escape_test.csv", b"never written\n")
        link = tarfile.TarInfo("data/dev/link_dev.csv")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    return pinned


def test_folder_download_extracts_only_the_wanted_files(server, empty_cache, tmp_path):
    root, url = server
    pinned = _mmlu_like(tmp_path)
    entry = data.DataFolder("mini", "mini", f"{url}/data.tar", pinned,
                            r"data/((?:dev|val|test)/[a-z_]+_(?:dev|val|test)\.csv)")
    path = fetch(entry, progress=False)
    assert path == empty_cache / "mini"
    got = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert got == ["SHA256SUMS", "dev/algebra_dev.csv", "test/algebra_test.csv",
                   "val/algebra_val.csv"]
    assert sorted(p.name for p in empty_cache.iterdir()) == ["mini"]  # no staging left
    assert not (tmp_path / "escape_test.csv").exists()
    (root / "data.tar").unlink()  # the second call is served from the cache
    assert fetch(entry, progress=False) == path


def test_folder_download_with_wrong_bytes_leaves_nothing(server, empty_cache, tmp_path):
    root, url = server
    pinned = _mmlu_like(tmp_path, corrupt=True)
    entry = data.DataFolder("mini", "mini", f"{url}/data.tar", pinned,
                            r"data/((?:dev|val|test)/[a-z_]+_(?:dev|val|test)\.csv)")
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False)
    assert "checksum mismatch" in str(err.value) and pinned in str(err.value)
    assert "\n" not in str(err.value)
    assert list(empty_cache.iterdir()) == []


def test_folder_download_failure_says_how_to_supply_it(empty_cache):
    entry = data.DataFolder("mini", "mini", "http://127.0.0.1:9/data.tar", "0" * 64, r"(.*)")
    with pytest.raises(DataError) as err:
        fetch(entry, progress=False, timeout=5)
    assert entry.url in str(err.value) and data.DATA_DIR_ENV in str(err.value)
    assert list(empty_cache.iterdir()) == []


def test_changed_file_in_an_offline_folder_is_named(tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "offline" / "mmlu"
    shutil.copytree(fetch("mmlu"), copy)
    (copy / "dev" / "anatomy_dev.csv").write_text("changed\n")
    (copy / "test" / "virology_test.csv").unlink()
    monkeypatch.setenv(data.DATA_DIR_ENV, str(copy.parent))
    with pytest.raises(DataError) as err:
        fetch("mmlu")
    msg = str(err.value)
    assert "missing ./test/virology_test.csv" in msg and "changed ./dev/anatomy_dev.csv" in msg
    assert "\n" not in msg
