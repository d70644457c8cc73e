"""Verifiable instruction following: IFEval's checkers, written for the course (evaluation
notebook).

IFEval (Zhou et al., 2023, "Instruction-Following Evaluation for Large Language Models",
arXiv:2311.07911; data Apache-2.0) asks 541 prompts, each with one to three instructions whose
following a program can verify: "answer in lowercase", "no commas", "at least 300 words",
"wrap the answer in JSON", "end with 'Is there anything else I can help with?'" ... There are
25 instruction types in the data; each is a short function here (:data:`CHECKERS`), with the
keyword arguments the data gives it. They follow the definitions of Google's reference
implementation (``instruction_following_eval``, also ported into EleutherAI's lm-evaluation-
harness); ``tests/test_ifeval.py`` compares the verdicts with that port on generated responses.

Scores (the paper's section 3):

- strict: the response as it is; loose: the response also tried with its first line, its last
  line or both removed, and with ``*`` removed (markdown emphasis), and an instruction counts as
  followed when any of these eight versions follows it (:func:`loose_variants`). Loose forgives
  "Sure, here is ..." openings and markdown decoration; an empty response follows nothing.
- prompt level: a prompt counts when all its instructions are followed; instruction level:
  each instruction counts on its own (:class:`IFEvalScores`).

One deliberate difference: ``keywords:letter_frequency`` counts the character the prompt names
even when it is not a letter (the data asks for ``#`` and ``!``); the reference accepts only
a-z there and swaps anything else for a random letter, so its verdict on those two prompts is
random.

Where the reference needs data that cannot be had offline, something else stands in:

- nltk's ``punkt`` sentence model (downloaded at run time) counts sentences for
  ``length_constraints:number_sentences``: :func:`count_sentences` here is a rule-based splitter
  (a sentence ends at ``.``, ``!`` or ``?`` followed by white space, except after a few
  abbreviations, initials and numbers); the counts can differ from punkt's on unusual text.
- nltk's ``word_tokenize`` (which needs ``punkt`` too) finds the words of
  ``change_case:capital_word_frequency``: :func:`capital_words` uses a regular expression.
- the language of a response (``language:response_language``, and "in English" of the two
  ``change_case`` types) is identified by ``langdetect`` (a Python port of Nakatani Shuyo's
  language-detection, 2010), as in the reference: an optional dependency (``pip install
  langdetect``), seeded here so that a text always gets the same answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .corpora import fetch

# --------------------------------------------------------------------------- shared pieces
RELATIONS = ("less than", "at least")


def _compare(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be 'less than' or 'at least', got {relation!r}")


def count_words(text: str) -> int:
    """Words are runs of word characters (``\\w+``), as the reference counts them."""
    return len(re.findall(r"\w+", text))


_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e",
                  "inc", "ltd", "co", "fig", "approx", "u.s", "a.m", "p.m"}
# a sentence ends at . ! ? (repeated, then any closing quotes or brackets) before white space
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")


def _period_ends_nothing(before: str) -> bool:
    """Is a single period after ``before`` part of an abbreviation, an initial or a list
    number rather than a sentence end?"""
    words = before.rsplit("\n", 1)[-1].split()  # the words of the period's line
    if not words:
        return False
    word = words[-1]
    return (word.lower().rstrip(".") in _ABBREVIATIONS
            or re.fullmatch(r"[A-HJ-Z]", word) is not None  # "J. R. R. Tolkien" (not "I.")
            or (len(words) == 1 and word.isdigit()))  # "1. First item"


def count_sentences(text: str) -> int:
    """Sentences in ``text``, standing in for nltk's punkt model (see the module docstring).

    A sentence ends at ``.``, ``!`` or ``?`` (possibly repeated, and followed by closing
    quotes or brackets) before white space or the end of the text; a single period does not
    end one after an abbreviation (``Mr.``, ``e.g.``, ``etc.`` ...), a capital initial
    (``J. R. R. Tolkien``) or a number that starts its line (``1.`` of a numbered list). A line
    break alone does not end a sentence (as in punkt). Pieces without a word character do not
    count; text after the last end counts as one more sentence when it has one.
    """
    count, start = 0, 0
    for m in _SENTENCE_END.finditer(text):
        single_period = m.group().rstrip("\"'\u201d\u2019)]") == "."
        if single_period and _period_ends_nothing(text[:m.start()]):
            continue
        count += re.search(r"\w", text[start:m.end()]) is not None
        start = m.end()
    return count + (re.search(r"\w", text[start:]) is not None)


def capital_words(text: str) -> int:
    """Words written in capitals (``"NASA"``, ``"U.S.A"``, ``"I"``; not ``"Nasa"``): runs of
    letters and digits, joined by ``-`` or ``.`` (an apostrophe splits, as nltk's word tokenizer
    splits ``"DON'T"`` into two words), with at least one cased letter and none in lowercase."""
    return sum(w.isupper() for w in re.findall(r"[^\W_]+(?:[-.][^\W_]+)*", text))


_detector_ready = False


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of ``text``'s language by ``langdetect`` (``"en"``, ``"de"`` ...),
    seeded (``DetectorFactory.seed = 0``) so the answer does not change between calls; ``None``
    when the text has nothing to go on (no letters).

    Raises ``ImportError`` with the install command when ``langdetect`` is missing.
    """
    global _detector_ready
    try:
        import langdetect
    except ImportError:
        raise ImportError("the language checks of IFEval need langdetect: "
                          "pip install langdetect") from None
    if not _detector_ready:
        langdetect.DetectorFactory.seed = 0
        _detector_ready = True
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def _is_language(text: str, language: str) -> bool:
    found = detect_language(text)
    return found is None or found == language  # undetectable counts as followed (reference)


