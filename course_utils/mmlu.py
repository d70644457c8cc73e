"""MMLU: loading, a stratified subset, and its prompts in two forms (evaluation notebook).

MMLU (Hendrycks et al., 2021, "Measuring Massive Multitask Language Understanding"; MIT
licence): four-option questions in 57 subjects, from elementary mathematics to professional
law. The original CSV files (``question,A,B,C,D,answer``, no header) come in three splits:
``dev`` (5 questions per subject, the few-shot examples), ``val`` and ``test`` (14,042
questions). Guessing scores 25% (:data:`CHANCE`).

Two ways to ask a question (:func:`mmlu_item`), both scored by log-likelihood
(:func:`course_utils.evaluation.score_options`), so no text is generated:

- ``"letter"``: the standard MMLU prompt of Hendrycks et al. (their ``evaluate.py``), the
  options listed as ``A. ...`` to ``D. ...`` and ``Answer:``; the options scored are
  ``" A"``, ``" B"``, ``" C"``, ``" D"``. A model must have learned the format of lettered
  answers to do better than chance.
- ``"cloze"``: the question alone after ``Question:``, then ``Answer:``; the options scored are
  the answer texts themselves. It works for small models that do not yet follow the lettered
  format, but compares answers of different lengths and frequencies (hence the
  length-normalised mean; Gu et al., 2024, "OLMES").

With ``shots=k`` the first ``k`` (at most 5) ``dev`` questions of the same subject come first,
each with its answer, in the same form. The header says "about {subject}" with one space;
Hendrycks' script writes two (its ``format_subject`` starts the subject with a space).
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .corpora import fetch
from .evaluation import MultipleChoice

CHANCE = 0.25  # four options
LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")


@dataclass(frozen=True)
class MMLUQuestion:
    """One MMLU question: ``subject`` (file name stem, e.g. ``"high_school_biology"``), the
    ``question``, its four ``choices`` and the index of the right one, ``answer`` (0-3)."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int


def subjects() -> list[str]:
    """The 57 subjects, sorted (from the ``test`` folder's file names)."""
    return sorted(p.name.removesuffix("_test.csv") for p in (fetch("mmlu") / "test").glob(
        "*_test.csv"))


def load_mmlu(split: str = "test", subject_list: Sequence[str] | None = None
              ) -> list[MMLUQuestion]:
    """The questions of one split (``"dev"``, ``"val"`` or ``"test"``), subject by subject in
    sorted order, each file in its own order; ``subject_list`` keeps only those subjects.

    The folder comes from the registry (``mmlu``: offline copy, cache or download, every file
    checksummed). Raises ``ValueError`` for an unknown split or subject, or a row that is not
    ``question,A,B,C,D,answer`` with an answer in A-D (the message names the file and row),
    and the registry's ``DataError``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    known = subjects()
    chosen = known if subject_list is None else list(subject_list)
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ValueError(f"unknown MMLU subjects {unknown}; e.g. {', '.join(known[:3])} ...")
    folder = fetch("mmlu") / split
    questions = []
    for subject in chosen:
        path = folder / f"{subject}_{split}.csv"
        with open(path, newline="", encoding="utf-8") as f:
            for row_number, row in enumerate(csv.reader(f), 1):
                if len(row) != 6 or row[5] not in LETTERS:
                    raise ValueError(f"{split}/{path.name} row {row_number} is not "
                                     f"question,A,B,C,D,answer (answer A-D): {row[:1]} ...")
                questions.append(MMLUQuestion(subject, row[0], tuple(row[1:5]),
                                              LETTERS.index(row[5])))
    return questions


def stratified_sample(questions: Sequence[MMLUQuestion], n: int, seed: int = 0
                      ) -> list[MMLUQuestion]:
    """``n`` questions drawn so that each subject keeps its share of ``questions``.

    Each subject gets ``n * size / total`` questions, rounded by largest remainder (ties to
    the larger subject, then by name) so that they add up to ``n``; within a subject they are
    drawn without replacement by ``random.Random(seed)``, and kept in their original order.
    ``n`` at least ``len(questions)`` gives them all. Raises ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n >= len(questions):
        return list(questions)
    by_subject: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_subject.setdefault(q.subject, []).append(i)
    quota = {s: n * len(ix) / len(questions) for s, ix in by_subject.items()}
    counts = {s: int(q) for s, q in quota.items()}
    short = n - sum(counts.values())
    for s in sorted(quota, key=lambda s: (-(quota[s] - counts[s]), -len(by_subject[s]), s)
                    )[:short]:
        counts[s] += 1
    rng = random.Random(seed)
    keep = []
    for s in sorted(by_subject):
        keep += rng.sample(by_subject[s], counts[s])
    return [questions[i] for i in sorted(keep)]


