"""AdamW written out plainly, and the learning-rate schedule (notebook 07).

Adam: Kingma & Ba (2015), "Adam: A Method for Stochastic Optimization". AdamW, with the
weight decay taken out of the gradient and applied to the weights directly: Loshchilov &
Hutter (2019), "Decoupled Weight Decay Regularization". The update follows the one
``torch.optim.AdamW`` documents, so the two give the same parameters step for step (tested).
The schedule (:func:`get_lr`): linear warmup, then cosine decay (Loshchilov & Hutter, 2017,
"SGDR"), as GPT-3 (Brown et al. 2020, appendix B) and nanoGPT use it.
"""

from __future__ import annotations

import math

import torch


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, one parameter at a time, no fused kernels.

    For each parameter ``p`` with gradient ``g`` at step ``t`` (counted from 1)::

        p = p - lr * weight_decay * p            # decoupled weight decay
        m = beta1 * m + (1 - beta1) * g          # running mean of the gradient
        v = beta2 * v + (1 - beta2) * g * g      # running mean of its square
        m_hat = m / (1 - beta1 ** t)             # bias correction: m and v start at 0
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    Every setting can differ per parameter group (e.g. ``weight_decay=0`` for biases and
    LayerNorm gains, see :meth:`course_utils.model.GPT.optimizer_groups`); ``lr`` may be
    changed between steps through ``optimizer.param_groups`` (a schedule). The state of each
    parameter is ``step``, ``exp_avg`` (m) and ``exp_avg_sq`` (v), named as in
    ``torch.optim.AdamW``. Parameters with no gradient are skipped; sparse gradients are
    not supported.

    Raises ``ValueError`` for ``lr < 0``, ``eps < 0``, ``weight_decay < 0`` or betas
    outside ``[0, 1)``.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        if lr < 0:
            raise ValueError(f"AdamW: lr must be >= 0, got {lr}")
        if eps < 0:
            raise ValueError(f"AdamW: eps must be >= 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"AdamW: weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW: betas must be two numbers in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional)
        re-evaluates the model and returns the loss, which is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2) = group["lr"], group["betas"]
            eps, weight_decay = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:  # first step for this parameter
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]

                p.mul_(1 - lr * weight_decay)
                m.lerp_(g, 1 - beta1)  # m + (1 - beta1) * (g - m), the same as above
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                # lr * m_hat / (sqrt(v_hat) + eps), arranged as torch.optim.AdamW does it
                denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / bias_correction1)
        return loss


def get_lr(step: int, max_lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    """Learning rate at ``step``: linear warmup to ``max_lr`` over ``warmup_iters`` steps
    (``max_lr * (step + 1) / warmup_iters``), then cosine decay to ``min_lr`` at
    ``max_iters``, then ``min_lr``."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
