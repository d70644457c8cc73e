"""TinyStories as token files for training (notebook 10).

TinyStories (Eldan & Li, 2023, "TinyStories: How Small Can Language Models Be and Still
Speak Coherent English?") is a corpus of short stories in simple English, written by GPT-3.5
and GPT-4. The V2 files hold the GPT-4 stories as plain text, one story after another, each
followed by a line ``<|endoftext|>``.

:func:`prepare_tinystories` turns them into what :func:`course_utils.train.train` reads from a
folder: ``train.bin`` and ``val.bin`` (GPT-2 token ids as uint16, each story followed by the
``<|endoftext|>`` id 50256, so the model learns where a story ends) and ``tokenizer.json``
(GPT-2's tokenizer). Run it from the command line too::

    python -m course_utils.tinystories data/tinystories-gpt2            # train + valid
    python -m course_utils.tinystories data/ts --train tinystories-valid --val none
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

from .bpe import GPT2_ENDOFTEXT, BPETokenizer, gpt2_tokenizer
from .corpora import REGISTRY, DataError, fetch
from .datasets import VAL_FRACTION, write_token_file
from .utils import OneLineErrorParser

__all__ = ["EOT_ID", "default_encoder", "iter_stories", "prepare_tinystories"]

EOT_ID = 50256  # GPT-2's id of "<|endoftext|>"
FILES = ("train.bin", "val.bin", "tokenizer.json", "meta.json")


def _resolve(source: str | Path) -> Path:
    """A file path as is, else a registry name fetched by :func:`course_utils.corpora.fetch`.
    Raises ``KeyError`` when it is neither."""
    path = Path(source)
    if path.is_file():
        return path
    if str(source) not in REGISTRY:
        raise KeyError(f"unknown data file {str(source)!r}: no such file, and no registry entry "
                       f"of that name (tinystories-train, tinystories-valid ...)")
    return fetch(str(source))


def iter_stories(path: str | Path) -> Iterator[str]:
    """Yield the stories of a TinyStories text file, in file order.

    A story is the text between two ``<|endoftext|>`` separators (and before the first,
    after the last), with surrounding whitespace stripped; empty stories are skipped. In the
    files each separator is a line of its own, but one inside a line separates stories too,
    so a story never contains the separator. The file is read line by line, so a 2 GB file
    never has to fit in memory. Raises ``ValueError`` naming the file when it is not UTF-8.
    """
    lines: list[str] = []
    with open(path, encoding="utf-8") as f:
        try:
            for line in f:
                *ends, rest = line.split(GPT2_ENDOFTEXT)  # each separator ends a story
                for end in ends:
                    story = "".join([*lines, end]).strip()
                    lines = []
                    if story:
                        yield story
                lines.append(rest)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (at byte {e.start} of a block); "
                             f"TinyStories files are UTF-8") from None
    story = "".join(lines).strip()
    if story:
        yield story


Encoder = BPETokenizer | Callable[[list[str]], list[list[int]]]


def default_encoder() -> Encoder:
    """GPT-2's ids, fast if possible: tiktoken's ``encode_ordinary_batch`` (compiled, several
    threads) when tiktoken is installed, else our own :func:`course_utils.bpe.gpt2_tokenizer`
    (same ids, pure Python, slower), which streams through ``encode_iterable``."""
    try:
        from .bpe import tiktoken_gpt2

        enc = tiktoken_gpt2()
        return lambda batch: enc.encode_ordinary_batch(batch)
    except ImportError:
        return gpt2_tokenizer()


def _story_ids(stories, encoder: Encoder, batch_size: int, counts: dict) -> Iterator[list[int]]:
    """Yield each story's ids followed by EOT_ID, and count stories and tokens in ``counts``.

    A :class:`BPETokenizer` encodes the stream ``story, <|endoftext|>, story, ...`` lazily
    with ``encode_iterable`` (stories never contain the separator, see :func:`iter_stories`,
    so each separator gives EOT_ID and ends a story); a batch function is called on
    ``batch_size`` stories at a time."""
    if isinstance(encoder, BPETokenizer):
        pieces = (piece for story in stories for piece in (story, GPT2_ENDOFTEXT))
        encoded = _split_after_eot(encoder.encode_iterable(pieces, {GPT2_ENDOFTEXT}))
    else:
        encoded = _encode_batches(stories, encoder, batch_size)
    for ids in encoded:
        counts["stories"] += 1
        counts["tokens"] += len(ids)
        yield ids


def _split_after_eot(ids: Iterator[int]) -> Iterator[list[int]]:
    story: list[int] = []
    for i in ids:
        story.append(i)
        if i == EOT_ID:
            yield story
            story = []


def _encode_batches(stories, encode_batch, batch_size: int) -> Iterator[list[int]]:
    stories = iter(stories)
    while batch := list(islice(stories, batch_size)):
        encoded = encode_batch(batch)
        if len(encoded) != len(batch):
            raise ValueError(f"the encoder returned {len(encoded)} results for "
                             f"{len(batch)} stories; it must return one list of ids per story")
        for ids in encoded:
            yield [*ids, EOT_ID]


def prepare_tinystories(out_dir: str | Path, train: str | Path = "tinystories-train",
                        val: str | Path | None = "tinystories-valid", *,
                        val_fraction: float = VAL_FRACTION, max_stories: int | None = None,
                        encoder: Encoder | None = None,
                        batch_size: int = 1024, overwrite: bool = False,
                        progress: bool = True) -> dict:
    """Write ``train.bin``, ``val.bin``, ``tokenizer.json`` and ``meta.json`` into ``out_dir``.

    Args:
        out_dir: the dataset folder; pass it as ``TrainConfig(dataset=...)``.
        train: the training stories: a registry name (``"tinystories-train"``,
            ``"tinystories-valid"``, ``"tinystories-sample"``) or a path to a text file.
        val: the validation stories, likewise; or ``None`` to split ``train``: its last
            ``val_fraction`` of stories (at least one) become the validation set.
        val_fraction: the share of stories held out when ``val`` is ``None``.
        max_stories: read at most this many stories from each file (the first ones), e.g.
            to try the pipeline on part of the 2.2 GB training file.
        encoder: GPT-2's tokenizer as a :class:`course_utils.bpe.BPETokenizer` (the stories
            are streamed through its ``encode_iterable``), or a batch function
            ``list of stories -> list of id lists`` (GPT-2 ids without special tokens);
            default :func:`default_encoder`.
        batch_size: stories per call of a batch function.
        overwrite: prepare again even if ``out_dir`` already holds a dataset made from the
            same sources and settings (otherwise that one is reused and nothing is read).
        progress: progress bars.

    Returns:
        the contents of ``meta.json``: the settings, and ``train`` / ``val`` dicts with the
        number of ``stories`` and ``tokens`` (separators included); plus ``reused`` (True when
        an existing dataset was kept) and ``out_dir``.

    Everything is written into a temporary folder next to ``out_dir`` and moved in only at
    the end, so a failed or interrupted run leaves no half-written files in ``out_dir``.

    Raises:
        ValueError: bad ``val_fraction``, ``max_stories`` or ``batch_size``; a file with no
            stories, or too few to split; an id that does not fit uint16.
        KeyError: an unknown registry name.
        course_utils.corpora.DataError: a file that cannot be found or downloaded.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if max_stories is not None and max_stories < 1:
        raise ValueError(f"max_stories must be a positive number or None, got {max_stories}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)
    settings = {"train_source": str(train), "val_source": None if val is None else str(val),
                "val_fraction": val_fraction if val is None else None,
                "max_stories": max_stories, "tokenizer": "gpt2", "eot_id": EOT_ID}
    meta_path = out_dir / "meta.json"
    if not overwrite and all((out_dir / f).is_file() for f in FILES):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:  # damaged: prepare the folder again
            meta = None
        if isinstance(meta, dict) and {k: meta.get(k) for k in settings} == settings:
            return {**meta, "reused": True, "out_dir": str(out_dir)}

    train_path = _resolve(train)
    val_path = None if val is None else _resolve(val)
    if val_path is None:  # split one file: the last stories are held out
        n = sum(1 for _ in islice(iter_stories(train_path), max_stories))
        if n < 2:
            raise ValueError(f"{train_path} has {n} stories; splitting needs at least 2")
        n_val = max(1, round(n * val_fraction))
        sources = {"train": (train_path, 0, n - n_val), "val": (train_path, n - n_val, n)}
    else:
        sources = {"train": (train_path, 0, max_stories), "val": (val_path, 0, max_stories)}
    encoder = encoder or default_encoder()

    meta = dict(settings)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for split, (path, start, stop) in sources.items():
            counts = {"stories": 0, "tokens": 0}
            total = None if stop is None else stop - start
            chunks = _story_ids(islice(iter_stories(path), start, stop), encoder, batch_size,
                                counts)
            write_token_file(chunks, tmp / f"{split}.bin", total=total, progress=progress)
            if counts["stories"] == 0:
                raise ValueError(f"no stories found in {path} (stories are separated by "
                                 f"lines that read {GPT2_ENDOFTEXT})")
            meta[split] = {"file": str(path), **counts}
        gpt2_tokenizer().save(tmp / "tokenizer.json")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        out_dir.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)  # no stale meta.json beside new files
        for f in FILES:  # meta.json last: it marks the folder complete
            os.replace(tmp / f, out_dir / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "reused": False, "out_dir": str(out_dir)}


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.tinystories OUT_DIR [--train NAME] [--val NAME|none] ...``;
    returns the exit code: 0 done, 2 a mistake (one line on stderr, ``error: ...``)."""
    p = OneLineErrorParser(prog="python -m course_utils.tinystories",
                           description="Tokenize TinyStories into train.bin/val.bin.")
    p.add_argument("out_dir")
    p.add_argument("--train", default="tinystories-train", help="registry name or file")
    p.add_argument("--val", default="tinystories-valid",
                   help="registry name or file; 'none' splits --train")
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--max-stories", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    try:
        meta = prepare_tinystories(a.out_dir, a.train, None if a.val == "none" else a.val,
                                   val_fraction=a.val_fraction, max_stories=a.max_stories,
                                   overwrite=a.overwrite)
    except (ValueError, KeyError, OSError, DataError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print("error: " + " ".join(str(text).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # nothing half-written is left in the dataset folder
        print(f"interrupted; {a.out_dir} is as it was", file=sys.stderr)
        return 130
    for split in ("train", "val"):
        print(f"{split}: {meta[split]['stories']:,} stories, {meta[split]['tokens']:,} tokens")
    print(f"dataset folder: {a.out_dir}" + (" (already prepared)" if meta["reused"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
