"""Next-token prediction data: train/val split, random batches, a PyTorch ``Dataset`` of
windows, token files on disk (notebook 02)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from .bpe import tokenizer_from_dict, train_bpe
from .corpora import REGISTRY, load_text
from .tokenization import CharTokenizer
from .utils import atomic_write, progress_bar

VAL_FRACTION = 0.1  # the share of a corpus (its end) held out for validation, everywhere


def train_val_split(data, val_fraction: float = VAL_FRACTION):
    """Split a 1-D sequence of token ids into its first ``1 - val_fraction`` and the rest.

    The split is by position, not at random, so no validation text leaks into training
    windows. Raises ``ValueError`` when ``val_fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def check_ids(idx: torch.Tensor, vocab_size: int) -> None:
    """Raise ``ValueError`` unless every token id in ``idx`` is in ``[0, vocab_size)``.

    It reads the smallest and largest id back to the host: on a GPU that waits for the
    device, so call it once where ids enter (as ``generate`` does), not at every step.
    """
    if idx.numel() == 0:
        return
    low, high = (int(t) for t in torch.aminmax(idx))
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}); got min {low}, max {high}; "
                         f"encode with the model's tokenizer")


def get_batch(data, block_size: int, batch_size: int,
              generator: torch.Generator | None = None, device: str | torch.device = "cpu"):
    """Draw ``batch_size`` random windows of ``block_size`` tokens from ``data``.

    ``data`` is a 1-D tensor or NumPy array (e.g. a ``np.memmap`` from
    :func:`read_token_file`; only the windows drawn are read from disk). Returns ``(x, y)``,
    both ``(B, T) = (batch_size, block_size)`` int64 tensors, where ``y`` is ``x`` shifted one
    position to the left: ``y[b, t]`` is the token that follows ``x[b, :t + 1]``.

    Raises ``ValueError`` when ``data`` is too short for one window.
    """
    if len(data) <= block_size:
        raise ValueError(
            f"data has {len(data)} tokens, too few for windows of block_size={block_size} "
            f"plus one target; use a smaller block_size or more data"
        )
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    if isinstance(data, np.ndarray):
        rows = ix.numpy()[:, None] + np.arange(block_size + 1)
        windows = torch.from_numpy(data[rows].astype(np.int64))  # (B, T + 1)
    else:
        windows = data[ix[:, None] + torch.arange(block_size + 1)].long()  # (B, T + 1)
    x, y = windows[:, :-1], windows[:, 1:]
    if torch.device(device).type == "cuda":
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


class TokenWindows(torch.utils.data.Dataset):
    """Every window of ``block_size`` tokens of ``data`` as a map-style PyTorch ``Dataset``.

    Window ``i`` is ``(x, y) = (data[i : i + block_size], data[i + 1 : i + block_size + 1])``,
    two int64 tensors of shape ``(T,) = (block_size,)``. There are
    ``len(data) - block_size`` windows (each needs one extra token for its last target).
    ``data`` is a 1-D tensor or NumPy array, e.g. a ``np.memmap`` from
    :func:`read_token_file`: a window is read from disk only when it is asked for.

    Wrapped in a ``torch.utils.data.DataLoader(..., shuffle=True)`` it gives ``(B, T)``
    batches of random windows, like :func:`get_batch` (which samples with replacement,
    while a shuffled ``DataLoader`` visits every window once per epoch).

    Raises ``ValueError`` when ``data`` is not 1-D or too short for one window, and
    ``IndexError`` for a window index out of range.
    """

    def __init__(self, data, block_size: int):
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        if getattr(data, "ndim", 1) != 1:
            raise ValueError(f"data must be a 1-D sequence of token ids, got shape "
                             f"{tuple(data.shape)}; flatten it first")
        if len(data) <= block_size:
            raise ValueError(
                f"data has {len(data)} tokens, too few for windows of block_size={block_size} "
                f"plus one target; use a smaller block_size or more data"
            )
        self.data, self.block_size = data, block_size

    def __len__(self) -> int:
        return len(self.data) - self.block_size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"window {i} out of range for {n} windows")
        i = i % n
        chunk = self.data[i:i + self.block_size + 1]  # T + 1 tokens
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(chunk.astype(np.int64))  # reads just this window
        else:
            chunk = chunk.to(torch.int64, copy=True)  # a copy, never a view into the corpus
        return chunk[:-1], chunk[1:]


def write_token_file(chunks: Iterable, path: str | Path, dtype=np.uint16,
                     total: int | None = None, progress: bool = True) -> Path:
    """Write token ids to a flat binary file that :func:`read_token_file` maps into memory.

    ``chunks`` yields sequences of ids (lists or arrays), e.g. one encoded document at a
    time, so the corpus never has to fit in memory. ``uint16`` holds ids below 65,536 (GPT-2's
    50,257 fit) at 2 bytes per token. The file is written to a temporary name and renamed at
    the end, so an interrupted run leaves no half-written file. ``total`` (number of chunks)
    sizes the progress bar.

    Raises ``ValueError`` when an id does not fit ``dtype``.
    """
    path = Path(path)
    limit = np.iinfo(dtype).max
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        for chunk in progress_bar(chunks, total=total, disable=not progress, desc=path.name,
                                  unit="doc"):
            arr = np.asarray(chunk, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() > limit):
                raise ValueError(f"token id {int(arr.max())} does not fit in "
                                 f"{np.dtype(dtype).name}; use a wider dtype")
            f.write(arr.astype(dtype).tobytes())
    return path


