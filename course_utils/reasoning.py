"""Reasoning traces written by a program, and inference-time scaling (notebook 15).

**A teacher that is code.** Reasoning models learn to think step by step from traces: worked
solutions in which each step is small enough to get right. Distillation usually takes them
from a bigger model (DeepSeek-R1's distilled models, Guo et al. 2025); for arithmetic a
program writes perfect ones. :func:`trace` works a problem column by column, the way it is
taught at school, inside ``<think>...</think>``, then states the answer::

    What is 983 + 969?          What is 483 * 7?
    <think>                     <think>
    3+9+0=12 -> 2               3*7+0=21 -> 1
    8+6+1=15 -> 52              8*7+2=58 -> 81
    9+9+1=19 -> 952             4*7+5=33 -> 381
    1 -> 1952                   3 -> 3381
    </think>                    </think>
    1952                        3381

Each line takes one digit of each number (from the right), adds the carry, which is the
first digit of the line above's result, and writes the new digit in front of the digits so
far, so the last line holds the whole answer and the model only copies it. Every step looks
back a few tokens; none needs more than one digit of arithmetic.

**Sampling more at inference.** :func:`sample_answers` draws ``n`` replies to each problem
with the course's batched generation (:func:`course_utils.sampling.rollout`, one group of
``n`` per prompt); :func:`majority_vote` is self-consistency (Wang et al., 2023,
"Self-Consistency Improves Chain of Thought Reasoning in Language Models"): the most common
final answer; best-of-n with a verifier keeps a right answer if any of the ``n`` is right
(here the verifier is the exact checker, so this is pass@n: the ceiling of any reranker).
:func:`scaling_table` gives both for several ``n`` from one set of samples, with the tokens
generated, so accuracy can be plotted against compute.

The problems: :func:`arithmetic_problems` (addition of two ``digits``-digit numbers, as
:func:`course_utils.rl.addition_problems`, or a ``digits``-digit number times a one-digit
one), :func:`operands` reads a question back.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from .rl import (
    QUESTION,
    THINK_CLOSE,
    THINK_OPEN,
    Problem,
    addition_problems,
    excluded_count,
    parse_answer,
    prompt_ids,
)
from .sampling import rollout
from .utils import eval_mode

OPERATIONS = ("+", "*")  # addition; multiplication by a one-digit number


def arithmetic_problems(n: int, digits: int, op: str = "+", seed: int = 0,
                        exclude=()) -> list[Problem]:
    """``n`` different problems ``"What is a OP b?"``, seeded, with ``exclude`` left out.

    ``op="+"``: ``a`` and ``b`` both of ``digits`` digits, exactly
    :func:`course_utils.rl.addition_problems`. ``op="*"``: ``a`` of ``digits`` digits (no
    leading zero) and ``b`` from 2 to 9. Drawn one at a time by ``random.Random(seed)``; a
    problem drawn before or in ``exclude`` is drawn again, so a seed always gives the same
    list and a shorter list is a prefix of a longer one.

    Raises ``ValueError`` for another ``op``, ``digits < 1``, ``n < 0``, or more problems than
    there are once ``exclude`` is set aside.
    """
    if op == "+":
        return addition_problems(n, digits, seed, exclude)
    if op != "*":
        raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")
    if digits < 1 or n < 0:
        raise ValueError(f"digits must be >= 1 and n >= 0, got digits={digits}, n={n}")
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    taken = {p.question for p in exclude}
    excluded = excluded_count(taken, "*", range(lo, hi + 1), range(2, 10))
    if n > (hi - lo + 1) * 8 - excluded:
        raise ValueError(f"asked for {n} problems, but {digits}-digit times one-digit has only "
                         f"{(hi - lo + 1) * 8:,} and {excluded:,} of them are excluded")
    rng, problems = random.Random(seed), []
    while len(problems) < n:
        a, b = rng.randint(lo, hi), rng.randint(2, 9)
        question = f"What is {a} * {b}?"
        if question not in taken:
            taken.add(question)
            problems.append(Problem(question, a * b))
    return problems


def operands(question: str) -> tuple[int, str, int]:
    """``(a, op, b)`` of a question ``"What is a OP b?"``; ``ValueError`` for another text."""
    found = QUESTION.fullmatch(question.strip())
    if not found:
        raise ValueError(f"not an arithmetic question of this notebook: {question!r} (expected "
                         f"'What is A + B?' or 'What is A * B?')")
    return int(found.group(1)), found.group(2), int(found.group(3))


def trace_lines(a: int, op: str, b: int) -> list[str]:
    """The steps of :func:`trace`, one string per line (without the think markers).

    Column ``k`` (from the right): ``"{x}+{y}+{carry}={s} -> {digits}"`` for addition, with
    ``x``, ``y`` the ``k``-th digits of ``a`` and ``b`` (0 past a number's end), and
    ``"{x}*{b}+{carry}={s} -> {digits}"`` for multiplication; ``digits`` is the last digit of
    ``s`` in front of the digits so far, and the carry is ``s // 10``. A final carry gets a
    line of its own, ``"{carry} -> {answer}"``. Raises ``ValueError`` for a negative number,
    another ``op``, or ``b`` of more than one digit in a product.
    """
    if a < 0 or b < 0 or op not in OPERATIONS or (op == "*" and b > 9):
        raise ValueError(f"traces are written for a + b and a * b with one-digit b, a and b "
                         f">= 0; got {a} {op} {b}")
    xs = [int(d) for d in reversed(str(a))]
    ys = [int(d) for d in reversed(str(b))] if op == "+" else []
    lines, carry, so_far = [], 0, ""
    for k in range(max(len(xs), len(ys))):
        x = xs[k] if k < len(xs) else 0
        if op == "+":
            y = ys[k] if k < len(ys) else 0
            s = x + y + carry
            step = f"{x}+{y}+{carry}={s}"
        else:
            s = x * b + carry
            step = f"{x}*{b}+{carry}={s}"
        so_far = str(s % 10) + so_far
        carry = s // 10
        lines.append(f"{step} -> {so_far}")
    if carry:
        so_far = str(carry) + so_far
        lines.append(f"{carry} -> {so_far}")
    return lines


def trace(question: str) -> str:
    """The reasoned reply to an arithmetic question (see the module's docstring):
    ``"<think>\\n" + lines + "\\n</think>\\n" + answer``. Its final answer
    (:func:`course_utils.rl.parse_answer`) is the right one, and it passes
    :func:`course_utils.rl.format_reward` (both tested on thousands of problems)."""
    a, op, b = operands(question)
    answer = a + b if op == "+" else a * b
    lines = trace_lines(a, op, b)
    return f"{THINK_OPEN}\n" + "\n".join(lines) + f"\n{THINK_CLOSE}\n{answer}"


# --------------------------------------------------------------- inference-time scaling
def majority_vote(answers: list) -> object:
    """Self-consistency's pick: the most common answer that is not ``None``; among equally
    common ones, the one that came first. ``None`` when no reply had an answer."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


@dataclass
class Samples:
    """``n`` sampled replies per problem (:func:`sample_answers`): per problem, each reply's
    final ``answers`` (:func:`course_utils.rl.parse_answer`, ``None`` for none), the number of
    ``tokens`` each reply generated, and whether each ended on its own (``stopped``)."""

    answers: list[list[int | None]]
    tokens: list[list[int]]
    stopped: list[list[bool]]


@torch.no_grad()
def sample_answers(model, fmt, problems: list[Problem], n: int, max_new_tokens: int,
                   temperature: float = 1.0, chunk: int = 64, system: str | None = None,
                   shots: tuple[tuple[str, str], ...] = (),
                   generator: torch.Generator | None = None) -> Samples:
    """Sample ``n`` replies to each problem -> :class:`Samples`.

    The prompts (:func:`course_utils.rl.prompt_ids`, ``system`` and ``shots`` as there) go to
    :func:`course_utils.sampling.rollout` with ``group_size=n``, about ``chunk`` rows (prompts
    times ``n``) per batch. ``temperature`` as there (0: greedy, the same reply ``n`` times).
    Raises ``ValueError`` for no problems, ``n < 1`` or ``chunk < 1``, and the errors of
    ``rollout``.
    """
    if not problems or n < 1 or chunk < 1:
        raise ValueError(f"sample_answers needs problems, n >= 1 and chunk >= 1; got "
                         f"{len(problems)} problems, n={n}, chunk={chunk}")
    per_batch = max(1, chunk // n)
    samples = Samples([], [], [])
    with eval_mode(model):
        for start in range(0, len(problems), per_batch):
            part = problems[start:start + per_batch]
            prompts = [prompt_ids(fmt, p.question, system, shots) for p in part]
            out = rollout(model, prompts, n, max_new_tokens, fmt.im_end,
                          temperature=temperature, generator=generator)
            for i in range(len(part)):
                group = out.completions[i * n:(i + 1) * n]
                ended = [bool(c) and c[-1] == fmt.im_end for c in group]
                texts = [fmt.tokenizer.decode(c[:-1] if e else c) for c, e in zip(group, ended)]
                samples.answers.append([parse_answer(t) for t in texts])
                samples.tokens.append([len(c) for c in group])
                samples.stopped.append(ended)
    return samples


@dataclass
class ScalingPoint:
    """Accuracy with ``n`` samples per problem: per problem, whether ``self_consistency``
    (:func:`majority_vote`) and ``best_of_n`` (any of the ``n`` right) got it right, and the
    mean ``tokens`` generated per problem (all ``n`` replies)."""

    n: int
    self_consistency: list[bool]
    best_of_n: list[bool]
    tokens: float


def scaling_table(samples: Samples, problems: list[Problem], ns=(1, 3, 5, 10),
                  vote=majority_vote) -> list[ScalingPoint]:
    """Self-consistency and best-of-n for each ``n`` in ``ns``, from the first ``n`` samples
    of each problem (one draw serves every ``n``, so the points are nested, as if the model
    had been asked ``n`` times). ``vote`` picks self-consistency's answer from a list of
    answers (:func:`majority_vote`, or a learner's). Raises ``ValueError`` when an ``n`` is
    above the samples drawn or ``samples`` and ``problems`` differ in length."""
    if len(samples.answers) != len(problems):
        raise ValueError(f"{len(samples.answers)} problems sampled, {len(problems)} given")
    drawn = min(len(a) for a in samples.answers)
    if any(n < 1 or n > drawn for n in ns):
        raise ValueError(f"every n must be in [1, {drawn}] (the samples drawn), got {list(ns)}")
    points = []
    for n in ns:
        sc = [vote(a[:n]) == p.answer for a, p in zip(samples.answers, problems)]
        best = [p.answer in a[:n] for a, p in zip(samples.answers, problems)]
        tokens = sum(sum(t[:n]) for t in samples.tokens) / len(problems)
        points.append(ScalingPoint(n, sc, best, tokens))
    return points
