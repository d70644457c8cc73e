"""Next-token prediction data: train/val split, random batches, token files on disk
(notebook 02)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm


def train_val_split(data, val_fraction: float = 0.1):
    """Split a 1-D sequence of token ids into its first ``1 - val_fraction`` and the rest.

    The split is by position, not at random, so no validation text leaks into training
    windows. Raises ``ValueError`` when ``val_fraction`` is not in ``(0, 1)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    limit = np.iinfo(dtype).max
    try:
        with open(tmp, "wb") as f:
            for chunk in tqdm(chunks, total=total, disable=not progress, desc=path.name,
                              unit="doc"):
                arr = np.asarray(chunk, dtype=np.int64)
                if arr.size and (arr.min() < 0 or arr.max() > limit):
                    raise ValueError(f"token id {int(arr.max())} does not fit in "
                                     f"{np.dtype(dtype).name}; use a wider dtype")
                f.write(arr.astype(dtype).tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_token_file(path: str | Path, dtype=np.uint16) -> np.memmap:
    """Map a file written by :func:`write_token_file` into memory (read-only, lazy).

    Raises ``FileNotFoundError`` naming the path when it does not exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no token file at {path}; write it with write_token_file")
    return np.memmap(path, dtype=dtype, mode="r")
