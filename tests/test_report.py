"""The report card (course_utils.report): each task on a tiny model whose outcomes are known by
hand (a model rigged to answer by rule, or a hand computation with F.cross_entropy and
F.log_softmax), the card's cache, the paired comparison of cards, the ``eval`` command's bad
input (exit code 2, one line), and one short run of the real SmolLM2."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_utils import answers, eval_tasks, ifeval, report, rl
from course_utils.bpe import train_bpe
from course_utils.chat import IM_END, IM_START
from course_utils.eval_tasks import Measure, NotApplicable, Subject, TaskResult
from course_utils.model import GPT, GPTConfig
from course_utils.report import ReportCard
from course_utils.sft import chat_tokenizer
from course_utils.tokenization import CharTokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bpe():
    """A small byte-level BPE (it can write any text) with the ChatML tokens."""
    text = ("What is the answer? The answer is 42. Question: Answer: #### 12 apples cost $3. "
            "hello there, how are you? fine, thanks.\n") * 20
    return chat_tokenizer(train_bpe(text, 300))


def rigged(tok, reply_for, block_size=2048):
    """A chat model rigged to answer: at its first call (the prompts) it reads each row's last
    user message and picks the reply by rule; then it says that reply token by token, then
    <|im_end|>."""
    im_end = tok.special_tokens[IM_END]
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1,
                          n_head=2, n_embd=16))
    scripts, calls = [], []

    def hook(module, args, kwargs, output):
        idx = args[0]
        if idx.size(1) > 1:  # the prompts: choose each row's reply
            scripts.clear()
            for row in idx.tolist():
                users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", tok.decode(row),
                                   re.S)
                scripts.append(tok.encode(reply_for(users[-1]), allowed_special="none")
                               + [im_end])
            calls.clear()
        step = len(calls)
        calls.append(step)
        logits = torch.full((idx.size(0), idx.size(1), tok.vocab_size), -50.0)
        for r, script in enumerate(scripts):
            logits[r, -1, script[min(step, len(script) - 1)]] = 50.0
        return logits, output[1]

    model.register_forward_hook(hook, with_kwargs=True)
    return Subject.of("rigged", model, tok, "sha-rigged")


# -------------------------------------------------------------------------------- subsets
def test_nested_samples_are_seeded_ordered_nested_and_stratified():
    from collections import Counter

    sizes = {"a": 50, "b": 30, "c": 15, "d": 5}
    items = [(g, i) for g, size in sizes.items() for i in range(size)]

    def group(item):
        return item[0]

    small, large = (eval_tasks.nested_sample(items, n, 3, group) for n in (20, 60))
    assert set(small) < set(large) and len(small) == 20 and len(large) == 60
    assert small == sorted(small, key=items.index)  # the original order
    assert small == eval_tasks.nested_sample(items, 20, 3, group)  # seeded
    assert small != eval_tasks.nested_sample(items, 20, 4, group)
    for n in range(1, 101):
        counts = Counter(g for g, _ in eval_tasks.nested_sample(items, n, 3, group))
        for g, size in sizes.items():
            assert abs(counts[g] - n * size / 100) <= 1, (n, g, counts)
    assert eval_tasks.nested_sample(items, 500, 0) == items
    with pytest.raises(ValueError):
        eval_tasks.nested_sample(items, 0)


# ------------------------------------------------------------------------------ generation
def test_replies_come_back_in_order_whatever_the_batching(bpe):
    users = [f"What is the answer? {'x' * k}" for k in (5, 1, 30, 12, 3)]
    rule = {u: ("The answer is 42." if i % 2 else "a" * 40) for i, u in enumerate(users)}
    subject = rigged(bpe, rule.get)
    prompts = [subject.fmt.encode([{"role": "user", "content": u}]) for u in users]
    for batch_size in (1, 2, 16):
        replies, ended = eval_tasks.generate_replies(subject, prompts, 12, batch_size,
                                                 progress=False)
        long = [len(bpe.encode(rule[u], allowed_special="none")) >= 12 for u in users]
        assert ended == [not x for x in long]
        for u, reply, x in zip(users, replies, long):
            assert reply == rule[u] if not x else rule[u].startswith(reply) and reply


# ----------------------------------------------------------------------------------- tasks
def test_gsm8k_grades_the_final_number_of_each_reply(bpe):
    problems = eval_tasks.nested_sample(answers.load_gsm8k("test"), 6, seed=0)
    by_question = {p.question: p for p in problems}
    kinds = ["right", "marker", "wrong", "right", "none", "commas"]
    kind_of = {p.question: k for p, k in zip(problems, kinds)}

    def reply_for(question):
        a = by_question[question].answer
        return {"right": f"So the total is {a}.", "marker": f"{a} then {a + 7}\n#### {a}",
                "wrong": f"It is {a + 1}.", "none": "I cannot say.",
                "commas": f"That is ${a:,}."}[kind_of[question]]

    result = eval_tasks.eval_gsm8k(rigged(bpe, reply_for), limit=6, seed=0, progress=False)
    (m,) = result.measures
    assert m.correct == [k in ("right", "marker", "commas") for k in kinds]
    index = {p.question: i for i, p in enumerate(answers.load_gsm8k("test"))}
    assert m.ids == [f"test/{index[p.question]}" for p in problems]
    assert result.notes == ["6/6 replies ended with <|im_end|> within 256 tokens"]
    assert result.replies[0] == reply_for(problems[0].question)


def test_gsm8k_few_shot_puts_solved_problems_first_as_turns(bpe):
    seen = []
    subject = rigged(bpe, lambda q: seen.append(q) or "0")
    result = eval_tasks.eval_gsm8k(subject, limit=1, shots=2, max_new_tokens=4, progress=False)
    train = answers.load_gsm8k("train")[:2]
    assert result.settings["shots"] == 2 and len(seen) == 1
    (prompt,) = eval_tasks._chat_prompts(subject, "gsm8k", ["Q?"], 4, None,
                                     [(p.question, eval_tasks._strip_calculator(p.solution))
                                      for p in train])
    text = bpe.decode(prompt)
    assert text.count(f"{IM_START}user\n") == 3 and text.count(f"{IM_START}assistant\n") == 3
    assert "<<" not in text and f"#### {train[0].answer}" in text


def test_ifeval_scores_strict_and_loose_at_both_levels(bpe, monkeypatch):
    P = ifeval.IFEvalPrompt
    prompts = [P(1, "Reply in lowercase.", ("change_case:english_lowercase",), ({},)),
               P(2, "No commas please.", ("punctuation:no_comma",), ({},)),
               P(3, "Lowercase, no commas.",
                 ("change_case:english_lowercase", "punctuation:no_comma"), ({}, {}))]
    replies = {"Reply in lowercase.": "Sure!\nall of this is lowercase",  # loose only
               "No commas please.": "one, two",  # fails both ways
               "Lowercase, no commas.": "fine and lowercase, mostly"}  # one of two
    monkeypatch.setattr(ifeval, "load_ifeval", lambda: prompts)
    result = eval_tasks.eval_ifeval(rigged(bpe, replies.get), progress=False)
    got = {m.name: m.correct for m in result.measures}
    assert got == {"IFEval, prompt level, strict": [False, False, False],
                   "IFEval, prompt level, loose": [True, False, False],
                   "IFEval, instruction level, strict": [False, False, True, False],
                   "IFEval, instruction level, loose": [True, False, True, False]}
    ids = {m.name: m.ids for m in result.measures}
    assert ids["IFEval, prompt level, strict"] == ["key/1", "key/2", "key/3"]
    assert len(ids["IFEval, instruction level, loose"]) == 4
    assert result.settings["n"] == 3 and result.replies == [replies[p.prompt] for p in prompts]


def test_ifeval_pairs_a_prompt_that_repeats_an_instruction_item_for_item(bpe, monkeypatch):
    # IFEval has prompts with one instruction type twice (two keywords:frequency, each with its
    # own word): each must stay its own item when two cards are compared
    P = ifeval.IFEvalPrompt
    kw = ({"keyword": "apple", "frequency": 1, "relation": "at least"},
          {"keyword": "pear", "frequency": 1, "relation": "at least"})
    prompts = [P(7, "Say apple and pear.", ("keywords:frequency", "keywords:frequency"), kw)]
    monkeypatch.setattr(ifeval, "load_ifeval", lambda: prompts)
    measure = {}
    for name, reply in (("a", "apple only"), ("b", "pear only")):
        result = eval_tasks.eval_ifeval(rigged(bpe, lambda _, r=reply: r), progress=False)
        measure[name] = {m.name: m for m in result.measures}["IFEval, instruction level, strict"]
    assert measure["a"].correct == [True, False] and measure["b"].correct == [False, True]
    assert len(set(measure["a"].ids)) == 2
    # paired item for item: both changed, one each way (a mispairing would see no change)
    line = report.compare_measures(measure["a"], measure["b"])
    assert line.startswith("+0.0 points") and "p = 1" in line, line
    repeated = Measure("old card", "accuracy", ["x", "x"], [True, False])
    with pytest.raises(ValueError, match="twice.*--fresh"):
        repeated.subset(["x"])


def test_addition_is_notebook_15s_held_out_sets(bpe):
    sets = eval_tasks.addition_sets(3)
    assert sets["2-digit"] == rl.addition_problems(200, digits=2, seed=1)[:3]
    assert sets["3-digit"] == rl.addition_problems(100, digits=3, seed=2)[:3]
    answer = {p.question: p.answer for s in sets.values() for p in s}
    rule = {q: (f"{a}" if i % 2 == 0 else f"{a} + 1 = {a + 1}")
            for i, (q, a) in enumerate(answer.items())}
    result = eval_tasks.eval_addition(rigged(bpe, rule.get), limit=3, progress=False)
    assert [m.name for m in result.measures] == ["addition, 2-digit", "addition, 3-digit"]
    assert result.measures[0].correct == [True, False, True]
    assert result.measures[1].correct == [False, True, False]
    assert result.measures[1].ids == ["3-digit/0", "3-digit/1", "3-digit/2"]


def test_chat_stop_counts_replies_that_end_within_the_cap(bpe):
    users = eval_tasks.chat_stop_prompts()
    chosen = eval_tasks.nested_sample(users, 5, seed=0)
    stops = {u: i % 2 == 0 for i, u in enumerate(chosen)}
    result = eval_tasks.eval_chat_stop(
        rigged(bpe, lambda u: "fine." if stops[u] else "and so " * 20), limit=5,
        max_new_tokens=10, progress=False)
    (m,) = result.measures
    assert m.correct == [stops[u] for u in chosen]
    assert m.name == "replies ended within 10 tokens"
    assert m.ids == [f"val/{users.index(u)}" for u in chosen]


def test_bits_per_byte_of_the_held_out_pieces_by_hand(shakespeare_text):
    held = eval_tasks.heldout_text()
    assert held == shakespeare_text[int(len(shakespeare_text) * 0.9):]
    pieces = eval_tasks.text_pieces(held)
    assert "".join(p for _, p in pieces) == held
    assert all(held[o:o + len(p)] == p for o, p in pieces)
    assert all(p.endswith("\n\n") and len(p) >= eval_tasks.CHUNK_CHARS for _, p in pieces[:-1])
    tok = CharTokenizer.from_text(shakespeare_text)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=4096, n_layer=1, n_head=2,
                          n_embd=16)).eval()
    result = eval_tasks.eval_bpb(Subject.of("char", model, tok), limit=2, progress=False)
    (m,) = result.measures
    chosen = eval_tasks.nested_sample(pieces, 2, seed=0)
    bits = []
    for _, piece in chosen:  # one window holds a whole piece: plain cross-entropy
        ids = torch.tensor([tok.encode(piece)])
        with torch.no_grad():
            logits = model(ids)[0][0]
        bits.append(F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
                    / math.log(2))
    assert m.n_bytes == [len(p.encode()) - 1 for _, p in chosen]  # 1st character: context
    assert m.bits == pytest.approx(bits, rel=1e-5)
    assert m.value() == pytest.approx(sum(bits) / sum(m.n_bytes), rel=1e-5)
    assert m.ids == [f"chars {o}-{o + len(p)}" for o, p in chosen]


def hand_choice(model, tok, item, normalize):
    """The option with the best log-likelihood after the context, one full pass each."""
    context = tok.encode_ordinary(item.context)
    scores = []
    for option in item.options:
        ids = context + tok.encode_ordinary(option)
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids]))[0][0], dim=-1)
        n = len(ids) - len(context)
        total = sum(logp[len(context) - 1 + k, ids[len(context) + k]].item() for k in range(n))
        scores.append(total / n if normalize == "mean" else total)
    return scores.index(max(scores))


def test_mmlu_both_forms_by_hand(bpe):
    from course_utils import mmlu

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=2048, n_layer=1, n_head=2,
                          n_embd=16)).eval()
    subject = Subject.of("tiny", model, bpe)
    result = eval_tasks.eval_mmlu(subject, limit=4, forms=("cloze", "letter"), progress=False)
    questions = eval_tasks.nested_sample(mmlu.load_mmlu("test"), 4, 0, lambda q: q.subject)
    for m, form, normalize in zip(result.measures, ("cloze", "letter"), ("mean", "sum")):
        items = mmlu.mmlu_items(questions, form)
        assert m.name == f"MMLU, {form}, 0-shot" and m.chance == 0.25
        assert m.correct == [hand_choice(model, bpe, it, normalize) == it.answer
                             for it in items]
    first = questions[0]
    same = [q for q in mmlu.load_mmlu("test") if q.subject == first.subject]
    assert result.measures[0].ids[0] == f"{first.subject}/{same.index(first)}"
    short = Subject.of("short", GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=64,
                                              n_layer=1, n_head=2, n_embd=16)), bpe)
    with pytest.raises(NotApplicable, match=r"context of short \(64 tokens\) is too short"):
        eval_tasks.eval_mmlu(short, limit=4, shots=5, progress=False)


# ----------------------------------------------------------------------- the card and cache
def test_a_model_without_chat_tokens_is_marked_not_applicable(shakespeare_text, tmp_path):
    tok = CharTokenizer.from_text(shakespeare_text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                          n_embd=16))
    subject = Subject.of("char", model, tok, "sha-char")
    with pytest.raises(NotApplicable, match="no <\\|im_start\\|>/<\\|im_end\\|> tokens"):
        report.report_card(subject, ["gsm8k"], limit=2, progress=False)
    card = report.report_card(subject, ["bpb", "gsm8k", "mmlu"], limit=1, out=tmp_path,
                              progress=False)
    assert card.results["bpb"].measures and not card.results["bpb"].not_applicable
    assert "not a chat model" in card.results["gsm8k"].not_applicable
    assert "cannot write mmlu's text" in card.results["mmlu"].not_applicable
    text = (tmp_path / "report.md").read_text()
    assert "| gsm8k | not applicable |" in text and "| bpb | bits per byte" in text


def test_the_card_is_cached_per_task_and_model(bpe, tmp_path, monkeypatch):
    calls = []
    real = eval_tasks.TASK_FUNCTIONS["addition"]

    def counting(*args, **kw):
        calls.append(kw.get("limit"))
        return real(*args, **kw)

    monkeypatch.setitem(eval_tasks.TASK_FUNCTIONS, "addition", counting)
    subject = rigged(bpe, lambda q: "7")
    first = report.report_card(subject, ["addition"], limit=2, out=tmp_path, progress=False)
    again = report.report_card(subject, ["addition"], limit=2, out=tmp_path, progress=False)
    assert calls == [2] and again.results["addition"].reused
    assert again.measures()["addition, 2-digit"].correct == \
        first.measures()["addition, 2-digit"].correct
    report.report_card(subject, ["addition"], limit=3, out=tmp_path, progress=False)
    assert calls == [2, 3]  # other settings: measured again
    subject.fingerprint = "another model file"
    report.report_card(subject, ["addition"], limit=3, out=tmp_path, progress=False)
    assert calls == [2, 3, 3]
    report.report_card(subject, ["addition"], limit=3, out=tmp_path, fresh=True, progress=False)
    assert calls == [2, 3, 3, 3]
    stored = json.loads((tmp_path / "report.json").read_text())
    assert stored["format"] == "course-report-card" and stored["model"] == "rigged"
    loaded = report.load_card(tmp_path)
    assert loaded.measures()["addition, 3-digit"].ids == ["3-digit/0", "3-digit/1", "3-digit/2"]


def test_load_card_refuses_what_is_not_a_card(tmp_path):
    with pytest.raises(FileNotFoundError, match="no report card"):
        report.load_card(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        report.load_card(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a report card"):
        report.load_card(tmp_path)


# ------------------------------------------------------------------------------ comparing
def card_of(name, **measures):
    result = TaskResult("mmlu", {}, [Measure(k, "accuracy", ids, correct, 0.25)
                                     for k, (ids, correct) in measures.items()])
    return ReportCard(name, "sha", {"mmlu": result})


def test_compare_pairs_the_same_items_whatever_their_order():
    a = card_of("A", m=(["q1", "q2", "q3", "q4", "q5"], [True, True, False, False, False]))
    # B measured q5 ... q2 in another order, and not q1
    b = card_of("B", m=(["q5", "q4", "q3", "q2"], [True, True, True, False]))
    text = report.compare_cards([a, b])
    # paired on q2..q5: A right on q2 only; B right on q3, q4, q5: +50 points, 1 vs 3 discordant
    line = next(x for x in text.splitlines() if x.startswith("- m"))
    assert "(4 items)" in line and line.split(": ", 1)[1].startswith("+50.0 points")
    assert "McNemar p = 0.62" in line  # 2 * P(X <= 1), X ~ Binomial(4, 1/2) = 10/16
    assert "| m | 40.0% [" in text and "| 75.0% [" in text


def test_compare_bits_per_byte_is_paired_over_pieces():
    ids = [f"chars {i}" for i in range(6)]
    a = ReportCard("A", "s", {"bpb": TaskResult("bpb", {}, [Measure(
        "bpb", "bpb", ids, bits=[10.0, 12, 9, 11, 10, 8], n_bytes=[5, 6, 5, 5, 5, 4])])})
    b = ReportCard("B", "s", {"bpb": TaskResult("bpb", {}, [Measure(
        "bpb", "bpb", ids, bits=[9.0, 11, 8, 10, 9, 7], n_bytes=[5, 6, 5, 5, 5, 4])])})
    line = report.compare_measures(a.measures()["bpb"], b.measures()["bpb"])
    assert line.startswith(f"{-6 / 30:+.3f} [") and line.endswith("better")


# ----------------------------------------------------------------------------- the command
def course_eval(*argv, timeout=120):
    """``python -m course_utils eval ...`` in a new process."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "course_utils", "eval", *argv],
                          capture_output=True, text=True, env=environment, timeout=timeout,
                          cwd=ROOT)


