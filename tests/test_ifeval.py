"""IFEval's instruction checkers: each on passing and failing texts, strict and loose scoring,
the four accuracies by hand, the loader, and verdicts equal to the lm-evaluation-harness port of
Google's reference checkers on thousands of generated responses."""

import importlib
import importlib.util
import json
import os
import random
import sys
import types
from pathlib import Path

import pytest

from course_utils import corpora
from course_utils.ifeval import (
    CHECKERS,
    IFEvalPrompt,
    capital_words,
    check,
    count_sentences,
    count_words,
    evaluate_responses,
    load_ifeval,
    loose_variants,
)

pytest.importorskip("langdetect")

C = "change_case:"
P = "startend:"
F = "detectable_format:"
K = "keywords:"
L = "length_constraints:"

# (instruction, kwargs, a response that follows it, one that does not)
CASES = [
    ("punctuation:no_comma", {}, "No commas here. None at all.", "One, two."),
    (C + "english_lowercase", {}, "this is all lowercase english text about the weather today",
     "This has a Capital letter in english text about the weather today"),
    (C + "english_lowercase", {}, "this is all lowercase english text about the weather today",
     "das ist ein ganz kleiner deutscher satz über das wetter von heute morgen"),
    (C + "english_capital", {}, "THIS IS ALL WRITTEN IN CAPITAL LETTERS ABOUT THE WEATHER",
     "THIS IS ALMOST ALL WRITTEN IN CAPITALs ABOUT THE WEATHER"),
    (C + "capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "NASA and the ESA met.", "NASA met the Esa."),
    (C + "capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only NASA here.", "I saw NASA."),  # "I" is a word in capitals too
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."},
     "write a poem. Roses are red.", "Roses are red. Write a poem."),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.",
     "First answer.\n******\nFirst answer."),
    ("combination:two_responses", {}, "A\n******\nB\n******\n", "A\n******\n\n******\nB"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], at [address].", "Dear [name], at the address."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello.\n\nP.S. See you.", "Hello.\n\nPS see you."),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"},
     "Hello.\np. p. s. one more thing", "Hello.\nP.S. one thing"),
    (F + "constrained_response", {}, "My answer is maybe.", "My answer is perhaps."),
    (F + "json_format", {}, '```json\n{"a": [1, 2]}\n```', "Here: {\"a\": 1}"),
    (F + "json_format", {}, '  [1, 2, 3] ', "```\n{'a': 1}\n```"),
    (F + "multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nIntro\nSECTION 2\nMore", "SECTION 1\nIntro\nSection 2\nMore"),
    (F + "number_bullet_lists", {"num_bullets": 2}, "* one\n- two\nthat's all",
     "* one\n** bold line\nthat's all"),
    (F + "number_highlighted_sections", {"num_highlights": 2}, "*one* and **two**",
     "*one* and ** **"),
    (F + "title", {}, "<<A Title>>\nText", "<< >>\nText"),
    (K + "existence", {"keywords": ["apple", "Pear"]}, "An APPLE and a pear.", "An apple only."),
    (K + "forbidden_words", {"forbidden_words": ["can"]}, "Cannot and scan are fine.",
     "You CAN do it."),
    (K + "frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"},
     "Cat, cat and category.", "Cat and cat."),  # counted inside longer words too
    (K + "frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"},
     "One cat.", "Cat and cat."),
    (K + "letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "Zig zag.", "Zig."),
    ("language:response_language", {"language": "de"},
     "Das ist ein ganz normaler deutscher Satz über das Wetter von heute.",
     "This is an ordinary English sentence about the weather today."),
    (L + "nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2,
                                      "first_word": "then"},
     "First part.\n\n\"Then, the second.", "First part.\n\nAnd then the second."),
    (L + "nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2,
                                      "first_word": "then"},
     "First part.\n\nThen the second.", "First.\n\nThen second.\n\nThird."),
    (L + "number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.\n***\n",
     "One.\n***\n\n***\nTwo."),
    (L + "number_sentences", {"num_sentences": 3, "relation": "less than"},
     "Mr. Smith came. He left.", "One. Two. Three."),
    (L + "number_words", {"num_words": 5, "relation": "at least"}, "one two three four five",
     "one two three four"),
    (L + "number_words", {"num_words": 5, "relation": "less than"}, "one-two three",
     "a b c d e"),
    (P + "end_checker", {"end_phrase": "Any other questions?"},
     'Here it is. any other questions?"  ', "Any other questions? Thanks."),
    (P + "quotation", {}, '  "All of it quoted."\n', '"Quoted" and not.'),
]


