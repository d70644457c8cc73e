"""The checks of notebook 16 (speedrun): ``newton_schulz``, ``muon_momentum``, ``verdict``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb16_speedrun.py``.
"""

from __future__ import annotations

import torch

from ..optim import NS_COEFFICIENTS
from ..optim import newton_schulz as course_newton_schulz
from ..stats import NO_DIFFERENCE, seed_verdict
from .core import Wrong, _exercise, _tensor

# The learner may compute in bfloat16 (as Muon does) or in float32: the result is compared by
# its relative (Frobenius) error, which bfloat16's rounding keeps near 3%.
NS_TOLERANCE = 0.06


def _variant(G: torch.Tensor, steps: int, coefficients, *, norm: str = "fro",
             swap: bool = False, right: bool = False) -> torch.Tensor:
    """The iteration in float64, as written right or with one of the usual mistakes."""
    a, b, c = coefficients
    X = G.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    if norm == "fro":
        X = X / X.norm()
    elif norm == "spectral":
        X = X / torch.linalg.matrix_norm(X, ord=2)
    for _ in range(steps):
        A = X.T @ X if right else X @ X.T
        B = (c * A + b * A @ A) if swap else (b * A + c * A @ A)
        X = a * X + B @ X
    return X.T if tall else X


def _rel_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


def _matrix(got, expected: torch.Tensor, call: str, reference: str, mistakes=()) -> None:
    """Raise :class:`Wrong` unless ``got`` is a matrix within :data:`NS_TOLERANCE` of
    ``expected``; ``mistakes`` are ``(matrix, diagnosis)``."""
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; expected a tensor of shape "
                    f"{tuple(expected.shape)}")
    if got.shape != expected.shape:
        if got.shape == expected.T.shape:
            raise Wrong(f"{call}: shape {tuple(got.shape)}, the transpose of G's: a tall G is "
                        f"transposed for the iterations and must be transposed back")
        raise Wrong(f"{call}: shape {tuple(got.shape)} but expected {tuple(expected.shape)}")
    if not got.is_floating_point():
        raise Wrong(f"{call}: dtype {got.dtype}; return floating-point numbers")
    if not torch.isfinite(got).all():
        raise Wrong(f"{call}: the values blew up (inf or nan): divide G by its Frobenius norm "
                    f"(G.norm()) before the iterations, so that every singular value starts at "
                    f"most 1, where the polynomial is tame")
    if _rel_error(got, expected) <= NS_TOLERANCE:
        return
    for wrong, message in mistakes:
        if torch.isfinite(wrong).all() and _rel_error(got, wrong) <= NS_TOLERANCE:
            raise Wrong(message)
    raise Wrong(f"{call}: differs from {reference} by {100 * _rel_error(got, expected):.0f}% "
                f"(relative Frobenius error; up to {100 * NS_TOLERANCE:.0f}% is accepted)")


@_exercise("16", (
    "Work on X = G / G.norm() (transposed first if G has more rows than columns, and back at "
    "the end); each step computes A = X @ X.T and X = a X + (b A + c A @ A) @ X.",
    "a, b, c = coefficients; X = G.T if tall else G; X = X / (X.norm() + eps); for _ in "
    "range(steps): A = X @ X.T; X = a * X + (b * A + c * A @ A) @ X; return X.T if tall "
    "else X",
), stand_in="optim:newton_schulz")
def newton_schulz(fn):
    """``newton_schulz(G, steps=5, coefficients=(a, b, c), eps=1e-7)``: Muon's
    orthogonalisation, against the course's (in float32) and the SVD."""
    g = torch.Generator().manual_seed(16)
    cases = [  # (G, steps, coefficients)
        (torch.randn(3, 7, generator=g), 1, NS_COEFFICIENTS),  # one step: nothing blows up
        (40 * torch.randn(8, 5, generator=g), 5, NS_COEFFICIENTS),  # tall, a large norm
        (torch.randn(4, 9, generator=g), 2, NS_COEFFICIENTS),  # wide, two steps
        (torch.randn(6, 6, generator=g), 4, (2.0, -1.5, 0.5)),  # square, other coefficients
    ]
    cases[3][0][:, 0] *= 10  # one direction dominates, as in a gradient
    for G, steps, coefficients in cases:
        call = f"newton_schulz(G {tuple(G.shape)}, steps={steps}, coefficients={coefficients})"
        got = fn(G.clone(), steps, coefficients, 1e-7)
        expected = course_newton_schulz(G, steps, coefficients, 1e-7, dtype=torch.float32)
        _matrix(got, expected, call, "Muon's iteration", [
            (_variant(G, 5, coefficients), f"{call}: the steps argument is ignored"),
            (_variant(G, steps, NS_COEFFICIENTS),
             f"{call}: the coefficients argument is ignored"),
            (_variant(G, steps, coefficients, swap=True),
             f"{call}: b multiplies A = X X^T and c multiplies A @ A"),
            (_variant(G, steps, coefficients, norm="none"),
             f"{call}: divide G by its Frobenius norm (G.norm()) before the iterations, so that "
             f"every singular value starts at most 1"),
            (_variant(G, steps, coefficients, norm="spectral"),
             f"{call}: normalise by the Frobenius norm, G.norm(), as Muon does; the largest "
             f"singular value gives another start and another result"),
        ] + ([(_variant(G, steps, coefficients, right=True),
               f"{call}: A = X X^T multiplies X from the left; with A = X^T X the product "
               f"would go on the right, X @ (b A + c A @ A)")] if G.shape[0] == G.shape[1]
             else []))
    # an outside reference: the cubic iteration (1.5, -0.5, 0) converges to U V^T of the SVD
    U, _, Vh = torch.linalg.svd(torch.randn(5, 5, generator=g, dtype=torch.float64))
    G = U @ torch.diag(torch.linspace(0.3, 3.0, 5, dtype=torch.float64)) @ Vh
    call = "newton_schulz(G (5, 5), steps=40, coefficients=(1.5, -0.5, 0.0))"
    _matrix(fn(G.float(), 40, (1.5, -0.5, 0.0), 1e-7), U @ Vh, call,
            "U V^T from torch.linalg.svd")


