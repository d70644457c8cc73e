"""Turning next-token distributions into text: greedy, temperature, top-k, top-p, and
generation with a KV cache (notebook 08).

One generation loop, :func:`generate_tokens`, yields tokens one step at a time and keeps a
KV cache the caller may own (the chat of notebook 12 keeps one across turns and streams the
tokens); :func:`generate` builds whole sequences on the same loop.

Top-k sampling: Fan, Lewis & Dauphin (2018), "Hierarchical Neural Story Generation".
Top-p (nucleus) sampling: Holtzman et al. (2020), "The Curious Case of Neural Text
Degeneration".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from .attention import KVCache
from .model import check_ids


def check_settings(temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """Raise ``ValueError`` for ``temperature < 0``, ``top_k < 1`` or ``top_p`` outside
    ``(0, 1]``; ``None`` means no top-k/top-p filter."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Set to ``-inf`` every logit outside the top-k and/or the top-p nucleus.

    ``logits``: ``(B, vocab_size)``. Top-k keeps the ``k`` largest logits (ties at the k-th
    value are kept too). Top-p keeps the smallest set of most likely tokens whose
    probabilities add up to at least ``p`` (the most likely token is always kept).

    Raises ``ValueError`` for ``top_k < 1`` or ``top_p`` outside ``(0, 1]``.
    """
    check_settings(top_k=top_k, top_p=top_p)
    if top_k is not None:
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
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
    check_settings(temperature)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def _check_inputs(model, idx: torch.Tensor, max_new_tokens: int, temperature: float,
                  top_k: int | None, top_p: float | None) -> None:
    """The errors of :func:`generate_tokens` and :func:`generate`, raised before any work.
    The prompt's ids are read back from the device here, once."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"a prompt must be a (B, T) tensor of at least one token, got shape "
                         f"{tuple(idx.shape)}")
    check_ids(idx, model.config.vocab_size)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    check_settings(temperature, top_k, top_p)


def generate_tokens(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None,
                    generator: torch.Generator | None = None,
                    kv_caches: list[KVCache] | None = None,
                    stop_ids: Iterable[int] = ()) -> Iterator[torch.Tensor]:
    """The generation loop: yield the next token ids ``(B, 1)``, one step at a time.

    ``idx`` ``(B, T)`` holds the tokens that are not yet in ``kv_caches``: all of them when
    ``kv_caches`` is ``None`` (fresh caches are made, see ``model.new_kv_caches``).
    Caller-supplied caches are updated in place, so a chat can keep one cache across turns.
    Each step runs the model on the tokens not yet cached (the prompt first, then the token
    chosen last), picks the next token with :func:`sample_next` and yields it. The last
    yielded token is *not* in the cache yet: feed it first next time. The loop ends after
    ``max_new_tokens`` tokens, or after a step whose tokens all are in ``stop_ids`` (with
    batch 1: the stop token is yielded, then the loop ends; checking for it reads the
    tokens back from the device at each step, so it is skipped when ``stop_ids`` is empty).

    The model runs in eval mode (no dropout) and without gradients; its mode is put back
    when the loop ends or is closed. The prompt's ids are checked once, here; the tokens the
    loop feeds back are the model's own (on a GPU nothing is read back per step unless
    ``stop_ids`` are given).

    Raises ``ValueError`` at once for an empty or out-of-vocabulary prompt or a bad setting,
    and during the loop when the cache would grow past ``block_size`` (the caller decides
    which tokens to drop, and rebuilds the cache).
    """
    _check_inputs(model, idx, max_new_tokens, temperature, top_k, top_p)
    return _generation_loop(model, idx, max_new_tokens, temperature, top_k, top_p, generator,
                            kv_caches, tuple(stop_ids))


@torch.no_grad()
def _generation_loop(model, idx, max_new_tokens, temperature, top_k, top_p, generator,
                     kv_caches, stop_ids) -> Iterator[torch.Tensor]:
    """The loop of :func:`generate_tokens`, after its checks (``generate`` uses it too)."""
    block_size = model.config.block_size
    caches = model.new_kv_caches(idx.size(0)) if kv_caches is None else kv_caches
    stop = torch.tensor(stop_ids, device=idx.device) if stop_ids else None
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            if caches[0].length + idx.size(1) > block_size:
                raise ValueError(
                    f"the KV cache holds {caches[0].length} tokens and {idx.size(1)} more do "
                    f"not fit in block_size {block_size}: drop tokens from the start of the "
                    f"context and rebuild the cache from the rest")
            logits, _ = model(idx, kv_caches=caches)
            idx = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            yield idx
            if stop is not None and bool(torch.isin(idx, stop).all()):
                return
    finally:
        model.train(was_training)


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` tokens -> ``(B, T + max_new_tokens)``.

    Built on the loop of :func:`generate_tokens`. With the KV cache (``use_cache=True``),
    the prompt is processed once and then only the newest token is fed; keys and values of
    earlier positions are reused. Without it, each step runs the model on the last
    ``block_size`` tokens afresh (a cache that lives for one token). The two give the same
    tokens (tested). Once the sequence passes ``block_size``, the positions of every cached
    token would shift (and the oldest must be dropped), so the cache is rebuilt from the
    last ``block_size`` tokens for each further step: exact, but no faster than no cache.

    The model is put in eval mode (no dropout) while generating and then back in the mode
    it was in. The prompt's ids are checked once, here, not at every step. Raises
    ``ValueError`` for an empty prompt, an id outside the vocabulary, ``max_new_tokens < 0``
    or a bad sampling setting.
    """
    _check_inputs(model, idx, max_new_tokens, temperature, top_k, top_p)
    block_size = model.config.block_size
    out = idx
    while out.size(1) < idx.size(1) + max_new_tokens:
        context = out[:, -block_size:]
        # a fresh cache filled from `context` has room for block_size - T + 1 new tokens
        room = block_size - context.size(1) + 1 if use_cache else 1
        steps = min(room, idx.size(1) + max_new_tokens - out.size(1))
        new = _generation_loop(model, context, steps, temperature, top_k, top_p, generator,
                               None, ())
        out = torch.cat([out, *new], dim=1)
    return out