# --------------------------------------------------------------------------------- checkers
def no_comma(response: str) -> bool:
    return "," not in response


def english_lowercase(response: str) -> bool:
    return response.islower() and _is_language(response, "en")


def english_capital(response: str) -> bool:
    return response.isupper() and _is_language(response, "en")


def capital_word_frequency(response: str, capital_frequency: int, capital_relation: str) -> bool:
    return _compare(capital_words(response), capital_relation, capital_frequency)


def repeat_prompt(response: str, prompt_to_repeat: str) -> bool:
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(response: str) -> bool:
    """Two different answers separated by ``******`` (blank parts only at the ends)."""
    parts = response.split("******")
    answers = []
    for i, part in enumerate(parts):
        if part.strip():
            answers.append(part.strip())
        elif 0 < i < len(parts) - 1:
            return False
    return len(answers) == 2 and answers[0] != answers[1]


def number_placeholders(response: str, num_placeholders: int) -> bool:
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, postscript_marker: str) -> bool:
    """A postscript starting with ``P.S.`` or ``P.P.S`` (any case, optional spaces)."""
    patterns = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}
    pattern = patterns.get(postscript_marker, r"\s*" + re.escape(postscript_marker.lower())
                           + r".*$")
    return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(response: str) -> bool:
    return any(option in response.strip() for option in CONSTRAINED_RESPONSES)


def json_format(response: str) -> bool:
    """The whole response is JSON, optionally in a markdown code fence."""
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence):]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def multiple_sections(response: str, section_spliter: str, num_sections: int) -> bool:
    """At least ``num_sections`` sections, each starting with e.g. ``SECTION 1``."""
    parts = re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", response)
    return len(parts) - 1 >= num_sections


