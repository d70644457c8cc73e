"""The checks of notebook 14 (preference tuning): ``reply_logprobs``, ``dpo_loss``,
``pick_pair``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb14_preference_tuning.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .core import Wrong, _exercise, _number, _tensor


def _reply_cases():
    """``(logits, idx, mask)`` cases for ``reply_logprobs``: random logits, reply masks that
    start after a prompt and end before some padding."""
    g = torch.Generator().manual_seed(13)
    for B, T, V, starts, ends in ((2, 7, 5, (2, 3), (5, 7)), (3, 6, 9, (1, 4, 2), (4, 6, 3)),
                                  (1, 5, 4, (2,), (5,))):
        logits = torch.randn(B, T, V, generator=g) * 2
        idx = torch.randint(0, V, (B, T), generator=g)
        pos = torch.arange(T)
        mask = (pos >= torch.tensor(starts)[:, None]) & (pos < torch.tensor(ends)[:, None])
        yield logits, idx, mask


def course_dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """The course's DPO loss in the exercise's signature: the scalar loss of
    :func:`course_utils.preference.dpo_loss` (which also returns the rewards)."""
    from ..preference import dpo_loss

    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)[0]


@_exercise("14", (
    "Token t of a row is predicted by the logits at position t - 1: take log_softmax of "
    "logits[:, :-1], pick the entry of each next token idx[:, 1:] (gather), and add up those "
    "whose position is in the reply (mask[:, 1:]).",
    "logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, idx[:, 1:, None])[..., 0]; "
    "return (logp * mask[:, 1:]).sum(dim=1)",
))
def reply_logprobs(fn):
    """``reply_logprobs(logits, idx, mask) -> (B,)``: log-probability of each row's reply."""
    from ..logprobs import token_logprobs

    for logits, idx, mask in _reply_cases():
        B, T, V = logits.shape
        call = f"reply_logprobs(logits {(B, T, V)}, idx, mask)"
        got = fn(logits.clone(), idx.clone(), mask.clone())
        # the finished piece reads the logits from a model: give it one that returns these
        per_token = token_logprobs(lambda _, lg=logits: (lg, None), idx)  # (B, T)
        expected = torch.where(mask, per_token, 0.0).sum(1)
        logp = torch.log_softmax(logits, dim=-1)
        unshifted = logp.gather(2, idx[..., None])[..., 0]  # logits at t scored against t
        shifted = F.pad(logp[:, :-1].gather(2, idx[:, 1:, None])[..., 0], (1, 0))
        probs = F.pad(logp[:, :-1].exp().gather(2, idx[:, 1:, None])[..., 0], (1, 0))
        _tensor(got, expected, call, "the log-probability of the reply", [
            (torch.where(mask, unshifted, 0.0).sum(1),
             f"{call}: not shifted: token t is predicted by the logits at t - 1, so score "
             f"idx[:, 1:] against logits[:, :-1]"),
            (shifted.sum(1), f"{call}: the prompt and padding were counted: add up only the "
                             f"positions where mask is True"),
            (torch.where(mask, shifted, 0.0).sum(1) / mask.sum(1),
             f"{call}: that is the mean per token; DPO uses the sum over the reply's tokens"),
            (torch.where(mask, probs, 0.0).sum(1),
             f"{call}: those are probabilities; add up log-probabilities (log_softmax)"),
            (torch.where(mask, F.pad(logits[:, :-1].gather(2, idx[:, 1:, None])[..., 0],
                                     (1, 0)), 0.0).sum(1),
             f"{call}: those are raw logits; take log_softmax first (normalise over the "
             f"vocabulary)"),
        ], atol=1e-5, rtol=1e-5)


