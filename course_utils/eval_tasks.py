"""The tasks of the report card (evaluation notebook): each a function that measures one
model on one benchmark and returns its per-item outcomes, so that two models can be compared
item by item. :mod:`course_utils.report` puts them together into a card and runs the ``eval``
command.

The tasks (:data:`TASKS`), each returning a :class:`TaskResult` of :class:`Measure` lines:

- ``bpb``: bits per byte (:func:`course_utils.evaluation.text_loss`) of held-out text: the
  last 10% of Tiny Shakespeare, the text no course model trained on, cut into pieces of about
  2,000 characters at speech boundaries (the pieces are the items of the interval). Every
  model, SmolLM2 included, is measured on this same text, so the numbers share one scale; a
  model trained on the web has probably seen Shakespeare (see the notebook's section on
  contamination).
- ``mmlu``: MMLU (:mod:`course_utils.mmlu`) by log-likelihood, in the cloze form (each
  answer's text, scored by its mean log-probability per token) and/or the letter form (``" A"``
  ... ``" D"``), zero- or five-shot; a subset of the test questions stratified by subject.
  Chance is 25%.
- ``gsm8k``: GSM8K test problems as a user message in the chat format, one greedy reply each
  (batched, :func:`course_utils.sampling.rollout`) with a stated token cap, graded by
  :func:`course_utils.answers.final_number`; the share of replies that ended within the cap
  is noted. Five-shot: five solved training problems as earlier turns.
- ``ifeval``: IFEval's prompts (:mod:`course_utils.ifeval`), one greedy reply each with a
  token cap; prompt- and instruction-level accuracy, strict and loose.
- ``addition``: the held-out addition problems of notebook 15 (:func:`course_utils.rl.
  addition_problems`: 200 two-digit problems of seed 1, 100 three-digit ones of seed 2),
  greedy replies of at most 48 tokens, graded by :func:`course_utils.rl.answer_reward`.
- ``chat-stop``: does a chat model end its turn? The first user message of held-out
  Shakespeare conversations (:func:`course_utils.sft.shakespeare_conversations`, the
  validation split of notebook 13), one greedy reply each: the share that ends with
  ``<|im_end|>`` within 128 tokens.

Chat prompts carry no system message unless one is given (``system``), for every model: the
course's chat models were trained without one, and so were notebook 15's fine-tunes of
SmolLM2. A task that cannot apply to a model (no chat tokens; a tokenizer that cannot write the
task's text; a context too short for its prompts) raises :class:`NotApplicable`; the card marks
it "not applicable" when several tasks were asked for, and the command stops with a one-line
error when it was the only one.

Subsets are seeded and nested (:func:`nested_sample`): a smaller card's items are among a
larger card's, so that cards of different sizes still pair item by item. The default subsets
(:data:`CARD_SIZES`) make SmolLM2's card take about half an hour on two CPU cores;
``limit="all"`` measures the complete sets (for a GPU).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import answers, ifeval, mmlu, rl, stats
from .chat import ChatFormat
from .checkpoint import init_sha256, load_checkpoint, model_from_checkpoint
from .corpora import load_text
from .datasets import VAL_FRACTION
from .evaluation import evaluate_choices, text_loss
from .sampling import rollout
from .sft import shakespeare_conversations
from .utils import eval_mode, progress_bar, resolve_device

TASKS = ("bpb", "mmlu", "gsm8k", "ifeval", "addition", "chat-stop")
# Items per task on a CPU (None: the whole set). SmolLM2's card takes about 30 minutes on two
# cores with these; limit="all" measures every item (14,042 MMLU questions, 1,319 GSM8K ones).
CARD_SIZES = {"bpb": None, "mmlu": 1000, "gsm8k": 250, "ifeval": None, "addition": None,
              "chat-stop": 100}
# The longest reply each generating task allows, in tokens.
MAX_NEW_TOKENS = {"gsm8k": 256, "ifeval": 256, "addition": 48, "chat-stop": 128}
MMLU_FORMS = ("cloze", "letter")
CHUNK_CHARS = 2000  # bits per byte: the held-out text in pieces of about this many characters
BATCH_SIZE = 16  # prompts generated together (one left-padded batch)


class NotApplicable(ValueError):
    """A task that cannot measure this model; the message says why."""


# ------------------------------------------------------------------------ the measurements
@dataclass
class Measure:
    """One line of a card: per item (``ids``, in order) either right/wrong (``correct``,
    ``kind="accuracy"``, with the score of guessing ``chance``) or the bits and bytes of a
    piece of text (``bits``, ``n_bytes``, ``kind="bpb"``)."""

    name: str
    kind: str
    ids: list[str]
    correct: list[bool] | None = None
    chance: float | None = None
    bits: list[float] | None = None
    n_bytes: list[int] | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def accuracy(self) -> stats.Accuracy:
        """The accuracy with its Wilson interval (:func:`course_utils.stats.accuracy`)."""
        return stats.accuracy(self.correct, chance=self.chance)

    def bpb(self) -> tuple[float, float, float]:
        """``(bits per byte, low, high)``: all bits over all bytes, and a 95% percentile
        bootstrap interval that resamples the pieces of text."""
        bits, n_bytes = np.asarray(self.bits), np.asarray(self.n_bytes, dtype=float)
        low, high = _ratio_interval(bits, n_bytes)
        return float(bits.sum() / n_bytes.sum()), low, high

    def value(self) -> float:
        """The headline number: an accuracy (proportion) or bits per byte."""
        return self.accuracy().value if self.kind == "accuracy" else self.bpb()[0]

    def summary(self) -> str:
        """``30.1% [27.3, 33.0] (chance 25%)`` or ``1.234 [1.201, 1.267]``."""
        if self.kind == "accuracy":
            return str(self.accuracy())
        value, low, high = self.bpb()
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"

    def subset(self, keep: list[str]) -> Measure:
        """The same measure on the items ``keep`` (ids), in that order. Raises ``ValueError``
        when this measure's ids repeat (a card from before instruction ids were made unique):
        its items could not be told apart; measure it again with ``--fresh``."""
        at = {item: i for i, item in enumerate(self.ids)}
        if len(at) != len(self.ids):
            raise ValueError(f"{self.name!r} names {len(self.ids) - len(at)} item(s) twice, so "
                             "its items cannot be paired; measure it again with --fresh")
        pick = [at[k] for k in keep]
        return Measure(self.name, self.kind, list(keep),
                       None if self.correct is None else [self.correct[i] for i in pick],
                       self.chance, None if self.bits is None else [self.bits[i] for i in pick],
                       None if self.n_bytes is None else [self.n_bytes[i] for i in pick])


def _ratio_interval(num: np.ndarray, den: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of ``sum(num) / sum(den)`` over items (both resampled together)."""
    index = np.arange(len(num), dtype=float)

    def ratio(idx, axis):
        idx = idx.astype(int)
        return num[idx].sum(axis=axis) / den[idx].sum(axis=axis)

    if len(num) < 2:
        value = float(num.sum() / den.sum())
        return value, value
    return stats.bootstrap_interval(index, ratio, seed=seed)


