"""Exercises: automatic checks, hints and solutions for the learner (notebooks 01-14).

In a notebook, after a "Your turn" cell::

    from course_utils import check

    def causal_mask(T):
        ...  # your code

    check.causal_mask(causal_mask)  # one line: passed, not attempted yet, or what is wrong
    check.hint("causal_mask")       # a hint; a second call gives a stronger one
    check.solution("causal_mask")   # the course's solution (course_utils/solutions/)

A check runs the learner's function on several inputs, edge cases included, and compares the
results with a reference nobody here wrote (PyTorch, Hugging Face ``transformers``) or with
the course's finished pieces. When the answer is wrong it looks for the usual mistakes (a
transposed mask, a softmax without the max trick, a missing ``1/sqrt(hs)``...) and names the
one it finds. It never raises on a wrong or missing answer, so a notebook runs top to bottom
with the stubs in place, and it leaves the global random state as it found it.

``python -m course_utils exercises [NOTEBOOK]`` grades the functions saved in the notebook
files and prints a progress table (:func:`grade_notebook`, :func:`run_exercises`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import inspect
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PASSED, NOT_ATTEMPTED, FAILED = "passed", "not attempted", "failed"


class Wrong(Exception):
    """A wrong answer. The message is what the learner reads: what is wrong, and how to fix it."""


class NotAttempted(Exception):
    """The function is still the stub: it returned ``None`` (or raised ``NotImplementedError``)."""


@dataclass
class Exercise:
    """One exercise: its notebook (``"04"``), its check and its hints, mildest first."""

    name: str
    notebook: str
    check: Callable
    hints: tuple[str, ...]
    in_place: bool = False  # the function returns nothing and changes its arguments


EXERCISES: dict[str, Exercise] = {}
_hints_shown: dict[str, int] = {}


def _exercise(notebook: str, hints: tuple[str, str], in_place: bool = False):
    """Register the decorated check; the module gets a function of the same name that prints."""

    def register(check_fn):
        name = check_fn.__name__
        EXERCISES[name] = Exercise(name, notebook, check_fn, hints, in_place)

        def show(fn) -> None:
            print(f"{name}: {run(name, fn)[1]}")

        show.__name__ = show.__qualname__ = name
        show.__doc__ = check_fn.__doc__
        return show

    return register


def _get(name: str) -> Exercise:
    if name not in EXERCISES:
        close = difflib.get_close_matches(str(name), EXERCISES, n=1)
        suggestion = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"no exercise named {name!r}{suggestion} "
                         f"(the names are in course_utils.check.EXERCISES)")
    return EXERCISES[name]


def run(name: str, fn) -> tuple[str, str]:
    """Check ``fn`` for exercise ``name``; return ``(status, message)``.

    ``status`` is ``"passed"``, ``"not attempted"`` or ``"failed"``; ``message`` is the line
    :func:`causal_mask` and the other checks print. Wrong answers, exceptions raised by
    ``fn`` and stubs are all reported, never raised. The global torch random state is
    restored afterwards, so a notebook's later random numbers do not depend on the checks.

    Raises ``ValueError`` for an unknown exercise name.
    """
    exercise = _get(name)
    if fn is None or fn is Ellipsis:
        return NOT_ATTEMPTED, "not attempted yet: write the function, then run this cell again"
    if not callable(fn):
        return FAILED, (f"pass the function itself, check.{name}({name}); "
                        f"got a {type(fn).__name__}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            exercise.check(_Learner(fn, name, exercise.in_place))
    except NotAttempted:
        return NOT_ATTEMPTED, "not attempted yet: replace the `...` with your code"
    except Wrong as e:
        return FAILED, str(e)
    except Exception as e:  # an answer so unexpected that the check itself tripped over it
        return FAILED, f"unexpected result ({type(e).__name__}: {_first_line(e)}); see the task"
    return PASSED, PASSED


def hint(name: str) -> None:
    """Print a hint for exercise ``name``; each further call prints the next, stronger one."""
    hints = _get(name).hints
    shown = _hints_shown.get(name, 0)
    print(f"hint {min(shown, len(hints) - 1) + 1} of {len(hints)}: "
          f"{hints[min(shown, len(hints) - 1)]}")
    _hints_shown[name] = shown + 1


def solution(name: str) -> None:
    """Print the source of the course's solution to exercise ``name``."""
    from . import solutions

    module = solutions.module_for(_get(name).notebook)
    path = Path(module.__file__)
    print(f"# course_utils/solutions/{path.name}\n{inspect.getsource(getattr(module, name))}")


class _Learner:
    """The learner's function as the checks call it: a stub's ``None`` means "not attempted",
    and an exception becomes a :class:`Wrong` that names the call."""

    def __init__(self, fn, name: str, in_place: bool):
        self.fn, self.name, self.in_place = fn, name, in_place
        self.answered = False

    def __call__(self, *args):
        call = f"{self.name}({', '.join(_describe(a) for a in args)})"
        try:
            out = self.fn(*args)
        except NotImplementedError:
            if not self.answered:
                raise NotAttempted from None
            raise Wrong(f"{call} raised NotImplementedError") from None
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__}: {_first_line(e)}") from None
        if out is None and not self.in_place:
            if not self.answered:
                raise NotAttempted
            raise Wrong(f"{call} returned None: does every path end in a `return`?")
        self.answered = True
        return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _describe(a) -> str:
    """A short description of an argument for messages: ``x (2, 3, 5)`` for a tensor."""
    if isinstance(a, (torch.Tensor, np.ndarray)):
        return f"tensor {tuple(a.shape)}"
    if isinstance(a, dict):
        return f"<dict of {len(a)}>"
    if callable(a):
        return getattr(a, "__name__", type(a).__name__)
    text = repr(a)
    return text if len(text) <= 40 else text[:36] + "...]"


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == torch.bool or b.dtype == torch.bool:
        return torch.equal(a.bool(), b.bool())
    return torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True)


