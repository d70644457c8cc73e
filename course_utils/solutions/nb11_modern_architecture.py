"""Solutions to the exercises of notebook 11 (modern architecture): RMSNorm (Zhang &
Sennrich, 2019), rotary position embeddings (Su et al., 2021) in Llama's rotate-half layout,
and the key/value heads of grouped-query attention (Ainslie et al., 2023)."""

import torch


def rms_norm(x, weight, eps=1e-5):
    """Divide every vector along the last dimension by its root mean square, then scale by
    ``weight`` ``(C,)``. No mean is subtracted and there is no bias."""
    rms = torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps)
    return x / rms * weight


def rope(x, base=10000.0):
    """Rotate queries or keys ``x`` ``(B, n_head, T, hs)`` by their positions ``0 .. T-1``.
    Feature ``i`` is paired with ``i + hs/2`` (the layout of Hugging Face's Llama); pair
    ``i`` turns by the angle ``t * base ** (-2i / hs)`` at position ``t``."""
    T, hs = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq  # (T, hs/2)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)  # (T, hs)
    sin = torch.cat([angles.sin(), angles.sin()], dim=-1)
    x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
    rotated_half = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated_half * sin


def repeat_kv(x, n_rep):
    """``(B, n_kv_head, T, hs)`` -> ``(B, n_kv_head * n_rep, T, hs)``: each key/value head is
    repeated ``n_rep`` times in place, so query heads ``h * n_rep .. (h + 1) * n_rep - 1``
    share head ``h``."""
    B, n_kv_head, T, hs = x.shape
    x = x[:, :, None].expand(B, n_kv_head, n_rep, T, hs)  # a view: no copy yet
    return x.reshape(B, n_kv_head * n_rep, T, hs)
