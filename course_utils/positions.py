"""Position information for a transformer: the fixed sinusoidal encodings (notebook 03) and
rotary position embeddings, RoPE (notebook 11).

Sinusoidal position encodings: Vaswani et al. (2017), "Attention Is All You Need", section
3.5. The GPT-2 model learns its positions instead (``wpe`` in :mod:`course_utils.model`).

RoPE: Su et al. (2021), "RoFormer: Enhanced Transformer with Rotary Position Embedding".
Nothing is added to the token embeddings; instead every query and key vector is rotated
by an angle proportional to its position, pair of dimensions by pair of dimensions, so that
the score ``q_m . k_n`` depends on the positions only through ``m - n``. Llama, SmolLM2 and
most current models use it (``GPTConfig(pos_emb="rope")``).
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


def rope_tables(positions: torch.Tensor, head_size: int, theta: float = 10000.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables of rotary position embeddings for ``positions``.

    ``positions``: ``(T,)`` integer positions (e.g. ``past .. past + T - 1`` when a KV cache
    holds ``past`` tokens), or ``(B, T)`` (one row per sequence, for left-padded batches).
    Returns ``(cos, sin)``, each ``(..., T, head_size)`` float32, on the device of
    ``positions``. Dimension pair ``(i, i + head_size/2)`` of a head turns by the
    angle ``pos * theta ** (-2i / head_size)``, ``i = 0 .. head_size/2 - 1``: the first half
    of the head's dimensions is paired with the second half (Hugging Face Llama's "rotate
    half" layout; the RoFormer paper pairs neighbouring dimensions instead, which is the
    same up to a fixed permutation of the dimensions). Both halves of each row hold the same
    angles. Computed in float32 as Hugging Face's ``LlamaRotaryEmbedding`` does.

    Raises ``ValueError`` for an odd ``head_size`` (dimensions come in pairs) or a
    ``theta`` that is not positive.
    """
    if head_size < 2 or head_size % 2:
        raise ValueError(f"RoPE needs an even head size (dimensions are rotated in pairs), got "
                         f"{head_size}; choose n_embd and n_head so that n_embd // n_head is even")
    if not theta > 0:
        raise ValueError(f"rope_theta must be positive, got {theta}")
    two_i = torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device)
    inv_freq = 1.0 / theta ** (two_i / head_size)  # (hs/2,) radians per position
    angles = positions.float()[..., None] * inv_freq  # (..., T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs): dims i and i + hs/2 share an angle
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the query or key vectors ``x`` by their positions' angles (RoPE).

    ``x``: ``(B, n_head, T, hs)``; ``cos``, ``sin``: ``(T, hs)`` from :func:`rope_tables`, or
    ``(B, 1, T, hs)`` (each row its own positions).
    Returns a tensor shaped and typed like ``x``: each pair ``(a, b) = (x[..., i],
    x[..., i + hs/2])`` becomes ``(a cos - b sin, b cos + a sin)``, a 2-D rotation, which
    changes no vector's length.
    """
    a, b = x.chunk(2, dim=-1)  # the first and second halves of each head
    rotated_half = torch.cat([-b, a], dim=-1)  # (a, b) turned by 90 degrees
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)
