"""Solutions to the exercises of notebook 07 (training): cross-entropy, one AdamW step
(Loshchilov & Hutter, 2019) and the warmup + cosine learning-rate schedule."""

import math

import torch


def cross_entropy(logits, targets):
    """Mean of ``-log softmax(logits)[target]`` over all positions: ``logits``
    ``(B, T, vocab_size)``, ``targets`` ``(B, T)`` -> a scalar tensor (nats per token)."""
    z = logits.reshape(-1, logits.shape[-1])  # (N, V)
    y = targets.reshape(-1)  # (N,)
    m = z.max(dim=-1, keepdim=True).values  # the max trick: exp never overflows
    log_sum_exp = m.squeeze(-1) + torch.log(torch.exp(z - m).sum(dim=-1))
    return (log_sum_exp - z[torch.arange(len(y)), y]).mean()


def adamw_step(p, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """One AdamW update at step ``t`` (counted from 1). Returns the new ``(p, m, v)``."""
    p = p * (1 - lr * weight_decay)  # decoupled weight decay: shrink the weights directly
    m = beta1 * m + (1 - beta1) * grad  # running mean of the gradient
    v = beta2 * v + (1 - beta2) * grad * grad  # running mean of its square
    m_hat = m / (1 - beta1**t)  # bias correction: m and v start at zero
    v_hat = v / (1 - beta2**t)
    p = p - lr * m_hat / (torch.sqrt(v_hat) + eps)
    return p, m, v


def warmup_cosine_lr(step, max_lr, min_lr, warmup_iters, max_iters):
    """Linear warmup to ``max_lr`` (``max_lr * (step + 1) / warmup_iters``), then a cosine
    from ``max_lr`` at ``warmup_iters`` down to ``min_lr`` at ``max_iters``, then ``min_lr``."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / (max_iters - warmup_iters)  # 0 -> 1
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