def number_bullet_lists(response: str, num_bullets: int) -> bool:
    """Exactly ``num_bullets`` markdown bullets: lines starting with ``*`` (not ``**``) or
    ``-``."""
    stars = re.findall(r"^\s*\*[^*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def number_highlighted_sections(response: str, num_highlights: int) -> bool:
    """At least ``num_highlights`` non-blank ``*highlighted*`` parts (``**bold**`` counts too)."""
    single = [h for h in re.findall(r"\*[^\n*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def title(response: str) -> bool:
    """A title in double angular brackets, ``<<like this>>``, with something in it."""
    return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", response))


def keyword_existence(response: str, keywords: Sequence[str]) -> bool:
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def forbidden_words(response: str, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE)
                   for w in forbidden_words)


def keyword_frequency(response: str, keyword: str, frequency: int, relation: str) -> bool:
    """The keyword's occurrences (case-insensitive, also inside longer words, as the
    reference counts them) compared with ``frequency``."""
    count = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(count, relation, frequency)


def letter_frequency(response: str, letter: str, let_frequency: int, let_relation: str) -> bool:
    """The letter's (or character's, e.g. ``#``) count, case-insensitive, compared with
    ``let_frequency``."""
    return _compare(response.lower().count(letter.strip().lower()), let_relation, let_frequency)


def response_language(response: str, language: str) -> bool:
    return _is_language(response, language)


def nth_paragraph_first_word(response: str, num_paragraphs: int, nth_paragraph: int,
                             first_word: str) -> bool:
    """``num_paragraphs`` paragraphs separated by blank lines (``\\n\\n``), and paragraph
    ``nth_paragraph`` (counting from 1) starts with ``first_word`` (case and quotes ignored,
    the word cut at its first punctuation mark)."""
    paragraphs = response.split("\n\n")
    count = sum(bool(p.strip()) for p in paragraphs)
    if nth_paragraph > count or not paragraphs[nth_paragraph - 1].strip():
        return False
    word = paragraphs[nth_paragraph - 1].split()[0].lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


def number_paragraphs(response: str, num_paragraphs: int) -> bool:
    """Exactly ``num_paragraphs`` paragraphs separated by the markdown divider ``***`` (a
    blank paragraph is allowed only at the very start or end)."""
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if 0 < i < len(paragraphs) - 1:
                return False
            count -= 1
    return count == num_paragraphs


def number_sentences(response: str, num_sentences: int, relation: str) -> bool:
    return _compare(count_sentences(response), relation, num_sentences)


def number_words(response: str, num_words: int, relation: str) -> bool:
    return _compare(count_words(response), relation, num_words)


def end_checker(response: str, end_phrase: str) -> bool:
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


CHECKERS: dict[str, Callable[..., bool]] = {
    "change_case:capital_word_frequency": capital_word_frequency,
    "change_case:english_capital": english_capital,
    "change_case:english_lowercase": english_lowercase,
    "combination:repeat_prompt": repeat_prompt,
    "combination:two_responses": two_responses,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "detectable_format:constrained_response": constrained_response,
    "detectable_format:json_format": json_format,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:title": title,
    "keywords:existence": keyword_existence,
    "keywords:forbidden_words": forbidden_words,
    "keywords:frequency": keyword_frequency,
    "keywords:letter_frequency": letter_frequency,
    "language:response_language": response_language,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_words": number_words,
    "punctuation:no_comma": no_comma,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
}
"""Instruction id -> checker ``f(response, **kwargs) -> bool`` (the 25 types of the data)."""


# ------------------------------------------------------------------------- prompts, scores
@dataclass(frozen=True)
class IFEvalPrompt:
    """One IFEval prompt: its ``key``, the ``prompt`` text, and per instruction its id
    (``instruction_ids``) and keyword arguments (``kwargs``, unset ones dropped)."""

    key: int
    prompt: str
    instruction_ids: tuple[str, ...]
    kwargs: tuple[dict, ...]


def load_ifeval() -> list[IFEvalPrompt]:
    """The 541 IFEval prompts from the registry (``ifeval``: offline copy, cache or download,
    checksummed), in file order.

    Raises ``ValueError`` for a line that is not an IFEval record or names an instruction with
    no checker (the message names the line), and the registry's ``DataError``.
    """
    path = fetch("ifeval")
    prompts = []
    for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ids, kwargs = tuple(r["instruction_id_list"]), r["kwargs"]
            unknown = [x for x in ids if x not in CHECKERS]
            if unknown or len(kwargs) != len(ids):
                raise ValueError(f"unknown instructions {unknown}" if unknown
                                 else "one kwargs dict per instruction expected")
            kwargs = tuple({k: v for k, v in kw.items() if v is not None} for kw in kwargs)
            prompts.append(IFEvalPrompt(int(r["key"]), r["prompt"], ids, kwargs))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path.name} line {i} is not an IFEval record: {e}") from None
    return prompts


def loose_variants(response: str) -> list[str]:
    """The eight versions loose scoring tries: the response, without its first line, its last
    line, or both (these three stripped), and each of the four with every ``*`` removed."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
           "\n".join(lines[1:-1]).strip()]
    return cut + [r.replace("*", "") for r in cut]


def check(instruction_id: str, response: str, kwargs: dict | None = None,
          loose: bool = False) -> bool:
    """Does ``response`` follow one instruction (strict, or loose: any of
    :func:`loose_variants`)? An empty (or all-blank) response follows nothing.

    Raises ``KeyError`` for an unknown instruction id and ``TypeError`` for wrong kwargs.
    """
    if instruction_id not in CHECKERS:
        raise KeyError(f"unknown IFEval instruction {instruction_id!r}; known: "
                       f"{', '.join(sorted(CHECKERS))}")
    fn, kwargs = CHECKERS[instruction_id], kwargs or {}
    candidates = loose_variants(response) if loose else [response]
    return any(r.strip() and fn(r, **kwargs) for r in candidates)


@dataclass
class IFEvalScores:
    """Per prompt, per instruction: was it followed, ``strict`` and ``loose``
    (lists of lists of bools, one inner list per prompt). The four accuracies of the paper are
    properties; :meth:`outcomes` gives the flat booleans for :func:`course_utils.stats.accuracy`
    (instruction-level outcomes of one prompt are not independent, so their interval is
    somewhat too narrow; the prompt-level one is the honest one)."""

    strict: list[list[bool]]
    loose: list[list[bool]]

    def outcomes(self, level: str = "prompt", mode: str = "strict") -> list[bool]:
        """``level`` ``"prompt"`` (all instructions followed) or ``"instruction"``; ``mode``
        ``"strict"`` or ``"loose"``. Raises ``ValueError`` for other values."""
        if mode not in ("strict", "loose") or level not in ("prompt", "instruction"):
            raise ValueError(f"level must be 'prompt' or 'instruction' and mode 'strict' or "
                             f"'loose', got {level!r}, {mode!r}")
        per_prompt = self.strict if mode == "strict" else self.loose
        if level == "prompt":
            return [all(x) for x in per_prompt]
        return [v for x in per_prompt for v in x]

    def accuracy(self, level: str = "prompt", mode: str = "strict") -> float:
        out = self.outcomes(level, mode)
        return sum(out) / len(out)


def evaluate_responses(prompts: Sequence[IFEvalPrompt], responses: Sequence[str]) -> IFEvalScores:
    """Strict and loose verdicts of every instruction of every prompt -> :class:`IFEvalScores`.

    Raises ``ValueError`` unless there is one response per prompt (and at least one).
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"one response per prompt needed: {len(prompts)} prompts, "
                         f"{len(responses)} responses")
    strict, loose = [], []
    for p, response in zip(prompts, responses):
        strict.append([check(i, response, kw) for i, kw in zip(p.instruction_ids, p.kwargs)])
        loose.append([check(i, response, kw, loose=True)
                      for i, kw in zip(p.instruction_ids, p.kwargs)])
    return IFEvalScores(strict, loose)
