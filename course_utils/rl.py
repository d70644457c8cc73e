"""Reinforcement learning with a verifiable reward: GRPO (notebook 15).

Group Relative Policy Optimization, from Shao et al. (2024), "DeepSeekMath: Pushing the Limits
of Mathematical Reasoning in Open Language Models". For each prompt the model samples a group
of ``G`` completions; a reward function scores them (here: is the answer exactly right?); each
completion's advantage is its reward standardised within its group, so no value network is
needed; the policy is pushed towards the completions that beat their group's mean.

GRPO runs through the course's one training loop as a task (:class:`GRPOTask`): a batch is
sampled from the model being trained (:func:`course_utils.sampling.rollout`), scored, and
turned into advantages (:func:`group_advantages`); the loss (:func:`grpo_loss`) compares the
policy's token log-probabilities (:func:`course_utils.logprobs.token_logprobs`, with
gradients) with those of the policy that sampled (the clipped ratio) and, optionally, of a
frozen reference (the KL penalty).

The task of notebook 15 is here too, small on purpose: integer addition asked through the chat
template (:func:`addition_problems`, :func:`prompt_ids`), a reward a program computes
(:func:`parse_answer`, :func:`answer_reward`: is the final number the sum?), and the one
accuracy measurement used before and after every stage (:func:`evaluate`: batched greedy
generation with the KV cache).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from .answers import final_number
from .logprobs import masked_mean, token_logprobs
from .lora import adapters_disabled
from .sampling import rollout
from .tasks import Task, data_sha256
from .utils import eval_mode


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Rewards standardised within each group: ``(r - mean) / (std + eps)``.

    ``rewards``: ``(G,)`` for one group or ``(N, G)`` for ``N`` groups of ``G`` completions of
    the same prompt; the result has the same shape (float). ``std`` is the sample standard
    deviation (``torch.std``, dividing by ``G - 1``) as in DeepSeekMath's outcome supervision
    (section 4.1.2); ``eps`` keeps a group whose rewards are all equal at advantage 0 instead of
    0 / 0. Raises ``ValueError`` for another number of dimensions or a group smaller than 2.
    """
    if rewards.dim() not in (1, 2) or rewards.size(-1) < 2:
        raise ValueError(f"rewards must be (G,) or (N, G) with groups of G >= 2 completions, got "
                         f"shape {tuple(rewards.shape)}")
    rewards = rewards.float()
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from tokens sampled from ``pi``.

    With ``ratio = pi_ref(token) / pi(token)``: ``ratio - log(ratio) - 1``, the "k3" estimator
    of Schulman (2020, "Approximating KL Divergence") that DeepSeekMath uses (eq. 4). It is
    never negative, and its mean over tokens drawn from ``pi`` is exactly the KL divergence
    (tested against the closed form). Inputs are log-probabilities of the same tokens, any
    matching shape; the output has that shape.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def grpo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor,
              old_logprobs: torch.Tensor | None = None, beta: float = 0.04,
              clip_eps: float = 0.2, token_level: bool = False):
    """The GRPO loss (DeepSeekMath, eq. 3) -> ``(loss, kl)``.

    Inputs: per-token log-probabilities ``(B, T)`` of the sampled sequences under the policy
    being trained (with gradients), the frozen reference model (``None`` when ``beta`` is 0)
    and, optionally, the policy that sampled them (``old_logprobs``; default: ``logprobs``
    detached, i.e. one update per batch of samples); ``advantages`` ``(B,)``, one per
    completion (:func:`group_advantages`, flattened); ``mask`` ``(B, T)`` bool, True on the
    completion tokens that count (up to and including the stop token,
    :class:`course_utils.sampling.Rollout`).

    Per token: ``min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A) - beta * k3``
    with ``ratio = pi / pi_old``. Both parts are DeepSeekMath's:

    - the clipped ratio (PPO, Schulman et al., 2017) keeps several optimizer steps on one
      batch of samples from moving the policy far from the one that sampled them; with one
      step per batch the ratio is 1 and the gradient is plain ``A * grad log pi`` (REINFORCE
      with the group mean as baseline);
    - the KL penalty (:func:`k3_kl`) keeps the policy near the reference (the SFT model) so it
      keeps its language while it chases the reward; it sits in the loss, not in the reward, so
      the advantages stay a clean comparison of outcomes.

    The loss is the negative of that objective, averaged over each completion's tokens and
    then over completions (``1/G sum_i 1/|o_i| sum_t``, as in the paper), or with
    ``token_level=True`` over all the batch's tokens at once (DAPO, Yu et al. 2025: a long
    completion weighs as much per token as a short one). ``kl`` is the mean k3 estimate over
    all counted tokens, detached, for logging (0 without a reference).

    Raises ``ValueError`` for mismatched shapes, a negative ``beta`` or ``clip_eps``, or
    ``beta > 0`` without ``ref_logprobs``.
    """
    if logprobs.shape != mask.shape or (ref_logprobs is not None
                                         and ref_logprobs.shape != logprobs.shape):
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, ref_logprobs "
                         f"{None if ref_logprobs is None else tuple(ref_logprobs.shape)} and "
                         f"mask {tuple(mask.shape)} must match")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logprobs.shape[:1])}, one per "
                         f"completion, got {tuple(advantages.shape)}")
    if beta < 0 or clip_eps < 0:
        raise ValueError(f"beta and clip_eps must be >= 0, got {beta} and {clip_eps}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("a KL penalty (beta > 0) needs the reference's ref_logprobs")
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    mask = mask.bool()
    adv = advantages.unsqueeze(1)  # (B, 1): every token of a completion shares its advantage
    ratio = torch.exp(logprobs - old_logprobs)
    objective = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = torch.zeros_like(logprobs) if ref_logprobs is None else k3_kl(logprobs, ref_logprobs)
    per_token = -(objective - beta * kl)  # (B, T)
    if token_level:
        loss = masked_mean(per_token, mask)
    else:
        loss = masked_mean(per_token, mask, dim=1).mean()
    return loss, masked_mean(kl, mask).detach()


@dataclass
class GRPOBatch:
    """One batch of :class:`GRPOTask`. The sampled sequences ``idx`` and the ``mask`` of the
    completion tokens that count, ``(K, T)``, hold only the ``K`` completions of the groups
    whose rewards differ: a group whose rewards all tie has advantage 0 everywhere, so it is
    left out before any forward pass (when no group differs, one group stays, fully masked, so
    the loss is an exact 0 with a graph). Per kept completion the ``advantages`` ``(K,)``; per
    token the log-probabilities of the policy that sampled (``old_logprobs``; ``None`` with one
    update per batch, where they equal the policy's own, detached) and of the reference
    (``ref_logprobs``, ``None`` without a KL penalty); and for the log, over all ``N*G``
    samples, the ``rewards`` ``(N, G)`` and completion ``lengths`` ``(N*G,)``."""

    idx: torch.Tensor
    mask: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    rewards: torch.Tensor
    lengths: torch.Tensor
    uses: int = 0  # optimizer steps taken on this batch so far


class GRPOTask(Task):
    """GRPO as a task of the training loop: each batch is sampled from the model being
    trained.

    ``problems`` maps ``"train"`` and ``"val"`` to lists of :class:`Problem`; a batch draws
    ``batch_size`` of them (with the loop's seeded generator), samples ``group_size``
    completions of each with :func:`course_utils.sampling.rollout` (temperature
    ``temperature``, at most ``max_new_tokens`` tokens, the global torch generator, whose
    state checkpoints keep), scores each reply with ``reward(problem, text)`` (a float), and
    standardises the rewards in each group (:func:`group_advantages`). Groups whose rewards
    all tie teach nothing (advantage 0) and are dropped before the forward pass, so a batch
    costs compute only for the groups that teach (:class:`GRPOBatch`). The prompt of a problem
    is :func:`prompt_ids` with ``system``.

    ``iterations`` optimizer steps are taken on each batch of samples (on the second and
    later ones the policy has moved, so the clipped ratio of :func:`grpo_loss` acts). Under
    ``torch.no_grad()`` (the loop's evaluation) every call samples afresh.
    ``beta`` weighs the KL penalty towards ``reference``; with ``beta > 0`` and no
    ``reference``, a model with LoRA adapters is its own reference with the adapters switched
    off (:func:`course_utils.lora.adapters_disabled`). ``token_level`` is passed to
    :func:`grpo_loss`.

    ``loss`` logs ``reward`` (mean over the completions), ``mixed`` (the share of groups
    whose rewards differ: only those teach anything), ``kl`` and ``length`` (mean completion
    tokens). Raises ``ValueError`` for an empty split or a bad setting.
    """

    chat = True

    def __init__(self, fmt, problems: dict, reward, *, group_size: int = 8,
                 batch_size: int = 4, max_new_tokens: int = 64, temperature: float = 1.0,
                 beta: float = 0.0, clip_eps: float = 0.2, iterations: int = 1,
                 token_level: bool = True, system: str | None = None,
                 reference: nn.Module | None = None):
        if any(not problems.get(split) for split in ("train", "val")):
            raise ValueError("GRPOTask needs problems for both splits, 'train' and 'val'")
        if group_size < 2 or batch_size < 1 or iterations < 1 or max_new_tokens < 1:
            raise ValueError(f"group_size must be >= 2 and batch_size, iterations, "
                             f"max_new_tokens >= 1; got {group_size}, {batch_size}, "
                             f"{iterations}, {max_new_tokens}")
        self.fmt, self.tokenizer, self.reward = fmt, fmt.tokenizer, reward
        self.problems = problems
        self.prompts = {split: [prompt_ids(fmt, p.question, system) for p in items]
                        for split, items in problems.items()}
        self.group_size, self.batch_size, self.max_new_tokens = group_size, batch_size, \
            max_new_tokens
        self.temperature, self.beta, self.clip_eps = temperature, beta, clip_eps
        self.iterations, self.token_level, self.reference = iterations, token_level, reference
        self._last: dict[str, GRPOBatch] = {}

    def fingerprint(self):
        return data_sha256(self.problems, self.prompts, self.reward, self.group_size,
                           self.batch_size, self.max_new_tokens, self.temperature, self.beta,
                           self.clip_eps, self.iterations, self.token_level, self.reference)

    def batch(self, split, generator, model):
        last = self._last.get(split)
        if last is not None and last.uses < self.iterations and torch.is_grad_enabled():
            return last
        problems = self.problems[split]
        pick = torch.randint(len(problems), (self.batch_size,), generator=generator).tolist()
        G = self.group_size
        with torch.no_grad(), eval_mode(model):
            out = rollout(model, [self.prompts[split][i] for i in pick], G,
                          self.max_new_tokens, self.fmt.im_end, temperature=self.temperature)
            rewards = torch.tensor([
                float(self.reward(problems[pick[r // G]], self._text(c)))
                for r, c in enumerate(out.completions)]).view(len(pick), G)
            mixed = (rewards != rewards[:, :1]).any(dim=1)  # (N,) groups that teach
            groups = mixed.nonzero().flatten().tolist() or [0]  # tied groups are left out
            rows = torch.tensor([g * G + j for g in groups for j in range(G)])
            mask = out.mask[rows.to(out.mask.device)] & mixed[groups].repeat_interleave(G).to(
                out.mask.device).unsqueeze(1)
            width = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
            idx, mask = out.idx[rows.to(out.idx.device), :width], mask[:, :width]
            old = token_logprobs(model, idx) if self.iterations > 1 else None
            ref = self._reference_logprobs(model, idx) if self.beta > 0 else None
        lengths = torch.tensor([len(c) for c in out.completions], dtype=torch.float)
        advantages = group_advantages(rewards)[groups].flatten().to(idx.device)
        batch = GRPOBatch(idx, mask, advantages, old, ref, rewards, lengths)
        if torch.is_grad_enabled():  # a training batch: kept for `iterations` steps
            self._last[split] = batch
        return batch

    def _text(self, completion: list[int]) -> str:
        ended = bool(completion) and completion[-1] == self.fmt.im_end
        return self.tokenizer.decode(completion[:-1] if ended else completion)

    def _reference_logprobs(self, model, idx):
        if self.reference is not None:
            return token_logprobs(self.reference, idx)
        with adapters_disabled(model):
            return token_logprobs(model, idx)

    def loss(self, model, batch: GRPOBatch):
        batch.uses += 1
        logprobs = token_logprobs(model, batch.idx)
        loss, kl = grpo_loss(logprobs, batch.ref_logprobs, batch.advantages, batch.mask,
                             batch.old_logprobs, self.beta, self.clip_eps, self.token_level)
        mixed = (batch.rewards != batch.rewards[:, :1]).any(dim=1).float().mean()
        return loss, {"reward": batch.rewards.mean(), "mixed": mixed, "kl": kl,
                      "length": batch.lengths.mean()}

    def tokens(self, batch: GRPOBatch) -> int:
        return int(batch.idx.numel())


# ----------------------------------------------------------------------------- the task
ADDITION_QUESTION = "What is {a} + {b}?"  # the user's message; the answer is a + b
QUESTION = re.compile(r"What is (\d+) ([+*]) (\d+)\?")  # an addition or a product


def excluded_count(questions, op: str, a_range: range, b_range: range) -> int:
    """How many of ``questions`` are ``"What is a OP b?"`` with ``a`` in ``a_range`` and ``b``
    in ``b_range``: the excluded problems that a draw could have produced."""
    count = 0
    for question in questions:
        found = QUESTION.fullmatch(question)
        count += bool(found and found.group(2) == op and int(found.group(1)) in a_range
                      and int(found.group(3)) in b_range)
    return count


@dataclass(frozen=True)
class Problem:
    """A question with one right answer, an integer: ``Problem("What is 12 + 30?", 42)``."""

    question: str
    answer: int


def addition_problems(n: int, digits: int = 2, seed: int = 0, exclude=()) -> list[Problem]:
    """``n`` different problems ``"What is a + b?"`` with ``a`` and ``b`` of ``digits`` digits.

    Drawn by ``random.Random(seed)`` one pair at a time (a pair drawn before, or whose
    question is that of a problem in ``exclude``, is drawn again), so a seed always gives the
    same list and the first ``k`` problems of ``n`` are those of ``k``. ``exclude`` keeps a
    held-out test set out of the training problems. ``digits=1`` draws from 0 to 9, more
    digits from ``10**(digits-1)`` to ``10**digits - 1`` (no leading zeros).

    Raises ``ValueError`` for ``digits < 1``, ``n < 0``, or more problems than there are pairs
    once ``exclude`` is set aside.
    """
    if digits < 1 or n < 0:
        raise ValueError(f"digits must be >= 1 and n >= 0, got digits={digits}, n={n}")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    taken = {p.question for p in exclude}
    excluded = excluded_count(taken, "+", range(lo, hi + 1), range(lo, hi + 1))
    if n > (hi - lo + 1) ** 2 - excluded:
        raise ValueError(f"asked for {n} problems, but {digits}-digit addition has only "
                         f"{(hi - lo + 1) ** 2:,} pairs and {excluded:,} of them are excluded")
    rng, problems = random.Random(seed), []
    while len(problems) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        question = ADDITION_QUESTION.format(a=a, b=b)
        if question not in taken:
            taken.add(question)
            problems.append(Problem(question, a + b))
    return problems


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # a reasoning trace sits between these


def parse_answer(text: str) -> int | None:
    """The final answer of a reply as an integer, or ``None`` when it has none.

    The reply's final number (:func:`course_utils.answers.final_number`, the parser of every
    graded task) when that is a whole number: ``"68"``, ``"The answer is 68."`` and
    ``"23 + 45 = 68"`` all give 68; thousands commas are read (``"1,098"`` is 1098); a minus sign
    right before the digits counts, one after a digit does not (``"5-3"`` gives 3); ``"68.0"``
    gives 68. A final number with a fraction is not an integer answer: ``"68.5"`` gives ``None``.

    A reply that reasons first (``<think>...</think>`` then the answer) is read after its last
    ``</think>``; one whose ``<think>`` is never closed has no answer (it was cut off while
    thinking: the numbers in it are steps, not an answer).
    """
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in text:
        return None
    number = final_number(text)
    return number if isinstance(number, int) else None


def answer_reward(reply: str, answer: int) -> float:
    """The verifiable reward: 1.0 when the reply's final answer (:func:`parse_answer`) is
    ``answer``, else 0.0 (a wrong number, no number, or a reply cut off before it)."""
    return 1.0 if parse_answer(reply) == answer else 0.0


_TRACE_FORMAT = re.compile(re.escape(THINK_OPEN) + r"\n(?:.+\n)+" + re.escape(THINK_CLOSE)
                           + r"\n-?[0-9]+")


def format_reward(reply: str) -> float:
    """1.0 when the reply has the shape of a reasoned answer, else 0.0: ``<think>``, a newline,
    one or more non-empty lines, ``</think>``, a newline, and an integer with nothing after it
    (the format the traces of :mod:`course_utils.reasoning` teach). It says nothing about
    whether the answer is right: that is :func:`answer_reward`'s job."""
    return 1.0 if _TRACE_FORMAT.fullmatch(reply) else 0.0


def reasoning_reward(problem: Problem, reply: str, format_weight: float = 0.1) -> float:
    """GRPO's reward for reasoned answers: :func:`answer_reward` plus ``format_weight`` times
    :func:`format_reward`, so a right answer in the right shape scores ``1 + format_weight``,
    a right answer in another shape 1, a well-formed wrong one ``format_weight``, anything
    else 0. The correctness term dominates: a right answer always beats a wrong one. (The
    DeepSeek-R1 report, Guo et al. 2025, pairs an accuracy reward with a format reward the
    same way.)"""
    return answer_reward(reply, problem.answer) + format_weight * format_reward(reply)


def prompt_ids(fmt, question: str, system: str | None = None,
               shots: tuple[tuple[str, str], ...] = ()) -> list[int]:
    """The prompt of one question: ``fmt.encode`` of a user message ``question`` (preceded by
    a system message ``system``, or by ``fmt``'s default one when ``None``), ready for the
    reply (it ends with ``<|im_start|>assistant\\n``). ``fmt`` is a
    :class:`course_utils.chat.ChatFormat`. ``shots``: ``(question, reply)`` pairs put before
    it as earlier turns of the chat (few-shot prompting)."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    for q, a in shots:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return fmt.encode(messages + [{"role": "user", "content": question}])


@dataclass
class Evaluation:
    """What :func:`evaluate` measured: ``accuracy`` (share of problems whose reply has the
    right final answer), and per problem ``correct``, the reply's text ``replies`` and
    ``stopped`` (the reply ended with ``<|im_end|>`` before ``max_new_tokens``)."""

    accuracy: float
    correct: list[bool]
    replies: list[str]
    stopped: list[bool]


@torch.no_grad()
def evaluate(model: nn.Module, fmt, problems: list[Problem], max_new_tokens: int = 32,
             batch_size: int = 50, system: str | None = None,
             shots: tuple[tuple[str, str], ...] = ()) -> Evaluation:
    """Accuracy of ``model`` on ``problems``: one greedy reply to each, scored by
    :func:`answer_reward`.

    Each problem's prompt is :func:`prompt_ids` (``system`` and ``shots`` as there); ``batch_size``
    prompts at a time are answered by :func:`rollout` with ``temperature=0`` and one
    completion each, so prompts of equal length share a batch and the KV cache, and a batch
    stops once every reply has its ``<|im_end|>``. A reply not finished within
    ``max_new_tokens`` is scored as it stands (give enough tokens: ``stopped`` tells). The
    model's mode is left as it was.

    Raises ``ValueError`` for no problems, ``batch_size < 1``, and the errors of
    :func:`rollout` (a prompt plus ``max_new_tokens`` longer than ``block_size``).
    """
    if not problems or batch_size < 1:
        raise ValueError(f"evaluate needs problems and batch_size >= 1, got {len(problems)} "
                         f"problems and batch_size {batch_size}")
    replies, stopped = [], []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [prompt_ids(fmt, p.question, system, shots) for p in chunk]
        out = rollout(model, prompts, 1, max_new_tokens, fmt.im_end, temperature=0.0)
        for tokens in out.completions:
            ended = bool(tokens) and tokens[-1] == fmt.im_end
            replies.append(fmt.tokenizer.decode(tokens[:-1] if ended else tokens))
            stopped.append(ended)
    correct = [answer_reward(r, p.answer) == 1.0 for r, p in zip(replies, problems)]
    return Evaluation(sum(correct) / len(correct), correct, replies, stopped)
