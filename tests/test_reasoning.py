"""Reasoning traces written by a program, and inference-time scaling (notebook 15): traces
against hand-worked examples and against the digits of the numbers themselves, the problems
of the second operation, the majority vote on hand cases, the scaling table on hand-made
samples, and sampling through the course's batched rollout on a rigged model."""

import re

import pytest
import torch

from course_utils.reasoning import (
    Samples,
    arithmetic_problems,
    majority_vote,
    operands,
    sample_answers,
    scaling_table,
    trace,
    trace_lines,
)
from course_utils.rl import Problem, addition_problems, evaluate, format_reward, parse_answer


def test_traces_of_hand_worked_examples():
    assert trace("What is 983 + 969?") == (
        "<think>\n3+9+0=12 -> 2\n8+6+1=15 -> 52\n9+9+1=19 -> 952\n1 -> 1952\n</think>\n1952")
    assert trace("What is 483 * 7?") == (
        "<think>\n3*7+0=21 -> 1\n8*7+2=58 -> 81\n4*7+5=33 -> 381\n3 -> 3381\n</think>\n3381")
    assert trace("What is 12 + 34?") == "<think>\n2+4+0=6 -> 6\n1+3+0=4 -> 46\n</think>\n46"
    assert trace_lines(105, "+", 7) == ["5+7+0=12 -> 2", "0+0+1=1 -> 12", "1+0+0=1 -> 112"]
    assert trace_lines(0, "*", 9) == ["0*9+0=0 -> 0"]


