"""Multi-head causal self-attention with an optional KV cache (notebook 04, cache: notebook 08),
rotary positions and grouped-query attention (notebook 11).

Scaled dot-product attention from "Attention Is All You Need" (Vaswani et al., 2017),
with the causal mask of a decoder-only language model (Radford et al., 2018/2019).
Grouped-query attention (GQA): Ainslie et al. (2023), "GQA: Training Generalized
Multi-Query Transformer Models from Multi-Head Checkpoints". RoPE: see
:mod:`course_utils.positions`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positions import apply_rope


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Preallocated as ``(B, n_kv_head, length, hs)`` tensors (``length`` positions, at most the
    model's ``block_size``) so that adding a token is a copy into a slice, not a
    concatenation. ``length`` is the number of cached positions;
    the slots past it are uninitialised and never read. With grouped-query attention the
    cache holds ``n_kv_head`` heads, not ``n_head``: it is ``n_head / n_kv_head`` times
    smaller.

    ``pad`` ``(B,)`` (optional) serves batched generation from prompts of different lengths,
    padded on the left so that they end together: row ``b``'s first ``pad[b]`` positions are
    padding. Attention then never looks at them (:func:`attention_mask`), and positions count
    from each row's first real token (:meth:`course_utils.model.GPT.forward`), so every row
    computes what it would alone.
    """

    def __init__(self, batch_size: int, n_kv_head: int, length: int, head_size: int,
                 device=None, dtype=torch.float32, pad: torch.Tensor | None = None):
        shape = (batch_size, n_kv_head, length, head_size)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        # left padding: row b's first pad[b] positions are padding, never attended to
        self.pad = None if pad is None else torch.as_tensor(pad, device=device).long()

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` of shape ``(B, n_kv_head, T_new, hs)``; return all keys and values so
        far, ``(B, n_kv_head, length, hs)``.

        Raises ``ValueError`` when the cache would grow past its ``length``.
        """
        start, end = self.length, self.length + k.size(2)
        if end > self.k.size(2):
            raise ValueError(
                f"KV cache overflow: {end} positions but the cache holds {self.k.size(2)}; "
                f"crop the context or start a new cache"
            )
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def attention_mask(T: int, past: int, pad: torch.Tensor | None = None, device=None
                   ) -> torch.Tensor:
    """Which keys each new query may look at: ``mask[i, j]`` is True where new token ``i``
    (position ``past + i``) may attend to key ``j`` (``0 .. past + T - 1``): the causal mask,
    ``(T, past + T)``. With left padding (``pad`` ``(B,)``, see :class:`KVCache`) it is
    ``(B, 1, T, past + T)``: a row's padding keys are masked too, except that a padding query
    sees itself, so that no row of the softmax is empty (an empty one would give NaN, and
    0 * NaN in the weighted sum would spread it to real tokens)."""
    mask = torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)
    if pad is None:
        return mask
    keys = torch.arange(past + T, device=device)
    real = keys[None, :] >= pad[:, None]  # (B, past + T)
    itself = keys[None, :] == torch.arange(past, past + T, device=device)[:, None]  # (T, S)
    return ((mask[None] & real[:, None, :]) | itself[None])[:, None]


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention, optionally grouped-query, optionally with RoPE.

    Input and output ``(B, T, C)`` with ``C = n_embd``; ``n_head`` query heads of size
    ``hs = C // n_head``. One linear layer ``c_attn`` makes queries, keys and values and
    ``c_proj`` mixes the heads (``C -> C``), as in GPT-2, so that GPT-2 weights load one to
    one. ``c_attn`` maps ``C -> (n_head + 2 * n_kv_head) * hs`` and its output is split in
    this order: queries (``n_head * hs``), keys (``n_kv_head * hs``), values
    (``n_kv_head * hs``); with ``n_kv_head == n_head`` (the default) that is GPT-2's
    ``C -> 3C``.

    Grouped-query attention: with ``n_kv_head < n_head`` there are only ``n_kv_head`` key
    and value heads, each shared by a group of ``n_head // n_kv_head`` consecutive query
    heads (query head ``i`` uses key/value head ``i // (n_head // n_kv_head)``), which
    shrinks the KV cache by that factor. ``n_kv_head == 1`` is multi-query attention
    (Shazeer, 2019).

    ``attn_impl`` selects the computation: ``"manual"`` writes out
    ``softmax(mask(q k^T / sqrt(hs))) v``; ``"sdpa"`` calls
    :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels, flash attention
    on GPUs that have it). Both give the same result (tested).

    ``qk_norm=True`` divides each head's query and key vectors by their root mean square
    (RMSNorm without a gain, before RoPE): the scores stay in a bounded range however large
    the weights grow (QK-norm: Dehghani et al., 2023; modded-nanogpt's speedrun uses it).

    ``config`` is the model's settings, a :class:`course_utils.model.GPTConfig` (the layer
    reads ``n_embd``, ``n_head``, ``n_kv_head``, ``dropout``, ``bias``, ``attn_impl``,
    ``qk_norm`` and ``norm_eps``), so that a new model option is one field there and its use
    here.

    Raises ``ValueError`` when ``n_embd`` is not divisible by ``n_head``, ``n_kv_head`` does
    not divide ``n_head``, or ``attn_impl`` is unknown.
    """

    def __init__(self, config):
        super().__init__()
        n_embd, n_head = config.n_embd, config.n_head
        n_kv_head = n_head if config.n_kv_head is None else config.n_kv_head
        if n_embd % n_head != 0:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if n_kv_head < 1 or n_head % n_kv_head != 0:
            raise ValueError(f"n_kv_head ({n_kv_head}) must divide n_head ({n_head}): each key/"
                             f"value head serves an equal group of query heads")
        if config.attn_impl not in ("sdpa", "manual"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'manual', got {config.attn_impl!r}")
        self.n_head, self.n_kv_head, self.n_embd = n_head, n_kv_head, n_embd
        self.dropout, self.attn_impl = config.dropout, config.attn_impl
        self.qk_norm, self.norm_eps = config.qk_norm, config.norm_eps
        hs = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * n_kv_head) * hs, bias=config.bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``.

        With a ``kv_cache``, ``x`` holds only the new positions; their keys and values are
        appended to the cache and the queries attend to every cached position. ``rope``:
        the ``(cos, sin)`` tables of the new positions, each ``(T, hs)``
        (:func:`course_utils.positions.rope_tables`), applied to queries and keys before
        the keys are cached; ``None`` for a model without rotary positions.

        The cache refuses positions past its capacity; the GPT's forward pass refuses a
        sequence longer than ``block_size``.
        """
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(
            [self.n_head * hs, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, n_head, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv_head, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)
        if self.qk_norm:  # every query and key scaled to a root mean square of 1
            q, k = F.rms_norm(q, (hs,), eps=self.norm_eps), F.rms_norm(k, (hs,), eps=self.norm_eps)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        past, pad = 0, None
        if kv_cache is not None:
            past, pad = kv_cache.length, kv_cache.pad
            k, v = kv_cache.append(k, v)  # (B, n_kv_head, past + T, hs)
        dropout_p = self.dropout if self.training else 0.0
        mask = None if pad is None and (past == 0 or T == 1) else attention_mask(T, past, pad,
                                                                                 x.device)
        if self.attn_impl == "sdpa":
            gqa = self.n_kv_head != self.n_head  # let the kernel share each K/V head
            # no mask: all causal (past == 0), or one new token that sees every cached one
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                               is_causal=mask is None and past == 0,
                                               enable_gqa=gqa)
        else:
            # Split the query heads into n_kv_head groups; a size-1 axis on the keys and
            # values lets every query head of a group use its group's K/V head (broadcast).
            # Without GQA each group holds one head.
            q = q.unflatten(1, (self.n_kv_head, -1))  # (B, n_kv_head, group, T, hs)
            k, v = k.unsqueeze(2), v.unsqueeze(2)  # (B, n_kv_head, 1, past + T, hs)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (..., T, past + T)
            if mask is None:
                mask = attention_mask(T, past, None, x.device)
            att = att.masked_fill(~(mask if pad is None else mask.unsqueeze(1)), float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = (att @ v).flatten(1, 2)  # (B, n_head, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))
