"""Corpora and vocabulary files: a small registry, a checksummed cache, atomic downloads.

Where a file is looked for, in order:

1. the folder named by the environment variable ``COURSE_DATA_DIR`` (offline copies; CI
   points it at ``../shared/data``),
2. the course's cache folder (``data/`` at the repository root, or ``COURSE_CACHE_DIR``),
3. its canonical URL: downloaded to a temporary file, checked against its sha256, then
   renamed into the cache, so a failed or corrupted download never leaves a file behind.

Third-party text is never committed to the repository; see ``data/README.md``.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .utils import atomic_write, progress_bar, sha256_of

DATA_DIR_ENV = "COURSE_DATA_DIR"
CACHE_DIR_ENV = "COURSE_CACHE_DIR"


class DataError(RuntimeError):
    """A data file could not be found, downloaded or verified."""


@dataclass(frozen=True)
class DataFile:
    """One downloadable file.

    ``sha256`` is ``None`` only for files whose canonical URL serves changing bytes (Project
    Gutenberg rewrites its headers), where pinning a checksum would break every download.
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    description: str = ""


REGISTRY: dict[str, DataFile] = {
    f.name: f
    for f in [
        DataFile(
            "tinyshakespeare",
            "tinyshakespeare.txt",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "Tiny Shakespeare, 1,115,394 characters (char-rnn / nanoGPT corpus)",
        ),
        DataFile(
            "alice",
            "pg11.txt",
            "https://www.gutenberg.org/cache/epub/11/pg11.txt",
            None,
            "Alice's Adventures in Wonderland, Project Gutenberg eBook #11",
        ),
        DataFile(
            "gpt2-encoder",
            "encoder.json",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
            "GPT-2 byte-level BPE vocabulary (50,257 tokens)",
        ),
        DataFile(
            "gpt2-vocab-bpe",
            "vocab.bpe",
            "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            "GPT-2 BPE merge list (50,000 merges)",
        ),
        # TinyStories (Eldan & Li, 2023). Not pinned: about 2.2 GB, and the hub may re-upload.
        DataFile(
            "tinystories-train",
            "TinyStoriesV2-GPT4-train.txt",
            "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
            None,
            "TinyStories V2 (GPT-4 stories), training split, about 2.2 GB",
        ),
        DataFile(
            "tinystories-valid",
            "TinyStoriesV2-GPT4-valid.txt",
            "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
            None,
            "TinyStories V2 (GPT-4 stories), validation split, about 22 MB",
        ),
        # A few stories for tests only: there is no URL, it is found in COURSE_DATA_DIR or not
        # at all.
        DataFile(
            "tinystories-sample",
            "tinystories_sample.txt",
            "",
            "defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43",
            "a few TinyStories stories (3.8 KB) for tests; offline copy only",
        ),
    ]
}


def cache_dir() -> Path:
    """The download cache: ``$COURSE_CACHE_DIR``, else ``data/`` at the repository root
    (when running from a checkout), else ``~/.cache/gpt-course``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    repo_data = Path(__file__).resolve().parent.parent / "data"
    if repo_data.is_dir():
        return repo_data
    return Path.home() / ".cache" / "gpt-course"


def _resolve(entry: str | DataFile) -> DataFile:
    if isinstance(entry, DataFile):
        return entry
    if entry not in REGISTRY:
        names = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown data file {entry!r}; the registry has: {names}")
    return REGISTRY[entry]


def _check(f: DataFile, path: Path) -> None:
    if f.sha256 is None:
        return
    actual = sha256_of(path)
    if actual != f.sha256:
        raise DataError(
            f"checksum mismatch for {f.filename} at {path} (source {f.url}): "
            f"expected sha256 {f.sha256}, got {actual}. Delete the file and fetch it again "
            f"from the URL."
        )


def fetch(entry: str | DataFile, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Return a local, verified path to a registry file, downloading it if needed.

    Args:
        entry: a registry name (e.g. ``"tinyshakespeare"``) or a :class:`DataFile`.
        timeout: seconds to wait for the server before giving up.
        progress: show a progress bar while downloading.

    Raises:
        KeyError: unknown registry name.
        DataError: a checksum mismatch (the temporary file is deleted; the message names
            the file, the URL and both hashes), or no network (the message names the URL
            and the two ways to supply the file by hand).
    """
    f = _resolve(entry)
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and (Path(data_dir) / f.filename).is_file():
        path = Path(data_dir) / f.filename
        _check(f, path)
        return path
    cache = cache_dir()
    path = cache / f.filename
    if path.is_file():
        _check(f, path)
        return path
    if not f.url:
        raise DataError(
            f"{f.filename} has no download URL: it is an offline-only file. Put it in a folder "
            f"and point the environment variable {DATA_DIR_ENV} at that folder."
        )
    cache.mkdir(parents=True, exist_ok=True)
    return _download(f, path, timeout=timeout, progress=progress)


def _download(f: DataFile, path: Path, *, timeout: float, progress: bool) -> Path:
    with atomic_write(path) as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            try:
                response = urllib.request.urlopen(f.url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                raise DataError(
                    f"could not download {f.filename} from {f.url} ({e}). To supply it by "
                    f"hand, either download that URL and save it as {path}, or put the file "
                    f"in a folder and point the environment variable {DATA_DIR_ENV} at it."
                ) from e
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with progress_bar(total=total, unit="B", unit_scale=True, desc=f.filename,
                              disable=not progress) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        actual = h.hexdigest()
        if f.sha256 is not None and actual != f.sha256:
            raise DataError(
                f"checksum mismatch for {f.filename} downloaded from {f.url}: expected sha256 "
                f"{f.sha256}, got {actual}. The download was discarded; try again, or supply "
                f"the file by hand (save it as {path}, or set {DATA_DIR_ENV})."
            )
    return path


def load_text(entry: str | DataFile) -> str:
    """The registry file decoded as UTF-8 text (see :func:`fetch` for errors)."""
    return fetch(entry).read_text(encoding="utf-8")