@_exercise("14", (
    "Each reply's implicit reward is beta * (its log-probability under the policy minus "
    "under the reference); the loss of a pair is -log sigmoid(reward_chosen - "
    "reward_rejected), and the batch's loss their mean. F.logsigmoid is the stable way.",
    "margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected); "
    "return -F.logsigmoid(beta * margin).mean()",
), stand_in=course_dpo_loss)
def dpo_loss(fn):
    """``dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)``."""
    from ..preference import dpo_loss as reference

    g = torch.Generator().manual_seed(31)
    cases = [[torch.randn(B, generator=g, dtype=torch.float64) * scale - 20 for _ in range(4)]
             + [beta] for B, beta, scale in ((4, 0.1, 5.0), (3, 0.5, 2.0), (2, 2.0, 30.0))]
    far = torch.tensor([-10.0, -400.0])  # margins of +-390: a naive log(sigmoid) gives -inf
    cases.append([far, far.flip(0), torch.full((2,), -50.0), torch.full((2,), -50.0), 0.5])
    for pc, pr, rc, rr, beta in cases:
        B = len(pc)
        call = f"dpo_loss(4 x tensor ({B},), beta={beta})"
        got = fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
        if isinstance(got, tuple):  # the course's returns the rewards too; the task does not
            got = got[0]
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"{call}: returned shape {tuple(got.shape)}; return one number, the "
                        f"mean over the batch")
        if isinstance(got, (torch.Tensor, float)) and not math.isfinite(float(got)):
            raise Wrong(f"{call} returned {float(got)}; use F.logsigmoid(x), which stays "
                        f"finite where log(sigmoid(x)) underflows to log(0)")
        expected = reference(pc, pr, rc, rr, beta)[0].item()
        margin = (pc - rc) - (pr - rr)
        _number(got, expected, call, [
            ((-F.logsigmoid(margin)).mean().item(),
             f"{call}: beta is missing: the margin is multiplied by beta inside the sigmoid"),
            ((-beta * F.logsigmoid(margin)).mean().item(),
             f"{call}: beta multiplies the margin inside the sigmoid, not the loss"),
            ((-F.logsigmoid(-beta * margin)).mean().item(),
             f"{call}: the sign is flipped: the chosen reply's reward comes first, "
             f"sigmoid(reward_chosen - reward_rejected)"),
            ((-F.logsigmoid(beta * (pc - pr))).mean().item(),
             f"{call}: the reference is missing: each reward is log pi - log pi_ref"),
            ((-F.logsigmoid(beta * margin)).sum().item(),
             f"{call}: that is the sum over the pairs; return the mean"),
            ((-torch.sigmoid(beta * margin)).mean().item(),
             f"{call}: take the log of the sigmoid (F.logsigmoid)"),
        ], rel=1e-6)


def _pairs_by(rewards, lengths, stopped, *, finished=True, chosen_min=1.0, rejected_max=1.0,
              closest=True):
    """The pair rule of :func:`course_utils.instructions.pick_pair` and its usual mistakes:
    unfinished replies used, a partial reply chosen, only reward-0 replies rejected, or the
    first pair taken instead of the closest in length."""
    done = [i for i in range(len(rewards)) if stopped[i] or not finished]
    good = [i for i in done if rewards[i] >= chosen_min]
    bad = [i for i in done if rewards[i] < rejected_max and i not in good]
    pairs = [(c, r) for c in good for r in bad]
    if not pairs:
        return None
    if not closest:
        return pairs[0]
    return min(pairs, key=lambda p: abs(lengths[p[0]] - lengths[p[1]]))


