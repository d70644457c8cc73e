"""Corpora and vocabulary files: a small registry, a checksummed cache, atomic downloads.

Where a file is looked for, in order:

1. the folder named by the environment variable ``COURSE_DATA_DIR`` (offline copies; CI
   points it at ``../shared/data``),
2. the course's cache folder (``data/`` at the repository root, or ``COURSE_CACHE_DIR``),
3. its canonical URL: downloaded to a temporary file, checked against its sha256, then
   renamed into the cache, so a failed or corrupted download never leaves a file behind.

A :class:`DataFolder` (MMLU's CSV files) is looked for in the same places. Its files come in
one tar archive, of which only the wanted members are extracted (into a temporary folder,
renamed into the cache once every file is checked); its checksum is that of its manifest,
the ``SHA256SUMS`` file that ``sha256sum`` writes, which the folder keeps.

The evaluation sets (GSM8K's test split, MMLU, IFEval) are marked ``held_out``: the training
command refuses them, so nothing trains on the items the course measures with.

Third-party text is never committed to the repository; see ``data/README.md``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
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
    held_out: bool = False  # evaluation data: never a training corpus


@dataclass(frozen=True)
class DataFolder:
    """A folder of files that is downloaded as one tar archive.

    ``members`` is a regular expression matched against the archive's member names; the
    regular files that match it are kept, at the path of its group 1 inside ``dirname``. The
    folder's ``sha256`` is the sha256 of its manifest: one line ``<sha256>  ./<path>`` per file,
    sorted by path (bytewise), as ``sha256sum`` writes it; the folder keeps the manifest as
    ``SHA256SUMS``, so a mismatch can name the file that differs.
    """

    name: str
    dirname: str
    url: str
    sha256: str
    members: str
    description: str = ""
    held_out: bool = False

    @property
    def filename(self) -> str:  # the name it has in the data folders, as a DataFile's
        return self.dirname


MANIFEST = "SHA256SUMS"

REGISTRY: dict[str, DataFile | DataFolder] = {
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
        # The evaluation sets (evaluation notebook). Test data: nothing trains on them.
        DataFile(
            "gsm8k-test",
            "gsm8k_test.jsonl",
            "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
            "GSM8K test set, 1,319 grade-school math problems (Cobbe et al. 2021; MIT)",
            held_out=True,
        ),
        DataFile(
            "gsm8k-train",
            "gsm8k_train.jsonl",
            "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl",
            "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
            "GSM8K training set, 7,473 problems (few-shot examples, fine-tuning; MIT)",
        ),
        DataFile(
            "ifeval",
            "ifeval_input_data.jsonl",
            "https://raw.githubusercontent.com/google-research/google-research/master/instruction_following_eval/data/input_data.jsonl",
            "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
            "IFEval, 541 prompts with verifiable instructions (Zhou et al. 2023; Apache-2.0)",
            held_out=True,
        ),
        DataFolder(
            "mmlu",
            "mmlu",
            "https://people.eecs.berkeley.edu/~hendrycks/data.tar",
            "48c0960b74425015a549983bbe9104096046086959c8ac5bf808652314240c7e",
            r"data/((?:dev|val|test)/[a-z_]+_(?:dev|val|test)\.csv)",
            "MMLU, 57 subjects: dev (5 each), val, test (14,042); Hendrycks et al. 2021; MIT",
            held_out=True,
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


def _resolve(entry: str | DataFile | DataFolder) -> DataFile | DataFolder:
    if isinstance(entry, (DataFile, DataFolder)):
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


def fetch(entry: str | DataFile | DataFolder, *, timeout: float = 30.0,
          progress: bool = True) -> Path:
    """Return a local, verified path to a registry file or folder, downloading it if needed.

    Args:
        entry: a registry name (e.g. ``"tinyshakespeare"``, ``"mmlu"``), a :class:`DataFile`
            or a :class:`DataFolder` (then the path is the folder's).
        timeout: seconds to wait for the server before giving up.
        progress: show a progress bar while downloading.

    Raises:
        KeyError: unknown registry name.
        DataError: a checksum mismatch (the temporary file is deleted; the message names
            the file, the URL and both hashes), or no network (the message names the URL
            and the two ways to supply the file by hand).
    """
    f = _resolve(entry)
    if isinstance(f, DataFolder):
        return _fetch_folder(f, timeout=timeout, progress=progress)
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
    """The registry file decoded as UTF-8 text (see :func:`fetch` for errors; a folder raises
    ``ValueError``; a file that is empty or not UTF-8 :class:`DataError`, naming it)."""
    f = _resolve(entry)
    if isinstance(f, DataFolder):
        raise ValueError(f"{f.name!r} is a folder of files, not a text: use fetch({f.name!r}) "
                         f"for its path")
    path = fetch(f)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); delete it and fetch it "
                        f"again, or supply the file by hand") from None
    if not text.strip():
        raise DataError(f"{path} is empty; delete it and fetch it again, or supply the file by "
                        f"hand")
    return text


# ------------------------------------------------------------------------------ folders
def manifest(folder: str | Path) -> str:
    """The ``sha256sum``-style manifest of every file under ``folder`` except ``SHA256SUMS``:
    lines ``<sha256>  ./<relative path>``, sorted bytewise by path, each ending in a newline."""
    folder = Path(folder)
    paths = sorted((p.relative_to(folder).as_posix() for p in folder.rglob("*")
                    if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST),
                   key=lambda s: s.encode())
    return "".join(f"{sha256_of(folder / p)}  ./{p}\n" for p in paths)


_verified_folders: set[Path] = set()  # checked once per process (hashing MMLU takes ~0.1 s)


def _check_folder(f: DataFolder, folder: Path) -> None:
    if folder.resolve() in _verified_folders:
        return
    found = manifest(folder)
    actual = hashlib.sha256(found.encode()).hexdigest()
    if actual != f.sha256:
        raise DataError(f"checksum mismatch for the folder {folder} (source {f.url}): "
                        f"{_manifest_difference(folder, found)}. Delete the folder and fetch it "
                        f"again from the URL.")
    _verified_folders.add(folder.resolve())


def _manifest_difference(folder: Path, found: str) -> str:
    """Name what differs, using the folder's own SHA256SUMS when it has one."""
    listed = folder / MANIFEST
    if not listed.is_file():
        return f"its files do not match the pinned manifest, and it has no {MANIFEST} to compare"
    want, have = _manifest_table(listed.read_text("utf-8")), _manifest_table(found)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    changed = sorted(p for p in set(want) & set(have) if want[p] != have[p])
    parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
             for label, items in (("missing", missing), ("unexpected", extra),
                                  ("changed", changed)) if items]
    return "; ".join(parts) or f"its {MANIFEST} is not the pinned one"