def read_token_file(path: str | Path, dtype=np.uint16) -> np.memmap:
    """Map a file written by :func:`write_token_file` into memory (read-only, lazy).

    Raises ``FileNotFoundError`` naming the path when it does not exist, ``ValueError``
    naming it when it is empty or not a whole number of ``dtype`` tokens (cut short, or
    written with another dtype)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no token file at {path}; write it with write_token_file")
    size, itemsize = path.stat().st_size, np.dtype(dtype).itemsize
    if size == 0 or size % itemsize:
        raise ValueError(f"the token file {path} holds {size} bytes, "
                         f"{'no tokens' if size == 0 else 'not a whole number of tokens'} "
                         f"({np.dtype(dtype).name}, {itemsize} bytes each): it was cut short or "
                         f"written another way; write it again with write_token_file")
    return np.memmap(path, dtype=dtype, mode="r")


def pad_right(rows: Sequence, pad_value, dtype=torch.long) -> torch.Tensor:
    """Stack sequences of different lengths into one ``(B, T)`` tensor, ``T`` the longest,
    each row filled up on the right with ``pad_value``. ``rows`` are lists or 1-D tensors.
    Raises ``ValueError`` for no rows."""
    if not rows:
        raise ValueError("pad_right needs at least one row")
    out = torch.full((len(rows), max(len(r) for r in rows)), pad_value, dtype=dtype)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


def load_corpus(name: str, bpe_vocab_size: int = 0):
    """A dataset -> ``(tokenizer, train_ids, val_ids)``.

    ``name`` is either a registry text corpus (e.g. ``"tinyshakespeare"``; 90/10 split by
    position) or a folder holding ``train.bin`` and ``val.bin`` (token files from
    :func:`course_utils.datasets.write_token_file`, uint16) and ``tokenizer.json`` (a saved
    tokenizer). A registry corpus is character-level, or with ``bpe_vocab_size`` N encoded by
    a byte-level BPE of N tokens learned from its training split (:func:`course_utils.bpe.
    train_bpe`); the split is then made in the text, at the same character as for characters.

    Raises ``FileNotFoundError`` for a folder missing one of those files, or a name that is
    neither, and ``ValueError`` for an unreadable ``tokenizer.json``, a token file that is
    empty, cut short or holds ids outside the tokenizer's vocabulary, a ``bpe_vocab_size``
    given for a token folder, or an evaluation set of the registry (``held_out``).
    """
    folder = Path(name)
    if folder.is_dir() and bpe_vocab_size:
        raise ValueError(f"bpe_vocab_size applies to registry corpora; the token folder "
                         f"{folder} has its own tokenizer: drop --bpe-vocab-size")
    if folder.is_dir():
        missing = [f for f in ("train.bin", "val.bin", "tokenizer.json")
                   if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"dataset folder {folder} lacks {', '.join(missing)}; a token folder holds "
                f"train.bin, val.bin and tokenizer.json, e.g. made by "
                f"python -m course_utils.tinystories {folder}")
        try:
            tok = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text("utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read the tokenizer {folder / 'tokenizer.json'}: "
                             f"{e}") from None
        splits = [read_token_file(folder / f"{split}.bin") for split in ("train", "val")]
        for split, data in zip(("train", "val"), splits):
            if int(data.max()) >= tok.vocab_size:  # one pass over the file: about 1 s per GB
                raise ValueError(f"the token file {folder / f'{split}.bin'} holds id "
                                 f"{int(data.max())}, outside the {tok.vocab_size} tokens of "
                                 f"{folder / 'tokenizer.json'}: the files do not belong together")
        return tok, *splits
    if name in REGISTRY and REGISTRY[name].held_out:
        raise ValueError(f"{name!r} is an evaluation set (held out): the course never trains on "
                         f"the items it measures with; pick a training corpus")
    if name not in REGISTRY:
        raise FileNotFoundError(
            f"dataset {name!r} is neither a folder nor a corpus of the registry "
            f"({', '.join(sorted(REGISTRY))}); the TinyStories presets need their token "
            f"folder made first: python -m course_utils.tinystories {name}")
    if bpe_vocab_size:
        return _bpe_corpus(name, bpe_vocab_size)
    text = load_text(name)
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.int64)
    train, val = train_val_split(data)
    return tok, train, val


@functools.lru_cache(maxsize=2)  # the command line asks before training; learned once
def _bpe_corpus(name: str, vocab_size: int):
    text = load_text(name)
    cut = int(len(text) * (1 - VAL_FRACTION))  # train_val_split's cut, in characters
    tok = train_bpe(text[:cut], vocab_size)
    return (tok, *(torch.tensor(tok.encode_ordinary(part), dtype=torch.int64)
                   for part in (text[:cut], text[cut:])))