@pytest.mark.parametrize("instruction,kwargs,good,bad", CASES)
def test_each_checker_on_a_passing_and_a_failing_text(instruction, kwargs, good, bad):
    assert check(instruction, good, kwargs) is True
    assert check(instruction, bad, kwargs) is False


def test_every_instruction_type_has_cases():
    assert {c[0] for c in CASES} == set(CHECKERS) and len(CHECKERS) == 25


@pytest.mark.parametrize("text,n", [
    ("One sentence.", 1), ("Two. Sentences!", 2), ("Is it? Yes!! Really...", 3),
    ("Mr. Smith met Dr. Jones at 5 p.m. on Monday.", 1), ("J. R. R. Tolkien wrote it.", 1),
    ("So did I. And you?", 2), ("1. First item.\n2. Second item.", 2),
    ("Pi is 3.14 or so. Next.", 2), ('"Go." She went.', 2), ("no final stop", 1),
    ("line one\nline two", 1), ("", 0), ("...", 0), ("e.g. apples. And pears", 2),
])
def test_count_sentences_by_hand(text, n):
    assert count_sentences(text) == n


def test_words_and_capital_words_by_hand():
    assert count_words("It's a well-known fact: 3 cats.") == 8  # It s a well known fact 3 cats
    assert capital_words("NASA, the U.S.A and I; DON'T x-RAY ok OK2 Nasa") == 6


def test_loose_variants_and_strict_versus_loose():
    response = "Sure, here it is:\n*hello world*\nHope this helps!"
    variants = loose_variants(response)
    assert len(variants) == 8 and variants[0] == response
    assert variants[3] == "*hello world*" and variants[7] == "hello world"
    # the opening line has a comma and the last line breaks "lowercase": loose forgives both
    assert not check("punctuation:no_comma", response)
    assert check("punctuation:no_comma", response, loose=True)
    assert not check(P + "quotation", 'Here:\n"quoted"')
    assert check(P + "quotation", 'Here:\n"quoted"', loose=True)
    for instruction in CHECKERS:  # an empty reply follows nothing, strict or loose
        kwargs = next(c[1] for c in CASES if c[0] == instruction)
        assert not check(instruction, "  \n", kwargs)
        assert not check(instruction, "", kwargs, loose=True)
    with pytest.raises(KeyError, match="unknown IFEval instruction"):
        check("punctuation:no_dots", "x")


def test_four_accuracies_by_hand():
    prompts = [
        IFEvalPrompt(1, "p1", ("punctuation:no_comma", L + "number_words"),
                     ({}, {"num_words": 3, "relation": "at least"})),
        IFEvalPrompt(2, "p2", (F + "title",), ({},)),
        IFEvalPrompt(3, "p3", ("punctuation:no_comma", P + "quotation"), ({}, {})),
    ]
    responses = ["one two three", "Sure, here:\n<<Title>>", 'Okay, quoted:\n"a b c"']
    scores = evaluate_responses(prompts, responses)
    # strict: p1 both followed; p2 followed (the title is there); p3: comma and no quotes
    assert scores.strict == [[True, True], [True], [False, False]]
    # loose: p3 without its first line is '"a b c"': no comma and quoted
    assert scores.loose == [[True, True], [True], [True, True]]
    assert scores.accuracy("prompt", "strict") == pytest.approx(2 / 3)
    assert scores.accuracy("instruction", "strict") == pytest.approx(3 / 5)
    assert scores.accuracy("prompt", "loose") == 1.0
    assert scores.outcomes("instruction", "loose") == [True] * 5
    with pytest.raises(ValueError, match="level"):
        scores.outcomes("word")
    with pytest.raises(ValueError, match="one response per prompt"):
        evaluate_responses(prompts, responses[:2])


def test_loader_reads_541_prompts_and_every_instruction_runs():
    prompts = load_ifeval()
    assert len(prompts) == 541 and prompts[0].key == 1000
    ids = [i for p in prompts for i in p.instruction_ids]
    assert len(ids) == 834 and set(ids) == set(CHECKERS)
    for p in prompts:  # the data's kwargs are what the checkers take (no TypeError)
        for i, kw in zip(p.instruction_ids, p.kwargs):
            check(i, "A short reply.", kw)


