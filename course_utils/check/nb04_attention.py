"""The checks of notebook 04 (attention): ``causal_mask``, ``softmax``, ``causal_attention``,
``split_heads``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb04_attention.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _tensor


@_exercise("04", (
    "Query i (a row) may look at key j (a column) when j <= i: that is the lower triangle, "
    "the diagonal included.",
    "torch.ones(T, T, dtype=torch.bool).tril()",
))
def causal_mask(fn):
    """``causal_mask(T) -> (T, T)`` bool: True where query ``i`` may attend to key ``j <= i``."""
    import torch.nn as nn

    for T in (4, 1, 7):
        call = f"causal_mask({T})"
        got = fn(T)
        expected = nn.Transformer.generate_square_subsequent_mask(T) == 0  # PyTorch's
        if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
            _tensor(got, expected, call, "")
        if got.dtype != torch.bool:
            if torch.equal(got == 0, ~expected) and not torch.equal(got == 0, expected):
                raise Wrong(f"{call}: the pattern is right but the dtype is {got.dtype}; "
                            f"return a bool tensor, e.g. torch.ones(T, T, dtype=torch.bool)")
            if torch.equal(got == 0, expected):
                raise Wrong(f"{call}: that is an additive mask (0 and -inf); return the bool "
                            f"mask, True where attending is allowed")
            raise Wrong(f"{call}: dtype {got.dtype} but expected torch.bool")
        if torch.equal(got, expected):
            continue
        if torch.equal(got, ~expected):
            raise Wrong(f"{call}: the mask is inverted; True must mean 'may attend' (j <= i), "
                        f"as in F.scaled_dot_product_attention's attn_mask")
        if torch.equal(got, expected.T):
            raise Wrong(f"{call}: the mask is transposed; row i (the query) sees columns "
                        f"j <= i: torch.tril, not torch.triu")
        if torch.equal(got, expected.tril(-1)):
            raise Wrong(f"{call}: off by one on the diagonal: the diagonal is False, so no "
                        f"position sees itself; j <= i includes j == i: tril(), not tril(-1)")
        if torch.equal(got, torch.ones(T, T, dtype=torch.bool).tril(1)):
            raise Wrong(f"{call}: off by one on the diagonal: position i also sees i + 1, the "
                        f"very token it must predict; tril(1) lets the future in, tril() "
                        f"stops at the diagonal")
        i, j = (got != expected).nonzero()[0].tolist()
        if j > i:
            raise Wrong(f"{call}: position {i} can see position {j}; the mask lets the "
                        f"future in")
        who = "itself" if i == j else f"position {j}"
        raise Wrong(f"{call}: position {i} cannot see {who}; a position sees itself and "
                    f"everything before it")


@_exercise("04", (
    "softmax(x) = exp(x) / sum(exp(x)) along the last dimension. exp(1000) overflows, but "
    "softmax(x - c) == softmax(x) for any number c.",
    "e = torch.exp(x - x.max(dim=-1, keepdim=True).values); return e / e.sum(dim=-1, "
    "keepdim=True)",
))
def softmax(fn):
    """``softmax(x)`` over the last dimension, stable for large logits."""
    inf = float("inf")
    cases = [torch.randn(2, 3, 5),
             torch.tensor([[1000.0, 1001.0, 1002.0]]),
             torch.tensor([[1000.0, 999.0], [0.0, 1.0]]),
             torch.tensor([[0.0, -inf, 1.0], [2.0, -inf, -inf]]),
             torch.tensor([[3.0]]), torch.randn(6)]
    for x in cases:
        call = f"softmax(x {tuple(x.shape)})"
        got = fn(x.clone())
        expected = torch.softmax(x, dim=-1)
        mistakes = [(torch.softmax(x, dim=d), f"{call}: softmax over the wrong dimension; "
                     f"each row along the last dimension (dim=-1) must sum to 1")
                    for d in range(x.dim() - 1)]
        if isinstance(got, torch.Tensor) and got.shape == x.shape and got.is_floating_point():
            if not torch.isfinite(got).all():
                if x.max() >= 1000 and x.min() >= 999:
                    raise Wrong(f"{call}: NaN or inf for large logits (1000): exp overflows; "
                                f"subtract each row's max first")
                if x.max() >= 1000:
                    raise Wrong(f"{call}: NaN in a row whose logits are far below the "
                                f"tensor's largest; subtract each row's own max "
                                f"(x.max(dim=-1, keepdim=True))")
        _tensor(got, expected, call, "torch.softmax(x, dim=-1)", mistakes)


@_exercise("04", (
    "Scores q @ k.transpose(-2, -1) are (B, n_head, T, T). Scale them by 1/sqrt(hs), set the "
    "future (above the diagonal) to -inf, softmax over the last dimension, multiply by v.",
    "scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]); future = torch.ones(T, T, "
    "dtype=torch.bool).triu(1); torch.softmax(scores.masked_fill(future, float('-inf')), "
    "dim=-1) @ v",
))
def causal_attention(fn):
    """``causal_attention(q, k, v)``: masked scaled dot-product attention, ``(B, nh, T, hs)``."""
    for shape in ((2, 3, 5, 16), (1, 2, 1, 8), (1, 1, 7, 4)):
        q, k, v = torch.randn(3, *shape)
        T, hs = shape[2], shape[3]
        call = f"causal_attention(q, k, v of shape {shape})"
        got = fn(q.clone(), k.clone(), v.clone())
        sdpa = F.scaled_dot_product_attention
        expected = sdpa(q, k, v, is_causal=True)  # PyTorch's
        tril = torch.ones(T, T, dtype=torch.bool).tril()
        after = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hs), dim=-1) * tril
        _tensor(got, expected, call, "F.scaled_dot_product_attention(q, k, v, is_causal=True)", [
            (sdpa(q, k, v, is_causal=True, scale=1.0), f"{call}: scores not scaled by "
             f"1/sqrt(head_size); divide q @ k^T by sqrt(hs) = {math.sqrt(hs):g}"),
            (sdpa(q, k, v, is_causal=True, scale=1 / hs), f"{call}: scores scaled by 1/hs; "
             f"the scale is 1/sqrt(hs)"),
            (sdpa(q, k, v), f"{call}: positions attend to later positions; set the scores "
             f"above the diagonal to -inf before the softmax"),
            (sdpa(q, k, v, attn_mask=tril.T), f"{call}: each position attends to itself and "
             f"the future; the mask is transposed (tril, not triu)"),
            (after @ v, f"{call}: the weights of a row no longer sum to 1; mask the scores "
             f"with -inf before the softmax, not the weights after it"),
        ])


@_exercise("04", (
    "Head h owns the features h*hs .. (h+1)*hs - 1 of every position: first view x as "
    "(B, T, n_head, hs), then move the head dimension in front of T.",
    "B, T, C = x.shape; return x.view(B, T, n_head, C // n_head).transpose(1, 2)",
))
def split_heads(fn):
    """``split_heads(x, n_head)``: ``(B, T, C) -> (B, n_head, T, hs)``."""
    for B, T, C, n_head in ((2, 5, 12, 4), (1, 1, 8, 1), (3, 7, 6, 3)):
        x = torch.randn(B, T, C)
        hs = C // n_head
        call = f"split_heads(x {(B, T, C)}, {n_head})"
        got = fn(x.clone(), n_head)
        expected = torch.stack(x.split(hs, dim=-1), dim=1)  # head h = h-th block of features
        if isinstance(got, torch.Tensor) and got.shape == (B, T, n_head, hs) != expected.shape:
            raise Wrong(f"{call}: shape {tuple(got.shape)} but expected "
                        f"{tuple(expected.shape)}; move the head dimension before T "
                        f"(.transpose(1, 2))")
        _tensor(got, expected, call, "the head-by-head split", [
            (x.reshape(B, n_head, T, hs), f"{call}: x.view(B, n_head, T, hs) mixes positions "
             f"into heads; view as (B, T, n_head, hs), then transpose(1, 2)"),
            (x.reshape(B, T, hs, n_head).permute(0, 3, 1, 2), f"{call}: head h must hold the "
             f"consecutive features h*hs .. (h+1)*hs - 1, not every n_head-th feature"),
        ])