def _tensor(got, expected: torch.Tensor, call: str, reference: str, mistakes=(),
            atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Raise :class:`Wrong` unless ``got`` equals ``expected`` in shape, dtype and values.

    ``mistakes`` lists ``(tensor, message)``: when ``got`` equals one of those tensors
    instead, its message is the diagnosis.
    """
    if not isinstance(got, torch.Tensor):
        raise Wrong(f"{call} returned a {type(got).__name__}; expected a tensor of shape "
                    f"{tuple(expected.shape)}")
    if got.shape != expected.shape:
        raise Wrong(f"{call}: shape {tuple(got.shape)} but expected {tuple(expected.shape)}")
    if got.dtype != expected.dtype:
        raise Wrong(f"{call}: dtype {got.dtype} but expected {expected.dtype}")
    if _close(got, expected, atol, rtol):
        return
    for wrong, message in mistakes:
        if _close(got, wrong, atol, rtol):
            raise Wrong(message)
    bad = ~torch.isclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True)
    at = tuple(bad.nonzero()[0].tolist())
    raise Wrong(f"{call}: differs from {reference} at index {at}: {got[at].item():.6g} "
                f"instead of {expected[at].item():.6g}")


def _number(got, expected: float, call: str, mistakes=(), rel: float = 1e-9) -> None:
    """Like :func:`_tensor` for a Python number; ``mistakes`` is ``(number, message)``."""
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
        raise Wrong(f"{call} returned a {type(got).__name__}; expected a number")
    if math.isclose(got, expected, rel_tol=rel, abs_tol=1e-12):
        return
    for wrong, message in mistakes:
        if math.isclose(got, wrong, rel_tol=rel, abs_tol=1e-12):
            raise Wrong(message)
    raise Wrong(f"{call} returned {got:,.6g}, expected {expected:,.6g}")


# ------------------------------------------------------------------ 01 tokenization


@_exercise("01", (
    "Count every adjacent pair, zip(ids, ids[1:]), in a dict; then take the pair with the "
    "largest count.",
    "max(counts, key=lambda p: (counts[p], p)) picks the largest count and, among equal "
    "counts, the greatest pair (for byte ids, the pair whose bytes sort last).",
))
def most_frequent_pair(fn):
    """``most_frequent_pair(ids) -> (a, b)``: the pair BPE merges next (ties: the greatest)."""
    from .bpe import get_pair_counts

    for ids in (list(b"aaabdaaabac"), [1, 2, 3, 1, 2], [7, 7, 7, 1], [9, 8, 2, 1], [4, 4],
                [1, 2, 5, 6]):
        call = f"most_frequent_pair({ids})"
        got = fn(list(ids))
        counts = get_pair_counts(ids)
        expected = max(counts, key=lambda p: (counts[p], p))
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Wrong(f"{call} returned {got!r}; return the pair as a tuple (a, b)")
        if got == expected:
            continue
        if got not in counts:
            raise Wrong(f"{call} returned {got}, which is not a pair of neighbouring ids")
        if counts[got] < counts[expected]:
            raise Wrong(f"{call} returned {got}, seen {_times(counts[got])}, but {expected} "
                        f"is seen {_times(counts[expected])} (overlapping pairs all count)")
        raise Wrong(f"{call}: {got} and {expected} are both seen {_times(counts[got])}; a tie "
                    f"goes to the greater pair (its bytes sort last), {expected}")


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


@_exercise("01", (
    "Walk through ids with an index i; when ids[i], ids[i + 1] is the pair, append new_id "
    "and jump by 2, otherwise append ids[i] and move by 1.",
    "A while loop, not a for loop, because the step is 1 or 2; test i + 1 < len(ids) "
    "before looking at ids[i + 1], and build a new list instead of changing ids.",
))
def merge(fn):
    """``merge(ids, pair, new_id) -> list``: each occurrence of ``pair`` replaced, left to right."""
    from . import bpe

    cases = [([1, 2, 3, 1, 2], (1, 2), 9), (list(b"aaabdaaabac"), (97, 97), 256),
             ([7, 7, 7, 1], (7, 7), 9), ([5, 1, 2], (1, 2), 9), ([1, 2, 5], (1, 2), 9),
             ([3], (1, 2), 9), ([], (1, 2), 9), ([2, 1], (1, 2), 9)]
    for ids, pair, new_id in cases:
        call = f"merge({ids}, {pair}, {new_id})"
        given = list(ids)
        got = fn(given, pair, new_id)
        expected = bpe.merge(ids, pair, new_id)
        if given != ids:
            raise Wrong(f"{call} changed the list it was given; build and return a new list")
        if not isinstance(got, list):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a list")
        if got == expected:
            continue
        if got == expected[:-1]:
            raise Wrong(f"{call} returned {got}: the last id is missing; an id at the end "
                        f"that is not part of a pair must be kept")
        if got.count(new_id) > expected.count(new_id):
            raise Wrong(f"{call} returned {got}, expected {expected}: once a pair is merged, "
                        f"both of its ids are used up (7, 7, 7 is one merge and a 7)")
        raise Wrong(f"{call} returned {got}, expected {expected}")


@_exercise("01", (
    "Give every merge its rank (0 for the first learned). In a loop: among the neighbouring "
    "pairs of ids, find the one with the lowest rank and merge it everywhere.",
    "pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float('inf'))); stop when "
    "that pair is not in ranks, otherwise ids = merge(ids, pair, merges[pair]).",
))
def apply_merges(fn):
    """``apply_merges(ids, merges) -> list``: a chunk's bytes encoded by replaying the merges."""
    from . import bpe

    # a, b, c are 97, 98, 99: "bc" was learned first, so "abc" is a + (bc), never (ab) + c
    abc = {(98, 99): 256, (97, 98): 257, (97, 256): 258}
    known = {"abc": {(257, 99): "merged the leftmost pair that is a merge, but the pair "
                                "learned first (lowest rank) goes first: here (98, 99)"}}
    learned = bpe.train_bpe("the cat sat on the mat; the rat ate the hat " * 4, 300,
                            pattern=None).merges
    cases = [("abc", abc), ("abcab", abc), ("aaabdaaabac", None), ("the cat, the hat", learned),
             ("at", learned), ("x", learned), ("", learned)]
    wiki = bpe.train_bpe("aaabdaaabac", 259, pattern=None).merges  # 3 merges: aa, aaa, aaab
    for text, merges in cases:
        merges = wiki if merges is None else merges
        ids = list(text.encode("utf-8"))
        call = f"apply_merges({ids}, <{len(merges)} merges>)"
        got = fn(list(ids), dict(merges))
        expected = bpe.BPETokenizer(merges, pattern=None).encode(text)
        if not isinstance(got, list):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a list")
        if got == expected:
            continue
        if tuple(got) in known.get(text, {}):
            raise Wrong(f"{call} returned {got}: {known[text][tuple(got)]}")
        if any(pair in merges for pair in zip(got, got[1:])):
            raise Wrong(f"{call} returned {got}, which still has a pair that is a merge: "
                        f"keep merging until no neighbouring pair is in merges")
        raise Wrong(f"{call} returned {got}, expected {expected} (course_utils.bpe)")


# ------------------------------------------------------------------ 02 datasets


@_exercise("02", (
    "Draw all start positions at once: ix = torch.randint(len(data) - block_size, "
    "(batch_size,), generator=generator). Row b of x is data[ix[b] : ix[b] + block_size].",
    "ix[:, None] + torch.arange(block_size + 1) is a (B, T + 1) table of indices; "
    "data[that] gives all windows; x is windows[:, :-1] and y is windows[:, 1:].",
))
def random_batch(fn):
    """``random_batch(data, block_size, batch_size, generator) -> (x, y)``, both ``(B, T)``."""
    from .datasets import get_batch

    data = torch.arange(1000, 1100)  # distinct, consecutive ids: a window is easy to recognise
    for block_size, batch_size, seed in ((8, 4, 0), (1, 3, 1), (99, 2, 2)):
        call = f"random_batch(data (100,), {block_size}, {batch_size}, generator)"
        got = fn(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        ex, ey = get_batch(data, block_size, batch_size, torch.Generator().manual_seed(seed))
        if not (isinstance(got, tuple) and len(got) == 2):
            raise Wrong(f"{call} returned a {type(got).__name__}; return the pair (x, y)")
        x, y = got
        for name, t, e in (("x", x, ex), ("y", y, ey)):
            if isinstance(t, torch.Tensor) and t.shape == (block_size, batch_size) != e.shape:
                raise Wrong(f"{call}: {name} has shape {tuple(t.shape)} but expected "
                            f"{tuple(e.shape)}, one row per window: (batch_size, block_size)")
            if not isinstance(t, torch.Tensor) or t.shape != e.shape or t.dtype != e.dtype:
                _tensor(t, e, f"{call}: {name}", "get_batch")  # names the type, shape or dtype
        starts = x[:, :1]
        if not torch.equal(x, starts + torch.arange(block_size)):
            raise Wrong(f"{call}: a row of x is not a window of consecutive tokens of data")
        if torch.equal(y, x):
            raise Wrong(f"{call}: y equals x; y is the same window shifted by one token, "
                        f"data[i + 1 : i + block_size + 1]")
        if not torch.equal(y, x + 1):
            raise Wrong(f"{call}: y must be x shifted by one token: y[b, t] = data[i + t + 1]")
        if not torch.equal(x, ex):
            raise Wrong(f"{call}: your windows start elsewhere than get_batch's with the same "
                        f"generator; draw the starts with one call, torch.randint("
                        f"len(data) - block_size, (batch_size,), generator=generator)")


@_exercise("02", (
    "Check the range before converting: 0 <= id <= np.iinfo(np.uint16).max (65535).",
    "arr = np.asarray(ids, dtype=np.int64); if ((arr < 0) | (arr > 65535)).any(): raise "
    "ValueError(...) naming the id; otherwise return arr.astype(np.uint16).",
))
def to_uint16(fn):
    """``to_uint16(ids) -> np.ndarray`` (uint16); ``ValueError`` for an id that does not fit."""
    for ids in ([0, 1, 50256, 65535], [7], []):
        call = f"to_uint16({ids})"
        got = fn(list(ids))
        if not isinstance(got, np.ndarray):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a NumPy array")
        if got.dtype != np.uint16:
            raise Wrong(f"{call}: dtype {got.dtype} but expected uint16 (2 bytes per token)")
        if got.tolist() != ids:
            raise Wrong(f"{call} returned {got.tolist()}, expected {ids}")
    for ids, wrapped in (([1, 2, 70_000], 70_000 % 65_536), ([5, -1], 65_535)):
        call = f"to_uint16({ids})"
        try:
            got = fn.fn(list(ids))
        except ValueError:
            continue
        except Exception as e:
            raise Wrong(f"{call} raised {type(e).__name__} ({_first_line(e)}); raise "
                        f"ValueError, with a message that names the id") from None
        if isinstance(got, np.ndarray) and wrapped in got.tolist():
            raise Wrong(f"{call} turned {ids[-1]:,} into {wrapped:,} without a word: check "
                        f"the range and raise ValueError")
        raise Wrong(f"{call} returned instead of raising ValueError: {ids[-1]:,} does not "
                    f"fit in uint16 (0 .. 65,535)")


# ------------------------------------------------------------------ 03 embeddings


@_exercise("03", (
    "wte[idx] looks up a (B, T, C) block of token vectors; the positions are 0 .. T-1.",
    "T = idx.shape[1]; return wte[idx] + wpe[torch.arange(T)]: (B, T, C) + (T, C) broadcasts "
    "over the batch.",
))
def embed(fn):
    """``embed(idx, wte, wpe) -> (B, T, C)``: token embedding plus position embedding."""
    wte, wpe = torch.randn(6, 4), torch.randn(8, 4)  # vocab_size 6, block_size 8, C = 4
    for B, T in ((2, 5), (1, 1), (3, 8)):
        idx = torch.randint(0, 6, (B, T))
        call = f"embed(idx {tuple(idx.shape)}, wte (6, 4), wpe (8, 4))"
        try:
            got = fn(idx, wte, wpe)
        except Wrong as e:
            advice = f" (T = {T} is less than block_size = 8: use the first T rows of wpe)"
            raise Wrong(str(e) + (advice if T < 8 else "")) from None
        expected = F.embedding(idx, wte) + F.embedding(torch.arange(T), wpe)  # PyTorch
        _tensor(got, expected, call, "F.embedding(idx, wte) + F.embedding(arange(T), wpe)", [
            (wte[idx], f"{call}: the position embedding is missing; add wpe's rows 0 .. T-1"),
            (wte[idx] + wpe[idx], f"{call}: wpe was indexed with the token ids; index it "
                                  f"with the positions torch.arange(T)"),
        ])


@_exercise("03", (
    "Count the pairs (data[t], data[t + 1]) in a (vocab_size, vocab_size) table: row = the "
    "current token, column = the next one. Add 1 to every count, then normalise each row.",
    "counts.index_put_((data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True); "
    "counts += 1; return counts / counts.sum(dim=1, keepdim=True).",
))
def bigram_probs(fn):
    """``bigram_probs(data, vocab_size) -> (V, V)``: next-token probabilities, add-one smoothed."""
    cases = [(torch.tensor([0, 1, 2, 1, 0, 1, 1, 3]), 4), (torch.randint(0, 5, (200,)), 5),
             (torch.tensor([0, 0]), 1)]
    for data, V in cases:
        call = f"bigram_probs(data ({len(data)},), {V})"
        got = fn(data.clone(), V)
        pairs = torch.bincount(data[:-1] * V + data[1:], minlength=V * V).view(V, V).float()
        smoothed = pairs + 1
        expected = smoothed / smoothed.sum(dim=1, keepdim=True)
        _tensor(got, expected, call, "the smoothed counts", [
            (pairs / pairs.sum(dim=1, keepdim=True), f"{call}: some probabilities are 0 or "
             f"NaN; add 1 to every count before normalising"),
            (smoothed / smoothed.sum(dim=0, keepdim=True), f"{call}: the columns sum to 1; "
             f"each row (the current token) must: normalise along dim=1"),
            (smoothed.T / smoothed.T.sum(dim=1, keepdim=True), f"{call}: the table is "
             f"transposed; row i must be the token before, column j the token after"),
            (smoothed, f"{call}: these are counts; divide each row by its sum"),
        ])


# ------------------------------------------------------------------ 04 attention


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


# ------------------------------------------------------------------ 05 transformer block


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
    from .block import Block

    block = Block(n_embd=16, n_head=4, block_size=8).eval()
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


# ------------------------------------------------------------------ 06 GPT model


@_exercise("06", (
    "Per block: attention c_attn (C x 3C + 3C) and c_proj (C x C + C); MLP c_fc (C x 4C + 4C) "
    "and c_proj (4C x C + C); two LayerNorms (2C each). Outside: wte, wpe and ln_f.",
    "vocab_size*C + block_size*C + n_layer*(12*C*C + 13*C) + 2*C: the LM head adds nothing, "
    "it is wte (weight tying).",
))
def param_count(fn):
    """``param_count(vocab_size, block_size, n_layer, n_embd) -> int``, tied head, biases on."""
    from .model import GPTConfig
    from .scaling import count_params

    for V, T, L, C in ((65, 64, 4, 128), (50257, 1024, 12, 768), (10, 1, 1, 2)):
        call = f"param_count(vocab_size={V}, block_size={T}, n_layer={L}, n_embd={C})"
        got = fn(V, T, L, C)
        # the course's count (equal to sum(p.numel()) of its GPT and of Hugging Face's GPT-2)
        n = count_params(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, n_embd=C))
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise Wrong(f"{call} returned a {type(got).__name__}; return an int")
        _number(got, n, call, [
            (n + V * C, f"{call}: the LM head was counted separately; it is wte's matrix "
             f"(weight tying) and adds nothing"),
            (n - 9 * C * L, f"{call}: the biases of the four linear layers per block "
             f"(9 * n_embd) are missing"),
            (n - 4 * C * L - 2 * C, f"{call}: the LayerNorms (weight and bias, n_embd each; "
             f"two per block and ln_f) are missing"),
            (n - 2 * C, f"{call}: the final LayerNorm ln_f (2 * n_embd) is missing"),
            (n - T * C, f"{call}: the position embedding wpe (block_size * n_embd) is "
             f"missing"),
        ], rel=0)


@_exercise("06", (
    "Keep every name; only the four Conv1D weights of each block (attn.c_attn, attn.c_proj, "
    "mlp.c_fc, mlp.c_proj, the .weight only) are stored (in, out) and need a transpose.",
    "conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', "
    "'mlp.c_proj.weight'); return {k: v.t() if k.endswith(conv1d) else v for k, v in "
    "hf_state_dict.items()}",
))
def convert_hf_state_dict(fn):
    """``convert_hf_state_dict(hf_state_dict) -> dict`` that the course's GPT loads."""
    import transformers

    from .model import GPT, GPTConfig

    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=50, bos_token_id=49,
        eos_token_id=49, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_sd = hf.state_dict()
    got = fn({k: v.clone() for k, v in hf_sd.items()})
    call = "convert_hf_state_dict(GPT2LMHeadModel(...).state_dict())"
    if not isinstance(got, dict):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a dict name -> tensor")
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = ours.state_dict()
    for name, target in state.items():
        if name == "lm_head.weight" or name not in hf_sd:
            continue  # the head is tied: it is transformer.wte.weight
        if name not in got:
            raise Wrong(f"{call}: {name!r} is missing; keep Hugging Face's names")
        t, source = got[name], hf_sd[name]
        transposed = name.endswith(conv1d)
        if not isinstance(t, torch.Tensor) or t.shape != target.shape:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            advice = ("transpose the Conv1D weights" if transposed else
                      "only the four Conv1D weights per block are transposed")
            raise Wrong(f"{call}: {name} has shape {shape} but our GPT needs "
                        f"{tuple(target.shape)}; {advice}")
        expected = source.t() if transposed else source
        if transposed and not torch.equal(t, expected) and torch.equal(t, source):
            raise Wrong(f"{call}: {name} is square, so a missing transpose does not change "
                        f"its shape; transpose it too")
        _tensor(t, expected, f"{call}[{name!r}]", "the Hugging Face tensor", atol=0, rtol=0)
        with torch.no_grad():
            target.copy_(t)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        _tensor(ours(idx)[0], hf(idx).logits, "the logits of our GPT with these weights",
                "GPT2LMHeadModel's logits")


# ------------------------------------------------------------------ 07 training


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
))
def warmup_cosine_lr(fn):
    """``warmup_cosine_lr(step, max_lr, min_lr, warmup_iters, max_iters) -> float``."""
    from .train import get_lr

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


