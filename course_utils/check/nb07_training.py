"""The checks of notebook 07 (training): ``cross_entropy``, ``adamw_step``, ``warmup_cosine_lr``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb07_training.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _number, _tensor


@_exercise("07", (
    "For each position: log of the sum of exp over the vocabulary, minus the target's logit. "
    "Average over all B*T positions. Subtract each row's max before exp.",
    "z = logits.reshape(-1, V); y = targets.reshape(-1); m = z.max(-1, keepdim=True).values; "
    "lse = m.squeeze(-1) + torch.log(torch.exp(z - m).sum(-1)); "
    "return (lse - z[torch.arange(len(y)), y]).mean()",
))
def cross_entropy(fn):
    """``cross_entropy(logits, targets)``: ``(B, T, V)`` and ``(B, T)`` -> a scalar tensor."""
    cases = [torch.randn(2, 3, 5), torch.randn(1, 2, 3) * 1000, torch.randn(1, 1, 1)]
    for logits in cases:
        B, T, V = logits.shape
        targets = torch.randint(0, V, (B, T))
        call = f"cross_entropy(logits {(B, T, V)}, targets {(B, T)})"
        got = fn(logits.clone(), targets.clone())
        expected = F.cross_entropy(logits.view(-1, V), targets.view(-1))  # PyTorch's
        if isinstance(got, torch.Tensor) and got.shape == (B, T) and B * T > 1:
            raise Wrong(f"{call}: shape {(B, T)}, one loss per position; return their mean, "
                        f"a scalar")
        if (isinstance(got, torch.Tensor) and got.shape == () and not torch.isfinite(got)
                and logits.abs().max() > 100):
            raise Wrong(f"{call}: {got.item()} for large logits; exp overflows, subtract each "
                        f"row's max first (or use log_softmax)")
        _tensor(got, expected, call, "F.cross_entropy", [
            (expected * B * T, f"{call}: the loss is B*T = {B * T} times too large; average "
             f"over the positions instead of summing"),
            (-expected, f"{call}: the sign is flipped; the loss is minus the mean "
             f"log-probability of the targets"),
        ])


def _torch_adamw(p0, grads, lr, betas, eps, weight_decay, optimizer=torch.optim.AdamW):
    """The parameter after each step of PyTorch's optimizer, fed ``grads`` one by one."""
    p = torch.nn.Parameter(p0.clone())
    opt = optimizer([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    return out


@_exercise("07", (
    "In order: shrink p by lr*weight_decay*p; update the running means m (of grad) and v (of "
    "grad squared); divide them by 1 - beta**t (bias correction); step by lr*m_hat/(sqrt(v_hat) "
    "+ eps).",
    "p = p * (1 - lr * weight_decay); m = beta1 * m + (1 - beta1) * grad; v = beta2 * v + "
    "(1 - beta2) * grad**2; m_hat = m / (1 - beta1**t); v_hat = v / (1 - beta2**t); "
    "p = p - lr * m_hat / (v_hat.sqrt() + eps); return p, m, v",
))
def adamw_step(fn):
    """``adamw_step(p, grad, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (p, m, v)``."""
    p0 = torch.randn(4, 3)
    zeros = torch.zeros_like(p0)

    def first_step(grad, lr, betas, eps, weight_decay):
        call = (f"adamw_step(p, grad, m=0, v=0, t=1, lr={lr}, beta1={betas[0]}, "
                f"beta2={betas[1]}, eps={eps}, weight_decay={weight_decay})")
        got = fn(p0.clone(), grad.clone(), zeros.clone(), zeros.clone(), 1, lr, *betas, eps,
                 weight_decay)
        if not (isinstance(got, tuple) and len(got) == 3):
            raise Wrong(f"{call} returned a {type(got).__name__}; return (p, m, v)")
        expected = _torch_adamw(p0, [grad], lr, betas, eps, weight_decay)[0]
        return got[0], expected, call

    # 1. bias correction: at t = 1, m_hat = grad and v_hat = grad**2, a step of about lr
    g = torch.randn(4, 3)
    got, expected, call = first_step(g, 0.1, (0.9, 0.95), 1e-8, 0.0)
    uncorrected = p0 - 0.1 * (0.1 * g) / ((0.05 * g * g).sqrt() + 1e-8)
    _tensor(got, expected, call, "torch.optim.AdamW", [
        (uncorrected, f"{call}: no bias correction; divide m by 1 - beta1**t and v by "
         f"1 - beta2**t (at t = 1 the step is then about lr)")])
    # 2. weight decay alone (zero gradient): decoupled AdamW shrinks p by lr * weight_decay
    got, expected, call = first_step(zeros, 0.1, (0.9, 0.95), 1e-8, 0.5)
    l2 = _torch_adamw(p0, [zeros], 0.1, (0.9, 0.95), 1e-8, 0.5, torch.optim.Adam)[0]
    _tensor(got, expected, call, "torch.optim.AdamW", [
        (p0, f"{call}: the weights were not decayed; AdamW first shrinks them, "
             f"p = p - lr * weight_decay * p"),
        (l2, f"{call}: that is Adam with L2 regularisation (weight decay added to the "
             f"gradient); AdamW decouples it: p = p - lr * weight_decay * p"),
    ])
    # 3. eps outside the square root (it matters when gradients are as small as eps)
    g = 1e-3 * torch.randn(4, 3)
    got, expected, call = first_step(g, 0.1, (0.9, 0.95), 1e-3, 0.0)
    _tensor(got, expected, call, "torch.optim.AdamW", [
        (p0 - 0.1 * g / (g * g + 1e-3).sqrt(), f"{call}: eps goes outside the square root: "
         f"sqrt(v_hat) + eps")])
    # 4. five steps in a row, fed back the p, m and v it returns
    grads = [torch.randn(4, 3) * s for s in (1.0, 0.1, 3.0, 1.0, 0.5)]
    settings = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    reference = _torch_adamw(p0, grads, **settings)
    p, m, v = p0.clone(), zeros.clone(), zeros.clone()
    for t, (g, expected) in enumerate(zip(grads, reference), start=1):
        p, m, v = fn(p, g.clone(), m, v, t, 0.05, 0.9, 0.99, 1e-8, 0.1)
        _tensor(p, expected, f"adamw_step at step t={t} of 5", "torch.optim.AdamW")


@_exercise("07", (
    "Three regions: step < warmup_iters (a straight line up to max_lr), warmup_iters <= step "
    "< max_iters (half a cosine from max_lr down to min_lr), step >= max_iters (min_lr).",
    "warmup: max_lr * (step + 1) / warmup_iters; then progress = (step - warmup_iters) / "
    "(max_iters - warmup_iters) and min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi "
    "* progress)).",
), stand_in="optim:get_lr")
def warmup_cosine_lr(fn):
    """``warmup_cosine_lr(step, max_lr, min_lr, warmup_iters, max_iters) -> float``."""
    from ..optim import get_lr

    for max_lr, min_lr, warmup, max_iters in ((1e-3, 1e-4, 10, 100), (6e-4, 6e-5, 0, 50)):
        for step in range(max_iters + 15):
            call = f"warmup_cosine_lr({step}, {max_lr}, {min_lr}, {warmup}, {max_iters})"
            got = fn(step, max_lr, min_lr, warmup, max_iters)
            expected = get_lr(step, max_lr, min_lr, warmup, max_iters)  # the course's
            cosine = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (max_iters - warmup)))
            _number(got, expected, call, [
                (max_lr * step / max(warmup, 1), f"{call}: the warmup must already give "
                 f"step 0 a rate: max_lr * (step + 1) / warmup_iters"),
                (min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * step / max_iters)),
                 f"{call}: the cosine must start at the end of warmup, with progress "
                 f"(step - warmup_iters) / (max_iters - warmup_iters)"),
                (min_lr + (max_lr - min_lr) * cosine, f"{call}: after max_iters the rate "
                 f"stays at min_lr"),
                (max_lr * cosine, f"{call}: the cosine must end at min_lr, not 0: min_lr + "
                 f"(max_lr - min_lr) * 0.5 * (1 + cos(pi * progress))"),
            ])
