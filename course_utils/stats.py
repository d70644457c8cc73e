"""Honest numbers for the report card (evaluation notebook): intervals, paired tests, verdicts.

A benchmark score is a proportion measured on a few hundred items, so it carries sampling
noise of several points. Every accuracy is therefore printed with a 95% interval and the
score a model gets by guessing (the chance baseline), and every comparison of two models (or
two stages of one model) on the same items is a *paired* comparison, which is far more
sensitive than comparing two intervals, because both systems see the same easy and hard items.

- :func:`wilson_interval`: the Wilson score interval of a proportion (Wilson, 1927, "Probable
  inference, the law of succession, and statistical inference", JASA 22). Unlike the textbook
  ``p +- 1.96 sqrt(p(1-p)/n)`` it never leaves ``[0, 1]`` and keeps its coverage near 0% and
  100% (Newcombe, 1998, "Two-sided confidence intervals for the single proportion: comparison
  of seven methods", Statistics in Medicine 17).
- :func:`bootstrap_interval`: the percentile bootstrap interval of any statistic (Efron &
  Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13), seeded.
- :func:`mcnemar_exact`: McNemar's test on paired right/wrong outcomes (McNemar, 1947,
  Psychometrika 12): only the items where the two systems disagree carry information, and
  under "no difference" each disagreement goes either way with probability 1/2, so the exact
  p-value is a two-sided binomial test on the discordant pairs.
- :func:`paired_bootstrap_difference`: an interval of the difference in accuracy, resampling
  items (both systems' outcomes on an item travel together).
- :func:`accuracy` and :func:`compare` bundle these into printable results, e.g.
  ``41.2% [38.1, 44.4] (chance 25%)`` and ``+3.1 points [+0.4, +5.8], McNemar p = 0.02:
  better``; a difference whose interval includes 0 is written "no measurable difference".

Only the standard library and NumPy are used; the tests compare every number with SciPy and
statsmodels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

NO_DIFFERENCE = "no measurable difference"


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.95996... for 0.95


def _booleans(values, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of booleans (one per item), "
                         f"got shape {a.shape}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans (or 0/1), one per item")
    return a.astype(bool)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` -> ``(low, high)``.

    With ``p = successes / n`` and ``z`` the normal quantile (1.96 for 95%)::

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    the set of true proportions ``q`` for which ``|p - q| <= z sqrt(q (1 - q) / n)`` (Wilson,
    1927). Without continuity correction, as ``statsmodels``' ``proportion_confint(...,
    method="wilson")`` (tested). Newcombe's (1998) worked example: 81 of 263 gives
    ``(0.2553, 0.3662)``.

    Raises ``ValueError`` for ``n < 1``, ``successes`` outside ``[0, n]`` or a confidence
    outside ``(0, 1)``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], statistic: Callable = np.mean,
                       confidence: float = 0.95, n_resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)`` -> ``(low, high)``.

    Draws ``n_resamples`` resamples of the items with replacement (NumPy's ``default_rng(seed)``,
    so a seed always gives the same interval), computes the statistic of each, and returns
    the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those values.
    ``statistic`` is called as ``statistic(array (n_resamples, n), axis=1)`` and must return
    ``(n_resamples,)`` values (``np.mean``, ``np.median`` do). The same method as
    ``scipy.stats.bootstrap(..., method="percentile")`` (tested).

    Raises ``ValueError`` for no values, ``n_resamples < 100`` or a bad confidence.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be >= 100 (10,000 is usual), got {n_resamples}")
    _z(confidence)  # checks it
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))  # (n_resamples, n) item indices
    stats = np.asarray(statistic(x[idx], axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact McNemar p-value (two-sided) for two systems' right/wrong outcomes on the same items.

    Only discordant items count: ``n01`` (``a`` right, ``b`` wrong) and ``n10`` (the other way).
    Under the null hypothesis (equal accuracy) each of the ``n = n01 + n10`` discordant items
    goes either way with probability 1/2, so ``p = min(1, 2 * P(X <= min(n01, n10)))`` with
    ``X ~ Binomial(n, 1/2)`` (McNemar, 1947; the "exact" variant, as statsmodels'
    ``mcnemar(table, exact=True)`` and ``scipy.stats.binomtest(n01, n, 0.5)``, tested). With no
    discordant item there is no evidence of a difference: ``p = 1``. Computed with exact integer
    arithmetic, so it is right for any number of items.

    Raises ``ValueError`` when ``a`` and ``b`` are not boolean sequences of equal, non-zero
    length.
    """
    a, b = _booleans(a, "a"), _booleans(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the outcomes of the same items: got {a.size} and "
                         f"{b.size} outcomes")
    n01, n10 = int((a & ~b).sum()), int((~a & b).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(n01, n10) + 1))  # P(X <= k) * 2^n, exact
    return min(1.0, 2 * tail / 2 ** n)


