"""Position information for a transformer: the fixed sinusoidal encodings (notebook 03).

Sinusoidal position encodings: Vaswani et al. (2017), "Attention Is All You Need", section
3.5. (The GPT itself learns its positions: ``wpe`` in :mod:`course_utils.model`.)
"""

from __future__ import annotations

import torch


def sinusoidal_positions(block_size: int, n_embd: int) -> torch.Tensor:
    """The fixed sine/cosine position encodings of Vaswani et al. (2017), section 3.5.

    Returns a ``(T, C) = (block_size, n_embd)`` float32 tensor ``pe`` with, for position
    ``pos`` and ``i = 0 .. C/2 - 1``::

        pe[pos, 2i]     = sin(pos / 10000 ** (2i / C))
        pe[pos, 2i + 1] = cos(pos / 10000 ** (2i / C))

    Each pair of columns is a sine/cosine of one frequency; wavelengths grow geometrically
    from 2*pi to 10000*2*pi, so nearby positions get similar vectors and
    ``pe[p] . pe[p + k]`` depends only on the offset ``k``. Nothing is learned.

    Raises ``ValueError`` when ``block_size`` or ``n_embd`` is not positive or ``n_embd``
    is odd (the columns come in sin/cos pairs).
    """
    if block_size < 1 or n_embd < 1:
        raise ValueError(f"block_size and n_embd must be positive, got {block_size}, {n_embd}")
    if n_embd % 2:
        raise ValueError(f"n_embd must be even (sin/cos pairs), got {n_embd}; use {n_embd + 1}")
    pos = torch.arange(block_size, dtype=torch.float64)[:, None]  # (T, 1)
    two_i = torch.arange(0, n_embd, 2, dtype=torch.float64)  # (C/2,)
    angle = pos / 10000.0 ** (two_i / n_embd)  # (T, C/2)
    pe = torch.empty(block_size, n_embd, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.float()