_PAIR_CASES = (  # (rewards, lengths, stopped)
    ([1.0, 0.5, 1.0, 0.0, 1.0], [40, 12, 10, 38, 11], [True, True, True, True, False]),
    ([1.0, 0.0, 0.5, 1.0], [30, 60, 29, 8], [True, True, True, True]),
    ([0.5, 1.0, 0.0], [20, 21, 50], [True, True, True]),
    ([1.0, 0.0, 1.0, 0.5], [9, 10, 30, 31], [False, True, True, True]),
    ([1.0, 0.5, 0.0, 0.5], [20, 21, 40, 5], [True, True, True, True]),
    ([1.0, 1.0, 1.0], [5, 6, 7], [True, True, True]),  # nothing to reject
    ([0.5, 0.0, 0.5], [5, 6, 7], [True, True, True]),  # nothing to choose
    ([1.0, 0.0], [5, 6], [False, True]),  # the only good reply was cut off
)
# the usual mistakes: (how the rule goes wrong, what to say)
_PAIR_MISTAKES = (
    (lambda *case: _swapped(_pairs_by(*case)),
     "the order is (chosen, rejected): the reply that follows every instruction comes first"),
    (lambda *case: _pairs_by(*case, finished=False),
     "a reply cut off at the token limit (stopped False) must not be used: nobody knows what "
     "it would have become"),
    (lambda *case: _pairs_by(*case, chosen_min=0.5),
     "the chosen reply must follow every instruction (reward 1), not only some"),
    (lambda *case: _pairs_by(*case, rejected_max=0.5),
     "a reply that breaks any instruction (reward below 1) may be rejected, not only one "
     "with reward 0"),
    (lambda *case: _pairs_by(*case, closest=False),
     "of all the (chosen, rejected) pairs take the one whose lengths are closest, so that "
     "the two differ in following the instructions, not in length"),
    (lambda rewards, lengths, stopped: (max(range(len(rewards)), key=rewards.__getitem__),
                                        min(range(len(rewards)), key=rewards.__getitem__)),
     "that is the best and the worst reply by reward; here a pair is a finished reply with "
     "reward 1 against a finished one below 1, the closest in length"),
)


def _swapped(pair):
    return None if pair is None else pair[::-1]


@_exercise("14", (
    "Keep only the finished replies (stopped[i] is True). Chosen: reward 1 (every "
    "instruction followed); rejected: reward below 1. Among all (chosen, rejected) pairs of "
    "those, return the one with the smallest |lengths[c] - lengths[r]|; None when there is "
    "no such pair.",
    "done = [i for i in range(len(rewards)) if stopped[i]]; good = [i for i in done if "
    "rewards[i] == 1]; bad = [i for i in done if rewards[i] < 1]; if not good or not bad: "
    "return None; return min(((c, r) for c in good for r in bad), key=lambda p: "
    "abs(lengths[p[0]] - lengths[p[1]]))",
))
def pick_pair(fn):
    """``pick_pair(rewards, lengths, stopped) -> (chosen, rejected)`` or ``None``."""
    answers, first_wrong = [], None
    for rewards, lengths, stopped in _PAIR_CASES:
        call = f"pick_pair({rewards}, {lengths}, {stopped})"
        expected = _pairs_by(rewards, lengths, stopped)
        args = (list(rewards), list(lengths), list(stopped))
        if expected is not None:
            got = fn(*args)
        else:  # a right answer returns None: not "not attempted" here (earlier cases catch
            try:  # a stub)
                got = fn.raw(*args)
            except Exception as e:
                raise Wrong(f"{call} raised {type(e).__name__}: {e}") from None
        if isinstance(got, list):
            got = tuple(got)
        if got is not None and not (isinstance(got, tuple) and len(got) == 2 and all(
                isinstance(i, int) and not isinstance(i, bool) for i in got)):
            raise Wrong(f"{call} returned {got!r}; return a tuple of two reply indices "
                        f"(chosen, rejected), or None")
        answers.append(got)
        if got != expected and first_wrong is None:
            first_wrong = (call, got, expected)
    if first_wrong is None:
        return
    call, got, expected = first_wrong
    for rule, message in _PAIR_MISTAKES:  # a mistake that explains every answer
        if all(rule(*case) == a for case, a in zip(_PAIR_CASES, answers)):
            raise Wrong(f"{call} returned {got}: {message}")
    if expected is None:
        raise Wrong(f"{call} returned {got!r}; with no finished reply that follows every "
                    f"instruction, or none that breaks one, there is no pair: return None")
    if got is None:
        raise Wrong(f"{call} returned None, but {expected} is a pair: a finished reply with "
                    f"reward 1 against a finished one with reward below 1")
    raise Wrong(f"{call} returned {got}, expected {expected}")