# ------------------------------------------------------------------ 08 sampling


def _kept_counts(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered).sum(dim=-1).tolist()


@_exercise("08", (
    "Each row needs its own k-th largest logit; everything below it becomes -inf.",
    "kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1); "
    "return logits.masked_fill(logits < kth, float('-inf'))",
))
def top_k_logits(fn):
    """``top_k_logits(logits, k)``: ``(B, vocab_size)``, all but each row's top k set to -inf."""
    for B, V, k in ((2, 10, 3), (3, 7, 1), (2, 6, 6), (1, 12, 5)):
        logits = torch.randn(B, V) * 2
        call = f"top_k_logits(logits {(B, V)}, k={k})"
        try:
            got = fn(logits.clone(), k)
        except Wrong as e:
            raise Wrong(f"{e} (logits is a batch (B, vocab_size): find each row's k-th "
                        f"largest, along dim=-1)") from None
        top = torch.topk(logits, k, dim=-1)  # PyTorch's
        expected = torch.full_like(logits, float("-inf")).scatter(-1, top.indices, top.values)
        if isinstance(got, torch.Tensor) and got.shape == logits.shape:
            if ((got == 0) & torch.isinf(expected)).any():
                raise Wrong(f"{call}: filtered logits must be -inf (probability 0 after the "
                            f"softmax), not 0")
            for row, n in enumerate(_kept_counts(got)):
                if n != k:
                    raise Wrong(f"{call}: row {row} keeps {n} logits instead of k = {k}; each "
                                f"row keeps the logits >= its own k-th largest")
        bottom = torch.topk(logits, k, dim=-1, largest=False)
        smallest = torch.full_like(logits, float("-inf")).scatter(-1, bottom.indices,
                                                                 bottom.values)
        _tensor(got, expected, call, "torch.topk", [
            (smallest, f"{call}: kept the k smallest logits; keep the largest")])