def format_subject(subject: str) -> str:
    """``"high_school_biology"`` -> ``"high school biology"``."""
    return subject.replace("_", " ")


def _block(q: MMLUQuestion, form: str, with_answer: bool) -> str:
    if form == "letter":
        text = q.question + "".join(f"\n{letter}. {choice}"
                                    for letter, choice in zip(LETTERS, q.choices)) + "\nAnswer:"
        return text + (f" {LETTERS[q.answer]}\n\n" if with_answer else "")
    text = f"Question: {q.question}\nAnswer:"
    return text + (f" {q.choices[q.answer]}\n\n" if with_answer else "")


def mmlu_item(question: MMLUQuestion, form: str = "letter",
              shots: Sequence[MMLUQuestion] = ()) -> MultipleChoice:
    """The question as a :class:`~course_utils.evaluation.MultipleChoice` in ``form``
    ``"letter"`` or ``"cloze"`` (see the module docstring), after the examples ``shots``
    (usually :func:`dev_shots`), each with its answer.

    Letter form, zero-shot::

        The following are multiple choice questions (with answers) about astronomy.

        What is true for a type-Ia supernova?
        A. ...
        B. ...
        C. ...
        D. ...
        Answer:

    options ``" A"`` ... ``" D"``. Cloze form: ``The following are questions (with answers)
    about astronomy.``, then ``Question: ...`` and ``Answer:``; options are ``" "`` + each
    choice's text. Raises ``ValueError`` for another form.
    """
    if form not in ("letter", "cloze"):
        raise ValueError(f"form must be 'letter' or 'cloze', got {form!r}")
    kind = "multiple choice questions" if form == "letter" else "questions"
    header = f"The following are {kind} (with answers) about {format_subject(question.subject)}."
    context = header + "\n\n" + "".join(_block(s, form, True) for s in shots)
    context += _block(question, form, False)
    options = tuple(f" {x}" for x in (LETTERS if form == "letter" else question.choices))
    return MultipleChoice(context, options, question.answer)


def dev_shots(k: int = 5) -> dict[str, list[MMLUQuestion]]:
    """The first ``k`` ``dev`` questions of every subject (there are 5), the few-shot examples.
    Raises ``ValueError`` for ``k`` outside ``[0, 5]``."""
    if not 0 <= k <= 5:
        raise ValueError(f"k must be in [0, 5] (MMLU's dev split has 5 per subject), got {k}")
    shots: dict[str, list[MMLUQuestion]] = {}
    for q in load_mmlu("dev"):
        if len(shots.setdefault(q.subject, [])) < k:
            shots[q.subject].append(q)
    return shots


def mmlu_items(questions: Sequence[MMLUQuestion], form: str = "letter", shots: int = 0
               ) -> list[MultipleChoice]:
    """:func:`mmlu_item` for each question, with ``shots`` dev examples of its subject."""
    examples = dev_shots(shots) if shots else {}
    return [mmlu_item(q, form, examples.get(q.subject, ())) for q in questions]
