"""Solutions to the exercises of notebook 03 (embeddings): the GPT's input vectors and the
bigram model by counting."""

import torch


def embed(idx, wte, wpe):
    """Token ids ``idx`` ``(B, T)`` -> ``(B, T, C)``: row ``idx[b, t]`` of the token table
    ``wte`` ``(vocab_size, C)`` plus row ``t`` of the position table ``wpe``
    ``(block_size, C)``, for ``T <= block_size``."""
    T = idx.shape[1]
    return wte[idx] + wpe[torch.arange(T)]  # (B, T, C) + (T, C): broadcast over the batch


def bigram_probs(data, vocab_size):
    """``(vocab_size, vocab_size)`` float32 matrix: row ``i`` is the probability of each token
    following token ``i`` in ``data`` (1-D int64), counted with 1 added to every count."""
    counts = torch.zeros(vocab_size, vocab_size)
    counts.index_put_((data[:-1], data[1:]), torch.ones(len(data) - 1), accumulate=True)
    counts += 1  # add-one smoothing: no pair gets probability 0
    return counts / counts.sum(dim=1, keepdim=True)
