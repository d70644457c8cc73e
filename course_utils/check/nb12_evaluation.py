"""The checks of notebook 12 (evaluation): ``bits_per_byte``, ``final_number``,
``wilson_interval``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb12_evaluation.py``. The references: the bits of a text computed
with ``math.log`` and ``str.encode``, the course's :func:`course_utils.answers.final_number`
(tested on GSM8K's own solutions), and :func:`course_utils.stats.wilson_interval` (tested
against statsmodels and Newcombe's worked examples).
"""

from __future__ import annotations

import math

import torch

from .core import NotAttempted, Wrong, _exercise, _number


@_exercise("12", (
    "Add up the nats of all tokens, turn nats into bits (divide by ln 2, math.log(2)), and "
    "divide by the number of bytes of the text in UTF-8 (len(text.encode('utf-8'))), which is "
    "not its number of characters when it has accents or dashes.",
    "return token_nats.sum().item() / math.log(2) / len(text.encode('utf-8'))",
))
def bits_per_byte(fn):
    """``bits_per_byte(token_nats (T,), text) -> float``: the text's bits per UTF-8 byte."""
    g = torch.Generator().manual_seed(12)
    for nats, text in ((torch.tensor([2.0, 1.5, 0.5, 3.0]), "hello world"),
                       (torch.rand(7, generator=g) * 4, "café, naïve — déjà vu"),
                       (torch.rand(40, generator=g) * 3, "To be, or not to be: that is the "
                                                          "question. " * 3)):
        call = f"bits_per_byte(token_nats ({len(nats)},), {text[:24]!r}...)"
        got = fn(nats.clone(), text)
        total, n_bytes = nats.sum().item(), len(text.encode("utf-8"))
        expected = total / math.log(2) / n_bytes
        mistakes = [
            (total / n_bytes, f"{call}: that is nats per byte; divide the nats by ln 2 "
                              f"(math.log(2)) to get bits"),
            (total * math.log(2) / n_bytes, f"{call}: multiplied by ln 2; bits = nats / ln 2"),
            (total / math.log(10) / n_bytes, f"{call}: divided by ln 10; a bit is log base 2, "
                                             f"so divide by math.log(2)"),
            (total / math.log(2) / len(nats), f"{call}: that is bits per token; divide by the "
                                              f"text's bytes instead"),
            (nats.mean().item() / math.log(2) / n_bytes,
             f"{call}: the mean of the nats; add them up (sum) before dividing by the bytes"),
        ]
        if len(text) != n_bytes:
            mistakes.append((total / math.log(2) / len(text),
                             f"{call}: divided by {len(text)} characters; the text has "
                             f"{n_bytes} bytes in UTF-8: len(text.encode('utf-8'))"))
        _number(got, expected, call, mistakes, rel=1e-6)


# (reply, its final answer): the cases a GSM8K grader meets
_REPLIES = (
    ("Tom has 3 apples and buys 5 more, so he has 8.", 8),
    ("The total is 1,234 dollars.", 1234),
    ("Each costs $18, so she pays $54.", 54),
    ("It takes 1.5 hours.", 1.5),
    ("The temperature falls to -7 degrees.", -7),
    ("The shop is open 9-17", 17),
    ("He paid 68.", 68),
    ("#### 72\nTo check: 48 + 24", 72),
    ("That is 18.0 liters.", 18),
    ("I do not know.", None),
    ("10 - 4 leaves 6 cookies, and 2 more makes 8", 8),
)


