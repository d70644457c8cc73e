"""The report card's statistics against references nobody here wrote: statsmodels' Wilson
interval and exact McNemar test, SciPy's binomial test and bootstrap, and Newcombe's (1998)
published worked examples of the Wilson interval."""

import math

import numpy as np
import pytest

from course_utils.stats import (
    NO_DIFFERENCE,
    Accuracy,
    Comparison,
    accuracy,
    bootstrap_interval,
    compare,
    format_p,
    mcnemar_exact,
    paired_bootstrap_difference,
    wilson_interval,
)

scipy_stats = pytest.importorskip("scipy.stats")
statsmodels_proportion = pytest.importorskip("statsmodels.stats.proportion")
statsmodels_contingency = pytest.importorskip("statsmodels.stats.contingency_tables")


@pytest.mark.parametrize("k,n,low,high", [
    # Newcombe (1998), Statistics in Medicine 17, Table II, method 3 (score, no correction)
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_reproduces_newcombes_worked_examples(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_equals_statsmodels():
    rng = np.random.default_rng(0)
    cases = [(0, 1), (1, 1), (0, 7), (7, 7), (3, 10), (50, 100), (999, 1000), (412, 1000)]
    cases += [(int(k), int(n)) for n in rng.integers(1, 5000, 40) for k in [rng.integers(0, n + 1)]]
    for k, n in cases:
        for conf in (0.95, 0.9, 0.99):
            ref = statsmodels_proportion.proportion_confint(k, n, alpha=1 - conf, method="wilson")
            assert wilson_interval(k, n, conf) == pytest.approx(ref, abs=1e-12), (k, n, conf)


def test_wilson_interval_errors():
    for k, n in [(1, 0), (-1, 5), (6, 5)]:
        with pytest.raises(ValueError, match="successes"):
            wilson_interval(k, n)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 5, confidence=95)


def test_mcnemar_by_hand_and_against_scipy_and_statsmodels():
    # by hand: 1 item only A got right, 6 only B; P(X <= 1) for X ~ Bin(7, 1/2) = 8/128
    a = [True] * 1 + [False] * 6 + [True] * 10 + [False] * 3
    b = [False] * 1 + [True] * 6 + [True] * 10 + [False] * 3
    assert mcnemar_exact(a, b) == pytest.approx(2 * 8 / 128, abs=1e-15)
    assert mcnemar_exact(a, a) == 1.0
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 400))
        x = rng.random(n) < rng.random()
        y = np.where(rng.random(n) < rng.random(), x, rng.random(n) < 0.5)
        n01, n10 = int((x & ~y).sum()), int((~x & y).sum())
        table = [[int((x & y).sum()), n01], [n10, int((~x & ~y).sum())]]
        ref = statsmodels_contingency.mcnemar(table, exact=True).pvalue
        got = mcnemar_exact(x, y)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-300)
        if n01 + n10:
            assert got == pytest.approx(scipy_stats.binomtest(n01, n01 + n10, 0.5).pvalue,
                                        rel=1e-9, abs=1e-300)
    # many items: exact integers, no overflow; compare in the log domain with SciPy
    x = np.array([True] * 2000 + [False] * 1200 + [True] * 800)
    y = np.array([False] * 2000 + [True] * 1200 + [True] * 800)
    ref = scipy_stats.binomtest(1200, 3200, 0.5).pvalue
    assert mcnemar_exact(x, y) == pytest.approx(ref, rel=1e-6)


