"""Per-token log-probabilities and masked means: the one place every later stage reads them.

SFT's reply loss (notebook 13), DPO and the reward model (14), GRPO (15) and evaluation all
need the same two things: ``log p(token | the tokens before it)`` for each position of a
sequence, and an average over only some positions (the reply, not the prompt or padding).
Both are written here once.

Sequences are token ids ``idx`` ``(B, T)``; a boolean ``mask`` ``(B, T)`` marks the positions
that count (True on a reply's tokens). Position 0 has no context and is never predicted.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def token_logprobs(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the tokens before it: ``(B, T)`` -> ``(B, T)``.

    ``out[b, t] = log p(idx[b, t] | idx[b, :t])`` in nats, read from the logits the model
    computes at position ``t - 1`` (the shift by one of next-token prediction). Position 0 has
    no context, so ``out[:, 0]`` is 0. ``model(idx)`` must return ``(logits, loss)`` with
    logits ``(B, T, vocab_size)``, as :class:`course_utils.model.GPT` does. Computed in float32
    whatever the logits' dtype. Gradients flow through the model unless the caller runs this
    under ``torch.no_grad()``.
    """
    logits, _ = model(idx)
    # cross_entropy(logits, target) = -log softmax(logits)[target]; logits at t predict t + 1
    logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), idx[:, 1:], reduction="none")
    return F.pad(logp, (1, 0))  # (B, T): a zero for position 0


def check_mask(idx: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``mask`` is a bool tensor shaped like ``idx`` that leaves
    position 0 out (it has no context to be predicted from)."""
    if mask.shape != idx.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of the shape of idx {tuple(idx.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}; use mask.bool()")
    if mask[:, 0].any():
        raise ValueError("mask[:, 0] is True, but the first token has no context to be predicted "
                         "from; a reply always follows at least one prompt token")


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The sum of ``values`` where ``mask`` is True (over ``dim``, or everything). Masked-out
    entries contribute exactly nothing, even when they hold NaN or inf."""
    kept = torch.where(mask, values, 0.0)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The mean of ``values`` over the entries where ``mask`` is True: along ``dim`` (one mean
    per row for ``dim=1``) or over everything (``dim=None``). A row with no True entry has
    mean 0, not 0 / 0."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def sequence_logprobs(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of the reply in each sequence: ``(B, T), (B, T)`` -> ``(B,)`` nats.

    The sum of ``log p(idx[b, t] | idx[b, :t])`` over the positions ``t`` where ``mask[b, t]``
    is True (:func:`token_logprobs`). Masked-out positions (prompt, padding) contribute
    exactly nothing. This is ``log pi(y | x)`` of the DPO paper (Rafailov et al., 2023).

    Raises ``ValueError`` for a bad ``mask`` (:func:`check_mask`).
    """
    check_mask(idx, mask)
    return masked_sum(token_logprobs(model, idx), mask, dim=1)


def target_logprobs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same in the training form ``(x, y)`` (each ``(B, T)``, ``y`` the next tokens, -1
    where there is no target): ``out[b, t] = log p(y[b, t] | x[b, :t + 1])``, 0 where
    ``y`` is -1. One forward pass over ``x``."""
    logits, _ = model(x)
    logp = -F.cross_entropy(logits.float().transpose(1, 2), y.clamp(min=0), reduction="none")
    return torch.where(y != -1, logp, 0.0)


@torch.no_grad()
def target_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """``(total, count)``: the summed negative log-likelihood (nats) of the targets of
    ``(x, y)`` that are not -1, and how many there are, without gradients. Add these over
    batches and divide to get a mean loss per token over a whole set (SFT's reply loss): the
    mean the model's own loss (``GPT.forward``'s ``ignore_index=-1``) takes per batch."""
    return -target_logprobs(model, x, y).sum().item(), int((y != -1).sum())
