"""Measuring a language model (evaluation notebook): bits per byte, and multiple choice by
log-likelihood.

- :func:`bits_per_byte`: the model's negative log-likelihood of a held-out text, in bits, per
  byte of the text's UTF-8 encoding. Loss per *token* depends on the tokenizer (a character
  model predicts ~4 times as many, easier, tokens as a BPE model of the same text); per byte,
  a character model, a BPE model and SmolLM2's 49k vocabulary are on one scale. Long texts are
  scored in windows of ``block_size`` tokens that overlap, so every token after the first
  window keeps at least ``block_size - stride`` tokens of context (the sliding-window
  evaluation of Hugging Face's perplexity guide; bits per byte as reported by Gao et al., 2020,
  "The Pile: An 800GB Dataset of Diverse Text for Language Modeling").
- :func:`score_options`: how likely each answer option is after a context: the sum of the
  option's token log-probabilities, or their mean (length-normalised, so long options are not
  punished for their length). The context is computed once, with the KV cache, and its keys
  and values are shared by every option, which runs as one batch. Multiple-choice benchmarks
  (MMLU, :mod:`course_utils.mmlu`) are scored this way without generating any text, in two
  forms: "cloze" (score each answer's text) and "letter" (show the lettered options, score
  ``" A"``, ``" B"`` ...), as compared by Gu et al., 2024, "OLMES: A Standard for Language
  Model Evaluations".

The model API is the course's GPT: ``model(idx)`` returns ``(logits, loss)`` with logits
``(B, T, vocab_size)``, and ``model(idx, kv_caches=caches)`` continues after cached positions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache
from .logprobs import token_logprobs
from .utils import progress_bar


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _token_bytes(tokenizer, token: int) -> int:
    if hasattr(tokenizer, "decode_bytes"):  # byte-level BPE: a token may be part of a character
        return len(tokenizer.decode_bytes([token]))
    return len(tokenizer.decode([token]).encode("utf-8"))


@dataclass(frozen=True)
class TextLoss:
    """What :func:`text_loss` measured: ``nats``, the summed negative log-likelihood of the
    ``tokens`` scored, which hold ``n_bytes`` bytes of the text's UTF-8 encoding."""

    nats: float
    tokens: int
    n_bytes: int

    @property
    def bits_per_token(self) -> float:
        return self.nats / math.log(2) / self.tokens

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / self.n_bytes


@torch.no_grad()
def text_loss(model: nn.Module, tokenizer, text: str, stride: int | None = None,
              bos_id: int | None = None) -> TextLoss:
    """Negative log-likelihood of ``text`` under ``model`` -> :class:`TextLoss`.

    The text is encoded as plain text (``tokenizer.encode_ordinary``). Its first token has no
    context: with ``bos_id`` (e.g. a ``<|endoftext|>`` token the model was trained with) it is
    predicted from that token and every byte counts; without, it is context only and its
    bytes are left out of ``n_bytes``. Windows of ``block_size`` tokens start every ``stride``
    tokens (default ``block_size // 2``); each window scores only the tokens the previous one
    did not, so each token is scored once, and every token after the first window has at least
    ``block_size - stride`` tokens of context. The model's mode is restored afterwards.

    Raises ``ValueError`` for a text of fewer than two tokens (one with ``bos_id``), a stride
    outside ``[1, block_size - 1]``, or a tokenizer that does not give the text back from its
    tokens (bytes per token would be wrong).
    """
    ids = tokenizer.encode_ordinary(text)
    if tokenizer.decode(ids) != text:
        raise ValueError("the tokenizer does not decode the text back to itself (is it a word "
                         "tokenizer?): bits per byte needs a lossless tokenizer")
    n_bytes = len(text.encode("utf-8"))
    if bos_id is None:
        if len(ids) < 2:
            raise ValueError("the text needs at least two tokens (or give bos_id)")
        n_bytes -= _token_bytes(tokenizer, ids[0])  # the first token is context only
    else:
        if not ids:
            raise ValueError("the text is empty")
        ids = [bos_id] + ids
    block_size = model.config.block_size
    stride = block_size // 2 if stride is None else stride
    if not 1 <= stride <= max(1, block_size - 1):
        raise ValueError(f"stride must be in [1, block_size - 1 = {block_size - 1}], got "
                         f"{stride}")
    was_training = model.training
    model.eval()
    device, nats, scored_to = _device(model), 0.0, 1  # positions < scored_to are done
    try:
        for begin in range(0, len(ids), stride):
            end = min(begin + block_size, len(ids))
            idx = torch.tensor([ids[begin:end]], device=device)
            logp = token_logprobs(model, idx)[0]  # (T,), logp[t] = log p(idx[t] | idx[:t])
            nats -= logp[scored_to - begin:].sum().item()
            scored_to = end
            if end == len(ids):
                break
    finally:
        model.train(was_training)
    return TextLoss(nats, len(ids) - 1, n_bytes)


