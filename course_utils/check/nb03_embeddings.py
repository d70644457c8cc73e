"""The checks of notebook 03 (embeddings): ``embed``, ``bigram_probs``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb03_embeddings.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _tensor


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