@pytest.mark.parametrize("op", ["+", "*"])
def test_every_step_of_a_trace_is_right_and_ends_in_the_answer(op):
    """Checked against the numbers' own digits, not against the trace's code: each line uses
    the k-th digits from the right, the carry of the line above, and its sum; the digits so
    far are the sum's last digit in front of the line above's."""
    step = re.compile(r"(\d)([+*])(\d)\+(\d)=(\d+) -> (\d+)")
    for digits in (1, 2, 3, 5, 7):
        for p in arithmetic_problems(60, digits, op, seed=digits):
            a, _, b = operands(p.question)
            text = trace(p.question)
            assert parse_answer(text) == p.answer and format_reward(text) == 1.0
            lines = text.split("\n")[1:-2]
            carry, so_far = 0, ""
            for k, line in enumerate(lines):
                found = step.fullmatch(line)
                if found is None:  # the final carry
                    assert k == len(lines) - 1 and line == f"{carry} -> {carry}{so_far}"
                    so_far = f"{carry}{so_far}"
                    break
                x, sign, y, c, s, written = found.groups()
                assert sign == op and int(c) == carry
                assert int(x) == a // 10 ** k % 10
                assert int(y) == (b // 10 ** k % 10 if op == "+" else b)
                value = int(x) + int(y) + carry if op == "+" else int(x) * int(y) + carry
                assert int(s) == value and written == f"{value % 10}{so_far}"
                carry, so_far = value // 10, written
            assert int(so_far) == p.answer


def test_arithmetic_problems_of_both_operations():
    assert arithmetic_problems(50, 3, "+", seed=4) == addition_problems(50, 3, seed=4)
    products = arithmetic_problems(300, 3, "*", seed=4)
    assert products == arithmetic_problems(300, 3, "*", seed=4)
    assert products[:20] == arithmetic_problems(20, 3, "*", seed=4)
    assert len({p.question for p in products}) == 300
    for p in products:
        a, op, b = operands(p.question)
        assert op == "*" and 100 <= a <= 999 and 2 <= b <= 9 and p.answer == a * b
    assert {operands(p.question)[2] for p in products} == set(range(2, 10))
    test = arithmetic_problems(100, 2, "*", seed=1)
    train = arithmetic_problems(500, 2, "*", seed=2, exclude=test)
    assert not {p.question for p in train} & {p.question for p in test}
    with pytest.raises(ValueError, match="only 720 and 100 of them are excluded"):
        arithmetic_problems(621, 2, "*", exclude=test)
    # Excluded problems of another kind leave every product drawable.
    others = addition_problems(300, 2, seed=3) + arithmetic_problems(200, 3, "*", seed=3)
    assert len(arithmetic_problems(720, 2, "*", exclude=others)) == 720
    assert len(addition_problems(8100, 2, exclude=arithmetic_problems(500, 2, "*"))) == 8100
    with pytest.raises(ValueError, match="op must be one of"):
        arithmetic_problems(3, 2, "-")
    with pytest.raises(ValueError, match="not an arithmetic question"):
        operands("What is 2 - 1?")
    with pytest.raises(ValueError, match="traces are written for"):
        trace_lines(12, "*", 34)


def test_majority_vote():
    assert majority_vote([3, 5, 5, 3, 5]) == 5
    assert majority_vote([3, 5, 5, 3]) == 3  # a tie: the one that came first
    assert majority_vote([None, None, 7, None]) == 7  # no answer is not a vote
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([1]) == 1


def test_scaling_table_on_hand_made_samples():
    problems = [Problem("q1", 10), Problem("q2", 20), Problem("q3", 30)]
    samples = Samples(answers=[[11, 10, 10, 12, 10], [None, 21, 20, 21, 22], [30, 31, 32, 33, 34]],
                      tokens=[[5, 5, 5, 5, 5], [1, 2, 3, 4, 5], [2, 2, 2, 2, 2]],
                      stopped=[[True] * 5] * 3)
    one, three, five = scaling_table(samples, problems, ns=(1, 3, 5))
    assert one.self_consistency == one.best_of_n == [False, False, True]
    assert three.self_consistency == [True, False, True]  # 10 twice; 21, 20: 21 first
    assert three.best_of_n == [True, True, True]
    assert five.self_consistency == [True, False, True]  # 21 twice beats 20 once
    assert one.tokens == pytest.approx((5 + 1 + 2) / 3)
    assert five.tokens == pytest.approx((25 + 15 + 10) / 3)
    with pytest.raises(ValueError, match=r"every n must be in \[1, 5\]"):
        scaling_table(samples, problems, ns=(1, 10))


def test_sample_answers_greedy_equals_evaluate_whatever_the_chunks():
    from test_rl import rigged_model
    from test_tools import chat_format  # its characters include < / >

    fmt = chat_format()
    problems = addition_problems(5, digits=1, seed=0) + addition_problems(4, digits=2, seed=0)
    answers = {p.question: p.answer for p in problems}

    def reply_for(question):
        a = answers[question]
        return f"<think>\nx\n</think>\n{a if a % 3 else a + 1}"

    model = rigged_model(fmt, reply_for)
    expected = evaluate(model, fmt, problems, max_new_tokens=30).correct
    for chunk in (3, 64):
        s = sample_answers(model, fmt, problems, n=3, max_new_tokens=30, temperature=0.0,
                           chunk=chunk)
        assert [a == [a[0]] * 3 for a in s.answers] == [True] * len(problems)
        assert [a[0] == p.answer for a, p in zip(s.answers, problems)] == expected
        assert all(all(st) for st in s.stopped)
        assert s.tokens[0][0] == len(fmt.tokenizer.encode(reply_for(problems[0].question))) + 1
    with pytest.raises(ValueError, match="needs problems, n >= 1"):
        sample_answers(model, fmt, problems, n=0, max_new_tokens=4)


def test_sampled_answers_vary_and_follow_the_seed():
    from test_rl import chat_format

    from course_utils.model import GPT, GPTConfig

    fmt = chat_format()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=fmt.tokenizer.vocab_size, block_size=64, n_layer=1,
                          n_head=2, n_embd=16))
    problems = addition_problems(3, digits=1, seed=0)
    draw = [sample_answers(model, fmt, problems, 6, 5, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert draw[0] == draw[1]
    assert len({tuple(t) for t in draw[0].tokens}) > 1 or len(set(draw[0].tokens[0])) > 1