@_exercise("08", (
    "Per row: softmax, sort descending, running sum (cumsum). A token is kept while the "
    "tokens before it hold less than p; the one that reaches p is kept too.",
    "before = cumsum(sorted_probs) - sorted_probs; drop_sorted = before >= p; put it back in "
    "vocabulary order with torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted); "
    "masked_fill(drop, -inf).",
))
def top_p_logits(fn):
    """``top_p_logits(logits, p)``: ``(B, vocab_size)``, outside each row's nucleus set to -inf."""
    from .sampling import filter_logits

    shuffled = torch.tensor([[0.1, 0.5, 0.05, 0.2, 0.15]]).log()
    peaked = torch.tensor([[8.0, 0.0, 0.5, 1.0], [0.0, 0.1, 0.2, 0.3]])
    for logits, p in ((shuffled, 0.75), (torch.randn(3, 12) * 2, 0.9), (peaked, 0.5),
                      (torch.randn(2, 9), 0.3)):
        call = f"top_p_logits(logits {tuple(logits.shape)}, p={p})"
        got = fn(logits.clone(), p)
        expected = filter_logits(logits, top_p=p)  # the course's sampler
        if isinstance(got, torch.Tensor) and got.shape == logits.shape:
            if ((got == 0) & torch.isinf(expected)).any():
                raise Wrong(f"{call}: filtered logits must be -inf (probability 0 after the "
                            f"softmax), not 0")
            probs = torch.softmax(logits, dim=-1)
            for row, (n, n_expected) in enumerate(zip(_kept_counts(got),
                                                      _kept_counts(expected))):
                mass = probs[row][torch.isfinite(got[row])].sum().item()
                if n == 0:
                    raise Wrong(f"{call}: row {row} keeps no token; the most likely one is "
                                f"always kept")
                if n < n_expected and mass < p:
                    raise Wrong(f"{call}: row {row} keeps {n} tokens holding {mass:.3f} < p "
                                f"of the probability; keep the token that makes the sum "
                                f"reach p too")
        probs = torch.softmax(logits, dim=-1)
        unsorted = logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))
        _tensor(got, expected, call, "course_utils.sampling.filter_logits(top_p=p)", [
            (unsorted, f"{call}: the running sum must go through the probabilities sorted in "
             f"descending order, not in vocabulary order")])