def bits_per_byte(model: nn.Module, tokenizer, text: str, stride: int | None = None,
                  bos_id: int | None = None) -> float:
    """Bits per byte of ``text``: summed negative log-likelihood (nats) / (ln 2 * bytes).

    ``nats / ln 2`` is the number of bits an arithmetic coder driven by the model would need
    for the text, so bits per byte compares models across tokenizers (8 would be no
    compression of ASCII text at all). See :func:`text_loss` for the windows, ``stride``,
    ``bos_id`` and the errors.
    """
    return text_loss(model, tokenizer, text, stride, bos_id).bits_per_byte


# ------------------------------------------------------------------------- multiple choice
@dataclass(frozen=True)
class OptionScores:
    """Per option: ``logprobs``, the sum of its tokens' log-probabilities given the context
    (nats, <= 0), and ``n_tokens``, its length in tokens."""

    logprobs: tuple[float, ...]
    n_tokens: tuple[int, ...]

    def scores(self, normalize: str = "sum") -> list[float]:
        """``"sum"``: the summed log-probabilities; ``"mean"``: divided by each option's token
        count (length-normalised). Raises ``ValueError`` for another value."""
        if normalize == "sum":
            return list(self.logprobs)
        if normalize == "mean":
            return [lp / n for lp, n in zip(self.logprobs, self.n_tokens)]
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")

    def choice(self, normalize: str = "sum") -> int:
        """The index of the best-scoring option (the first one on a tie)."""
        scores = self.scores(normalize)
        return scores.index(max(scores))


class PrefixCache:
    """The keys and values of the last context :func:`score_options` ran, kept so that the
    next context computes only what follows the tokens the two share. Questions of one MMLU
    subject share its header and few-shot examples, often most of a 5-shot prompt, so scoring
    them in a row with one ``PrefixCache`` saves most of the work. Results are unchanged
    (tested)."""

    def __init__(self):
        self.tokens: list[int] = []
        self.caches: list[KVCache] | None = None

    def shared(self, context: Sequence[int]) -> int:
        """How many leading tokens ``context`` shares with the cached one."""
        n = 0
        for a, b in zip(self.tokens, context):
            if a != b:
                break
            n += 1
        return n


def _copy_prefix(source: list[KVCache], target: list[KVCache], length: int) -> None:
    """Copy the first ``length`` cached positions of every layer (rows broadcast from 1)."""
    for src, dst in zip(source, target):
        dst.k[:, :, :length] = src.k[:, :, :length]
        dst.v[:, :, :length] = src.v[:, :, :length]
        dst.length = length