def main(argv, capsys):
    """The command line in this process -> (exit code, stdout, stderr)."""
    from course_utils.cli import main as cli_main

    code = cli_main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A tiny character-level run folder (no chat tokens), saved by the training loop."""
    from course_utils.config import TrainConfig
    from course_utils.train import train

    out = tmp_path_factory.mktemp("char-run")
    cfg = TrainConfig.from_preset("smoke", out_dir=str(out), max_iters=2, eval_interval=2,
                                  eval_iters=1, sample_tokens=0)
    train(cfg, progress=False)
    return out


def test_bad_input_in_a_new_process_is_one_line_and_exit_code_2():
    r = course_eval("--model", "smollm2-135m-instruct", "--tasks", "bpb,maths")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("error: unknown task 'maths' in --tasks; the tasks are bpb, mmlu, "
                        "gsm8k, ifeval, addition, chat-stop\n")


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "no/such/run"], "no checkpoint at"),
    (["--compare", "no/such/card"], "at least two report cards"),
    (["--compare", "no/such/card", "no/other"], "no report card at"),
    (["--model", "gpt-9"], "unknown model 'gpt-9'"),
    (["--model", "smollm2-135m-instruct", "--limit", "0"], "--limit must be >= 1"),
    (["--model", "smollm2-135m-instruct", "--limit", "many"], "--limit takes a number"),
    (["--model", "smollm2-135m-instruct", "--shots", "6"], "--shots must be 0 to 5"),
    (["--model", "smollm2-135m-instruct", "--tasks", ","], "--tasks is empty"),
    (["--model", "smollm2-135m-instruct", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys):
    code, out, err = main(argv, capsys)
    assert code == 2 and out == "" and err.startswith("error: ") and message in err
    assert err.count("\n") == 1


def test_a_task_the_checkpoint_cannot_do_is_one_line(char_run, capsys):
    code, out, err = main(["--checkpoint", str(char_run), "--tasks", "gsm8k", "--limit", "1"],
                          capsys)
    assert code == 2 and err.startswith("error: gsm8k does not apply")
    assert "not a chat model" in err and err.count("\n") == 1


def test_a_missing_data_file_is_one_line(char_run, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, value in (("COURSE_DATA_DIR", empty), ("COURSE_CACHE_DIR", empty),
                        ("https_proxy", "http://127.0.0.1:9"),
                        ("HTTPS_PROXY", "http://127.0.0.1:9")):  # no download either
        monkeypatch.setenv(name, str(value))
    code, out, err = main(["--checkpoint", str(char_run), "--tasks", "bpb", "--limit", "1"],
                          capsys)
    assert code == 2 and err.startswith("error: could not download tinyshakespeare.txt")
    assert err.count("\n") == 1


def test_eval_command_writes_the_card_and_compares(char_run, capsys):
    code, out, err = main(["--checkpoint", str(char_run), "--tasks", "bpb,addition", "--limit",
                           "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "| bpb | bits per byte, held-out Shakespeare | 2 |" in out
    assert "| addition | not applicable |" in out
    card = report.load_card(char_run)
    assert card.results["bpb"].measures[0].n == 2
    code, out, err = main(["--compare", str(char_run), str(char_run / "report.json")], capsys)
    assert code == 0 and "+0.000 [+0.000, +0.000] bits per byte: no measurable" in out


def test_smollm2_short_run(tmp_path):
    """The real model, three items of two tasks, through the command line."""
    from course_utils import pretrained

    try:
        pretrained.gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    r = course_eval("--model", "smollm2-135m-instruct", "--tasks", "mmlu,addition", "--limit",
                    "3", "--max-new-tokens", "6", "--no-progress", "--out", str(tmp_path),
                    timeout=600)
    assert r.returncode == 0, r.stderr
    card = report.load_card(tmp_path)
    measures = card.measures()
    assert list(measures) == ["MMLU, cloze, 0-shot", "addition, 2-digit", "addition, 3-digit"]
    assert [m.n for m in measures.values()] == [3, 3, 3]
    assert card.results["addition"].settings["max_new_tokens"] == 6
    assert all(isinstance(x, str) and x for x in card.results["addition"].replies)
    assert card.fingerprint == eval_tasks.init_sha256("smollm2-135m-instruct")
