"""Answers a program can grade: the final number of a reply, and GSM8K (evaluation notebook).

A generated reply is graded by reading its final answer with a parser and comparing it with
the reference. The parser decides the score as much as the model does, so its awkward cases
are written down and tested: thousands commas (``1,234``), a currency sign (``$18``), units
(``18 dollars``, ``5kg``), a trailing period, negative numbers, decimals that are integers
(``18.0``), and GSM8K's own ``#### 42`` marker when the model writes it. One parser serves
both graded tasks of the course: GSM8K here, and integer addition
(:func:`course_utils.rl.parse_answer`, notebook 15).

GSM8K (Cobbe et al., 2021, "Training Verifiers to Solve Math Word Problems"; MIT licence):
grade-school word problems whose worked solutions end with ``#### <answer>``;
:func:`load_gsm8k` reads the registry's offline-first copies (``gsm8k-test``, held out, and
``gsm8k-train``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from decimal import Decimal

from .corpora import fetch

# A number: an optional minus sign ("-" or the Unicode minus), an optional dollar sign, ASCII
# digits with thousands commas ("1,234") or without, and an optional decimal part ("18.0",
# "0.5"). Not part of a longer run of digits, and a minus sign right after a digit is an
# operator: "5-3" holds 5 and 3. A decimal point needs a digit after it, so "68." is 68
# followed by a period; "12,3456" is 12 and 3456 (the commas do not group by three).
NUMBER = re.compile(r"(?<![0-9.])([-\u2212]?)\$?([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(\.[0-9]+)?"
                    r"(?![0-9])")
GSM8K_MARKER = "####"  # GSM8K's solutions end with "#### <answer>"


def _value(match: re.Match) -> int | float:
    sign, whole, fraction = match.groups()
    number = Decimal(("-" if sign else "") + whole.replace(",", "") + (fraction or ""))
    return int(number) if number == number.to_integral_value() else float(number)


def numbers(text: str) -> list[int | float]:
    """Every number in ``text``, in order (see :data:`NUMBER`): ``int`` when it is a whole
    number (``"18.0"`` gives 18), else ``float``."""
    return [_value(m) for m in NUMBER.finditer(text)]


def final_number(text: str) -> int | float | None:
    """The final answer of a reply: the first number after its last ``####`` when it has one
    (GSM8K's marker; a model trained on GSM8K solutions writes it), else its last number;
    ``None`` when there is none.

    ``"The answer is $1,234."`` gives 1234, ``"18.0"`` gives 18, ``"-7"`` gives -7,
    ``"#### 42\\nTo check: 40 + 2"`` gives 42, ``"5-3"`` gives 3, ``"12 apples"`` gives 12 and
    ``"1.5 hours"`` gives 1.5. Whole numbers come back as ``int``, others as ``float``, so
    ``final_number(reply) == answer`` compares with an integer answer exactly.
    """
    if GSM8K_MARKER in text:
        after = numbers(text.rsplit(GSM8K_MARKER, 1)[1])
        if after:
            return after[0]
    found = numbers(text)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------ GSM8K
@dataclass(frozen=True)
class GSM8KProblem:
    """One GSM8K problem: the ``question``, the worked ``solution`` (with its ``<<48/2=24>>``
    calculator annotations, ending in ``#### <answer>``) and the ``answer`` read from it."""

    question: str
    solution: str
    answer: int | float


def reference_answer(solution: str) -> int | float:
    """The answer of a GSM8K solution: the number after its ``####``.

    Raises ``ValueError`` when the solution has no ``####`` followed by a number.
    """
    if GSM8K_MARKER not in solution:
        raise ValueError(f"a GSM8K solution ends with '#### <answer>'; this one has no "
                         f"'####': {solution[-80:]!r}")
    after = numbers(solution.rsplit(GSM8K_MARKER, 1)[1])
    if not after:
        raise ValueError(f"no number after '####' in {solution[-80:]!r}")
    return after[0]


def load_gsm8k(split: str = "test") -> list[GSM8KProblem]:
    """GSM8K's ``"test"`` (1,319 problems, held out) or ``"train"`` (7,473) split, in file
    order, from the registry (``gsm8k-test`` / ``gsm8k-train``: offline copy, cache or
    download, checksummed).

    Raises ``ValueError`` for another split or a line that is not a GSM8K record (the message
    names the line), and the registry's ``DataError`` for a missing or damaged file.
    """
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    path = fetch(f"gsm8k-{split}")
    problems = []
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            problems.append(GSM8KProblem(record["question"], record["answer"],
                                         reference_answer(record["answer"])))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path.name} line {i} is not a GSM8K record "
                             f"(question, answer ending '#### N'): {e}") from None
    return problems


def sample(items: list, n: int, seed: int = 0) -> list:
    """A fixed, seeded subset: ``n`` items drawn without replacement by ``random.Random(seed)``,
    kept in their original order. ``n`` at least ``len(items)`` gives all of them.

    Raises ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
