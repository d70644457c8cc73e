"""The checks of notebook 09 (raw tensors): ``linear_backward``, ``gelu_grad``, ``sgd_step``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb09_raw_tensors.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import NotAttempted, Wrong, _exercise, _tensor


@_exercise("09", (
    "Chain rule with shapes as a guide: each gradient has the shape of its tensor. "
    "dx is (N, n_in), dW is (n_in, n_out), db is (n_out,).",
    "dx = dy @ W.T; dW = x.T @ dy; db = dy.sum(dim=0)",
))
def linear_backward(fn):
    """``linear_backward(x, W, dy) -> (dx, dW, db)`` for ``y = x @ W + b``."""
    for N, n_in, n_out in ((4, 3, 3), (6, 4, 3), (1, 5, 2)):  # square first: see below
        x, W, b = torch.randn(N, n_in), torch.randn(n_in, n_out), torch.randn(n_out)
        dy = torch.randn(N, n_out)
        call = f"linear_backward(x {(N, n_in)}, W {(n_in, n_out)}, dy {(N, n_out)})"
        got = fn(x.clone(), W.clone(), dy.clone())
        if not (isinstance(got, tuple) and len(got) == 3):
            raise Wrong(f"{call} returned a {type(got).__name__}; return (dx, dW, db)")
        dx, dW, db = got
        if isinstance(dW, torch.Tensor) and dW.shape == (n_out, n_in) != W.shape:
            raise Wrong(f"{call}: dW has the shape of W transposed; dW = x.T @ dy is "
                        f"(n_in, n_out), like W")
        if isinstance(db, torch.Tensor) and db.shape == (N, n_out) and N > 1:
            raise Wrong(f"{call}: db has one row per example; b is added to every row, so "
                        f"its gradient sums them: dy.sum(dim=0)")
        ex_dx, ex_dW, ex_db = _grad_of(x, W, b, dy)
        square = n_in == n_out  # only then do the transposed mistakes keep their shapes
        _tensor(dx, ex_dx, f"{call}: dx", "autograd", [
            (dy @ W, f"{call}: dx = dy @ W.T (each input feeds every output through W)")]
            if square else [])
        _tensor(dW, ex_dW, f"{call}: dW", "autograd", [
            (dy.T @ x, f"{call}: dW is transposed; dW = x.T @ dy")])
        _tensor(db, ex_db, f"{call}: db", "autograd", [
            (dy.mean(dim=0), f"{call}: db is N = {N} times too small; sum over the rows, do "
             f"not average")])


def _grad_of(x, W, b, dy):
    """Autograd's gradients of ``x @ W + b`` with respect to ``x, W, b`` given ``dy``."""
    x, W, b = (t.detach().clone().requires_grad_() for t in (x, W, b))
    (x @ W + b).backward(dy)
    return x.grad, W.grad, b.grad


@_exercise("09", (
    "GELU is a product, 0.5 * x * (1 + tanh(u)) with u = sqrt(2/pi) * (x + 0.044715 x^3): "
    "use the product rule, and the chain rule for tanh(u); tanh' = 1 - tanh^2.",
    "th = tanh(u); du = sqrt(2/pi) * (1 + 3 * 0.044715 * x**2); "
    "return 0.5 * (1 + th) + 0.5 * x * (1 - th**2) * du",
))
def gelu_grad(fn):
    """``gelu_grad(x)``: the derivative of the tanh GELU at every element, as autograd finds."""
    c = math.sqrt(2 / math.pi)
    for x in (torch.linspace(-5, 5, 101, dtype=torch.float64), torch.randn(3, 4).double()):
        call = f"gelu_grad(x {tuple(x.shape)}, float64)"
        got = fn(x.clone())
        leaf = x.clone().requires_grad_()
        F.gelu(leaf, approximate="tanh").sum().backward()  # autograd: the reference
        th = torch.tanh(c * (x + 0.044715 * x**3))
        normal = torch.distributions.Normal(0.0, 1.0)
        erf_grad = normal.cdf(x) + x * normal.log_prob(x).exp()
        _tensor(got, leaf.grad, call, "autograd of F.gelu(x, approximate='tanh')", [
            (F.gelu(x, approximate="tanh"), f"{call}: that is GELU itself; return its "
             f"derivative"),
            (erf_grad, f"{call}: that is the derivative of the exact (erf) GELU; "
             f"differentiate GPT-2's tanh form"),
            (0.5 * (1 + th), f"{call}: only the first term of the product rule; add "
             f"0.5 * x * (1 - tanh(u)**2) * du/dx"),
            (0.5 * (1 + th) + 0.5 * x * (1 - th**2) * c, f"{call}: the inner derivative is "
             f"du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 * x**2)"),
        ], atol=1e-9, rtol=1e-7)


@_exercise("09", (
    "Change each tensor in place (t -= ...), inside torch.no_grad() so that autograd does "
    "not record the update; then clear its gradient, because backward adds to .grad.",
    "with torch.no_grad(): for t in params.values(): t -= lr * t.grad; t.grad = None",
), in_place=True)
def sgd_step(fn):
    """``sgd_step(params, lr)``: ``t -= lr * t.grad`` in place for each tensor, grads cleared."""
    for lr in (0.1, 0.5):
        params = {"w": torch.randn(3, 4, requires_grad=True),
                  "b": torch.zeros(4, requires_grad=True)}
        x = torch.randn(5, 3)
        ((x @ params["w"] + params["b"]) ** 2).mean().backward()
        tensors = dict(params)
        before = {k: t.detach().clone() for k, t in params.items()}
        grads = {k: t.grad.clone() for k, t in params.items()}
        call = f"sgd_step(params, lr={lr})"
        try:
            fn(params, lr)
        except Wrong as e:
            if "leaf Variable" in str(e):
                raise Wrong(f"{call}: an in-place change of a tensor that requires grad must "
                            f"happen inside `with torch.no_grad():`") from None
            raise
        unchanged = all(params[k] is t and torch.equal(t.detach(), before[k])
                        for k, t in tensors.items())
        if unchanged and all(torch.equal(t.grad, grads[k]) for k, t in tensors.items()):
            raise NotAttempted
        for k, t in tensors.items():
            if params[k] is not t:
                raise Wrong(f"{call} put a new tensor in params[{k!r}]; update the tensor "
                            f"itself in place (t -= lr * t.grad)")
            expected, got = before[k] - lr * grads[k], t.detach()
            _tensor(got, expected, f"{call}: params[{k!r}]", "t - lr * t.grad", [
                (before[k] + lr * grads[k], f"{call}: the step went up the gradient; "
                 f"subtract lr * grad"),
                (before[k] - grads[k], f"{call}: the step ignores the learning rate")])
            if not t.requires_grad:
                raise Wrong(f"{call}: params[{k!r}] no longer requires grad; update it in "
                            f"place under torch.no_grad() instead of replacing it")
            if t.grad is not None and t.grad.abs().sum() > 0:
                raise Wrong(f"{call}: params[{k!r}].grad was not cleared; backward adds to "
                            f".grad, so set it to None after the step")
