"""Solutions to the exercises of notebook 02 (datasets): batches of windows, token files."""

import numpy as np
import torch


def random_batch(data, block_size, batch_size, generator=None):
    """``batch_size`` random windows of ``data`` (a 1-D int64 tensor): ``x`` and the targets
    ``y`` (the same windows shifted one token), both ``(B, T) = (batch_size, block_size)``.
    The start positions come from one ``torch.randint`` call, as in ``get_batch``."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    rows = ix[:, None] + torch.arange(block_size + 1)  # (B, T + 1): every index of a window
    windows = data[rows]  # one indexing operation, no Python loop
    return windows[:, :-1], windows[:, 1:]


def to_uint16(ids):
    """Token ids as a ``np.uint16`` array (2 bytes per token). Raises ``ValueError`` naming
    the first id outside ``0 .. 65535`` instead of letting it wrap around."""
    arr = np.asarray(ids, dtype=np.int64)
    limit = np.iinfo(np.uint16).max  # 65535
    bad = arr[(arr < 0) | (arr > limit)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} does not fit in uint16 (0 .. {limit})")
    return arr.astype(np.uint16)
