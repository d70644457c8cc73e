"""Reinforcement learning with a verifiable reward: GRPO (notebook 14).

Group Relative Policy Optimization, from Shao et al. (2024), "DeepSeekMath: Pushing the Limits
of Mathematical Reasoning in Open Language Models". For each prompt the model samples a group
of ``G`` completions; a reward function scores them (here: is the answer exactly right?); each
completion's advantage is its reward standardised within its group, so no value network is
needed; the policy is pushed towards the completions that beat their group's mean.

One training step (:func:`grpo_step`): :func:`rollout` -> rewards -> :func:`group_advantages`
-> :func:`course_utils.preference.token_logprobs` of the policy (with gradients) and of the
frozen reference -> :func:`grpo_loss` -> backward.

The task of notebook 14 is here too, small on purpose: integer addition asked through the chat
template (:func:`addition_problems`, :func:`prompt_ids`), a reward a program computes
(:func:`parse_answer`, :func:`answer_reward`: is the final number the sum?), and the one
accuracy measurement used before and after every stage (:func:`evaluate`: batched greedy
generation with the KV cache).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn as nn

from .answers import final_number
from .preference import token_logprobs
from .sampling import generate_tokens


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


def grpo_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, old_logprobs: torch.Tensor | None = None, beta: float = 0.04,
              clip_eps: float = 0.2):
    """The GRPO loss (DeepSeekMath, eq. 3) -> ``(loss, kl)``.

    Inputs: per-token log-probabilities ``(B, T)`` of the sampled sequences under the policy
    being trained (with gradients), the frozen reference model and, optionally, the policy that
    sampled them (``old_logprobs``; default: ``logprobs`` detached, i.e. one update per batch
    of samples); ``advantages`` ``(B,)``, one per completion (:func:`group_advantages`,
    flattened); ``mask`` ``(B, T)`` bool, True on completion tokens up to and including the
    stop token (:class:`Rollout`).

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
    then over completions (``1/G sum_i 1/|o_i| sum_t``, as in the paper). ``kl`` is the mean
    k3 estimate over all completion tokens, detached, for logging.

    Raises ``ValueError`` for mismatched shapes or a negative ``beta`` or ``clip_eps``.
    """
    if logprobs.shape != ref_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, ref_logprobs "
                         f"{tuple(ref_logprobs.shape)} and mask {tuple(mask.shape)} must match")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B,) = {tuple(logprobs.shape[:1])}, one per "
                         f"completion, got {tuple(advantages.shape)}")
    if beta < 0 or clip_eps < 0:
        raise ValueError(f"beta and clip_eps must be >= 0, got {beta} and {clip_eps}")
    if old_logprobs is None:
        old_logprobs = logprobs.detach()
    mask = mask.bool()
    adv = advantages.unsqueeze(1)  # (B, 1): every token of a completion shares its advantage
    ratio = torch.exp(logprobs - old_logprobs)
    policy = torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = k3_kl(logprobs, ref_logprobs)
    per_token = torch.where(mask, -(policy - beta * kl), 0.0)  # (B, T)
    per_completion = per_token.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
    mean_kl = torch.where(mask, kl, 0.0).sum().detach() / mask.sum().clamp(min=1)
    return per_completion.mean(), mean_kl


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
    """Sample ``group_size`` completions of each prompt -> :class:`Rollout`.

    ``prompts``: ``N`` lists of token ids. Prompts of the same length are sampled together as
    one batch with :func:`course_utils.sampling.generate_tokens` (KV cache); a completion ends
    at its first ``stop_id`` or after ``max_new_tokens`` tokens, and a batch stops as soon as
    all its rows have ended. ``pad_id`` (default ``stop_id``) fills the rows after their end;
    the mask leaves it out. GRPO's algebra assumes the samples come from the policy itself, so
    keep ``temperature=1`` and no top-k/top-p when training.

    Raises ``ValueError`` for no prompts, an empty prompt, ``group_size`` or ``max_new_tokens``
    below 1, or a prompt plus ``max_new_tokens`` longer than the model's ``block_size``.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("rollout needs at least one prompt and every prompt at least one token")
    if group_size < 1 or max_new_tokens < 1:
        raise ValueError(f"group_size and max_new_tokens must be >= 1, got {group_size} and "
                         f"{max_new_tokens}")
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > model.config.block_size:
        raise ValueError(f"a prompt plus max_new_tokens is {longest} tokens, longer than "
                         f"block_size {model.config.block_size}; shorten the prompts or "
                         f"lower max_new_tokens")
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    completions: list[list[int]] = [[] for _ in range(len(prompts) * group_size)]
    for ids in by_length.values():
        batch = torch.tensor([prompts[i] for i in ids], device=device)
        batch = batch.repeat_interleave(group_size, dim=0)  # (len(ids) * G, prompt length)
        steps = generate_tokens(model, batch, max_new_tokens, temperature, top_k, top_p,
                                generator)
        new, stopped = [], torch.zeros(batch.size(0), dtype=torch.bool, device=device)
        for next_id in steps:  # (len(ids) * G, 1) per step
            new.append(next_id)
            stopped |= next_id[:, 0] == stop_id
            if stopped.all():  # every row has stopped (reads one flag back from the device)
                break
        steps.close()  # puts the model back in the mode it was in
        for j, tokens in enumerate(torch.cat(new, dim=1).tolist()):
            if stop_id in tokens:
                tokens = tokens[:tokens.index(stop_id) + 1]
            completions[ids[j // group_size] * group_size + j % group_size] = tokens
    rows = [prompts[r // group_size] + c for r, c in enumerate(completions)]
    T = max(len(row) for row in rows)
    idx = torch.full((len(rows), T), stop_id if pad_id is None else pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for r, row in enumerate(rows):
        idx[r, :len(row)] = torch.tensor(row)
        mask[r, len(row) - len(completions[r]):len(row)] = True
    return Rollout(idx.to(device), mask.to(device), completions)


def grpo_step(policy: nn.Module, ref: nn.Module, optimizer: torch.optim.Optimizer,
              prompts: list[list[int]], reward_fn, group_size: int, max_new_tokens: int,
              stop_id: int, beta: float = 0.04, clip_eps: float = 0.2,
              generator: torch.Generator | None = None) -> dict[str, float]:
    """One GRPO step on ``prompts``: sample, score, one optimizer update -> statistics.

    :func:`rollout` draws ``group_size`` completions of each prompt (temperature 1, as the
    algebra assumes); ``reward_fn(i, completion)`` scores a completion of ``prompts[i]`` (its
    token ids, the stop token included when it was reached) with a float; the advantages are
    the rewards standardised in each group (:func:`group_advantages`); the policy's token
    log-probabilities (with gradients) and the reference's (without) give :func:`grpo_loss`;
    then one backward and one ``optimizer.step()``. With one update per batch of samples the
    policy that sampled is the policy being trained, so the ratio is 1 and ``clip_eps`` never
    acts; the KL penalty (``beta``) is what keeps the policy near ``ref``.

    Returns floats: ``reward`` (mean over all completions, before the update), ``loss``,
    ``kl`` (mean k3 estimate per completion token), ``mixed`` (share of groups whose rewards
    are not all equal: only those have non-zero advantages) and ``length`` (mean completion
    length in tokens). Raises the errors of :func:`rollout` and :func:`grpo_loss`.
    """
    out = rollout(policy, prompts, group_size, max_new_tokens, stop_id, generator=generator)
    rewards = torch.tensor([float(reward_fn(r // group_size, c))
                            for r, c in enumerate(out.completions)]).view(len(prompts), group_size)
    advantages = group_advantages(rewards).flatten().to(out.idx.device)
    with torch.no_grad():
        ref_logprobs = token_logprobs(ref, out.idx)
    logprobs = token_logprobs(policy, out.idx)
    loss, kl = grpo_loss(logprobs, ref_logprobs, advantages, out.mask, beta=beta,
                         clip_eps=clip_eps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    mixed = (rewards != rewards[:, :1]).any(dim=1).float().mean()
    return {"reward": rewards.mean().item(), "loss": loss.item(), "kl": kl.item(),
            "mixed": mixed.item(), "length": sum(map(len, out.completions)) / len(out.completions)}


# ----------------------------------------------------------------------------- the task
ADDITION_QUESTION = "What is {a} + {b}?"  # the user's message; the answer is a + b


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
    if n > (hi - lo + 1) ** 2 - len(taken):
        raise ValueError(f"asked for {n} problems, but {digits}-digit addition has only "
                         f"{(hi - lo + 1) ** 2:,} pairs and {len(taken):,} are excluded")
    rng, problems = random.Random(seed), []
    while len(problems) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        question = ADDITION_QUESTION.format(a=a, b=b)
        if question not in taken:
            taken.add(question)
            problems.append(Problem(question, a + b))
    return problems


def parse_answer(text: str) -> int | None:
    """The final answer of a reply as an integer, or ``None`` when it has none.

    The reply's final number (:func:`course_utils.answers.final_number`, the parser of every
    graded task) when that is a whole number: ``"68"``, ``"The answer is 68."`` and
    ``"23 + 45 = 68"`` all give 68; thousands commas are read (``"1,098"`` is 1098); a minus sign
    right before the digits counts, one after a digit does not (``"5-3"`` gives 3); ``"68.0"``
    gives 68. A final number with a fraction is not an integer answer: ``"68.5"`` gives ``None``.
    """
    number = final_number(text)
    return number if isinstance(number, int) else None


def answer_reward(reply: str, answer: int) -> float:
    """The verifiable reward: 1.0 when the reply's final answer (:func:`parse_answer`) is
    ``answer``, else 0.0 (a wrong number, no number, or a reply cut off before it)."""
    return 1.0 if parse_answer(reply) == answer else 0.0


def prompt_ids(fmt, question: str, system: str | None = None) -> list[int]:
    """The prompt of one question: ``fmt.encode`` of a user message ``question`` (preceded by
    a system message ``system``, or by ``fmt``'s default one when ``None``), ready for the
    reply (it ends with ``<|im_start|>assistant\\n``). ``fmt`` is a
    :class:`course_utils.chat.ChatFormat`."""
    messages = [] if system is None else [{"role": "system", "content": system}]
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
             batch_size: int = 50, system: str | None = None) -> Evaluation:
    """Accuracy of ``model`` on ``problems``: one greedy reply to each, scored by
    :func:`answer_reward`.

    Each problem's prompt is :func:`prompt_ids` (``system`` as there); ``batch_size``
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
        prompts = [prompt_ids(fmt, p.question, system) for p in chunk]
        out = rollout(model, prompts, 1, max_new_tokens, fmt.im_end, temperature=0.0)
        for tokens in out.completions:
            ended = bool(tokens) and tokens[-1] == fmt.im_end
            replies.append(fmt.tokenizer.decode(tokens[:-1] if ended else tokens))
            stopped.append(ended)
    correct = [answer_reward(r, p.answer) == 1.0 for r, p in zip(replies, problems)]
    return Evaluation(sum(correct) / len(correct), correct, replies, stopped)