@dataclass
class TaskResult:
    """What one task measured on one model: its ``measures``, the ``settings`` it ran with
    (subset size, seed, token cap ...), the wall-clock ``seconds`` it took, ``notes`` for the
    reader (how many replies ended within the cap), the generated ``replies`` (generating
    tasks), or why it did not apply (``not_applicable``)."""

    task: str
    settings: dict
    measures: list[Measure] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    replies: list[str] | None = None
    not_applicable: str | None = None
    request: dict = field(default_factory=dict)  # the arguments it ran with (request_of)
    reused: bool = False  # read back from report.json rather than measured now

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("reused")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TaskResult:
        measures = [Measure(**m) for m in d.get("measures", [])]
        return cls(d["task"], d["settings"], measures, float(d.get("seconds", 0.0)),
                   list(d.get("notes", [])), d.get("replies"), d.get("not_applicable"),
                   dict(d.get("request", {})))


# ------------------------------------------------------------------------------ the subject
@dataclass
class Subject:
    """The model a card measures: its ``name`` (a released model's or a run folder's), the
    ``model`` and ``tokenizer``, its :class:`~course_utils.chat.ChatFormat` (``None`` when it
    is not a chat model), and the sha256 of the file it came from (``fingerprint``)."""

    name: str
    model: nn.Module
    tokenizer: object
    fmt: ChatFormat | None
    fingerprint: str

    @classmethod
    def of(cls, name: str, model: nn.Module, tokenizer, fingerprint: str = "") -> Subject:
        """A subject from a model in memory; its chat format when its tokenizer has the
        ChatML tokens (no default system message)."""
        try:
            fmt = ChatFormat(tokenizer)
        except ValueError:
            fmt = None
        return cls(name, model.eval(), tokenizer, fmt, fingerprint)


