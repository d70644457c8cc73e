"""The answer parser of graded generation (GSM8K, addition): each awkward case, GSM8K's own
reference answers, and the loader's errors."""

import json

import pytest

from course_utils import corpora
from course_utils.answers import (
    GSM8KProblem,
    final_number,
    load_gsm8k,
    numbers,
    reference_answer,
    sample,
)
from course_utils.rl import parse_answer


@pytest.mark.parametrize("text,expected", [
    ("18", 18), ("The answer is 18.", 18),  # a trailing period is not a decimal point
    ("She makes 9 * 2 = $18 every day.", 18), ("$18", 18), ("$1,234.50", 1234.5),
    ("1,234", 1234), ("It costs 1,234,567 dollars", 1234567), ("18.0", 18), ("18.00 dollars", 18),
    ("1.5 hours", 1.5), ("-7", -7), ("a loss of -$12", -12), ("\u22123", -3), ("5-3", 3),
    ("5kg of flour", 5), ("12 apples", 12), ("50%", 50), ("12, 345", 345), ("12,3456", 3456),
    ("no number here", None), ("", None), ("x2", 2),
    ("#### 42", 42), ("16 - 3 - 4 = 9 eggs\n#### 18\nCheck: 9 * 2 = 18 + 0 = 18", 18),
    ("#### 72\n\nThat is 72 clips in 2 months.", 72),  # the number after ####, not the last
    ("The answer is #### $1,080.", 1080), ("#### no number after it, but 7 before", 7),
    ("first #### 3 then #### 4", 4),  # the last marker counts
])
def test_final_number_awkward_cases(text, expected):
    got = final_number(text)
    assert got == expected and type(got) is type(expected)


def test_numbers_in_order_and_their_types():
    assert numbers("2 + 3.5 = 5.5, not 6.0 or -1,000") == [2, 3.5, 5.5, 6, -1000]
    assert [type(x) for x in numbers("1 1.0 1.5")] == [int, int, float]
    assert numbers("3.14.15") == [3.14]
    assert numbers("2024-05-01") == [2024, 5, 1]


def test_addition_parser_is_the_same_parser():
    # notebook 15's reward reads the final number, and only whole numbers are answers
    for text in ("23 + 45 = 68", "The sum is 1,068.", "68.0", "#### 68"):
        assert parse_answer(text) == final_number(text)
    assert parse_answer("68.5") is None and final_number("68.5") == 68.5


def test_gsm8k_reference_answers():
    assert reference_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72") == 72
    assert reference_answer("... = <<5600/4=1400>>1,400\n#### 5,600") == 5600
    assert reference_answer("Lost <<10-20=-10>>-10 dollars.\n#### -10") == -10
    with pytest.raises(ValueError, match="####"):
        reference_answer("no marker, 12")
    with pytest.raises(ValueError, match="no number after"):
        reference_answer("#### none")


def test_gsm8k_loads_both_splits_with_their_answers():
    test, train = load_gsm8k("test"), load_gsm8k("train")
    assert (len(test), len(train)) == (1319, 7473)
    assert isinstance(test[0], GSM8KProblem)
    assert test[0].question.startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert test[0].answer == 18 and train[0].answer == 72  # the files' first problems
    for p in test + train:  # a plain reading of each "#### N" line agrees with the parser
        tail = p.solution.rsplit("####", 1)[1].strip()
        assert p.answer == int(tail.replace(",", "")), tail
    with pytest.raises(ValueError, match="split"):
        load_gsm8k("dev")


def test_gsm8k_bad_line_is_named(tmp_path, monkeypatch):
    good = json.dumps({"question": "q", "answer": "#### 1"})
    (tmp_path / "gsm8k_test.jsonl").write_text(good + "\n{not json\n")
    entry = corpora.DataFile("gsm8k-test", "gsm8k_test.jsonl", "", None)
    monkeypatch.setitem(corpora.REGISTRY, "gsm8k-test", entry)
    monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="gsm8k_test.jsonl line 2 is not a GSM8K record"):
        load_gsm8k("test")


def test_gsm8k_missing_file_gives_the_registry_error(tmp_path, monkeypatch):
    monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(corpora.CACHE_DIR_ENV, str(tmp_path / "cache"))
    entry = corpora.DataFile("gsm8k-test", "gsm8k_test.jsonl", "http://127.0.0.1:9/x", "0" * 64)
    monkeypatch.setitem(corpora.REGISTRY, "gsm8k-test", entry)
    with pytest.raises(corpora.DataError, match="could not download gsm8k_test.jsonl"):
        load_gsm8k("test")


def test_sample_is_seeded_ordered_and_without_repeats():
    items = list(range(100))
    a = sample(items, 10, seed=3)
    assert a == sample(items, 10, seed=3) and a != sample(items, 10, seed=4)
    assert a == sorted(a) and len(set(a)) == 10
    assert sample(items, 500) == items
    with pytest.raises(ValueError):
        sample(items, 0)
