"""Solutions to the exercises of notebook 08 (sampling): top-k (Fan et al., 2018) and top-p
(Holtzman et al., 2020) filtering of a batch, and one attention step with a KV cache."""

import torch
import torch.nn.functional as F


def top_k_logits(logits, k):
    """``logits`` ``(B, vocab_size)``: keep each row's ``k`` largest logits, set the others to
    ``-inf``."""
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1): each row's k-th largest
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_logits(logits, p):
    """``logits`` ``(B, vocab_size)``: keep, per row, the smallest set of most likely tokens
    whose probabilities add up to at least ``p``; set the others to ``-inf``."""
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the tokens before
    drop_sorted = before >= p  # the tokens before already reach p: not needed
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def kv_attention_step(q, k_new, v_new, k_cache, v_cache):
    """Attention for one new token. ``q, k_new, v_new``: ``(B, n_head, 1, hs)``; the cache:
    ``(B, n_head, T_past, hs)``. Returns ``(y, k_cache, v_cache)``: ``y`` ``(B, n_head, 1, hs)``
    and the caches with the new key and value appended (``T_past + 1`` positions)."""
    k_cache = torch.cat([k_cache, k_new], dim=2)
    v_cache = torch.cat([v_cache, v_new], dim=2)
    scores = q @ k_cache.transpose(-2, -1) / q.shape[-1] ** 0.5  # (B, n_head, 1, T_past + 1)
    y = torch.softmax(scores, dim=-1) @ v_cache  # the newest token may see every position
    return y, k_cache, v_cache