@_exercise("16", (
    "The buffer is a running mean: it moves toward the gradient by (1 - momentum). Nesterov "
    "looks ahead: mix the gradient and the new buffer, momentum of the buffer.",
    "new_buf = momentum * buf + (1 - momentum) * grad; update = (1 - momentum) * grad + "
    "momentum * new_buf if nesterov else new_buf; return update, new_buf",
))
def muon_momentum(fn):
    """``muon_momentum(grad, buf, momentum, nesterov)`` -> ``(update, new_buf)``, as
    ``torch.optim.Muon`` keeps its ``momentum_buffer``."""
    g = torch.Generator().manual_seed(17)
    g1, g2 = torch.randn(2, 4, 3, generator=g)
    for momentum in (0.9, 0.6):
        # torch.optim.Muon's own buffer after the gradients g1, then g2 (it starts at zero)
        p = torch.zeros(4, 3, requires_grad=True)
        opt = torch.optim.Muon([p], lr=0.01, momentum=momentum)
        for grad in (g1, g2):
            p.grad = grad.clone()
            opt.step()
        expected_buf = opt.state[p]["momentum_buffer"]
        buf = (1 - momentum) * g1  # the buffer after g1
        for nesterov in (True, False):
            call = f"muon_momentum(grad, buf, momentum={momentum}, nesterov={nesterov})"
            out = fn(g2.clone(), buf.clone(), momentum, nesterov)
            if not isinstance(out, tuple) or len(out) != 2:
                raise Wrong(f"{call} returned a {type(out).__name__}; return the pair "
                            f"(update, new_buf)")
            update, new_buf = out
            sum_buf = momentum * buf + g2
            _tensor(new_buf, expected_buf, f"{call}: new_buf", "torch.optim.Muon's buffer", [
                (sum_buf, f"{call}: that is SGD's momentum buffer (a sum); Muon in PyTorch "
                          f"keeps a running mean, buf = momentum * buf + (1 - momentum) * "
                          f"grad (the two differ by the factor 1/(1 - momentum))"),
                ((1 - momentum) * buf + momentum * g2,
                 f"{call}: momentum weights the old buffer, 1 - momentum the new gradient"),
            ])
            ahead = (1 - momentum) * g2 + momentum * expected_buf
            expected = ahead if nesterov else expected_buf
            _tensor(update, expected, f"{call}: update", "Nesterov's look-ahead" if nesterov
                    else "the running mean", [
                (expected_buf, f"{call}: with nesterov=True the update looks ahead: "
                               f"(1 - momentum) * grad + momentum * new_buf"),
                (ahead, f"{call}: with nesterov=False the update is the buffer itself"),
            ])


@_exercise("16", (
    "Compute the spread (the larger of max - min of the two lists) and the change of the "
    "mean (new minus base). Only a change larger than the spread counts.",
    "spread = max(max(base) - min(base), max(new) - min(new)); change = mean(new) - "
    "mean(base); 'better' if change < -spread, 'worse' if change > spread, else 'no "
    "measurable difference'",
))
def verdict(fn):
    """``verdict(base, new)``: ``"better"``, ``"worse"`` or ``"no measurable difference"``
    for losses measured with several seeds, as ``course_utils.stats.seed_verdict``."""
    cases = [  # (base, new, the mistake this case exposes)
        ([1.80, 1.81], [1.70, 1.71], None),
        ([1.80, 1.81], [1.90, 1.92], "lower loss is better: a higher loss is 'worse'"),
        ([1.80, 1.82], [1.79, 1.80], "the change of the mean (0.015) is within the seed "
                                     "spread (0.02): report no measurable difference"),
        ([1.80, 1.801], [1.70, 1.85], "the spread is the larger of the two ranges (here the "
                                      "new one's, 0.15)"),
        ([2.0, 1.7], [1.69, 1.69], "compare the means over the seeds, not single runs"),
        ([1.8, 1.81, 1.82], [1.6, 1.61, 1.62], "use every seed of the lists (here three)"),
        ([1.0, 1.25], [0.75, 1.0], "a change exactly as large as the spread is no measurable "
                                   "difference: it must be larger"),
    ]
    for base, new, mistake in cases:
        call = f"verdict({base}, {new})"
        got = fn(list(base), list(new))
        expected = seed_verdict(base, new)
        if got == expected:
            continue
        if got not in ("better", "worse", NO_DIFFERENCE):
            raise Wrong(f"{call} returned {got!r}; return exactly 'better', 'worse' or "
                        f"{NO_DIFFERENCE!r}")
        raise Wrong(f"{call} returned {got!r}, expected {expected!r}: "
                    f"{mistake or 'a lower mean loss by more than the spread is better'}")
