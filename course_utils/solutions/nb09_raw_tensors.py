"""Solutions to the exercises of notebook 09 (raw tensors): gradients derived by hand and the
plain gradient-descent step."""

import math

import torch


def linear_backward(x, W, dy):
    """Gradients of ``y = x @ W + b`` given ``dy = dL/dy``: ``x`` ``(N, n_in)``, ``W``
    ``(n_in, n_out)``, ``dy`` ``(N, n_out)``. Returns ``(dx, dW, db)`` shaped like ``x``,
    ``W`` and ``b``."""
    dx = dy @ W.T  # (N, n_in)
    dW = x.T @ dy  # (n_in, n_out): sums over the N rows
    db = dy.sum(dim=0)  # (n_out,): b is added to every row
    return dx, dW, db


def gelu_grad(x):
    """Derivative of GPT-2's GELU, ``0.5 x (1 + tanh(u))`` with
    ``u = sqrt(2/pi) (x + 0.044715 x^3)``, at every element of ``x``."""
    c = math.sqrt(2 / math.pi)
    th = torch.tanh(c * (x + 0.044715 * x**3))
    du = c * (1 + 3 * 0.044715 * x**2)
    return 0.5 * (1 + th) + 0.5 * x * (1 - th**2) * du  # product rule, chain rule


def sgd_step(params, lr):
    """``p -= lr * p.grad`` for every tensor of the dict ``params``, in place, then clear
    the gradients (``backward`` adds to them)."""
    with torch.no_grad():  # the update itself is not part of the model
        for p in params.values():
            p -= lr * p.grad
            p.grad = None