def load_subject(model: str | None = None, checkpoint: str | Path | None = None,
                 device: str = "auto") -> Subject:
    """The subject of ``--model NAME`` (a released model, e.g. ``smollm2-135m-instruct``, with
    its full context) or ``--checkpoint RUN_DIR`` (a course run, LoRA runs merged).

    Raises ``ValueError`` unless exactly one is given, for an unknown model or a damaged
    checkpoint; ``FileNotFoundError`` for a missing model file or checkpoint.
    """
    if (model is None) == (checkpoint is None):
        raise ValueError("give exactly one of --model NAME and --checkpoint RUN_DIR")
    device = resolve_device(device)
    if model is not None:
        from .pretrained import load_pretrained

        name = model.lower()
        p = load_pretrained(name)
        return Subject.of(name, p.model.to(device), p.tokenizer, init_sha256(name))
    net, tokenizer = model_from_checkpoint(load_checkpoint(checkpoint), device)
    return Subject.of(str(checkpoint), net, tokenizer, init_sha256(str(checkpoint)))


def _need_chat(subject: Subject, task: str) -> ChatFormat:
    if subject.fmt is None:
        raise NotApplicable(f"{task} asks through the chat format and the tokenizer of "
                            f"{subject.name} has no <|im_start|>/<|im_end|> tokens (not a chat "
                            f"model; fine-tune it for chat first, notebook 13)")
    return subject.fmt


def _encode(subject: Subject, task: str, texts) -> list[list[int]]:
    """Plain-text ids of each text, or :class:`NotApplicable` when the tokenizer cannot
    write one (a character model meets a character it never saw)."""
    try:
        return [subject.tokenizer.encode_ordinary(t) for t in texts]
    except ValueError as e:
        raise NotApplicable(f"the tokenizer of {subject.name} cannot write {task}'s text: "
                            f"{' '.join(str(e).split())[:160]}") from None


def _check_fits(subject: Subject, task: str, lengths: list[int], extra: int, what: str) -> None:
    block = subject.model.config.block_size
    too_long = [n for n in lengths if n + extra > block]
    if too_long:
        raise NotApplicable(
            f"the context of {subject.name} ({block} tokens) is too short for {task}: "
            f"{len(too_long)} of {len(lengths)} {what} do not fit (the longest needs "
            f"{max(too_long) + extra})")


def _size(task: str, limit, total: int) -> int:
    """How many items of ``total`` a task takes for ``limit`` (None: the card's size;
    ``"all"``: every item; N: at most N)."""
    if limit == "all":
        return total
    if limit is None:
        return total if CARD_SIZES[task] is None else min(CARD_SIZES[task], total)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive number of items or 'all', got {limit!r}")
    return min(limit, total)