def test_mcnemar_errors():
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="non-empty"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match="booleans"):
        mcnemar_exact([0.5, 1], [1, 0])


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(2)
    outcomes = rng.random(300) < 0.4
    scores = rng.normal(3.0, 2.0, 150)
    for values, stat in [(outcomes.astype(float), np.mean), (scores, np.mean),
                         (scores, np.median)]:
        ours = bootstrap_interval(values, stat, n_resamples=20_000, seed=0)
        ref = scipy_stats.bootstrap((values,), stat, n_resamples=20_000, method="percentile",
                                    rng=np.random.default_rng(123)).confidence_interval
        # two Monte Carlo estimates of the same quantiles: equal up to resampling noise
        spread = np.std(values) / math.sqrt(len(values))
        assert ours == pytest.approx((ref.low, ref.high), abs=0.08 * spread + 1e-9)
    # seeded: the same seed gives the same interval, another seed a slightly different one
    assert bootstrap_interval(scores, seed=5) == bootstrap_interval(scores, seed=5)
    assert bootstrap_interval(scores, seed=5) != bootstrap_interval(scores, seed=6)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_interval(scores, n_resamples=10)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_paired_bootstrap_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.45
    b = np.where(rng.random(500) < 0.8, a, rng.random(500) < 0.4)
    ours = paired_bootstrap_difference(a, b, n_resamples=20_000, seed=0)
    ref = scipy_stats.bootstrap(
        (a.astype(float), b.astype(float)), lambda x, y, axis: x.mean(axis) - y.mean(axis),
        paired=True, vectorized=True, n_resamples=20_000, method="percentile",
        rng=np.random.default_rng(7)).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.004)
    # the pairing matters: the interval is narrower than an unpaired one (normal approximation
    # with each system's own variance), because the systems agree on most items
    unpaired_width = 2 * 1.96 * math.sqrt((a.var() + b.var()) / a.size)
    assert ours[1] - ours[0] < 0.8 * unpaired_width


def test_accuracy_formats_value_interval_and_chance():
    acc = accuracy([True] * 412 + [False] * 588, chance=0.25)
    assert isinstance(acc, Accuracy) and (acc.correct, acc.n) == (412, 1000)
    low, high = statsmodels_proportion.proportion_confint(412, 1000, method="wilson")
    assert (acc.low, acc.high) == pytest.approx((low, high))
    assert str(acc) == f"41.2% [{100 * low:.1f}, {100 * high:.1f}] (chance 25%)"
    assert str(accuracy([1, 0, 1, 1])).startswith("75.0% [")
    assert "chance" not in str(accuracy([1, 0, 1, 1]))
    boot = accuracy([True] * 30 + [False] * 70, method="bootstrap")
    assert boot.method == "bootstrap" and boot.low < 0.3 < boot.high
    with pytest.raises(ValueError, match="chance"):
        accuracy([True], chance=25)
    with pytest.raises(ValueError, match="method"):
        accuracy([True], method="wald")


def test_compare_verdicts_follow_the_interval():
    # A right on 60 more items than B out of 1000, never worse: clearly better
    a = np.array([True] * 560 + [False] * 440)
    b = a.copy()
    b[:60] = False
    better = compare(a, b)
    assert isinstance(better, Comparison) and better.verdict == "better"
    assert (better.a_only, better.b_only, better.n) == (60, 0, 1000)
    assert better.difference == pytest.approx(0.06) and better.low > 0
    assert str(better).startswith("+6.0 points [+") and str(better).endswith(
        "McNemar p < 0.001: better")
    assert compare(b, a).verdict == "worse" and str(compare(b, a)).startswith("-6.0 points [-")
    # 11 against 9 discordant items: no measurable difference, whatever the sign
    c = np.array([True] * 11 + [False] * 9 + [True] * 80)
    d = np.array([False] * 11 + [True] * 9 + [True] * 80)
    same = compare(c, d)
    assert same.verdict == NO_DIFFERENCE and same.low < 0 < same.high
    assert same.p_value == pytest.approx(scipy_stats.binomtest(9, 20, 0.5).pvalue)
    assert str(same) == (f"+2.0 points [{100 * same.low:+.1f}, {100 * same.high:+.1f}], "
                         f"McNemar p = 0.82: no measurable difference")
    assert compare(c, c).verdict == NO_DIFFERENCE


@pytest.mark.parametrize("p,text", [(0.0234, "p = 0.02"), (0.5, "p = 0.5"), (1.0, "p = 1"),
                                    (0.0042, "p = 0.004"), (0.00001, "p < 0.001"),
                                    (0.05, "p = 0.05")])
def test_format_p(p, text):
    assert format_p(p) == text
