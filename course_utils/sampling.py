"""Turning next-token distributions into text: greedy, temperature, top-k, top-p, and
generation with a KV cache (notebook 08).

Top-k sampling: Fan, Lewis & Dauphin (2018), "Hierarchical Neural Story Generation".
Top-p (nucleus) sampling: Holtzman et al. (2020), "The Curious Case of Neural Text
Degeneration".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the top-k and/or the top-p nucleus.

    ``logits``: ``(B, vocab_size)``. Top-k keeps the ``k`` largest logits (ties at the k-th
    value are kept too). Top-p keeps the smallest set of most likely tokens whose
    probabilities add up to at least ``p`` (the most likely token is always kept).

    Raises ``ValueError`` for ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.
    """
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach p
        drop_sorted = (cum - F.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Pick the next token id for each row of ``logits`` ``(B, vocab_size)`` -> ``(B, 1)``.

    ``temperature == 0`` means greedy (argmax). Otherwise the logits are divided by the
    temperature, filtered by top-k/top-p, and a token is drawn with ``generator``.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens -> ``(B, T + max_new_tokens)``.

    Without the cache, each step runs the model on the last ``block_size`` tokens. With the
    KV cache, the prompt is processed once and then only the newest token is fed; keys and
    values of earlier positions are reused. The two give the same tokens (tested). Once the
    sequence passes ``block_size``, the learned position embeddings of every cached token
    would shift, so the cache is rebuilt from the last ``block_size`` tokens for each
    further step (exact, but no faster than no cache).

    The model is put in eval mode (no dropout) while generating and then back in the mode
    it was in. Raises ``ValueError`` for an empty prompt or ``max_new_tokens < 0``.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"generate needs a (B, T) prompt of at least one token, got shape "
                         f"{tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    block_size = model.config.block_size
    caches = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits, _ = model(idx[:, -block_size:])
        elif caches is not None and caches[0].length < block_size:
            logits, _ = model(idx[:, -1:], kv_caches=caches)
        else:  # first step, or the window is full: (re)fill the cache from the context
            caches = model.new_kv_caches(idx.size(0))
            logits, _ = model(idx[:, -block_size:], kv_caches=caches)
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_id], dim=1)
    model.train(was_training)
    return idx