@_exercise("08", (
    "Append first: the new key and value go at the end of the cache (dim 2). Then the one "
    "query attends to every cached position, itself included: no mask is needed.",
    "k_cache = torch.cat([k_cache, k_new], dim=2) (same for v); scores = q @ "
    "k_cache.transpose(-2, -1) / sqrt(hs); y = torch.softmax(scores, -1) @ v_cache; "
    "return y, k_cache, v_cache",
))
def kv_attention_step(fn):
    """``kv_attention_step(q, k_new, v_new, k_cache, v_cache) -> (y, k_cache, v_cache)``."""
    for B, nh, past, hs in ((2, 3, 5, 8), (1, 2, 0, 4), (1, 1, 1, 4)):
        q, k_new, v_new = torch.randn(3, B, nh, 1, hs)
        k_cache, v_cache = torch.randn(2, B, nh, past, hs)
        call = f"kv_attention_step(q (B, nh, 1, hs) = {(B, nh, 1, hs)}, ..., T_past={past})"
        got = fn(q.clone(), k_new.clone(), v_new.clone(), k_cache.clone(), v_cache.clone())
        if not (isinstance(got, tuple) and len(got) == 3):
            raise Wrong(f"{call} returned a {type(got).__name__}; return (y, k_cache, v_cache)")
        y, k_out, v_out = got
        k_all, v_all = torch.cat([k_cache, k_new], dim=2), torch.cat([v_cache, v_new], dim=2)
        for name, out, new, old in (("k_cache", k_out, k_new, k_cache),
                                    ("v_cache", v_out, v_new, v_cache)):
            if isinstance(out, torch.Tensor) and out.shape == old.shape:
                raise Wrong(f"{call}: the returned {name} still holds {past} positions; "
                            f"append the new one (torch.cat(..., dim=2))")
            full = torch.cat([old, new], dim=2)
            _tensor(out, full, f"{call}: {name}", "torch.cat([cache, new], dim=2)", [
                (torch.cat([new, old], dim=2), f"{call}: the new position must go at the "
                 f"end of {name}, after the past ones")])
        sdpa = F.scaled_dot_product_attention
        mistakes = [(sdpa(q, k_all, v_all, is_causal=True), f"{call}: the new token sees only "
                     f"position 0; with one query, is_causal=True masks all but the first key "
                     f"(PyTorch aligns the mask top-left): use no mask")]
        if past:
            mistakes.append((sdpa(q, k_cache, v_cache), f"{call}: y ignores the new token; "
                             f"its query attends to the past and to itself: append first"))
        _tensor(y, sdpa(q, k_all, v_all), f"{call}: y", "F.scaled_dot_product_attention",
                mistakes)


# ------------------------------------------------------------------ 09 raw tensors


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


# ------------------------------------------------------------------ 10 TinyStories


@_exercise("10", (
    "Go through the stories in order: extend the list with the story's ids, then append "
    "the separator.",
    "ids = []; for s in stories: ids.extend(encode(s)); ids.append(eot_id); return ids",
))
def join_stories(fn):
    """``join_stories(stories, encode, eot_id) -> list``: each story's ids, then ``eot_id``."""

    def encode(s):
        return list(s.encode("utf-8"))

    for stories in (["Once upon a time.", "The end!", "Lily ran."], ["Hi"], [], ["", "ok"]):
        call = f"join_stories({stories}, encode, 256)"
        got = fn(list(stories), encode, 256)
        expected = [i for s in stories for i in (*encode(s), 256)]
        if not isinstance(got, list) or any(isinstance(i, (list, tuple)) for i in got):
            kind = "list of lists" if isinstance(got, list) else type(got).__name__
            raise Wrong(f"{call} returned a {kind}; return one flat list of ids")
        if got == expected:
            continue
        if stories and got == [i for s in stories for i in (256, *encode(s))]:
            raise Wrong(f"{call}: the separator goes after each story; it marks where a story "
                        f"ends")
        if got == expected[:-1]:
            raise Wrong(f"{call}: the last story needs its separator too")
        raise Wrong(f"{call} returned {_describe(got)}, expected {_describe(expected)}")


@_exercise("10", (
    "Each weight costs 2 FLOPs per token forward and 4 backward; attention's q k^T and att v "
    "cost 2 * 2 * seq_len * n_embd per layer forward, and twice that backward.",
    "return 6 * n_params + 12 * n_layer * n_embd * seq_len",
))
def train_flops_per_token(fn):
    """``train_flops_per_token(n_params, n_layer, n_embd, seq_len)``: PaLM's ``6N + 12 L C T``."""
    from .model import GPTConfig
    from .scaling import count_params, flops_per_token

    for V, L, C, T in ((50257, 12, 768, 1024), (65, 4, 128, 256), (10, 1, 8, 1)):
        config = GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, n_embd=C)
        N = count_params(config, non_embedding=True)
        call = f"train_flops_per_token({N:,}, n_layer={L}, n_embd={C}, seq_len={T})"
        got = fn(N, L, C, T)
        _number(got, flops_per_token(config, T), call, [  # the course's estimate
            (2 * N + 4 * L * C * T, f"{call}: that is the forward pass alone; training adds "
             f"the backward pass, twice as much: 3 times in all"),
            (6 * N, f"{call}: the attention products q k^T and att v are missing: "
             f"+ 12 * n_layer * n_embd * seq_len"),
            (6 * N + 4 * L * C * T, f"{call}: the attention term must count the backward "
             f"pass too: 3 * 4 * n_layer * n_embd * seq_len"),
        ])


# ------------------------------------------------------------------ 11 modern architecture


