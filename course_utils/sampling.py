"""Turning next-token distributions into text: greedy, temperature, top-k, top-p, and
generation with a KV cache (notebook 08).

One generation loop, :func:`generate_tokens`, yields tokens one step at a time and keeps a
KV cache the caller may own (the chat of notebook 13 keeps one across turns and streams the
tokens); :func:`generate` builds whole sequences on the same loop, and :func:`rollout`
samples several completions of many prompts at once (the batches of preference pairs and of
GRPO, notebooks 14 and 15, and evaluation).

Top-k sampling: Fan, Lewis & Dauphin (2018), "Hierarchical Neural Story Generation".
Top-p (nucleus) sampling: Holtzman et al. (2020), "The Curious Case of Neural Text
Degeneration".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache
from .datasets import check_ids, pad_right
from .utils import eval_mode

MAX_NEW_TOKENS = 100_000  # the longest generation the command line accepts, in tokens


def check_settings(temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None, max_new_tokens: int | None = None,
                   seed: int | None = None, *, flags: bool = False) -> None:
    """Check sampling settings before any work; the one place they are checked.

    ``temperature`` must be finite and >= 0 (0: greedy), ``top_k`` >= 1 and ``top_p`` in
    ``(0, 1]`` (``None``: no filter), ``max_new_tokens`` (when given) in
    ``[0, MAX_NEW_TOKENS]``, ``seed`` (when given) in ``[0, 2**63)`` (what a
    ``torch.Generator`` takes). Raises one ``ValueError`` naming every bad setting; with
    ``flags=True`` they are named as the command line's flags (``--top-k``)."""
    def name(setting: str) -> str:
        return "--" + setting.replace("_", "-") if flags else setting

    problems = []
    if not 0 <= temperature < math.inf:  # also NaN, which fails every comparison
        problems.append(f"{name('temperature')} must be finite and >= 0 (0: greedy), got "
                        f"{temperature}")
    if top_k is not None and top_k < 1:
        problems.append(f"{name('top_k')} must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        problems.append(f"{name('top_p')} must be in (0, 1], got {top_p}")
    if max_new_tokens is not None and not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        problems.append(f"{name('max_new_tokens')} must be in [0, {MAX_NEW_TOKENS:,}], got "
                        f"{max_new_tokens}")
    if seed is not None and not 0 <= seed < 2**63:
        problems.append(f"{name('seed')} must be in [0, 2**63), got {seed}")
    if problems:
        raise ValueError("; ".join(problems))


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
    Caller-supplied caches are updated in place, so a chat can keep one cache across turns. Each
    step runs the model on the tokens not yet cached (the prompt first, then the token chosen
    last), picks the next token with :func:`sample_next` and yields it. The last yielded token
    is *not* in the cache yet: feed it first next time. The yielded tensor is the one fed at the
    next step, so a caller may overwrite its entries to force tokens of its own in place of the
    model's picks (the calculator loop of notebook 15,
    :func:`course_utils.tools.generate_with_tools`, feeds tool results this way). The loop ends
    after ``max_new_tokens`` tokens, or after a step whose tokens all are in ``stop_ids`` (with
    batch 1: the stop token is yielded, then the loop ends; checking for it reads the tokens
    back from the device at each step, so it is skipped when ``stop_ids`` is empty).

    The model runs in eval mode (no dropout) and without gradients; its mode is put back
    when the loop ends or is closed. The prompt's ids are checked once, here; the tokens the
    loop feeds back (the model's own, or the caller's) are not (on a GPU nothing is read back
    per step unless ``stop_ids`` are given).

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
    """The loop of :func:`generate_tokens`, after its checks (``generate`` uses it too).
    Fresh caches hold just the positions this loop can fill (prompt plus new tokens, at most
    ``block_size``); the model's forward pass refuses a sequence past ``block_size``."""
    if kv_caches is None:
        length = min(model.config.block_size, idx.size(1) + max_new_tokens)
        kv_caches = model.new_kv_caches(idx.size(0), length=length)
    stop = torch.tensor(stop_ids, device=idx.device) if stop_ids else None
    with eval_mode(model):
        for _ in range(max_new_tokens):
            logits, _ = model(idx, kv_caches=kv_caches)
            idx = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            yield idx
            if stop is not None and bool(torch.isin(idx, stop).all()):
                return


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


