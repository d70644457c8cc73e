"""The checks of notebook 11 (modern architecture): ``rms_norm``, ``rope``, ``repeat_kv``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb11_modern_architecture.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _tensor


@_exercise("11", (
    "RMSNorm keeps only the scale part of LayerNorm: no mean is subtracted and there is no "
    "bias. Divide by the root of the mean of squares (plus eps), then multiply by weight.",
    "return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight",
), stand_in="block:rms_norm")
def rms_norm(fn):
    """``rms_norm(x, weight, eps=1e-5)`` over the last dimension, as ``torch.nn.RMSNorm``."""
    for x in (torch.randn(2, 5, 16) * 3 + 1, 1e-3 * torch.randn(3, 8), torch.randn(4, 1)):
        C, eps = x.shape[-1], 1e-5
        weight = torch.randn(C)
        reference = torch.nn.RMSNorm(C, eps=eps)  # PyTorch's
        with torch.no_grad():
            reference.weight.copy_(weight)
            expected = reference(x)
        call = f"rms_norm(x {tuple(x.shape)}, weight, eps=1e-5)"
        got = fn(x.clone(), weight.clone(), eps)
        ms = (x * x).mean(-1, keepdim=True)
        centred = x - x.mean(-1, keepdim=True)
        _tensor(got, expected, call, "torch.nn.RMSNorm", [
            (F.layer_norm(x, (C,), weight, None, eps), f"{call}: that is LayerNorm; RMSNorm "
             f"does not subtract the mean: x / sqrt(mean(x**2) + eps) * weight"),
            (centred / torch.sqrt((centred**2).mean(-1, keepdim=True) + eps) * weight,
             f"{call}: RMSNorm does not subtract the mean"),
            (x / (torch.sqrt(ms) + eps) * weight, f"{call}: eps goes inside the square root"),
            (x / torch.sqrt(ms + eps), f"{call}: weight is not applied; multiply by it"),
        ])


def _rope_reference(x: torch.Tensor, base: float, interleaved: bool = False,
                    sign: float = 1.0, offset: int = 0, exponent: float = -1.0) -> torch.Tensor:
    """RoPE as complex numbers: pair ``(x_i, x_{i + hs/2})`` (or ``(x_{2i}, x_{2i+1})``) is one
    complex number, multiplied by ``exp(i * t * base ** (-2i / hs))`` at position ``t``. The
    other arguments make the usual mistakes: ``sign=-1`` turns the other way, ``exponent=1``
    flips the exponent's sign, ``offset`` shifts the positions."""
    T, hs = x.shape[-2], x.shape[-1]
    if interleaved:
        re_, im = x[..., 0::2], x[..., 1::2]
    else:
        re_, im = x[..., : hs // 2], x[..., hs // 2 :]
    theta = base ** (exponent * torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    angle = (torch.arange(T, dtype=torch.float64)[:, None] + offset) * theta  # (T, hs/2)
    z = torch.complex(re_.double(), im.double()) * torch.polar(torch.ones_like(angle),
                                                              sign * angle)
    if interleaved:
        return torch.stack([z.real, z.imag], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _rope_interleaved_tables(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE with cos/sin tables laid out for adjacent pairs: each angle twice in
    a row (``repeat_interleave``), ``θ_0, θ_0, θ_1, θ_1, ...``, where the two halves need
    ``θ_0 .. θ_{hs/2-1}`` twice over (``torch.cat([cos, cos], -1)``)."""
    T, hs = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
    angle = (torch.arange(T, dtype=torch.float64)[:, None] * theta).repeat_interleave(2, -1)
    x1, x2 = x[..., : hs // 2].double(), x[..., hs // 2 :].double()
    return (x.double() * angle.cos() + torch.cat([-x2, x1], -1) * angle.sin()).to(x.dtype)


@_exercise("11", (
    "Pair feature i with feature i + hs/2 and turn each pair, as a point in the plane, by "
    "the angle t * base**(-2i/hs) at position t = 0 .. T-1.",
    "inv_freq = base ** (-torch.arange(0, hs, 2) / hs); angles = torch.arange(T)[:, None] * "
    "inv_freq; cos = cat([angles.cos()] * 2, -1) (same for sin); x1, x2 = the two halves; "
    "return x * cos + torch.cat([-x2, x1], -1) * sin",
))
def rope(fn):
    """``rope(x, base=10000.0)``: rotary embeddings of ``(B, nh, T, hs)``, rotate-half layout."""
    for shape, base in (((2, 3, 7, 8), 10000.0), ((1, 1, 1, 4), 10000.0),
                        ((1, 2, 5, 2), 10000.0), ((2, 1, 6, 8), 500.0)):
        x = torch.randn(shape)
        call = f"rope(x {shape}, base={base:g})"
        try:
            got = fn(x.clone(), base)
        except Wrong as e:
            if "must match the size of tensor" not in str(e):
                raise
            raise Wrong(f"{e}: the cos/sin tables do not fit x; make them (T, hs), one row "
                        f"per position with each of the hs/2 angles twice "
                        f"(torch.cat([cos, cos], dim=-1)), to broadcast over "
                        f"(B, n_head, T, hs)") from None
        _tensor(got, _rope_reference(x, base), call, "the rotation e^(i t theta)", [
            (_rope_reference(x, base, interleaved=True), f"{call}: you rotated adjacent "
             f"pairs (2i, 2i+1), the layout of the RoPE paper; Hugging Face's Llama pairs "
             f"the split halves, i with i + hs/2 (rotate_half)"),
            (_rope_reference(x, base, exponent=1.0), f"{call}: the exponent's sign is "
             f"flipped: the frequencies must fall with i, theta_i = base ** (-2i/hs), from 1 "
             f"radian per position for pair 0 to about 1/base for the last"),
            (_rope_interleaved_tables(x, base), f"{call}: the cos/sin tables are laid out "
             f"for adjacent pairs (each angle twice in a row, repeat_interleave); the split "
             f"halves need all the angles once per half: torch.cat([cos, cos], dim=-1)"),
            (_rope_reference(x, base, sign=-1.0), f"{call}: rotated the wrong way; "
             f"rotate_half(x) = cat(-x2, x1)"),
            (_rope_reference(x, base, offset=1), f"{call}: position 0 must stay unchanged: "
             f"the positions are 0 .. T-1"),
            (_rope_reference(x, 10000.0), f"{call}: the base argument is ignored"),
        ])


@_exercise("11", (
    "Query heads h * n_rep .. (h + 1) * n_rep - 1 share key/value head h, so each head is "
    "repeated n_rep times in place: heads 0, 0, 1, 1, not 0, 1, 0, 1.",
    "torch.repeat_interleave(x, n_rep, dim=1), or x[:, :, None].expand(B, n_kv_head, n_rep, "
    "T, hs).reshape(B, n_kv_head * n_rep, T, hs)",
))
def repeat_kv(fn):
    """``repeat_kv(x, n_rep)``: ``(B, n_kv_head, T, hs) -> (B, n_kv_head * n_rep, T, hs)``."""
    for shape, n_rep in (((2, 2, 5, 4), 3), ((1, 3, 2, 2), 1), ((1, 1, 3, 2), 4)):
        x = torch.randn(shape)
        call = f"repeat_kv(x {shape}, n_rep={n_rep})"
        got = fn(x.clone(), n_rep)
        expected = torch.repeat_interleave(x, n_rep, dim=1)  # PyTorch's
        B, n_kv_head, T, hs = shape
        if isinstance(got, torch.Tensor) and got.shape != expected.shape:
            if got.shape == (B, n_kv_head, T * n_rep, hs):
                raise Wrong(f"{call}: shape {tuple(got.shape)}: repeated along T; repeat the "
                            f"heads, dim=1")
            if got.shape == (B, n_kv_head, T, hs * n_rep):
                raise Wrong(f"{call}: shape {tuple(got.shape)}: repeated the features of each "
                            f"head (dim=-1); repeat the heads, dim=1")
            if got.shape == (B, n_kv_head, n_rep, T, hs):
                raise Wrong(f"{call}: shape {tuple(got.shape)}: the copies are a new axis; "
                            f"merge it into the heads, .reshape(B, n_kv_head * n_rep, T, hs)")
        _tensor(got, expected, call, "torch.repeat_interleave(x, n_rep, dim=1)", [
            (x.repeat(1, n_rep, 1, 1), f"{call}: heads tiled (0, 1, 0, 1, ...) but they "
             f"must repeat in place (0, 0, 1, 1, ...): query heads h * n_rep .. share "
             f"key/value head h")])
