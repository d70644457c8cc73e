"""The checks of notebook 05 (transformer block): ``layer_norm``, ``dropout``, ``pre_norm_block``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb05_transformer_block.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _tensor


@_exercise("05", (
    "Per vector (the last dimension): subtract the mean, divide by sqrt(variance + eps), "
    "then multiply by weight and add bias. The variance divides by C, not C - 1.",
    "mean = x.mean(-1, keepdim=True); var = ((x - mean) ** 2).mean(-1, keepdim=True); "
    "return (x - mean) / torch.sqrt(var + eps) * weight + bias",
))
def layer_norm(fn):
    """``layer_norm(x, weight, bias, eps=1e-5)`` over the last dimension, as ``nn.LayerNorm``."""
    tiny = torch.tensor([[0.0, 1e-3, 2e-3, 3e-3], [1.0, 2.0, 3.0, 4.0]])  # var 1.25e-6 < eps
    for x in (torch.randn(4, 10, 32) * 3 + 1, tiny, torch.randn(3, 1)):
        C = x.shape[-1]
        w, b, eps = torch.randn(C), torch.randn(C), 1e-5
        call = f"layer_norm(x {tuple(x.shape)}, weight, bias, eps=1e-5)"
        got = fn(x.clone(), w, b, eps)
        expected = F.layer_norm(x, (C,), w, b, eps)  # PyTorch's
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        unbiased = x.var(-1, keepdim=True) if C > 1 else torch.full_like(var, float("nan"))
        _tensor(got, expected, call, "F.layer_norm", [
            ((x - mean) / torch.sqrt(unbiased + eps) * w + b, f"{call}: that is the unbiased "
             f"variance (divided by C - 1); LayerNorm divides by C"),
            ((x - mean) / (torch.sqrt(var) + eps) * w + b, f"{call}: eps goes inside the "
             f"square root: sqrt(var + eps)"),
            ((x - mean) / torch.sqrt(var + eps), f"{call}: weight and bias are not applied; "
             f"multiply by weight, then add bias"),
        ])


@_exercise("05", (
    "Draw a keep-mask that is True with probability 1 - p (torch.rand_like(x) >= p); zero "
    "the dropped elements and divide the kept ones by 1 - p.",
    "if not training or p == 0: return x; keep = torch.rand_like(x) >= p; "
    "return x * keep / (1 - p)",
))
def dropout(fn):
    """``dropout(x, p, training=True)``: inverted dropout, the identity when not training."""
    p = 0.25
    scale = F.dropout(torch.ones(1000), p).max().item()  # PyTorch's kept value: 1 / (1 - p)
    ones = torch.ones(200_000)
    call = f"dropout(torch.ones(200_000), p={p}, training=True)"
    got = fn(ones.clone(), p, True)
    if not isinstance(got, torch.Tensor) or got.shape != ones.shape:
        _tensor(got, ones, call, "")
    dropped = (got == 0).float().mean().item()
    if abs(dropped - (1 - p)) < 0.01:
        raise Wrong(f"{call}: {dropped:.0%} of the elements are zero; p is the probability to "
                    f"drop an element, not to keep it")
    if abs(dropped - p) > 0.01:
        raise Wrong(f"{call}: {dropped:.1%} of the elements are zero, expected about {p:.0%}")
    kept = got[got != 0]
    if torch.allclose(kept, torch.ones_like(kept)):
        raise Wrong(f"{call}: the kept values are 1; scale them by 1/(1 - p) = {scale:.4g} so "
                    f"the expected value stays the same, as nn.Dropout does")
    if torch.allclose(kept, torch.full_like(kept, 1 - p)):
        raise Wrong(f"{call}: the kept values were multiplied by 1 - p; divide by it instead")
    if not torch.allclose(kept, torch.full_like(kept, scale)):
        raise Wrong(f"{call}: kept values differ from nn.Dropout's 1/(1 - p) = {scale:.4g}")
    x = torch.randn(4, 50)
    call = "dropout(x (4, 50), p=0.5, training=True)"
    got = fn(x.clone(), 0.5, True)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        _tensor(got, x, call, "")
    kept = got != 0
    _tensor(got, x * kept / 0.5, call, "x / (1 - p) where kept", [
        (x * kept, f"{call}: the kept elements must be x / (1 - p)")])
    for p, training in ((0.5, False), (0.0, True)):
        call = f"dropout(x (4, 50), p={p}, training={training})"
        _tensor(fn(x.clone(), p, training), x, call, "x itself (nothing may be dropped "
                "when training is False or p is 0)")


@_exercise("05", (
    "Pre-norm: each sub-layer reads a normalised copy of x, and its output is added to x. "
    "Attention first, then the MLP, which reads the updated x.",
    "x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)); return x",
))
def pre_norm_block(fn):
    """``pre_norm_block(x, ln_1, attn, ln_2, mlp)``: GPT-2's block, as the course's ``Block``."""
    from ..block import Block
    from ..model import GPTConfig

    block = Block(GPTConfig(n_embd=16, n_head=4, block_size=8)).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial gains and biases too
    parts = block.ln_1, block.attn, block.ln_2, block.mlp
    ln_1, attn, ln_2, mlp = parts
    for shape in ((2, 8, 16), (1, 1, 16)):
        x = torch.randn(shape)
        call = f"pre_norm_block(x {shape}, ln_1, attn, ln_2, mlp)"
        with torch.no_grad():
            got = fn(x.clone(), *parts)
            expected = block(x)  # the course's Block
            h = ln_1(x + attn(x))
            post = ln_2(h + mlp(h))
            a = attn(ln_1(x))
            no_residual = mlp(ln_2(a))
            stale = x + a + mlp(ln_2(x))
            m = x + mlp(ln_2(x))
            swapped = m + attn(ln_1(m))
        _tensor(got, expected, call, "course_utils.block.Block", [
            (post, f"{call}: that is post-norm (add, then normalise); GPT-2 normalises the "
             f"input of each sub-layer: x + attn(ln_1(x))"),
            (no_residual, f"{call}: the residual connections are missing; add each "
             f"sub-layer's output to x"),
            (stale, f"{call}: the MLP must read x after attention's output was added to it"),
            (swapped, f"{call}: attention comes first, then the MLP"),
        ])