@_exercise("11", (
    "RMSNorm keeps only the scale part of LayerNorm: no mean is subtracted and there is no "
    "bias. Divide by the root of the mean of squares (plus eps), then multiply by weight.",
    "return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight",
))
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
                    sign: float = 1.0, offset: int = 0) -> torch.Tensor:
    """RoPE as complex numbers: pair ``(x_i, x_{i + hs/2})`` (or ``(x_{2i}, x_{2i+1})``) is one
    complex number, multiplied by ``exp(i * t * base ** (-2i / hs))`` at position ``t``."""
    T, hs = x.shape[-2], x.shape[-1]
    if interleaved:
        re_, im = x[..., 0::2], x[..., 1::2]
    else:
        re_, im = x[..., : hs // 2], x[..., hs // 2 :]
    theta = base ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)  # (hs/2,)
    angle = (torch.arange(T, dtype=torch.float64)[:, None] + offset) * theta  # (T, hs/2)
    z = torch.complex(re_.double(), im.double()) * torch.polar(torch.ones_like(angle),
                                                              sign * angle)
    if interleaved:
        return torch.stack([z.real, z.imag], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


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
        got = fn(x.clone(), base)
        _tensor(got, _rope_reference(x, base), call, "the rotation e^(i t theta)", [
            (_rope_reference(x, base, interleaved=True), f"{call}: you rotated the pairs "
             f"(2i, 2i+1), the layout of the RoPE paper; Hugging Face's Llama pairs i with "
             f"i + hs/2 (rotate_half)"),
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
        if isinstance(got, torch.Tensor) and got.shape == torch.Size(
                (shape[0], shape[1], shape[2] * n_rep, shape[3])) != expected.shape:
            raise Wrong(f"{call}: shape {tuple(got.shape)}: repeated along T; repeat the "
                        f"heads, dim=1")
        _tensor(got, expected, call, "torch.repeat_interleave(x, n_rep, dim=1)", [
            (x.repeat(1, n_rep, 1, 1), f"{call}: heads tiled (0, 1, 0, 1, ...) but they "
             f"must repeat in place (0, 0, 1, 1, ...): query heads h * n_rep .. share "
             f"key/value head h")])


# ------------------------------------------------------------------ 12 instruction tuning


def _chat_cases():
    """``(ids, header, im_end, trained)`` for a few ChatML conversations, encoded by the
    course's chat format (:func:`course_utils.sft.encode_conversation`, the finished piece):
    ``trained[i]`` says whether token ``i`` belongs to a reply or its closing ``<|im_end|>``."""
    from .chat import ChatFormat
    from .sft import chat_tokenizer, encode_conversation
    from .tokenization import CharTokenizer

    fmt = ChatFormat(chat_tokenizer(CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz !?\n")))
    conversations = [
        [("user", "hi"), ("assistant", "hello!")],
        [("user", "how are you?"), ("assistant", "well"), ("user", "and now?"),
         ("assistant", "fine")],
        [("system", "be brief"), ("user", "say assistant\nno"), ("assistant", "no")],
        [("user", "speak"), ("assistant", "")],
    ]
    for turns in conversations:
        ids, trained = encode_conversation(fmt, [{"role": r, "content": c} for r, c in turns])
        yield ids, fmt.generation_prompt(), fmt.im_end, trained


def _shifted(ids, trained, fill=-1):
    """The targets of ``ids[:-1]``: ``ids[t + 1]`` where ``trained[t + 1]``, else ``fill``."""
    return [i if keep else fill for i, keep in zip(ids[1:], trained[1:])]


@_exercise("12", (
    "Walk through ids; where the header <|im_start|>assistant\\n starts (compare the slice "
    "ids[i:i + len(header)] with it), the reply begins right after it and ends with the first "
    "im_end, which is trained too. The target of position t is ids[t + 1].",
    "y = [-1] * (len(ids) - 1); at each header found at i, for j from i + len(header) on: "
    "y[j - 1] = ids[j], stop after ids[j] == im_end",
))
def reply_targets(fn):
    """``reply_targets(ids, header, im_end) -> list``: next-token targets, -1 outside replies."""
    for ids, header, im_end, trained in _chat_cases():
        call = f"reply_targets(ids of {len(ids)} tokens, header {header}, im_end={im_end})"
        got = fn(list(ids), list(header), im_end)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or any(isinstance(v, (list, tuple)) for v in got):
            raise Wrong(f"{call} returned a {type(got).__name__}; return a flat list of ints")
        got = list(got)
        expected = _shifted(ids, trained)
        if got == expected:
            continue
        if len(got) == len(ids):
            raise Wrong(f"{call} returned {len(got)} targets, one per token; x is ids[:-1], so "
                        f"there are len(ids) - 1 = {len(ids) - 1}, and y[t] is ids[t + 1]")
        if len(got) != len(expected):
            raise Wrong(f"{call} returned {len(got)} targets; expected len(ids) - 1 = "
                        f"{len(expected)}")
        starts = [i for i in range(len(ids)) if ids[i:i + len(header)] == header]
        in_header = [any(s <= i < s + len(header) for s in starts) for i in range(len(ids))]
        first_end = next(i for i in range(starts[0], len(ids)) if ids[i] == im_end)
        mistakes = [
            ([i if k else -1 for i, k in zip(ids[:-1], trained[:-1])],
             "the targets are not shifted: y[t] is the token after x[t], ids[t + 1]"),
            (_shifted(ids, [k and i != im_end for i, k in zip(ids, trained)]),
             "the closing <|im_end|> of each reply must be a target too: it is how the model "
             "learns to stop"),
            (_shifted(ids, [k or h for k, h in zip(trained, in_header)]),
             "the header <|im_start|>assistant\\n is part of the prompt (the chat writes it), "
             "not of the reply: do not train on it"),
            (_shifted(ids, [not k for k in trained]),
             "the mask is inverted: train on the replies, not on everything else"),
            (_shifted(ids, trained, fill=0),
             "positions outside the replies must be -1 (the ignore_index of the loss), not 0"),
            (_shifted(ids, [k and i <= first_end for i, k in enumerate(trained)]),
             "only the first reply is a target; every assistant turn is"),
        ]
        for wrong, message in mistakes:
            if got == wrong:
                raise Wrong(f"{call}: {message}")
        t = next(t for t in range(len(expected)) if got[t] != expected[t])
        raise Wrong(f"{call}: y[{t}] is {got[t]}, expected {expected[t]}")


@_exercise("12", (
    "Keep only the positions whose target is not -1 (a boolean mask, targets != -1), then take "
    "the cross-entropy of those: -log_softmax(logits)[target], averaged over them all.",
    "logits, targets = logits.flatten(0, 1), targets.flatten(); keep = targets != -1; "
    "logp = torch.log_softmax(logits[keep], dim=-1); "
    "return -logp.gather(1, targets[keep][:, None]).mean()",
))
def masked_cross_entropy(fn):
    """``masked_cross_entropy(logits, targets)``: mean cross-entropy over targets != -1."""
    g = torch.Generator().manual_seed(12)
    for B, T, V, scale in ((2, 6, 7, 1.0), (3, 5, 11, 30.0), (1, 4, 5, 1.0)):
        logits = torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale
        targets = torch.randint(0, V, (B, T), generator=g)
        targets[0, : T // 2] = -1  # the user's turn of the first row, say
        if B > 1:
            targets[1, -1] = -1  # padding
        call = f"masked_cross_entropy(logits {(B, T, V)}, targets with -1)"
        got = fn(logits.clone(), targets.clone())
        if isinstance(got, torch.Tensor) and got.dim() > 0 and got.numel() > 1:
            raise Wrong(f"{call}: returned shape {tuple(got.shape)}; return one number, the mean")
        expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1,
                                    reduction="none").view(B, T)
        keep = targets != -1
        per_row = per_token.sum(1) / keep.sum(1)
        _number(got, expected.item(), call, [
            (per_token.sum().item() / (B * T), f"{call}: divided by all B*T = {B * T} "
             f"positions; divide by the {int(keep.sum())} targets that are not -1"),
            (per_row.mean().item(), f"{call}: averaged row by row; every target counts the "
             f"same: average over all targets of the batch at once"),
            (per_token.sum().item(), f"{call}: that is the sum; return the mean"),
            (F.cross_entropy(logits.flatten(0, 1), targets.clamp(min=0).flatten()).item(),
             f"{call}: the positions with target -1 were counted (as token 0); leave them out"),
        ], rel=1e-6)


# ------------------------------------------------------------------ 13 preference tuning


def _reply_cases():
    """``(logits, idx, mask)`` cases for ``reply_logprobs``: random logits, reply masks that
    start after a prompt and end before some padding."""
    g = torch.Generator().manual_seed(13)
    for B, T, V, starts, ends in ((2, 7, 5, (2, 3), (5, 7)), (3, 6, 9, (1, 4, 2), (4, 6, 3)),
                                  (1, 5, 4, (2,), (5,))):
        logits = torch.randn(B, T, V, generator=g) * 2
        idx = torch.randint(0, V, (B, T), generator=g)
        pos = torch.arange(T)
        mask = (pos >= torch.tensor(starts)[:, None]) & (pos < torch.tensor(ends)[:, None])
        yield logits, idx, mask


@_exercise("13", (
    "Token t of a row is predicted by the logits at position t - 1: take log_softmax of "
    "logits[:, :-1], pick the entry of each next token idx[:, 1:] (gather), and add up those "
    "whose position is in the reply (mask[:, 1:]).",
    "logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, idx[:, 1:, None])[..., 0]; "
    "return (logp * mask[:, 1:]).sum(dim=1)",
))
def reply_logprobs(fn):
    """``reply_logprobs(logits, idx, mask) -> (B,)``: log-probability of each row's reply."""
    from .preference import token_logprobs

    for logits, idx, mask in _reply_cases():
        B, T, V = logits.shape
        call = f"reply_logprobs(logits {(B, T, V)}, idx, mask)"
        got = fn(logits.clone(), idx.clone(), mask.clone())
        # the finished piece reads the logits from a model: give it one that returns these
        per_token = token_logprobs(lambda _, lg=logits: (lg, None), idx)  # (B, T)
        expected = torch.where(mask, per_token, 0.0).sum(1)
        logp = torch.log_softmax(logits, dim=-1)
        unshifted = logp.gather(2, idx[..., None])[..., 0]  # logits at t scored against t
        shifted = F.pad(logp[:, :-1].gather(2, idx[:, 1:, None])[..., 0], (1, 0))
        probs = F.pad(logp[:, :-1].exp().gather(2, idx[:, 1:, None])[..., 0], (1, 0))
        _tensor(got, expected, call, "the log-probability of the reply", [
            (torch.where(mask, unshifted, 0.0).sum(1),
             f"{call}: not shifted: token t is predicted by the logits at t - 1, so score "
             f"idx[:, 1:] against logits[:, :-1]"),
            (shifted.sum(1), f"{call}: the prompt and padding were counted: add up only the "
                             f"positions where mask is True"),
            (torch.where(mask, shifted, 0.0).sum(1) / mask.sum(1),
             f"{call}: that is the mean per token; DPO uses the sum over the reply's tokens"),
            (torch.where(mask, probs, 0.0).sum(1),
             f"{call}: those are probabilities; add up log-probabilities (log_softmax)"),
            (torch.where(mask, F.pad(logits[:, :-1].gather(2, idx[:, 1:, None])[..., 0],
                                     (1, 0)), 0.0).sum(1),
             f"{call}: those are raw logits; take log_softmax first (normalise over the "
             f"vocabulary)"),
        ], atol=1e-5, rtol=1e-5)


@_exercise("13", (
    "Each reply's implicit reward is beta * (its log-probability under the policy minus "
    "under the reference); the loss of a pair is -log sigmoid(reward_chosen - "
    "reward_rejected), and the batch's loss their mean. F.logsigmoid is the stable way.",
    "margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected); "
    "return -F.logsigmoid(beta * margin).mean()",
))
def dpo_loss(fn):
    """``dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)``."""
    from .preference import dpo_loss as reference

    g = torch.Generator().manual_seed(31)
    cases = [[torch.randn(B, generator=g, dtype=torch.float64) * scale - 20 for _ in range(4)]
             + [beta] for B, beta, scale in ((4, 0.1, 5.0), (3, 0.5, 2.0), (2, 2.0, 30.0))]
    far = torch.tensor([-10.0, -400.0])  # margins of +-390: a naive log(sigmoid) gives -inf
    cases.append([far, far.flip(0), torch.full((2,), -50.0), torch.full((2,), -50.0), 0.5])
    for pc, pr, rc, rr, beta in cases:
        B = len(pc)
        call = f"dpo_loss(4 x tensor ({B},), beta={beta})"
        got = fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
        if isinstance(got, tuple):  # the course's returns the rewards too; the task does not
            got = got[0]
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"{call}: returned shape {tuple(got.shape)}; return one number, the "
                        f"mean over the batch")
        if isinstance(got, (torch.Tensor, float)) and not math.isfinite(float(got)):
            raise Wrong(f"{call} returned {float(got)}; use F.logsigmoid(x), which stays "
                        f"finite where log(sigmoid(x)) underflows to log(0)")
        expected = reference(pc, pr, rc, rr, beta)[0].item()
        margin = (pc - rc) - (pr - rr)
        _number(got, expected, call, [
            ((-F.logsigmoid(margin)).mean().item(),
             f"{call}: beta is missing: the margin is multiplied by beta inside the sigmoid"),
            ((-beta * F.logsigmoid(margin)).mean().item(),
             f"{call}: beta multiplies the margin inside the sigmoid, not the loss"),
            ((-F.logsigmoid(-beta * margin)).mean().item(),
             f"{call}: the sign is flipped: the chosen reply's reward comes first, "
             f"sigmoid(reward_chosen - reward_rejected)"),
            ((-F.logsigmoid(beta * (pc - pr))).mean().item(),
             f"{call}: the reference is missing: each reward is log pi - log pi_ref"),
            ((-F.logsigmoid(beta * margin)).sum().item(),
             f"{call}: that is the sum over the pairs; return the mean"),
            ((-torch.sigmoid(beta * margin)).mean().item(),
             f"{call}: take the log of the sigmoid (F.logsigmoid)"),
        ], rel=1e-6)


# ------------------------------------------------------------------ 14 LoRA and RL


@_exercise("14", (
    "Two paths added together: the frozen layer, x @ weight.T + bias (when bias is not None), "
    "and the low-rank update x @ lora_A.T @ lora_B.T, scaled by alpha / r where r is "
    "lora_A.shape[0].",
    "r = lora_A.shape[0]; y = x @ weight.T + (0 if bias is None else bias); "
    "return y + (x @ lora_A.T @ lora_B.T) * (alpha / r)",
))
def lora_forward(fn):
    """``lora_forward(x, weight, bias, lora_A, lora_B, alpha)``: a linear layer plus LoRA."""
    g = torch.Generator().manual_seed(14)
    for x_shape, n_in, n_out, r, alpha, with_bias in (((2, 5, 8), 8, 6, 2, 4.0, True),
                                                       ((3, 8), 8, 4, 4, 8.0, False),
                                                       ((1, 7), 7, 5, 1, 3.0, True)):
        x = torch.randn(x_shape, generator=g)
        weight = torch.randn(n_out, n_in, generator=g)
        bias = torch.randn(n_out, generator=g) if with_bias else None
        A, B = torch.randn(r, n_in, generator=g), torch.randn(n_out, r, generator=g)
        call = (f"lora_forward(x {x_shape}, weight {(n_out, n_in)}, "
                f"{'bias' if with_bias else 'None'}, lora_A {(r, n_in)}, lora_B {(n_out, r)}, "
                f"alpha={alpha:g})")
        got = fn(x.clone(), weight.clone(), None if bias is None else bias.clone(), A.clone(),
                 B.clone(), alpha)
        # the reference: PyTorch's linear layer with the update merged into its weight
        expected = F.linear(x, weight + (alpha / r) * B @ A, bias)
        base = F.linear(x, weight, bias)
        update = x @ A.T @ B.T
        mistakes = [
            (base + update, f"{call}: the update is not scaled; multiply it by alpha / r"),
            (base + alpha * update, f"{call}: scaled by alpha; LoRA scales by alpha / r"),
            (base + (r / alpha) * update, f"{call}: scaled by r / alpha; it is alpha / r"),
            ((alpha / r) * update, f"{call}: only the update; add the frozen layer's output "
             f"x @ weight.T + bias"),
            (base, f"{call}: only the frozen layer; add the update x @ lora_A.T @ lora_B.T"),
        ]
        if bias is not None:
            mistakes.append((F.linear(x, weight + (alpha / r) * B @ A),
                             f"{call}: the bias is missing"))
        _tensor(got, expected, call, "F.linear with weight + (alpha / r) * lora_B @ lora_A",
                mistakes, atol=1e-4)


_ANSWERS = (("68", 68), ("The answer is 68.", 68), ("23 + 45 = 68", 68),
            ("I do not know.", None), ("", None), ("-7", -7), ("It is 12, not 21", 21),
            ("15 + 990 = 1,005", 1005), ("That makes 1,234,567!", 1234567))


@_exercise("14", (
    "Find every integer in the text with a regular expression (re.findall) and keep the last "
    "one; an optional '-' goes before the digits, and groups of three digits may follow a "
    "comma. No integer at all: return None.",
    r"found = re.findall(r'(?<!\d)-?(?:\d{1,3}(?:,\d{3})+|\d+)(?!\d)', text); "
    "return int(found[-1].replace(',', '')) if found else None",
), in_place=True)  # None is a right answer here: the check tells a stub by its first reply
def parse_answer(fn):
    """``parse_answer(text) -> int | None``: the last integer in the text."""
    for text, expected in _ANSWERS:
        call = f"parse_answer({text!r})"
        got = fn(text)
        if got is None and text == _ANSWERS[0][0]:
            raise NotAttempted
        if isinstance(got, bool) or not (got is None or isinstance(got, int)):
            raise Wrong(f"{call} returned {got!r}, a {type(got).__name__}; return an int "
                        f"(int(...)) or None")
        if got == expected:
            continue
        if expected is None:
            raise Wrong(f"{call} returned {got!r}; with no number in the text return None "
                        f"(a reward of 0), not a number")
        if got is None:
            raise Wrong(f"{call} returned None; the text ends with the number {expected}")
        if text == "23 + 45 = 68" and got == 23:
            raise Wrong(f"{call} returned 23, the first number; the final answer is the last")
        if got == -expected:
            raise Wrong(f"{call} returned {got}: the minus sign belongs to the number")
        if expected >= 1000 and got in (expected % 1000, expected // 1000):
            raise Wrong(f"{call} returned {got}: thousands are written with commas; "
                        f"'1,005' is the number 1005")
        raise Wrong(f"{call} returned {got!r}, expected {expected!r}")


@_exercise("14", (
    "Each row is one group, the completions of one prompt: subtract the row's mean and divide "
    "by the row's standard deviation plus eps (mean and std over dim=-1, keepdim=True).",
    "mean = rewards.mean(dim=-1, keepdim=True); std = rewards.std(dim=-1, keepdim=True); "
    "return (rewards - mean) / (std + eps)",
))
def group_advantages(fn):
    """``group_advantages(rewards (N, G), eps=1e-4) -> (N, G)``, standardised per group."""
    g = torch.Generator().manual_seed(14)
    equal = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    for rewards in (equal, (torch.rand(3, 6, generator=g) > 0.5).float(),
                    torch.rand(2, 8, generator=g) * 3):
        eps = 1e-4
        call = f"group_advantages(rewards {tuple(rewards.shape)}, eps=1e-4)"
        got = fn(rewards.clone(), eps)
        mean = rewards.mean(-1, keepdim=True)
        expected = (rewards - mean) / (torch.std(rewards, -1, keepdim=True) + eps)
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(
                got).any() and not torch.isnan(expected).any():
            raise Wrong(f"{call}: nan where a group's rewards are all equal (0 / 0): add eps "
                        f"to the standard deviation")
        _tensor(got, expected, call, "(r - mean) / (torch.std + eps) per row", [
            ((rewards - mean) / (rewards.std(-1, correction=0, keepdim=True) + eps),
             f"{call}: that std divides by G; use the sample standard deviation (G - 1, "
             f"torch.std's default), as DeepSeekMath does"),
            ((rewards - rewards.mean()) / (rewards.std() + eps),
             f"{call}: standardised over the whole batch; each group (row) on its own: "
             f"dim=-1, keepdim=True"),
            ((rewards - rewards.mean(0, keepdim=True)) / (rewards.std(0, keepdim=True) + eps),
             f"{call}: standardised down the columns (dim=0); a group is a row (dim=-1)"),
            (rewards - mean, f"{call}: only the mean is subtracted; divide by the group's "
             f"standard deviation plus eps too"),
        ], atol=1e-4)


# ------------------------------------------------------------------ progress from notebooks


def _notebook_number(path: Path) -> str:
    return path.name[:2]


def _imports(cells: list[str]) -> str:
    """The top-level import statements of a notebook's code cells, as one program."""
    lines = []
    for source in cells:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines += [ast.unparse(node) for node in tree.body
                  if isinstance(node, (ast.Import, ast.ImportFrom))]
    return "\n".join(lines)


def grade_notebook(path: str | Path) -> list[tuple[str, str, str]]:
    """Grade the exercises of a saved notebook: ``[(name, status, message), ...]``.

    Each exercise's code cell (the one that defines the function and is followed by its
    ``check.NAME(NAME)`` cell) is run, in notebook order, in one namespace that holds the
    notebook's imports and nothing else, and the function it defines is checked. So an
    answer is graded on its own: a function that uses a variable made in another cell fails
    with a ``NameError``. Exercises of this notebook that it has no cell for are reported
    ``"not attempted"``.

    Raises ``FileNotFoundError`` when ``path`` does not exist.
    """
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    namespace: dict = {"__name__": "__exercises__"}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for line in _imports(cells).splitlines():
            with contextlib.suppress(Exception):
                exec(line, namespace)
    results, seen = [], set()
    for source, following in zip(cells, cells[1:]):
        for name in re.findall(r"^check\.(\w+)\(\1\)", following, re.M):
            if name not in EXERCISES or f"def {name}(" not in source:
                continue
            seen.add(name)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(source, f"<{path.name}: {name}>", "exec"), namespace)
            except Exception as e:
                results.append((name, FAILED, f"its cell raised {type(e).__name__}: "
                                              f"{_first_line(e)}"))
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                status, message = run(name, namespace.get(name))
            results.append((name, status, message))
    number = _notebook_number(path)
    for name, exercise in EXERCISES.items():
        if exercise.notebook == number and name not in seen:
            results.append((name, NOT_ATTEMPTED, "no cell defines it in this notebook"))
    return results


HOW_TO_RECORD = (
    "Progress is read from the saved .ipynb files: save the notebook (Ctrl+S) after editing. "
    "Each exercise's cell is run on its own with the notebook's imports, so an answer must "
    "not use variables made in other cells."
)


def add_exercises_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``exercises [NOTEBOOK]`` to the command line's subcommands; returns its parser."""
    p = subparsers.add_parser("exercises", help="your progress on the notebooks' exercises",
                              description="Grade the exercises saved in the notebooks. "
                                          + HOW_TO_RECORD)
    p.add_argument("notebook", nargs="?", default=None,
                   help="a notebook number (04), name or .ipynb path; default: all")
    p.add_argument("--notebooks-dir", default=None,
                   help="the folder of the notebooks (default: ./notebooks, or the "
                        "repository's)")
    return p


def _find_notebooks(notebook: str | None, folder: str | None) -> list[Path]:
    if notebook and Path(notebook).suffix == ".ipynb":
        if not Path(notebook).is_file():
            raise FileNotFoundError(f"no notebook at {notebook}")
        return [Path(notebook)]
    candidates = [Path(folder)] if folder else [Path("notebooks"),
                                                Path(__file__).resolve().parents[1] / "notebooks"]
    root = next((d for d in candidates if d.is_dir()), None)
    if root is None:
        raise FileNotFoundError(f"no notebooks folder at {', '.join(map(str, candidates))}; "
                                f"pass --notebooks-dir")
    paths = sorted(root.glob("[0-9][0-9]_*.ipynb"))
    if notebook:
        key = notebook.zfill(2) if notebook.isdigit() else notebook.removesuffix(".ipynb")
        paths = [p for p in paths if p.stem == key or p.name[:2] == key]
        if not paths:
            raise FileNotFoundError(f"no notebook {notebook!r} in {root}")
    return paths


def run_exercises(args) -> int:
    """``python -m course_utils exercises [NOTEBOOK]``: print the progress table; 0, or 2 when
    no notebook is found."""
    import sys

    try:
        paths = _find_notebooks(args.notebook, args.notebooks_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [(path.stem, *row) for path in paths for row in grade_notebook(path)]
    width = max([len(r[1]) for r in rows] + [8])
    print(f"{'notebook':24} {'exercise':{width}} status")
    for notebook, name, status, message in rows:
        detail = f": {message}" if status == FAILED else ""
        print(f"{notebook:24} {name:{width}} {status}{detail}")
    passed = sum(r[2] == PASSED for r in rows)
    print(f"\n{passed} of {len(rows)} exercises passed. {HOW_TO_RECORD}")
    return 0
