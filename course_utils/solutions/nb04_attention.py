"""Solutions to the exercises of notebook 04 (attention): the causal mask, a stable softmax,
scaled dot-product attention (Vaswani et al., 2017) and the split into heads."""

import math

import torch


def causal_mask(T):
    """``(T, T)`` bool mask, True where query ``i`` may attend to key ``j``: ``j <= i``."""
    return torch.ones(T, T, dtype=torch.bool).tril()


def softmax(x):
    """Softmax over the last dimension of ``x``, safe for large logits: subtracting each
    row's maximum leaves the result unchanged and keeps ``exp`` from overflowing."""
    e = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return e / e.sum(dim=-1, keepdim=True)


def causal_attention(q, k, v):
    """``softmax(q k^T / sqrt(hs) + mask) v`` for ``q, k, v`` of shape ``(B, n_head, T, hs)``;
    position ``t`` attends to positions ``0 .. t``. Returns ``(B, n_head, T, hs)``."""
    T, hs = q.shape[-2], q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, n_head, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return weights @ v


def split_heads(x, n_head):
    """``(B, T, C)`` -> ``(B, n_head, T, hs)`` with ``hs = C // n_head``: head ``h`` holds the
    features ``h * hs .. (h + 1) * hs - 1`` of every position."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)
