"""The transformer block: LayerNorm, the MLP, residual connections (notebook 05), and the
modern alternatives RMSNorm and the SwiGLU MLP (notebook 11)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention, KVCache


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


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension (Zhang & Sennrich, 2019, "Root
    Mean Square Layer Normalization"), as Llama uses it.

    ``y = x / sqrt(mean(x^2) + eps) * weight``, per position: LayerNorm without subtracting
    the mean and without a bias, so it has only ``weight``. Computed in float32 at least
    (as Hugging Face's ``LlamaRMSNorm``), then cast back to the input's dtype before the
    gain. Input and output ``(..., ndim)``.
    """

    def __init__(self, ndim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm as a function (what :class:`RMSNorm` computes): ``x`` ``(..., C)`` divided by
    the root mean square of its last dimension, plus ``eps`` under the root, times ``weight``
    ``(C,)``; computed in float32 at least, then cast back to ``x``'s dtype before the gain."""
    h = x.to(torch.promote_types(x.dtype, torch.float32))
    h = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return h.to(x.dtype) * weight


def norm_layer(norm: str, ndim: int, bias: bool = True, eps: float = 1e-5) -> nn.Module:
    """``LayerNorm(ndim, bias, eps)`` for ``norm="layernorm"``, ``RMSNorm(ndim, eps)`` for
    ``norm="rmsnorm"`` (which has no bias whatever ``bias`` says).

    Raises ``ValueError`` for another ``norm``.
    """
    if norm == "layernorm":
        return LayerNorm(ndim, bias=bias, eps=eps)
    if norm == "rmsnorm":
        return RMSNorm(ndim, eps=eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {norm!r}")


class MLP(nn.Module):
    """Position-wise feed-forward network: ``C -> hidden -> GELU -> C``, then dropout.

    ``hidden`` defaults to ``4 * C`` (GPT-2). GELU (Hendrycks & Gimpel, 2016) in its tanh
    approximation, as GPT-2 uses; ``activation="relu2"`` uses ``relu(z) ** 2`` instead
    (So et al., 2021, "Primer: Searching for Efficient Transformers for Language Modeling"; the
    modded-nanogpt speedrun uses it). Input and output ``(B, T, C)``.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = True,
                 hidden: int | None = None, activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "relu2"):
            raise ValueError(f"activation must be 'gelu' or 'relu2', got {activation!r}")
        hidden = hidden or 4 * n_embd
        self.activation = activation
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = self.gelu(h) if self.activation == "gelu" else F.relu(h).square()
        return self.dropout(self.c_proj(h))


def swiglu_hidden(n_embd: int) -> int:
    """Llama's SwiGLU width for ``n_embd``: two thirds of ``4 * n_embd`` (so that the MLP's
    three matrices hold about as many weights as the GELU MLP's two), rounded up to a
    multiple of 256 (Touvron et al., 2023, and Meta's reference code: ``multiple_of=256``)."""
    hidden = 2 * (4 * n_embd) // 3
    return 256 * -(-hidden // 256)


class SwiGLU(nn.Module):
    """The gated feed-forward network of Llama: ``c_proj(silu(c_gate(x)) * c_fc(x))``, then
    dropout (Shazeer, 2020, "GLU Variants Improve Transformer").

    ``c_gate`` and ``c_fc`` (Llama's ``gate_proj`` and ``up_proj``) both map ``C -> hidden``;
    the SiLU of the gate, ``silu(z) = z * sigmoid(z)``, scales the "up" features elementwise,
    and ``c_proj`` (``down_proj``) maps back ``hidden -> C``. ``hidden`` defaults to
    :func:`swiglu_hidden`. No biases by default, as in Llama. Input and output ``(B, T, C)``.
    """

    def __init__(self, n_embd: int, dropout: float = 0.0, bias: bool = False,
                 hidden: int | None = None):
        super().__init__()
        hidden = hidden or swiglu_hidden(n_embd)
        self.c_gate = nn.Linear(n_embd, hidden, bias=bias)
        self.c_fc = nn.Linear(n_embd, hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.silu(self.c_gate(x)) * self.c_fc(x)))


class Block(nn.Module):
    """A pre-norm transformer block (GPT-2): ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    Input and output ``(B, T, C)``. ``config`` is the model's settings, a
    :class:`course_utils.model.GPTConfig`: its defaults build GPT-2's block, and its options
    Llama's: ``norm="rmsnorm"`` (:class:`RMSNorm` for ``ln_1`` and ``ln_2``),
    ``mlp="swiglu"`` (:class:`SwiGLU`), ``mlp="relu2"`` (:class:`MLP` with ReLU squared),
    ``n_kv_head`` for grouped-query attention (see
    :class:`~course_utils.attention.CausalSelfAttention`). ``mlp_hidden`` is the MLP width
    (default: ``4 * n_embd`` for GELU, :func:`swiglu_hidden` for SwiGLU); ``norm_eps`` the
    epsilon of both norms.

    Raises ``ValueError`` for an unknown ``norm`` or ``mlp``, and as
    :class:`~course_utils.attention.CausalSelfAttention` does.
    """

    def __init__(self, config):
        super().__init__()
        c = config
        if c.mlp not in ("gelu", "swiglu", "relu2"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu' or 'relu2', got {c.mlp!r}")
        self.ln_1 = norm_layer(c.norm, c.n_embd, c.bias, c.norm_eps)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = norm_layer(c.norm, c.n_embd, c.bias, c.norm_eps)
        if c.mlp == "swiglu":
            self.mlp = SwiGLU(c.n_embd, c.dropout, c.bias, c.mlp_hidden)
        else:
            self.mlp = MLP(c.n_embd, c.dropout, c.bias, c.mlp_hidden, activation=c.mlp)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x``: ``(B, T, C)`` -> ``(B, T, C)``; ``kv_cache`` and ``rope`` go to the attention
        (see :meth:`CausalSelfAttention.forward`)."""
        x = x + self.attn(self.ln_1(x), kv_cache, rope)
        x = x + self.mlp(self.ln_2(x))
        return x
