"""The checks of notebook 02 (datasets): ``random_batch``, ``to_uint16``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb02_datasets.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from .core import Wrong, _exercise, _first_line, _tensor


@_exercise("02", (
    "Draw all start positions at once: ix = torch.randint(len(data) - block_size, "
    "(batch_size,), generator=generator). Row b of x is data[ix[b] : ix[b] + block_size].",
    "ix[:, None] + torch.arange(block_size + 1) is a (B, T + 1) table of indices; "
    "data[that] gives all windows; x is windows[:, :-1] and y is windows[:, 1:].",
), stand_in="datasets:get_batch")
def random_batch(fn):
    """``random_batch(data, block_size, batch_size, generator) -> (x, y)``, both ``(B, T)``."""
    from ..datasets import get_batch

    data = torch.arange(1000, 1100)  # distinct, consecutive ids: a window is easy to recognise
    for block_size, batch_size, seed in ((8, 4, 0), (1, 3, 1), (99, 2, 2)):
        call = f"random_batch(data (100,), {block_size}, {batch_size}, generator)"
        got = fn(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        ex, ey = get_batch(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Wrong(f"{call} returned a {type(got).__name__}; return the pair (x, y)")
        x, y = got
        for name, t, e in (("x", x, ex), ("y", y, ey)):
            if isinstance(t, torch.Tensor) and t.shape == (block_size, batch_size) != e.shape:
                raise Wrong(f"{call}: {name} has shape {tuple(t.shape)} but expected "
                            f"{tuple(e.shape)}, one row per window: (batch_size, block_size)")
            if not isinstance(t, torch.Tensor) or t.shape != e.shape or t.dtype != e.dtype:
                _tensor(t, e, f"{call}: {name}", "get_batch")  # names the type, shape or dtype
        starts = x[:, :1]
        if not torch.equal(x, starts + torch.arange(block_size)):
            raise Wrong(f"{call}: a row of x is not a window of consecutive tokens of data")
        if torch.equal(y, x):
            raise Wrong(f"{call}: y equals x; y is the same window shifted by one token, "
                        f"data[i + 1 : i + block_size + 1]")
        if not torch.equal(y, x + 1):
            raise Wrong(f"{call}: y must be x shifted by one token: y[b, t] = data[i + t + 1]")
        if not torch.equal(x, ex):
            raise Wrong(f"{call}: your windows start elsewhere than get_batch's with the same "
                        f"generator; draw the starts with one call, torch.randint("
                        f"len(data) - block_size, (batch_size,), generator=generator)")


@_exercise("02", (
    "Check the range before converting: 0 <= id <= np.iinfo(np.uint16).max (65535).",
    "arr = np.asarray(ids, dtype=np.int64); if ((arr < 0) | (arr > 65535)).any(): raise "
    "ValueError(...) naming the id; otherwise return arr.astype(np.uint16).",
))
def to_uint16(fn):
    """``to_uint16(ids) -> np.ndarray`` (uint16); ``ValueError`` for an id that does not fit."""
    for ids in ([0, 1, 50256, 65535], [7], []):
        call = f"to_uint16({ids})"
        got = fn(list(ids))
        if not isinstance(got, np.ndarray):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a NumPy array")
        if got.dtype != np.uint16:
            raise Wrong(f"{call}: dtype {got.dtype} but expected uint16 (2 bytes per token)")
        if got.tolist() != ids:
            raise Wrong(f"{call} returned {got.tolist()}, expected {ids}")
    for ids, wrapped in (([1, 2, 70_000], 70_000 % 65_536), ([5, -1], 65_535)):
        call = f"to_uint16({ids})"
        try:
            got = fn.raw(list(ids))
        except ValueError:
            continue
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__} ({_first_line(e)}); raise "
                        f"ValueError, with a message that names the id") from None
        if isinstance(got, np.ndarray) and wrapped in got.tolist():
            raise Wrong(f"{call} turned {ids[-1]:,} into {wrapped:,} without a word: check "
                        f"the range and raise ValueError")
        raise Wrong(f"{call} returned instead of raising ValueError: {ids[-1]:,} does not "
                    f"fit in uint16 (0 .. 65,535)")
