"""Character- and word-level tokenization, and Project Gutenberg clean-up (notebook 01).

- :class:`CharTokenizer`: one token per character.
- :func:`strip_gutenberg`: cut the Project Gutenberg header and licence footer off a book.
- :func:`split_words`, :class:`WordTokenizer`: one token per word or punctuation mark, with an
  ``<unk>`` token for words outside the vocabulary.
- :func:`tokenizer_from_dict`: rebuild any of the course's tokenizers from its saved form.

The byte-level BPE tokenizer and GPT-2's tokenizer live in :mod:`course_utils.bpe`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path


def _checked_ids(ids, vocab_size: int) -> list[int]:
    """``ids`` as a list of ints; ``ValueError`` naming the first one outside the vocabulary."""
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    return ids


class CharTokenizer:
    """Maps each distinct character of a text to an integer id and back.

    Ids are assigned in sorted character order, so the same text always gives the same
    vocabulary. ``encode`` of a character outside the vocabulary raises ``ValueError``
    naming the character and its position.
    """

    kind = "char"

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has repeated characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character of ``text``."""
        if not text:
            raise ValueError("CharTokenizer.from_text: the text is empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Text -> list of ids. Raises ``ValueError`` on a character not in the vocabulary."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the tokenizer's "
                f"vocabulary of {self.vocab_size} characters; remove it from the text or "
                f"build the tokenizer from a text that contains it"
            ) from None

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> text. Raises ``ValueError`` on an id out of range."""
        ids = _checked_ids(ids, self.vocab_size)
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("kind") != cls.kind:
            raise ValueError(f"not a character tokenizer: kind={d.get('kind')!r}")
        return cls(d["chars"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --------------------------------------------------------------------- Project Gutenberg
# Project Gutenberg wraps every book in a header and a licence footer, marked by lines such as
#   *** START OF THIS PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***   (older files)
#   *** START OF THE PROJECT GUTENBERG EBOOK ALICE'S ADVENTURES IN WONDERLAND ***    (newer files)
# and the same with END. Case varies too ("EBook"), so the match ignores case.
_GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$",
                              re.IGNORECASE | re.MULTILINE)
_GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THIS|THE) PROJECT GUTENBERG EBOOK.*$",
                            re.IGNORECASE | re.MULTILINE)
# Older files repeat the title on a last line before the END marker; it is not the book's text.
_GUTENBERG_LAST_LINE = re.compile(r"\n[ \t]*End of (?:the )?Project Gutenberg.*\s*\Z",
                                  re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg book: the text between its START and END marker lines.

    Accepts both marker forms, ``*** START OF THIS PROJECT GUTENBERG EBOOK ...`` (older files)
    and ``*** START OF THE PROJECT GUTENBERG EBOOK ...`` (newer files), and the same for
    ``END``, in any case. An ``End of [the] Project Gutenberg ...`` line just before the END
    marker (older files) is dropped too. Leading and trailing whitespace is removed; the text
    in between is returned unchanged.

    Raises:
        ValueError: no START marker line, no END marker line after it, or nothing between them.
    """
    start = _GUTENBERG_START.search(text)
    if start is None:
        raise ValueError(
            "strip_gutenberg: no '*** START OF THE PROJECT GUTENBERG EBOOK' (or 'START OF THIS "
            "...') marker line found; is this a Project Gutenberg plain-text file? Pass the "
            "whole file, header included."
        )
    end = _GUTENBERG_END.search(text, start.end())
    if end is None:
        raise ValueError(
            "strip_gutenberg: found the START marker but no '*** END OF THE PROJECT GUTENBERG "
            "EBOOK' (or 'END OF THIS ...') marker line after it; the file may be truncated."
        )
    body = _GUTENBERG_LAST_LINE.sub("", text[start.end():end.start()]).strip()
    if not body:
        raise ValueError("strip_gutenberg: there is no text between the START and END markers")
    return body


# ---------------------------------------------------------------------------- word level
# A word is a run of letters/digits, with apostrophes inside it ("don't", "Alice's" are one
# word); every other visible character (punctuation, quotes, "_", "-") is a token on its own;
# whitespace only separates tokens. So "'Oh, don't!'" -> ' Oh , don't ! '
# ([^\W_] is \w without the underscore: letters and digits, in any script.)
WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)*|\S"