@torch.no_grad()
def score_options(model: nn.Module, context: Sequence[int], options: Sequence[Sequence[int]],
                  prefix: PrefixCache | None = None) -> OptionScores:
    """Log-likelihood of each option's tokens after the context's -> :class:`OptionScores`.

    The context runs once and fills a KV cache; its keys and values are copied into a cache of
    ``len(options)`` rows, and all options (but their last token, which is only predicted) run
    as one right-padded batch against it. Padding sits after an option's real tokens, so under
    the causal mask it changes nothing they see. With a :class:`PrefixCache`, the context's
    leading tokens that the previous context shared are not computed again. Equal to scoring
    ``context + option`` one at a time with a full forward pass (tested), and to Hugging Face's
    ``LlamaForCausalLM`` on SmolLM2 (tested). The model's mode is restored afterwards.

    Raises ``ValueError`` for an empty context, no options, an empty option, or a context
    plus option longer than ``block_size``.
    """
    if not context or not options or any(len(o) == 0 for o in options):
        raise ValueError("score_options needs a non-empty context and non-empty options")
    longest = len(context) + max(len(o) for o in options)
    if longest > model.config.block_size:
        raise ValueError(f"context plus option is {longest} tokens, longer than block_size "
                         f"{model.config.block_size}: load the model with a larger block_size "
                         f"or shorten the prompt (fewer examples)")
    device, n, L = _device(model), len(options), len(context)
    was_training = model.training
    model.eval()
    try:
        context_caches = model.new_kv_caches(1, length=L)
        reuse = 0
        if prefix is not None and prefix.caches is not None:
            reuse = min(prefix.shared(context), L - 1)  # run >= 1 token: its logits are needed
            _copy_prefix(prefix.caches, context_caches, reuse)
        logits, _ = model(torch.tensor([list(context[reuse:])], device=device),
                          kv_caches=context_caches)
        if prefix is not None:
            prefix.tokens, prefix.caches = list(context), context_caches
        first = F.log_softmax(logits[0, -1].float(), dim=-1)  # predicts each option's 1st token
        totals = [first[o[0]].item() for o in options]
        rest = max(len(o) for o in options) - 1  # tokens each option feeds in, at most
        if rest:
            caches = model.new_kv_caches(n, length=L + rest)
            _copy_prefix(context_caches, caches, L)  # the context's keys and values, every row
            inputs = torch.zeros(n, rest, dtype=torch.long)  # id 0 pads: never read back
            targets = torch.zeros(n, rest, dtype=torch.long)
            mask = torch.zeros(n, rest, dtype=torch.bool)
            for i, o in enumerate(options):
                inputs[i, :len(o) - 1] = torch.tensor(o[:-1])
                targets[i, :len(o) - 1] = torch.tensor(o[1:])
                mask[i, :len(o) - 1] = True
            logits, _ = model(inputs.to(device), kv_caches=caches)  # (n, rest, vocab_size)
            logp = -F.cross_entropy(logits.float().transpose(1, 2), targets.to(device),
                                    reduction="none")  # (n, rest)
            later = torch.where(mask.to(device), logp, 0.0).sum(dim=1).tolist()
            totals = [t + x for t, x in zip(totals, later)]
    finally:
        model.train(was_training)
    return OptionScores(tuple(totals), tuple(len(o) for o in options))


@dataclass(frozen=True)
class MultipleChoice:
    """A question as text: the ``context`` (the prompt, ending right before the answer), the
    ``options`` (each as the text that would follow the context, usually with a leading
    space: ``" A"`` or ``" Paris"``) and the index of the right one, ``answer``."""

    context: str
    options: tuple[str, ...]
    answer: int


@dataclass
class ChoiceResults:
    """What :func:`evaluate_choices` measured: per item its :class:`OptionScores` and right
    ``answers``, and the ``seconds`` it took in all (wall-clock)."""

    scores: list[OptionScores]
    answers: list[int]
    seconds: float

    def correct(self, normalize: str = "sum") -> list[bool]:
        """Per item: did the best option (by ``normalize``, see :meth:`OptionScores.scores`)
        equal the answer?"""
        return [s.choice(normalize) == a for s, a in zip(self.scores, self.answers)]

    def accuracy(self, normalize: str = "sum") -> float:
        right = self.correct(normalize)
        return sum(right) / len(right)


def evaluate_choices(model: nn.Module, tokenizer, items: Sequence[MultipleChoice],
                     progress: bool = True, share_prefix: bool = True) -> ChoiceResults:
    """Score every item's options (:func:`score_options`) -> :class:`ChoiceResults`.

    With ``share_prefix`` one :class:`PrefixCache` goes from item to item, so consecutive
    items that start alike (one subject's few-shot prompt) compute their shared start once;
    keep the items of a subject together (as :func:`course_utils.mmlu.load_mmlu` and
    ``stratified_sample`` do) to profit.

    The context and each option are encoded apart, as plain text (``encode_ordinary``), so all
    options share the context's tokens; with the option's leading space this is the tokens of
    the whole text wherever the tokenizer's pre-tokenization splits before a space (GPT-2's
    and SmolLM2's do). Raises the errors of :func:`score_options`, and ``ValueError`` for no
    items.
    """
    if not items:
        raise ValueError("evaluate_choices needs at least one item")
    start = time.perf_counter()
    scores, prefix = [], PrefixCache() if share_prefix else None
    for item in progress_bar(items, desc="questions", disable=not progress):
        context = tokenizer.encode_ordinary(item.context)
        options = [tokenizer.encode_ordinary(o) for o in item.options]
        scores.append(score_options(model, context, options, prefix))
    return ChoiceResults(scores, [item.answer for item in items], time.perf_counter() - start)