def test_loader_names_a_bad_line(tmp_path, monkeypatch):
    good = {"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"],
            "kwargs": [{}]}
    bad = dict(good, instruction_id_list=["punctuation:no_dots"])
    (tmp_path / "ifeval_input_data.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad))
    monkeypatch.setitem(corpora.REGISTRY, "ifeval",
                        corpora.DataFile("ifeval", "ifeval_input_data.jsonl", "", None))
    monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"line 2 is not an IFEval record.*no_dots"):
        load_ifeval()


# ------------------------------------------------------------- the reference: lm-eval's port
# Types whose reference check needs nltk's punkt data, which cannot be downloaded here.
NEEDS_PUNKT = {L + "number_sentences"}


def _reference_is_random(instruction: str, kwargs: dict) -> bool:
    """The reference accepts only a-z as the letter of letter_frequency and swaps anything else
    for a random letter, so for the data's '#' (key 1122: "at least 4 hashtags") and '!' (key
    1129) its verdict is random; ours counts the character the prompt names."""
    letter = kwargs.get("letter", "a")
    return instruction == K + "letter_frequency" and not ("a" <= letter.lower() <= "z")


@pytest.fixture(scope="module")
def reference():
    """lm-evaluation-harness's port of Google's checkers (``lm_eval/tasks/ifeval``), loaded
    from its files alone: importing ``lm_eval.tasks`` would pull the whole harness (datasets,
    evaluate ...), so empty parent packages stand in, and LOCAL_RANK=1 keeps its import from
    trying to download punkt. Its ``count_sentences`` needs punkt: that type is not compared.
    (lm-eval itself is installed with ``pip install --no-deps lm-eval``.)
    ``capital_word_frequency`` calls ``nltk.word_tokenize``, which splits sentences with punkt
    first; with ``preserve_line=True`` it runs the same Treebank word tokenizer without that
    split, which does not change which words are in capitals."""
    pytest.importorskip("nltk")
    pytest.importorskip("immutabledict")
    spec = importlib.util.find_spec("lm_eval")
    if spec is None:
        pytest.skip("lm-eval is not installed (pip install --no-deps lm-eval)")
    folder = Path(spec.submodule_search_locations[0]) / "tasks" / "ifeval"
    saved = {k: v for k, v in sys.modules.items() if k == "lm_eval" or k.startswith("lm_eval.")}
    for name, path in [("lm_eval", None), ("lm_eval.tasks", None),
                       ("lm_eval.tasks.ifeval", folder)]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(path)] if path else []
        sys.modules[name] = stub
    rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "1"
    try:
        utils = importlib.import_module("lm_eval.tasks.ifeval.utils")
    finally:
        if rank is None:
            del os.environ["LOCAL_RANK"]
        else:
            os.environ["LOCAL_RANK"] = rank
        for name in [k for k in sys.modules if k == "lm_eval" or k.startswith("lm_eval.")]:
            del sys.modules[name]
        sys.modules.update(saved)
    import nltk

    word_tokenize = nltk.word_tokenize
    nltk.word_tokenize = lambda text, *a, **kw: word_tokenize(text, preserve_line=True)
    # its sentence counter loads punkt; ours stands in so the other checks of a prompt run
    # (the number_sentences verdicts are then not compared: they would compare ours with ours)
    util = utils.instructions_registry.instructions.instructions_util
    util.count_sentences = count_sentences
    yield utils
    nltk.word_tokenize = word_tokenize


WORDS = ("the a of cat category apple pear NASA Esa I can't don't x-ray well-known then First "
         "Then said fine ok sun moon river 3 42 1,000 z Z e.g. Mr. P.S. hello world").split()