def split_words(text: str, lowercase: bool = False) -> list[str]:
    """Split ``text`` into words and single punctuation characters (see :data:`WORD_PATTERN`).

    ``split_words("'Oh, don't!'") == ["'", "Oh", ",", "don't", "!", "'"]``. Whitespace is
    dropped, so it cannot be recovered from the tokens. ``lowercase=True`` lowercases first.
    """
    if lowercase:
        text = text.lower()
    return re.findall(WORD_PATTERN, text)


class WordTokenizer:
    """Maps each word (or punctuation mark) of a vocabulary to an id; other words to ``<unk>``.

    The text is split by :func:`split_words`. Id 0 is ``<unk>`` (:attr:`unk_id`), the token
    every word outside the vocabulary becomes; ids 1, 2, ... are the vocabulary's words, most
    frequent first (ties in alphabetical order). ``<unk>`` never comes out of the splitter
    (``<`` and ``>`` are tokens of their own), so it cannot collide with a word of the text.

    Decoding joins tokens with single spaces: word-level tokenization forgets the original
    whitespace, and unknown words come back as ``<unk>``.
    """

    kind = "word"
    unk_token = "<unk>"
    unk_id = 0

    def __init__(self, words: list[str], lowercase: bool = False):
        """``words[i]`` is the token with id ``i``; ``words[0]`` must be ``"<unk>"``."""
        if not words or words[0] != self.unk_token:
            raise ValueError(f"WordTokenizer: words[0] must be {self.unk_token!r}")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: the vocabulary has repeated words")
        self.words = list(words)
        self.lowercase = bool(lowercase)
        self.stoi = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_text(cls, text: str, max_vocab: int | None = None, min_count: int = 1, *,
                  lowercase: bool = False) -> WordTokenizer:
        """Build the vocabulary from the words of ``text``.

        Args:
            text: training text.
            max_vocab: keep at most this many tokens, ``<unk>`` included (so the
                ``max_vocab - 1`` most frequent words); ``None`` keeps every word.
            min_count: keep only words that occur at least this many times.
            lowercase: lowercase the text before splitting (here and in :meth:`encode`).

        Raises:
            ValueError: ``text`` has no words, ``max_vocab < 2`` or ``min_count < 1``.
        """
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2 (<unk> and one word), got {max_vocab}")
        if min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {min_count}")
        counts = Counter(split_words(text, lowercase))
        if not counts:
            raise ValueError("WordTokenizer.from_text: the text has no words")
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        ranked = [w for w in ranked if counts[w] >= min_count]
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 1]
        return cls([cls.unk_token, *ranked], lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        """Number of tokens, ``<unk>`` included."""
        return len(self.words)

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings, unknown words replaced by ``<unk>``."""
        return [w if w in self.stoi else self.unk_token
                for w in split_words(text, self.lowercase)]

    def encode(self, text: str) -> list[int]:
        """Text -> list of ids; a word not in the vocabulary becomes :attr:`unk_id` (0)."""
        stoi = self.stoi
        return [stoi.get(w, self.unk_id) for w in split_words(text, self.lowercase)]

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> the tokens joined by single spaces.

        Raises ``ValueError`` on an id outside ``0..vocab_size-1``."""
        ids = _checked_ids(ids, self.vocab_size)
        return " ".join(self.words[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "words": self.words, "lowercase": self.lowercase}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        if d.get("kind") != cls.kind:
            raise ValueError(f"not a word tokenizer: kind={d.get('kind')!r}")
        return cls(d["words"], lowercase=d.get("lowercase", False))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def tokenizer_from_dict(d: dict):
    """Rebuild a saved tokenizer (as stored in checkpoints) from its ``to_dict()`` form.

    Raises ``ValueError`` for an unknown ``kind``."""
    kind = d.get("kind")
    if kind == CharTokenizer.kind:
        return CharTokenizer.from_dict(d)
    if kind == WordTokenizer.kind:
        return WordTokenizer.from_dict(d)
    if kind == "bpe":
        from .bpe import BPETokenizer

        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'char', 'word' or 'bpe')")
