"""MMLU: the loader against the files' known contents, the stratified subset, and the prompts
of both forms written out by hand."""

import collections

import pytest

from course_utils import mmlu
from course_utils.mmlu import (
    CHANCE,
    MMLUQuestion,
    dev_shots,
    load_mmlu,
    mmlu_item,
    mmlu_items,
    stratified_sample,
    subjects,
)


def test_splits_subjects_and_a_known_question():
    assert len(subjects()) == 57 and "high_school_biology" in subjects()
    test, dev, val = load_mmlu("test"), load_mmlu("dev"), load_mmlu("val")
    assert (len(test), len(dev), len(val)) == (14042, 285, 1531)
    first = dev[0]  # the first row of dev/abstract_algebra_dev.csv
    assert first.subject == "abstract_algebra"
    assert first.question == "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field."
    assert first.choices == ("0", "1", "2", "3") and first.answer == 1  # "B"
    assert collections.Counter(q.subject for q in dev) == {s: 5 for s in subjects()}
    assert CHANCE == 0.25
    assert [q.subject for q in load_mmlu("val", ["virology", "anatomy"])][:1] == ["virology"]
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        load_mmlu("test", ["astrology"])
    with pytest.raises(ValueError, match="split"):
        load_mmlu("train")


def test_bad_row_is_named(tmp_path, monkeypatch):
    for split in ("test", "dev"):
        (tmp_path / split).mkdir()
    (tmp_path / "test" / "anatomy_test.csv").write_text('"Q?",a,b,c,d,A\nQ2?,a,b,c,d,E\n')
    monkeypatch.setattr(mmlu, "fetch", lambda name: tmp_path)
    assert subjects() == ["anatomy"]
    with pytest.raises(ValueError, match=r"test/anatomy_test.csv row 2 is not"):
        load_mmlu("test")


def test_stratified_sample_keeps_each_subjects_share():
    test = load_mmlu("test")
    sizes = collections.Counter(q.subject for q in test)
    where = {id(q): i for i, q in enumerate(test)}  # MMLU repeats a few questions word for word
    for n in (57, 200, 1000):
        subset = stratified_sample(test, n, seed=0)
        assert len(subset) == n and len(set(map(id, subset))) == n
        got = collections.Counter(q.subject for q in subset)
        for s, size in sizes.items():  # largest remainder: within one of the exact share
            assert abs(got[s] - n * size / len(test)) < 1
        positions = [where[id(q)] for q in subset]
        assert positions == sorted(positions)  # original order, subjects together
    a, b = stratified_sample(test, 200, seed=0), stratified_sample(test, 200, seed=1)
    assert a == stratified_sample(test, 200, seed=0) and a != b
    assert stratified_sample(test[:10], 50) == test[:10]
    with pytest.raises(ValueError):
        stratified_sample(test, 0)


Q = MMLUQuestion("high_school_biology", "Which organelle makes ATP?",
                 ("Nucleus", "Mitochondrion", "Ribosome", "Golgi body"), 1)
SHOT = MMLUQuestion("high_school_biology", "What carries oxygen in blood?",
                    ("Haemoglobin", "Insulin", "Keratin", "Collagen"), 0)


def test_letter_prompt_by_hand():
    item = mmlu_item(Q, "letter", [SHOT])
    assert item.context == (
        "The following are multiple choice questions (with answers) about high school "
        "biology.\n\n"
        "What carries oxygen in blood?\nA. Haemoglobin\nB. Insulin\nC. Keratin\nD. Collagen\n"
        "Answer: A\n\n"
        "Which organelle makes ATP?\nA. Nucleus\nB. Mitochondrion\nC. Ribosome\nD. Golgi body\n"
        "Answer:")
    assert item.options == (" A", " B", " C", " D") and item.answer == 1


def test_cloze_prompt_by_hand():
    item = mmlu_item(Q, "cloze", [SHOT])
    assert item.context == (
        "The following are questions (with answers) about high school biology.\n\n"
        "Question: What carries oxygen in blood?\nAnswer: Haemoglobin\n\n"
        "Question: Which organelle makes ATP?\nAnswer:")
    assert item.options == (" Nucleus", " Mitochondrion", " Ribosome", " Golgi body")
    assert mmlu_item(Q, "cloze").context == (
        "The following are questions (with answers) about high school biology.\n\n"
        "Question: Which organelle makes ATP?\nAnswer:")
    with pytest.raises(ValueError, match="form"):
        mmlu_item(Q, "essay")


def test_few_shot_items_use_their_subjects_dev_questions():
    shots = dev_shots(5)
    assert len(shots) == 57 and all(len(v) == 5 for v in shots.values())
    questions = load_mmlu("val", ["anatomy", "virology"])[::40]
    items = mmlu_items(questions, "letter", shots=5)
    for q, item in zip(questions, items):
        for s in shots[q.subject]:
            assert f"{s.question}\nA. {s.choices[0]}" in item.context
        assert item.context.endswith(f"{q.question}\nA. {q.choices[0]}\nB. {q.choices[1]}\n"
                                     f"C. {q.choices[2]}\nD. {q.choices[3]}\nAnswer:")
    assert mmlu_items(questions[:1])[0] == mmlu_item(questions[0])
    with pytest.raises(ValueError, match="k must be in"):
        dev_shots(6)
