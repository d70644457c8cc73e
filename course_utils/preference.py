"""Tuning a chat model with preferences: a reward model and DPO (notebook 13).

The data are pairs of replies to one prompt, one ``chosen`` and one ``rejected`` by a judge.
Two ways to learn from them:

- A reward model (Ouyang et al., 2022, "Training language models to follow instructions with
  human feedback", InstructGPT): the SFT model with a scalar head, trained with the
  Bradley-Terry loss so that the chosen reply scores higher than the rejected one.
- Direct Preference Optimization (Rafailov et al., 2023, "Direct Preference Optimization: Your
  Language Model is Secretly a Reward Model"): no reward model and no sampling; the policy is
  trained directly on the pairs, against a frozen copy of the SFT model (the reference).

Sequences are token ids ``idx`` ``(B, T)`` with a boolean ``mask`` ``(B, T)`` that is True on
the reply's tokens, the same mask that restricts the SFT loss to the assistant's tokens.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def token_logprobs(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token given the tokens before it: ``(B, T)`` -> ``(B, T)``.

    ``out[b, t] = log p(idx[b, t] | idx[b, :t])`` in nats, read from the logits the model
    computes at position ``t - 1`` (the shift by one of next-token prediction). Position 0 has
    no context, so ``out[:, 0]`` is 0. ``model(idx)`` must return ``(logits, loss)`` with
    logits ``(B, T, vocab_size)``, as :class:`course_utils.model.GPT` does. Gradients flow
    through the model unless the caller runs this under ``torch.no_grad()``.
    """
    logits, _ = model(idx)
    # cross_entropy(logits, target) = -log softmax(logits)[target]; logits at t predict t + 1
    logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), idx[:, 1:], reduction="none")
    return F.pad(logp, (1, 0))  # (B, T): a zero for position 0


def _check_mask(idx: torch.Tensor, mask: torch.Tensor) -> None:
    if mask.shape != idx.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of the shape of idx {tuple(idx.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}; use mask.bool()")
    if mask[:, 0].any():
        raise ValueError("mask[:, 0] is True, but the first token has no context to be predicted "
                         "from; a reply always follows at least one prompt token")


def sequence_logprobs(model: nn.Module, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of the reply in each sequence: ``(B, T), (B, T)`` -> ``(B,)`` nats.

    The sum of ``log p(idx[b, t] | idx[b, :t])`` over the positions ``t`` where ``mask[b, t]``
    is True (see :func:`token_logprobs` for the shift by one). Masked-out positions (prompt,
    padding) contribute exactly nothing. This is ``log pi(y | x)`` of the DPO paper.

    Raises ``ValueError`` when ``mask`` is not a bool tensor shaped like ``idx``, or when it
    marks position 0, which has no context.
    """
    _check_mask(idx, mask)
    logp = token_logprobs(model, idx)
    return torch.where(mask, logp, 0.0).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float = 0.1):
    """The DPO loss (Rafailov et al., 2023, eq. 7) -> ``(loss, chosen_rewards, rejected_rewards)``.

    Inputs are ``(B,)`` sequence log-probabilities (:func:`sequence_logprobs`) of the chosen
    and rejected replies under the policy and under the frozen reference model. The implicit
    reward of a reply is ``beta * (log pi(y|x) - log pi_ref(y|x))``; the loss is the mean over
    the batch of ``-log sigmoid(reward_chosen - reward_rejected)``, the Bradley-Terry loss of
    the implicit rewards. ``beta`` sets how far the policy may move from the reference (small:
    far). The rewards are returned detached, ``(B,)`` each, for logging.

    Raises ``ValueError`` for ``beta <= 0``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0 (typically 0.1 to 0.5), got {beta}")
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, chosen_rewards.detach(), rejected_rewards.detach()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: mean of ``-log sigmoid(r_chosen - r_rejected)`` over ``(B,)`` scores.

    Under the Bradley-Terry model (Bradley & Terry, 1952) the chosen reply wins with
    probability ``sigmoid(r_chosen - r_rejected)``; this is its negative log-likelihood, as in
    InstructGPT (Ouyang et al., 2022, eq. 1). Only differences of scores matter.
    """
    return -F.logsigmoid(r_chosen - r_rejected).mean()


class RewardModel(nn.Module):
    """A copy of a GPT whose LM head is replaced by a scalar head ``nn.Linear(n_embd, 1)``.

    ``forward(idx (B, T), mask (B, T) bool) -> (B,)`` scores: the head reads the final hidden
    state at the last position where ``mask`` is True (the reply's last token, which has seen
    the whole prompt and reply). Tokens after it (padding) do not change the score. The given
    model is not changed; the copy starts from its weights (InstructGPT starts the reward model
    from the SFT model).

    Raises ``ValueError`` for a mask without a True position in some row.
    """

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = copy.deepcopy(gpt)
        self.gpt.lm_head = nn.Linear(gpt.config.n_embd, 1)  # also unties it from wte

    def forward(self, idx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not mask.any(dim=1).all():
            raise ValueError("every row of mask needs at least one True position (the reply)")
        scores, _ = self.gpt(idx)  # (B, T, 1)
        positions = torch.arange(idx.size(1), device=idx.device)
        last = torch.where(mask, positions, -1).amax(dim=1)  # (B,) last reply position
        return scores[torch.arange(idx.size(0), device=idx.device), last, 0]


def frozen_copy(model: nn.Module) -> nn.Module:
    """A reference model: a deep copy of ``model`` in eval mode that takes no gradients.

    Its parameters have ``requires_grad=False`` and share no storage with ``model``, so
    training the policy leaves the reference where it started, as DPO and GRPO need.
    """
    ref = copy.deepcopy(model).eval()
    ref.requires_grad_(False)
    return ref
