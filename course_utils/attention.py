"""Multi-head causal self-attention with an optional KV cache (notebook 04, cache: notebook 08).

Scaled dot-product attention from "Attention Is All You Need" (Vaswani et al., 2017),
with the causal mask of a decoder-only language model (Radford et al., 2018/2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import ParallelLinear


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Preallocated as ``(B, n_head, block_size, hs)`` tensors so that adding a token is a copy
    into a slice, not a concatenation. ``length`` is the number of cached positions.
    """

    def __init__(self, batch_size: int, n_head: int, block_size: int, head_size: int,
                 device=None, dtype=torch.float32):
        shape = (batch_size, n_head, block_size, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape ``(B, n_head, T_new, hs)``; return all keys and values so far.

        Raises ``ValueError`` when the cache would grow past its ``block_size``.
        """
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(
                f"KV cache overflow: {end} positions but block_size is {self.k.size(2)}; "
                f"crop the context or start a new cache"
            )
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention.

    Input and output ``(B, T, C)`` with ``C = n_embd``; ``n_head`` heads of size
    ``hs = C // n_head``. One linear layer ``c_attn`` makes queries, keys and values
    (``C -> 3C``) and ``c_proj`` mixes the heads (``C -> C``), as in GPT-2, so that GPT-2
    weights load one to one.

    ``attn_impl`` selects the computation: ``"manual"`` writes out
    ``softmax(mask(q k^T / sqrt(hs))) v``; ``"sdpa"`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels, flash attention
    on GPUs that have it). Both give the same result (tested).
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0,
                 bias: bool = True, attn_impl: str = "sdpa"):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if attn_impl not in ("sdpa", "manual"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'manual', got {attn_impl!r}")
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout
        self.attn_impl = attn_impl
        self.c_attn = ParallelLinear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = ParallelLinear(n_embd, n_embd, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        # mask[i, j] is True where query i may look at key j (j <= i). Not saved in checkpoints.
        mask = torch.ones(block_size, block_size, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``.

        With a ``kv_cache``, ``x`` holds only the new positions; their keys and values are
        appended to the cache and the queries attend to every cached position.
        """
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        past = 0
        if kv_cache is not None:
            past = kv_cache.length
            k, v = kv_cache.append(k, v)  # (B, nh, past + T, hs)
        mask = self.mask[past:past + T, :past + T]  # (T, past + T)
        if self.attn_impl == "sdpa":
            dropout_p = self.dropout if self.training else 0.0
            if past == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            elif T == 1:  # one new token sees every cached position: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, past + T)
            att = att.masked_fill(~mask, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))