@_exercise("12", (
    "Find every number with one regular expression: an optional '-' that does not follow a "
    "digit, an optional '$', digits (with thousands commas, or without), an optional decimal "
    "part. If the text has '####', take the first number after the last '####'; else the last "
    "number. Remove commas and '$', then int for whole numbers, float otherwise.",
    r"NUMBER = r'(?<![\d.])-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)'; look in "
    r"text.rsplit('####', 1)[1] first; value = float(s.replace(',', '').replace('$', '')); "
    "return int(value) if value.is_integer() else value",
), in_place=True, stand_in="answers:final_number")  # in_place: None is a right answer here;
# the check tells a stub by its first reply
def final_number(fn):
    """``final_number(text) -> int | float | None``: the final answer of a reply."""
    for text, expected in _REPLIES:
        call = f"final_number({text!r})"
        got = fn(text)
        if got is None and text == _REPLIES[0][0]:
            raise NotAttempted
        if isinstance(got, bool) or not (got is None or isinstance(got, (int, float))):
            raise Wrong(f"{call} returned {got!r}, a {type(got).__name__}; return a number "
                        f"(int or float) or None")
        if got == expected and (got is None) == (expected is None):
            continue
        if expected is None:
            raise Wrong(f"{call} returned {got!r}; with no number in the text return None")
        if got is None:
            raise Wrong(f"{call} returned None; the text ends with the number {expected}")
        if text.startswith("Tom") and got == 3:
            raise Wrong(f"{call} returned 3, the first number; the final answer is the last")
        if expected == 1234 and got in (234, 1):
            raise Wrong(f"{call} returned {got}: '1,234' is one number, written with a "
                        f"thousands comma")
        if expected == 1.5 and got in (1, 5):
            raise Wrong(f"{call} returned {got}: '1.5' is one number with a decimal part")
        if expected == -7 and got == 7:
            raise Wrong(f"{call} returned 7: the minus sign belongs to the number")
        if expected == 17 and got == -17:
            raise Wrong(f"{call} returned -17: a '-' right after a digit is a dash or a minus "
                        f"operator (9-17), not the sign of 17")
        if expected == 72 and got == 24:
            raise Wrong(f"{call} returned 24: after GSM8K's '####' marker the answer is the "
                        f"first number that follows it, whatever comes later")
        raise Wrong(f"{call} returned {got!r}, expected {expected!r}")


def _wald(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def _wilson(k: int, n: int, z: float, quarter: bool = True, shift: bool = True):
    p, denom = k / n, 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom if shift else p
    half = z / denom * math.sqrt(p * (1 - p) / n + (z * z / (4 * n * n) if quarter else 0.0))
    return centre - half, centre + half


@_exercise("12", (
    "With p = successes / n and z = 1.96 (95%): the centre is (p + z^2 / 2n) / (1 + z^2 / n) "
    "and the half-width z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2); return "
    "(centre - half, centre + half).",
    "p = successes / n; z = 1.959964; d = 1 + z * z / n; c = (p + z * z / (2 * n)) / d; "
    "h = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)); return c - h, c + h",
), stand_in="stats:wilson_interval")
def wilson_interval(fn):
    """``wilson_interval(successes, n) -> (low, high)``: the 95% Wilson score interval."""
    from ..stats import wilson_interval as reference

    z = 1.959963984540054
    for k, n in ((81, 263), (0, 10), (10, 10), (3, 7), (412, 1000)):
        call = f"wilson_interval({k}, {n})"
        got = fn(k, n)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"{call} returned {type(got).__name__} {got!r:.40}; return two numbers, "
                        f"(low, high)")
        low, high = reference(k, n)
        if (isinstance(got[0], (int, float)) and isinstance(got[1], (int, float))
                and math.isclose(got[0], high, abs_tol=1e-6)
                and math.isclose(got[1], low, abs_tol=1e-6) and low != high):
            raise Wrong(f"{call} returned (high, low); return (low, high)")
        if (all(isinstance(x, (int, float)) for x in got) and low > 1e-3
                and math.isclose(got[0], 100 * low, rel_tol=1e-4)
                and math.isclose(got[1], 100 * high, rel_tol=1e-4)):
            raise Wrong(f"{call}: in percent; return proportions between 0 and 1")
        mistakes = [
            (_wald(k, n, z), "the textbook (Wald) interval p ± z·sqrt(p(1-p)/n); Wilson's "
                             "centre moves toward 1/2 and its width stays above 0 at p = 0"),
            (_wilson(k, n, 1.6448536269514722), "z = 1.645 gives a 90% interval; 95% needs "
                                                "z = 1.96"),
            (_wilson(k, n, z, quarter=False), "the half-width misses the z^2 / (4 n^2) term "
                                              "under the square root"),
            (_wilson(k, n, z, shift=False), "the centre is (p + z^2 / 2n) / (1 + z^2 / n), "
                                            "not p"),
        ]
        for i, (name, value, wrong) in enumerate((("low", low, 0), ("high", high, 1))):
            _number(got[i], value, f"{call}[{i}] ({name})",
                    [(m[0][wrong], f"{call}: {m[1]}") for m in mistakes], rel=1e-6)