def paired_bootstrap_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95,
                                n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``accuracy(a) - accuracy(b)`` on the same items.

    Each resample draws items with replacement and keeps both systems' outcomes of an item
    together (a paired bootstrap, Efron & Tibshirani 1993; in NLP e.g. Koehn, 2004, "Statistical
    Significance Tests for Machine Translation Evaluation"), which is the bootstrap of the mean
    of the per-item differences ``a_i - b_i``. Result in proportions (0.031 is +3.1 points).

    Raises ``ValueError`` like :func:`mcnemar_exact`, or for a bad ``n_resamples``/confidence.
    """
    a, b = _booleans(a, "a"), _booleans(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the outcomes of the same items: got {a.size} and "
                         f"{b.size} outcomes")
    return bootstrap_interval(a.astype(float) - b.astype(float), np.mean, confidence,
                              n_resamples, seed)


def _points(x: float, signed: bool = False) -> str:
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def format_p(p: float) -> str:
    """A p-value for people: ``"p = 0.02"``, ``"p = 0.004"``, ``"p < 0.001"``, ``"p = 1"``."""
    if p < 0.001:
        return "p < 0.001"
    if p < 0.01:
        return f"p = {p:.3f}"
    return f"p = {p:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its interval: ``correct`` of ``n`` items, ``low``/``high`` the interval
    (proportions), ``chance`` the score of guessing (``None`` when there is none, e.g. free-form
    answers), ``method`` how the interval was made. ``str()`` gives
    ``41.2% [38.1, 44.4] (chance 25%)``."""

    correct: int
    n: int
    low: float
    high: float
    chance: float | None = None
    confidence: float = 0.95
    method: str = "wilson"

    @property
    def value(self) -> float:
        """The accuracy as a proportion, ``correct / n``."""
        return self.correct / self.n

    def __str__(self) -> str:
        text = f"{_points(self.value)}% [{_points(self.low)}, {_points(self.high)}]"
        if self.chance is not None:
            text += f" (chance {100 * self.chance:.3g}%)"
        return text


def accuracy(correct: Sequence[bool], chance: float | None = None, confidence: float = 0.95,
             method: str = "wilson", seed: int = 0) -> Accuracy:
    """The accuracy of per-item outcomes with its interval -> :class:`Accuracy`.

    ``method``: ``"wilson"`` (:func:`wilson_interval`, the default) or ``"bootstrap"``
    (:func:`bootstrap_interval` of the mean, seeded by ``seed``). ``chance``: the baseline
    printed beside it (0.25 for four options; ``None`` when guessing scores nothing).

    Raises ``ValueError`` for no outcomes, non-boolean outcomes, an unknown method or a chance
    outside ``[0, 1]``.
    """
    c = _booleans(correct, "correct")
    if chance is not None and not 0.0 <= chance <= 1.0:
        raise ValueError(f"chance must be a proportion in [0, 1] (0.25 for four options), got "
                         f"{chance}")
    k, n = int(c.sum()), int(c.size)
    if method == "wilson":
        low, high = wilson_interval(k, n, confidence)
    elif method == "bootstrap":
        low, high = bootstrap_interval(c.astype(float), np.mean, confidence, seed=seed)
    else:
        raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")
    return Accuracy(k, n, low, high, chance, confidence, method)


@dataclass(frozen=True)
class Comparison:
    """System A against system B on the same ``n`` items.

    ``difference`` = accuracy(A) - accuracy(B) and its paired-bootstrap interval ``low``,
    ``high`` (proportions); ``p_value`` of McNemar's exact test; ``a_only`` / ``b_only``: the
    discordant counts (items only A got right, only B got right). ``verdict``: ``"better"``
    (A is better: the whole interval is above 0), ``"worse"`` (below 0) or ``"no measurable
    difference"`` (the interval includes 0). ``str()`` gives
    ``+3.1 points [+0.4, +5.8], McNemar p = 0.02: better``.
    """

    difference: float
    low: float
    high: float
    p_value: float
    n: int
    a_only: int
    b_only: int
    confidence: float = 0.95

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return NO_DIFFERENCE

    def __str__(self) -> str:
        return (f"{_points(self.difference, True)} points [{_points(self.low, True)}, "
                f"{_points(self.high, True)}], McNemar {format_p(self.p_value)}: {self.verdict}")


def compare(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95,
            n_resamples: int = 10_000, seed: int = 0) -> Comparison:
    """A paired comparison of two systems' per-item outcomes (A minus B) -> :class:`Comparison`.

    The interval is :func:`paired_bootstrap_difference`, the p-value :func:`mcnemar_exact`;
    the verdict follows the interval. The two usually agree; near the edge (p close to
    ``1 - confidence``) they can disagree, and the verdict then stays with the interval.

    Raises ``ValueError`` as :func:`mcnemar_exact`.
    """
    a_arr, b_arr = _booleans(a, "a"), _booleans(b, "b")
    low, high = paired_bootstrap_difference(a_arr, b_arr, confidence, n_resamples, seed)
    return Comparison(float(a_arr.mean() - b_arr.mean()), low, high, mcnemar_exact(a_arr, b_arr),
                      int(a_arr.size), int((a_arr & ~b_arr).sum()), int((~a_arr & b_arr).sum()),
                      confidence)


def seed_verdict(base: Sequence[float], new: Sequence[float]) -> str:
    """Whether a change helped, from a loss (lower is better) measured with several seeds
    before (``base``) and after it (``new``), at least two each: ``"better"`` or ``"worse"``
    when the means differ by more than the seed spread, else :data:`NO_DIFFERENCE`.

    The seed spread is the larger of the two ranges (``max - min``): with two or three seeds
    per side there is too little to estimate a variance from, but a change smaller than what
    a different seed alone does cannot be told apart from luck (notebook 16 reports its
    equal-time measurements this way). Raises ``ValueError`` for fewer than two values on a
    side or a value that is not finite.
    """
    for name, values in (("base", base), ("new", new)):
        if len(values) < 2 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name} needs at least two finite values (one per seed), got "
                             f"{list(values)!r}")
    spread = max(max(base) - min(base), max(new) - min(new))
    change = float(np.mean(new) - np.mean(base))
    if change < -spread:
        return "better"
    if change > spread:
        return "worse"
    return NO_DIFFERENCE