def nested_sample(items: list, n: int, seed: int = 0, group=None) -> list:
    """``n`` of ``items``, seeded, in their original order, such that a smaller sample is
    always part of a larger one (same seed): the first ``n`` of one seeded order of all items.
    So a card measured on 200 items pairs with one measured on 1,000 on those 200.

    With ``group`` (a function item -> its group, e.g. an MMLU question's subject) the order
    is stratified: each group's items are shuffled, and the ``k``-th place of the order goes
    to the group furthest behind its share (the largest ``k * size / total - taken``; ties
    in a seeded order), which keeps every prefix within one item of each group's
    proportional share (tested). Raises ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(group(item) if group else None, []).append(i)
    queues = list(groups.values())
    for members in queues:
        rng.shuffle(members)
    rng.shuffle(queues)  # the order in which ties go
    total, taken, order = len(items), [0] * len(queues), []
    for k in range(1, min(n, total) + 1):
        g = max((g for g in range(len(queues)) if taken[g] < len(queues[g])),
                key=lambda g: k * len(queues[g]) / total - taken[g])
        order.append(queues[g][taken[g]])
        taken[g] += 1
    return [items[i] for i in sorted(order)]


# ------------------------------------------------------------------------ generation
def generate_replies(subject: Subject, prompts: list[list[int]], max_new_tokens: int,
                     batch_size: int = BATCH_SIZE, desc: str = "replies",
                     progress: bool = True) -> tuple[list[str], list[bool]]:
    """One greedy reply to each prompt (ids ending with ``<|im_start|>assistant\\n``) ->
    ``(replies, ended)``: the text of each reply (without ``<|im_end|>``) and whether it ended
    with ``<|im_end|>`` within ``max_new_tokens`` tokens.

    Prompts of similar length go together: sorted by length, ``batch_size`` at a time through
    :func:`course_utils.sampling.rollout` (left-padded, each row stopping at its own
    ``<|im_end|>``; greedy rows equal one prompt at a time, as tested there). Replies come
    back in the prompts' order. Raises the errors of ``rollout``.
    """
    fmt = _need_chat(subject, desc)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    ended: list[bool] = [False] * len(prompts)
    with torch.no_grad(), eval_mode(subject.model), progress_bar(
            total=len(prompts), desc=desc, unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            out = rollout(subject.model, [prompts[i] for i in chunk], 1, max_new_tokens,
                          fmt.im_end, temperature=0.0)
            for i, tokens in zip(chunk, out.completions):
                ended[i] = bool(tokens) and tokens[-1] == fmt.im_end
                replies[i] = fmt.tokenizer.decode(tokens[:-1] if ended[i] else tokens)
            bar.update(len(chunk))
    return replies, ended


def _chat_prompts(subject: Subject, task: str, users: list[str], max_new_tokens: int,
                  system: str | None = None, shots: list[tuple[str, str]] = ()
                  ) -> list[list[int]]:
    fmt = _need_chat(subject, task)
    head = [] if system is None else [{"role": "system", "content": system}]
    for question, answer in shots:
        head += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    try:
        prompts = [fmt.encode(head + [{"role": "user", "content": u}]) for u in users]
    except ValueError as e:
        raise NotApplicable(f"the tokenizer of {subject.name} cannot write {task}'s text: "
                            f"{' '.join(str(e).split())[:160]}") from None
    _check_fits(subject, task, [len(p) for p in prompts], max_new_tokens,
                f"prompts plus a reply of {max_new_tokens} tokens")
    return prompts


def _ended_note(ended: list[bool], max_new_tokens: int) -> str:
    return (f"{sum(ended)}/{len(ended)} replies ended with <|im_end|> within "
            f"{max_new_tokens} tokens")


# ------------------------------------------------------------------------------ the tasks
def heldout_text() -> str:
    """The last 10% of Tiny Shakespeare (the validation split every course model left out of
    its training: :func:`course_utils.datasets.train_val_split`'s cut, in characters)."""
    text = load_text("tinyshakespeare")
    return text[int(len(text) * (1 - VAL_FRACTION)):]


def text_pieces(text: str, chars: int = CHUNK_CHARS) -> list[tuple[int, str]]:
    """``text`` cut at blank lines (speech boundaries) into pieces of at least ``chars``
    characters (the last may be shorter) -> ``[(offset, piece)]``; the pieces put together
    give the text back."""
    pieces, start = [], 0
    for m in re.finditer(r"\n\n", text):
        if m.end() - start >= chars:
            pieces.append((start, text[start:m.end()]))
            start = m.end()
    if start < len(text):
        pieces.append((start, text[start:]))
    return pieces


def eval_bpb(subject: Subject, limit=None, seed: int = 0, progress: bool = True) -> TaskResult:
    """Bits per byte of the held-out Shakespeare (:func:`heldout_text`), piece by piece
    (:func:`text_pieces`; each piece scored on its own, its first token as context only, see
    :func:`course_utils.evaluation.text_loss`). ``limit`` pieces are a seeded sample."""
    pieces = text_pieces(heldout_text())
    n = _size("bpb", limit, len(pieces))
    chosen = nested_sample(pieces, n, seed)
    settings = {"text": "tinyshakespeare, last 10%", "chunk_chars": CHUNK_CHARS, "n": n,
                "seed": seed}
    _encode(subject, "bpb", [p for _, p in chosen])  # NotApplicable before any work
    bits, n_bytes, tokens = [], [], 0
    for _, piece in progress_bar(chosen, desc="bpb", unit="piece", disable=not progress):
        loss = text_loss(subject.model, subject.tokenizer, piece)
        bits.append(loss.nats / math.log(2))
        n_bytes.append(loss.n_bytes)
        tokens += loss.tokens
    measure = Measure("bits per byte, held-out Shakespeare", "bpb",
                      [f"chars {o}-{o + len(p)}" for o, p in chosen], bits=bits,
                      n_bytes=n_bytes)
    note = (f"{sum(n_bytes):,} bytes in {n} pieces, {tokens:,} tokens scored "
            f"({sum(n_bytes) / tokens:.2f} bytes per token); lower is better")
    return TaskResult("bpb", settings, [measure], notes=[note])


def eval_mmlu(subject: Subject, limit=None, forms=("cloze",), shots: int = 0, seed: int = 0,
              progress: bool = True) -> TaskResult:
    """MMLU test questions (a seeded subset stratified by subject, :func:`nested_sample`)
    scored by log-likelihood in each of ``forms`` (``"cloze"``: the
    answers' texts by mean log-probability per token; ``"letter"``: ``" A"`` ... ``" D"``)
    after ``shots`` (0-5) solved examples of the subject. Chance is 25%."""
    forms = tuple(forms)
    if not forms or any(f not in MMLU_FORMS for f in forms):
        raise ValueError(f"MMLU forms must be among {', '.join(MMLU_FORMS)}, got {forms}")
    questions = mmlu.load_mmlu("test")
    position, seen = [], {}
    for q in questions:  # each question's place in its subject's file: its id
        seen[q.subject] = seen.get(q.subject, -1) + 1
        position.append(f"{q.subject}/{seen[q.subject]}")
    ids_of = {id(q): i for i, q in zip(position, questions)}
    n = _size("mmlu", limit, len(questions))
    chosen = nested_sample(questions, n, seed, group=lambda q: q.subject)
    ids = [ids_of[id(q)] for q in chosen]
    settings = {"n": n, "forms": list(forms), "shots": shots, "seed": seed}
    result = TaskResult("mmlu", settings)
    for form in forms:
        items = mmlu.mmlu_items(chosen, form, shots)
        contexts = _encode(subject, "mmlu", [it.context for it in items])
        longest = [len(c) + max(len(o) for o in _encode(subject, "mmlu", it.options))
                   for c, it in zip(contexts, items)]
        _check_fits(subject, "mmlu", longest, 0,
                    f"{form} questions ({shots}-shot) with their longest answer")
    for form in forms:
        items = mmlu.mmlu_items(chosen, form, shots)
        scored = evaluate_choices(subject.model, subject.tokenizer, items, progress=progress)
        normalize = "mean" if form == "cloze" else "sum"
        name = f"MMLU, {form}, {shots}-shot"
        result.measures.append(Measure(name, "accuracy", ids, scored.correct(normalize),
                                       mmlu.CHANCE))
    how = {"cloze": "cloze: the answer's text, mean log-probability per token",
           "letter": "letter: ' A' to ' D' after the listed options"}
    result.notes += [how[f] for f in forms]
    return result


def _strip_calculator(solution: str) -> str:
    return re.sub(r"<<[^>]*>>", "", solution)  # GSM8K's "<<48/2=24>>" annotations


def eval_gsm8k(subject: Subject, limit=None, shots: int = 0, max_new_tokens: int | None = None,
               system: str | None = None, seed: int = 0, batch_size: int = BATCH_SIZE,
               progress: bool = True) -> TaskResult:
    """GSM8K test problems (a seeded sample) asked as a user message, one greedy reply each of
    at most ``max_new_tokens`` (default 256), graded by its final number
    (:func:`course_utils.answers.final_number`: GSM8K's ``####`` marker, else the last number).
    With ``shots`` the first training problems come first as solved turns (their solutions
    without the calculator annotations, ending ``#### answer``)."""
    cap = MAX_NEW_TOKENS["gsm8k"] if max_new_tokens is None else max_new_tokens
    problems = answers.load_gsm8k("test")
    index = {id(p): i for i, p in enumerate(problems)}
    n = _size("gsm8k", limit, len(problems))
    chosen = nested_sample(problems, n, seed)
    examples = [(p.question, _strip_calculator(p.solution))
                for p in answers.load_gsm8k("train")[:shots]]
    prompts = _chat_prompts(subject, "gsm8k", [p.question for p in chosen], cap, system,
                            examples)
    replies, ended = generate_replies(subject, prompts, cap, batch_size, "gsm8k", progress)
    correct = [answers.final_number(r) == p.answer for r, p in zip(replies, chosen)]
    settings = {"n": n, "shots": shots, "max_new_tokens": cap, "system": system, "seed": seed}
    measure = Measure(f"GSM8K, {shots}-shot, greedy", "accuracy",
                      [f"test/{index[id(p)]}" for p in chosen], correct)
    return TaskResult("gsm8k", settings, [measure], notes=[_ended_note(ended, cap)],
                      replies=replies)


def eval_ifeval(subject: Subject, limit=None, max_new_tokens: int | None = None,
                system: str | None = None, seed: int = 0, batch_size: int = BATCH_SIZE,
                progress: bool = True) -> TaskResult:
    """IFEval prompts (all 541, or a seeded sample) as a user message, one greedy reply each
    of at most ``max_new_tokens`` (default 256), checked by :func:`course_utils.ifeval.
    evaluate_responses`: prompt level (all of a prompt's instructions followed) and
    instruction level, strict and loose. The instruction-level items of one prompt are not
    independent, so their interval is a little too narrow."""
    cap = MAX_NEW_TOKENS["ifeval"] if max_new_tokens is None else max_new_tokens
    prompts_all = ifeval.load_ifeval()
    n = _size("ifeval", limit, len(prompts_all))
    chosen = nested_sample(prompts_all, n, seed)
    prompts = _chat_prompts(subject, "ifeval", [p.prompt for p in chosen], cap, system)
    replies, ended = generate_replies(subject, prompts, cap, batch_size, "ifeval", progress)
    scores = ifeval.evaluate_responses(chosen, replies)
    prompt_ids = [f"key/{p.key}" for p in chosen]
    # a prompt may ask for one instruction type twice (with other arguments): its position
    # keeps every id unique, so paired comparisons match item for item
    inst_ids = [f"key/{p.key}/{j}/{i}" for p in chosen for j, i in enumerate(p.instruction_ids)]
    measures = [Measure(f"IFEval, {level} level, {mode}", "accuracy",
                        prompt_ids if level == "prompt" else inst_ids,
                        scores.outcomes(level, mode))
                for level in ("prompt", "instruction") for mode in ("strict", "loose")]
    settings = {"n": n, "max_new_tokens": cap, "system": system, "seed": seed}
    return TaskResult("ifeval", settings, measures, notes=[_ended_note(ended, cap)],
                      replies=replies)


def addition_sets(limit=None) -> dict[str, list[rl.Problem]]:
    """Notebook 15's held-out addition problems: ``"2-digit"`` (200, seed 1) and ``"3-digit"``
    (100, seed 2); with a numeric ``limit`` the first ``limit`` of each."""
    sets = {"2-digit": rl.addition_problems(200, digits=2, seed=1),
            "3-digit": rl.addition_problems(100, digits=3, seed=2)}
    return {k: v[:_size("addition", limit, len(v))] for k, v in sets.items()}


def eval_addition(subject: Subject, limit=None, max_new_tokens: int | None = None,
                  system: str | None = None, batch_size: int = BATCH_SIZE,
                  progress: bool = True) -> TaskResult:
    """Integer addition as notebook 15 measures it (:func:`addition_sets`; the question as a
    user message, one greedy reply of at most ``max_new_tokens``, default 48; right when its
    final integer is the sum, :func:`course_utils.rl.answer_reward`)."""
    cap = MAX_NEW_TOKENS["addition"] if max_new_tokens is None else max_new_tokens
    sets = addition_sets(limit)
    result = TaskResult("addition", {"n": {k: len(v) for k, v in sets.items()},
                                     "max_new_tokens": cap, "system": system})
    result.replies = []
    for name, problems in sets.items():
        prompts = _chat_prompts(subject, "addition", [p.question for p in problems], cap,
                                system)
        replies, ended = generate_replies(subject, prompts, cap, batch_size,
                                          f"addition {name}", progress)
        correct = [rl.answer_reward(r, p.answer) == 1.0 for r, p in zip(replies, problems)]
        result.measures.append(Measure(f"addition, {name}", "accuracy",
                                       [f"{name}/{i}" for i in range(len(problems))], correct))
        result.notes.append(f"{name}: {_ended_note(ended, cap)}")
        result.replies += replies
    return result


def chat_stop_prompts() -> list[str]:
    """The first user message of each held-out Shakespeare conversation (notebook 13's
    validation split)."""
    return [c.messages[0]["content"] for c in shakespeare_conversations()[1]]


def eval_chat_stop(subject: Subject, limit=None, max_new_tokens: int | None = None,
                   system: str | None = None, seed: int = 0, batch_size: int = BATCH_SIZE,
                   progress: bool = True) -> TaskResult:
    """Does the model end its turn? A greedy reply (at most ``max_new_tokens``, default 128)
    to the first user message of held-out Shakespeare conversations (a seeded sample of
    :func:`chat_stop_prompts`); right when it ends with ``<|im_end|>``."""
    cap = MAX_NEW_TOKENS["chat-stop"] if max_new_tokens is None else max_new_tokens
    users = chat_stop_prompts()
    index = {u: i for i, u in reversed(list(enumerate(users)))}
    n = _size("chat-stop", limit, len(users))
    chosen = nested_sample(users, n, seed)
    prompts = _chat_prompts(subject, "chat-stop", chosen, cap, system)
    replies, ended = generate_replies(subject, prompts, cap, batch_size, "chat-stop", progress)
    measure = Measure(f"replies ended within {cap} tokens", "accuracy",
                      [f"val/{index[u]}" for u in chosen], ended)
    mean_chars = sum(map(len, replies)) / len(replies)
    return TaskResult("chat-stop", {"n": n, "max_new_tokens": cap, "system": system,
                                    "seed": seed}, [measure],
                      notes=[f"replies of {mean_chars:.0f} characters on average"],
                      replies=replies)



TASK_FUNCTIONS = {"bpb": eval_bpb, "mmlu": eval_mmlu, "gsm8k": eval_gsm8k,
                  "ifeval": eval_ifeval, "addition": eval_addition, "chat-stop": eval_chat_stop}