def _manifest_table(text: str) -> dict[str, str]:
    """``{"./path": sha256}`` of a manifest's lines ``<64 hex digits>  ./path``."""
    return {line[66:]: line[:64] for line in text.splitlines() if len(line) > 66}


def _fetch_folder(f: DataFolder, *, timeout: float, progress: bool) -> Path:
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir and (Path(data_dir) / f.dirname).is_dir():
        path = Path(data_dir) / f.dirname
        _check_folder(f, path)
        return path
    cache = cache_dir()
    path = cache / f.dirname
    if path.is_dir():
        _check_folder(f, path)
        return path
    cache.mkdir(parents=True, exist_ok=True)
    archive = DataFile(f.name, f".{f.dirname}.archive", f.url, None)
    staging = Path(tempfile.mkdtemp(prefix=f".{f.dirname}.", dir=cache))
    try:
        try:
            tar_path = _download(archive, staging / "archive.tar", timeout=timeout,
                                 progress=progress)
        except DataError as e:
            raise DataError(
                f"could not download {f.dirname} from {f.url} ({e.__cause__}). To supply it by "
                f"hand, put the folder {f.dirname}/ (the archive's {f.members} files) in a "
                f"folder and point the environment variable {DATA_DIR_ENV} at that folder."
            ) from e.__cause__
        folder = staging / f.dirname
        _extract(tar_path, re.compile(f.members), folder)
        found = manifest(folder)
        actual = hashlib.sha256(found.encode()).hexdigest()
        if actual != f.sha256:
            raise DataError(f"checksum mismatch for {f.dirname} extracted from {f.url}: the "
                            f"manifest of its files has sha256 {actual}, expected {f.sha256}. "
                            f"The download was discarded; try again, or supply the folder by "
                            f"hand (as {path}, or in a folder named by {DATA_DIR_ENV}).")
        (folder / MANIFEST).write_text(found, encoding="utf-8")
        os.replace(folder, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _verified_folders.add(path.resolve())
    return path


def _extract(tar_path: Path, members: re.Pattern, folder: Path) -> None:
    """Copy the regular files of the archive whose names match ``members`` (fully) to
    ``folder / group(1)``. Only names the pattern accepts are written, so a member name can
    never point outside ``folder``; links and devices are skipped."""
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:
                m = members.fullmatch(member.name.removeprefix("./"))
                if not (m and member.isfile()) or ".." in m.group(1).split("/"):
                    continue
                target = folder / m.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except tarfile.TarError as e:
        raise DataError(f"the download is not a readable tar archive ({e}); try again") from e