@dataclass
class Rollout:
    """Sampled completions, ``G`` per prompt, prompt ``i``'s in rows ``i*G`` to ``i*G + G - 1``.

    - ``idx``: ``(N*G, T)`` prompt + completion, right-padded with ``pad_id``;
    - ``mask``: ``(N*G, T)`` bool, True on the completion's tokens up to and including the stop
      token (the tokens GRPO trains on);
    - ``completions``: each completion's token ids (stop token included when it was reached),
      for the reward function.
    """

    idx: torch.Tensor
    mask: torch.Tensor
    completions: list[list[int]]


@torch.no_grad()
def rollout(model: nn.Module, prompts: list[list[int]], group_size: int, max_new_tokens: int,
            stop_id: int, temperature: float = 1.0, top_k: int | None = None,
            top_p: float | None = None, generator: torch.Generator | None = None,
            pad_id: int | None = None) -> Rollout:
    """Sample ``group_size`` completions of each prompt, all in one batch -> :class:`Rollout`.

    ``prompts``: ``N`` lists of token ids, of any lengths. They are padded on the left so
    that they end together (``pad_id``, default ``stop_id``; the KV cache knows each row's
    padding, so attention never sees it and positions count from each row's first real
    token, :class:`course_utils.attention.KVCache`), repeated ``group_size`` times, and
    generated together by :func:`generate_tokens` with the KV cache. Each row ends at its own
    first ``stop_id`` or after ``max_new_tokens`` tokens; the batch stops as soon as every
    row has ended. With ``temperature=0`` every row is what greedy generation gives for that
    prompt alone (tested). GRPO's algebra assumes the samples come from the policy itself, so
    keep ``temperature=1`` and no top-k/top-p when training.

    Raises ``ValueError`` for no prompts, an empty prompt, ``group_size`` or ``max_new_tokens``
    below 1, or a prompt plus ``max_new_tokens`` longer than the model's ``block_size``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("rollout needs at least one prompt and every prompt at least one token")
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size and max_new_tokens must be >= 1, got {group_size} and "
                         f"{max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > model.config.block_size:
        raise ValueError(f"a prompt plus max_new_tokens is {longest + max_new_tokens} tokens, "
                         f"longer than block_size {model.config.block_size}; shorten the "
                         f"prompts or lower max_new_tokens")
    device = next(model.parameters()).device
    pad_id = stop_id if pad_id is None else pad_id
    rows = [p for p in prompts for _ in range(group_size)]  # prompt i's group: rows i*G ...
    batch = torch.tensor([[pad_id] * (longest - len(p)) + p for p in rows], device=device)
    pad = torch.tensor([longest - len(p) for p in rows], device=device)
    caches = model.new_kv_caches(len(rows), length=longest + max_new_tokens, pad=pad)
    steps = generate_tokens(model, batch, max_new_tokens, temperature, top_k, top_p, generator,
                            kv_caches=caches)
    new, stopped = [], torch.zeros(len(rows), dtype=torch.bool, device=device)
    for next_id in steps:  # (N * G, 1) per step
        new.append(next_id)
        stopped |= next_id[:, 0] == stop_id
        if stopped.all():  # every row has stopped (reads one flag back from the device)
            break
    steps.close()  # puts the model back in the mode it was in
    completions = []
    for tokens in torch.cat(new, dim=1).tolist():
        completions.append(tokens[:tokens.index(stop_id) + 1] if stop_id in tokens else tokens)
    full = [p + c for p, c in zip(rows, completions)]
    idx = pad_right(full, pad_id)
    mask = pad_right([[False] * len(p) + [True] * len(c) for p, c in zip(rows, completions)],
                     False, dtype=torch.bool)
    return Rollout(idx.to(device), mask.to(device), completions)