OTHER_LANGUAGES = {  # one sentence each, in some of the languages the data asks for
    "de": "Das ist ein ganz normaler deutscher Satz über das Wetter von heute und morgen.",
    "it": "Questa è una frase italiana molto semplice sul tempo di oggi e di domani.",
    "pt": "Esta é uma frase portuguesa muito simples sobre o tempo de hoje e de amanhã.",
    "ru": "Это очень простое предложение на русском языке о погоде сегодня и завтра.",
    "sw": "Hii ni sentensi rahisi sana ya Kiswahili kuhusu hali ya hewa leo na kesho.",
    "fi": "Tämä on hyvin yksinkertainen suomenkielinen lause tämän päivän säästä.",
    "vi": "Đây là một câu tiếng Việt rất đơn giản về thời tiết hôm nay và ngày mai.",
    "hi": "यह आज और कल के मौसम के बारे में हिंदी में एक बहुत ही सरल वाक्य है।",
    "ar": "هذه جملة عربية بسيطة جدا عن الطقس اليوم وغدا.",
    "ko": "이것은 오늘과 내일의 날씨에 대한 아주 간단한 한국어 문장입니다.",
    "bg": "Това е много просто изречение на български език за времето днес и утре.",
}


def _response(rng: random.Random, prompt: IFEvalPrompt) -> str:
    """A random response that mixes the things the checkers look for with the prompt's own
    keywords, phrases and thresholds, so that both verdicts occur for every type."""
    vocab = list(WORDS)
    for kw in prompt.kwargs:
        for key in ("keywords", "forbidden_words"):
            vocab += kw.get(key, [])
        for key in ("keyword", "first_word", "letter", "section_spliter"):
            if key in kw:
                vocab.append(kw[key])
    target = max([kw.get("num_words", 0) for kw in prompt.kwargs] + [20])
    n_words = max(1, int(rng.choice([0.2, 0.9, 1.0, 1.1, 2]) * min(target, 300)))
    words = [rng.choice(vocab) for _ in range(n_words)]
    case = rng.random()
    words = [w.upper() if case < 0.1 or rng.random() < 0.05 else
             w.lower() if case < 0.2 or rng.random() < 0.3 else w for w in words]
    pieces, i = [], 0
    while i < len(words):
        k = rng.randint(1, 12)
        chunk = " ".join(words[i:i + k])
        i += k
        style = rng.random()
        if style < 0.08:
            chunk = f"* {chunk}"
        elif style < 0.14:
            chunk = f"- {chunk}"
        elif style < 0.2:
            chunk = f"*{chunk}*" if rng.random() < 0.5 else f"**{chunk}**"
        elif style < 0.24:
            chunk = f"SECTION {rng.randint(1, 5)} {chunk}"
        elif style < 0.28:
            chunk = f"[{chunk}]"
        pieces.append(chunk + rng.choice(["", ".", ".", "!", "?", ","]))
        pieces.append(rng.choice([" ", " ", "\n", "\n\n", "\n***\n", "\n******\n", "\n\n"]))
    text = "".join(pieces).strip()
    extras = rng.random()
    if extras < 0.1:
        text = " ".join(rng.choice(list(OTHER_LANGUAGES.values())) for _ in range(2))
    elif extras < 0.15:
        text = json.dumps({"answer": text[:40]}, ensure_ascii=False)
        text = f"```json\n{text}\n```" if rng.random() < 0.5 else text
    elif extras < 0.2:
        text = rng.choice(["My answer is yes.", "My answer is no", "my answer is maybe."])
    for instruction, kw in zip(prompt.instruction_ids, prompt.kwargs):
        if rng.random() < 0.5:  # half the time, aim at the prompt's own instructions
            text = _aimed(rng, instruction, kw, text)
        if "section_spliter" in kw and rng.random() < 0.5:  # about the asked number of sections
            n = max(1, kw["num_sections"] + rng.randint(-1, 1))
            text = "\n".join(f"{kw['section_spliter']} {i + 1}\n{rng.choice(WORDS)}"
                             for i in range(n))
        if "first_word" in kw and rng.random() < 0.5:  # about the asked number of paragraphs
            n = max(1, kw["num_paragraphs"] + rng.choice([-1, 0, 0, 0, 1]))
            paragraphs = [f"{rng.choice(WORDS)} {rng.choice(WORDS)}." for _ in range(n)]
            if kw["nth_paragraph"] <= n and rng.random() < 0.7:
                paragraphs[kw["nth_paragraph"] - 1] = f"{kw['first_word'].title()}, it is."
            text = "\n\n".join(paragraphs)
        if "end_phrase" in kw and rng.random() < 0.4:
            text += " " + (kw["end_phrase"] if rng.random() < 0.8 else kw["end_phrase"].upper())
        if "prompt_to_repeat" in kw and rng.random() < 0.4:
            text = kw["prompt_to_repeat"] + "\n" + text
        if "postscript_marker" in kw and rng.random() < 0.4:
            text += f"\n\n{kw['postscript_marker']} {rng.choice(WORDS)}"
    if rng.random() < 0.1:
        text = f"<<{rng.choice(WORDS)} {rng.choice(WORDS)}>>\n{text}"
    if rng.random() < 0.1:
        text = f'"{text}"'
    if rng.random() < 0.25:
        text = rng.choice(["Sure, here it is:", "Here you go!", "*Answer*"]) + "\n" + text
    if rng.random() < 0.15:
        text += "\n" + rng.choice(["Hope this helps, friend.", "***", "Thanks!"])
    if rng.random() < 0.05:
        text = text.lower()
    return text


