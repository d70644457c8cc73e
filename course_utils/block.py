"""The transformer block: LayerNorm, the MLP, residual connections (notebook 05)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache
from .linear import ParallelLinear


class LayerNorm(nn.Module):
    """Layer normalisation over the last dimension (Ba, Kiros & Hinton, 2016).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance, per
    position. Same as ``nn.LayerNorm`` but the bias can be switched off (``bias=False``).
    Input and output ``(..., ndim)``.
    """

    def __init__(self, ndim: int, bias: bool = True, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class MLP(nn.Module):
    """Position-wise feed-forward network: ``C -> 4C -> GELU -> C``, then dropout.

    GELU (Hendrycks & Gimpel, 2016) in its tanh approximation, as GPT-2 uses.
    Input and output ``(B, T, C)``.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.c_fc = ParallelLinear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = ParallelLinear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block (GPT-2): ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    Input and output ``(B, T, C)``.
    """

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0,
                 bias: bool = True, attn_impl: str = "sdpa"):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout, bias, attn_impl)
        self.ln_2 = LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, dropout, bias)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x
