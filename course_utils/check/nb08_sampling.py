"""The checks of notebook 08 (sampling): ``top_k_logits``, ``top_p_logits``, ``kv_attention_step``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb08_sampling.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _tensor


def _kept_counts(filtered: torch.Tensor) -> list[int]:
    return torch.isfinite(filtered).sum(dim=-1).tolist()


def course_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The course's top-k filter in the exercise's signature: ``logits`` ``(B, vocab_size)``
    with all but each row's ``k`` largest set to ``-inf``, exactly as the course's sampler
    (:func:`course_utils.sampling.filter_logits`) filters them."""
    from ..sampling import filter_logits

    return filter_logits(logits, top_k=k)


def course_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The course's top-p filter in the exercise's signature: ``logits`` ``(B, vocab_size)``
    with every logit outside each row's nucleus set to ``-inf``, exactly as
    :func:`course_utils.sampling.filter_logits` does."""
    from ..sampling import filter_logits

    return filter_logits(logits, top_p=p)


@_exercise("08", (
    "Each row needs its own k-th largest logit; everything below it becomes -inf.",
    "kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1); "
    "return logits.masked_fill(logits < kth, float('-inf'))",
), stand_in=course_top_k)
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
), stand_in=course_top_p)
def top_p_logits(fn):
    """``top_p_logits(logits, p)``: ``(B, vocab_size)``, outside each row's nucleus set to -inf."""
    from ..sampling import filter_logits

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