def _aimed(rng: random.Random, instruction: str, kw: dict, text: str) -> str:
    """``text`` changed to be near what ``instruction`` asks, on either side of it."""
    short = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
    if instruction == C + "english_capital":
        return text.upper()
    if instruction == C + "english_lowercase":
        return text.lower()
    if instruction == "language:response_language":
        language = kw["language"] if rng.random() < 0.7 else rng.choice(list(OTHER_LANGUAGES))
        return OTHER_LANGUAGES.get(language, text)
    if instruction == F + "constrained_response":
        return rng.choice(["My answer is yes.", "My answer is no.", "My answer is no",
                           "my answer is maybe."])
    if instruction == F + "json_format":
        body = json.dumps({"answer": short})
        return rng.choice([body, f"```json\n{body}\n```", f"```\n{body}\n```", body[:-1]])
    if instruction == L + "number_paragraphs":
        n = max(1, kw["num_paragraphs"] + rng.randint(-1, 1))
        return rng.choice(["\n***\n", " *** ", "\n\n***\n\n"]).join([short] * n)
    if instruction == F + "number_bullet_lists":
        n = max(0, kw["num_bullets"] + rng.randint(-1, 1))
        return "Intro:\n" + "\n".join(f"{rng.choice('*-')} {short}" for _ in range(n))
    if instruction == "detectable_content:number_placeholders":
        n = max(0, kw["num_placeholders"] + rng.randint(-1, 1))
        return " ".join(f"[{rng.choice(WORDS)}] {short}" for _ in range(n))
    if instruction == F + "number_highlighted_sections":
        n = max(0, kw["num_highlights"] + rng.randint(-1, 1))
        return "\n".join(f"*{short}*" for _ in range(n))
    if instruction == P + "quotation":
        return f'"{text}"'
    if instruction == "combination:two_responses":
        return f"{short}\n******\n{rng.choice([short, text])}"
    return text


def test_verdicts_equal_the_reference_port_on_generated_responses(reference):
    """Every prompt of the data with 4 generated responses each (2,164 responses, about 3,300
    instruction verdicts strict and as many loose), and each type must see both verdicts."""
    rng = random.Random(0)
    seen: dict[str, set] = {i: set() for i in CHECKERS}
    disagreements = []
    for p in load_ifeval():
        inp = reference.InputExample(p.key, list(p.instruction_ids), p.prompt, list(p.kwargs))
        for _ in range(4):
            response = _response(rng, p)
            ours = evaluate_responses([p], [response])
            theirs_strict = reference.test_instruction_following_strict(inp, response)
            theirs_loose = reference.test_instruction_following_loose(inp, response)
            for j, instruction in enumerate(p.instruction_ids):
                if instruction in NEEDS_PUNKT or _reference_is_random(instruction, p.kwargs[j]):
                    continue
                seen[instruction].add(ours.strict[0][j])
                for mode, mine, ref in [
                        ("strict", ours.strict[0][j], theirs_strict.follow_instruction_list[j]),
                        ("loose", ours.loose[0][j], theirs_loose.follow_instruction_list[j])]:
                    if mine != ref:
                        disagreements.append((instruction, mode, p.kwargs[j], response))
    assert not disagreements, f"{len(disagreements)} disagreements, e.g. {disagreements[:3]}"
    one_sided = [i for i, v in seen.items() if i not in NEEDS_PUNKT and len(v) < 2]
    assert not one_sided, f"types that saw only one verdict: {one_sided}"
