"""Solutions to the exercises of notebook 05 (the transformer block): LayerNorm (Ba et al.,
2016), dropout (Srivastava et al., 2014) and the pre-norm block of GPT-2."""

import torch


def layer_norm(x, weight, bias, eps=1e-5):
    """Normalise every vector along the last dimension of ``x`` to mean 0 and variance 1
    (the biased variance, divided by ``C``), then scale by ``weight`` and shift by ``bias``
    (both ``(C,)``). Same shape as ``x``."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def dropout(x, p, training=True):
    """In training, zero each element of ``x`` with probability ``p`` and scale the others by
    ``1 / (1 - p)``, so the expected value is unchanged; otherwise return ``x``."""
    if not training or p == 0:
        return x
    keep = torch.rand_like(x) >= p  # True with probability 1 - p
    return x * keep / (1 - p)


def pre_norm_block(x, ln_1, attn, ln_2, mlp):
    """GPT-2's block on ``x`` ``(B, T, C)``: each sub-layer reads a normalised copy of the
    residual stream and adds its output to it."""
    x = x + attn(ln_1(x))
    x = x + mlp(ln_2(x))
    return x
