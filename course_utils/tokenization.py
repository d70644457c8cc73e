"""The course's tokenizers: their common base, characters and words, and Project Gutenberg
clean-up (notebook 01).

- :class:`Tokenizer`: the base class. It owns what every tokenizer shares: special tokens
  (ChatML's ``<|im_start|>`` / ``<|im_end|>``, GPT-2's ``<|endoftext|>``), ``encode``,
  ``encode_iterable``, and ``to_dict`` / ``from_dict`` / ``save`` / ``load``.
- :class:`CharTokenizer`: one token per character.
- :func:`strip_gutenberg`: cut the Project Gutenberg header and licence footer off a book.
- :func:`split_words`, :class:`WordTokenizer`: one token per word or punctuation mark, with an
  ``<unk>`` token for words outside the vocabulary.
- ``Tokenizer.from_dict``: rebuild a tokenizer of any kind defined so far from its saved form
  (:func:`course_utils.bpe.tokenizer_from_dict` once the BPE tokenizer is defined too).

The byte-level BPE tokenizer and GPT-2's tokenizer live in :mod:`course_utils.bpe`.
"""

from __future__ import annotations

import json
import operator
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from .utils import atomic_write

# Where a run of whitespace starts right after a non-whitespace character: the places where
# encode_iterable may cut a stream of text. "(?r)" makes search() find the last one.
_WHITESPACE_AFTER_TEXT = regex.compile(r"(?r)(?<=\S)\s")


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}; decode bytes first "
                        f"(e.g. data.decode('utf-8'))")


def _checked_special_tokens(special_tokens, first_id: int | None = None) -> dict[str, int]:
    """A validated copy of ``special_tokens`` (``{string: id}``).

    With ``first_id`` the ids must be ``first_id, first_id + 1, ...`` (the ids right after the
    ordinary tokens). Raises ``TypeError`` for a token that is not a string or an id that is
    not an int, ``ValueError`` for an empty token, a repeated id or ids out of place.
    """
    if not isinstance(special_tokens, dict | None):
        raise TypeError(f"special_tokens must be a dict {{string: id}}, got "
                        f"{type(special_tokens).__name__}; to add new ones to a tokenizer, "
                        f"use tokenizer.with_special_tokens([...])")
    checked = {}
    for s, i in (special_tokens or {}).items():
        if not isinstance(s, str):
            raise TypeError(f"a special token must be a str, got {s!r} ({type(s).__name__})")
        if not s:
            raise ValueError("a special token must be a non-empty string, got ''")
        if not hasattr(i, "__index__"):
            raise TypeError(f"the id of special token {s!r} must be an int, got {i!r}")
        checked[s] = operator.index(i)
    special_tokens = checked
    ids = sorted(special_tokens.values())
    if len(set(ids)) != len(ids):
        raise ValueError(f"two special tokens share an id: {special_tokens}")
    if first_id is not None and ids != list(range(first_id, first_id + len(ids))):
        raise ValueError(f"special token ids must follow the {first_id} ordinary tokens "
                         f"({first_id}, {first_id + 1}, ...), got {special_tokens}")
    return special_tokens


_KINDS: dict[str, type] = {}  # kind -> tokenizer class, filled as the classes are defined


class Tokenizer:
    """The base of the course's tokenizers: text <-> list of integer ids.

    As in Karpathy's minbpe, the base class owns what all tokenizers share, and a subclass
    writes only what differs: ``kind`` (the tag :meth:`to_dict` saves), :attr:`vocab_size`,
    :meth:`encode_ordinary`, :meth:`decode`, and ``_fields`` / ``_from_fields`` (its own
    saved fields). Subclasses: :class:`CharTokenizer`, :class:`WordTokenizer` and
    :class:`course_utils.bpe.BPETokenizer`.

    **Special tokens** mark structure rather than text: GPT-2's ``<|endoftext|>`` ends a
    document, ChatML's ``<|im_start|>`` and ``<|im_end|>`` open and close a chat message.
    Every tokenizer handles them the same way:

    - :attr:`special_tokens` maps each one's string to its id.
    - ``tok.with_special_tokens(["<|im_start|>", "<|im_end|>"])`` returns a new tokenizer
      with them appended after the existing ids (``vocab_size``, ``vocab_size + 1``, ...).
    - ``tok.encode(text, allowed_special=...)`` produces a special token only where it is
      explicitly allowed. By default (tiktoken's policy) its string in ``text`` raises
      ``ValueError``, so text typed by a user can never inject one by accident.
    - ``tok.encode_ordinary(text)`` (or ``allowed_special="none"``) encodes everything as
      plain text, special-token strings included: the way to encode user text. (A tokenizer
      that cannot encode ``<`` or ``|`` as text raises its usual error.)
    - ``tok.decode(ids)`` turns a special token's id back into its string, and
      :meth:`save` / :meth:`load` keep the special tokens.
    """

    kind = ""  # the tag to_dict() saves, e.g. "char"; set by each subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # a class that names its own kind: from_dict can build it
            _KINDS[cls.kind] = cls
    special_tokens: dict[str, int]

    # ------------------------------------------------------------ written by each subclass
    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are ``0..vocab_size-1``)."""
        raise NotImplementedError

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, all of it as ordinary text: special-token strings get no special id."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> text."""
        raise NotImplementedError

    def _fields(self) -> dict:
        """The subclass's own saved fields (JSON-ready), without kind and special tokens."""
        raise NotImplementedError

    @classmethod
    def _from_fields(cls, d: dict) -> Tokenizer:
        """Rebuild from a dict made by :meth:`to_dict` (its kind already checked)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------- encode
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none_raise") -> list[int]:
        """Encode ``text`` into a list of token ids.

        Special tokens are split out first (where allowed) and each piece between them is
        encoded by :meth:`encode_ordinary`.

        Args:
            text: the string to encode.
            allowed_special: what to do with special-token strings found in ``text``:

                - ``"none_raise"`` (default): raise ``ValueError`` if any is present. Like
                  tiktoken's default: text from users should not be able to inject, say,
                  ``<|im_end|>`` by accident.
                - ``"all"``: each becomes its special id.
                - a set of special tokens: those become their ids; any other one raises.
                - ``"none"``: treat them as ordinary text (same as :meth:`encode_ordinary`).

        Returns:
            list of ints in ``0..vocab_size-1``.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: a special token that is not allowed is in ``text`` (the message
                names it), ``allowed_special`` is an unknown string or names a string that
                is not a special token of this tokenizer, or the subclass's own errors (e.g.
                a character a :class:`CharTokenizer` does not know).
        """
        _check_text(text)
        if allowed_special == "none":
            return self.encode_ordinary(text)
        allowed = self._allowed(allowed_special)
        found = [(text.find(s), s) for s in self.special_tokens if s not in allowed and s in text]
        if found:
            pos, s = min(found)  # the first one in the text
            raise ValueError(
                f"text contains the special token {s!r} (at position {pos}), which is not "
                f"allowed; pass allowed_special={{{s!r}}} (or 'all') to encode it as its id, "
                f"or use encode_ordinary(text) to encode it as plain text"
            )
        present = [s for s in allowed if s in text]
        if not present:
            return self.encode_ordinary(text)
        # longest first, so that a special token that contains another one wins; the group
        # makes re.split return text, special, text, special, ..., text
        longest_first = sorted(present, key=len, reverse=True)
        pieces = re.split("(" + "|".join(re.escape(s) for s in longest_first) + ")", text)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def _allowed(self, allowed_special) -> set[str]:
        """The set of special tokens that ``allowed_special`` allows (see :meth:`encode`)."""
        if allowed_special == "all":
            return set(self.special_tokens)
        if allowed_special == "none_raise":
            return set()
        if isinstance(allowed_special, str):
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set "
                             f"of special tokens, got {allowed_special!r}")
        allowed = set(allowed_special)
        unknown = [s for s in allowed if s not in self.special_tokens]
        if unknown:
            raise ValueError(
                f"allowed_special names {unknown[0]!r}, which is not a special token of this "
                f"tokenizer (it has {sorted(self.special_tokens) or 'none'}); add it with "
                f"with_special_tokens([...]) first"
            )
        return allowed

    def encode_iterable(self, texts: Iterable[str],
                        allowed_special: str | Iterable[str] = "none_raise") -> Iterator[int]:
        """Encode a stream of strings lazily: the ids of ``"".join(texts)``, in order.

        For text larger than memory, e.g. ``tok.encode_iterable(open(path, encoding="utf-8"))``
        reads a file line by line. The ids equal ``encode("".join(texts), allowed_special)``
        exactly, wherever the pieces happen to be cut (inside a word, a run of whitespace or
        a special token). Only the text since the last cut is kept in memory. The text is cut
        where whitespace follows a non-whitespace character, which is safe because no token
        runs from a non-whitespace character into whitespace: words, punctuation runs and
        GPT-2's pre-tokenization chunks all end before whitespace (a space is attached to the
        word *after* it), and special tokens hold no whitespace. A BPE tokenizer without a
        pre-tokenization pattern, or one with a special token that contains whitespace, has
        no safe cut: it keeps the whole text until the end (same ids, memory not bounded).

        Raises:
            TypeError: ``texts`` is a single str (pass ``[text]`` or use :meth:`encode`), or
                yields something that is not a str.
            ValueError: as :meth:`encode` (raised when the offending text is reached, except
                for a bad ``allowed_special``, which raises at once).
        """
        if isinstance(texts, str):
            raise TypeError("encode_iterable takes an iterable of strings (e.g. an open file "
                            "or a list), not one str; use encode(text) for a single string")
        if allowed_special != "none":
            self._allowed(allowed_special)  # a bad value raises now, not at the first next()
        can_cut = self._splits_at_whitespace() and not any(
            regex.search(r"\s", s) for s in self.special_tokens)
        return self._encode_stream(iter(texts), allowed_special, can_cut)

    def _encode_stream(self, texts: Iterator[str], allowed_special,
                       can_cut: bool) -> Iterator[int]:
        buffer = ""
        start = 0  # no cut point lies in buffer[:start] (searched already)
        for text in texts:
            _check_text(text)
            buffer += text
            cut = _WHITESPACE_AFTER_TEXT.search(buffer, start) if can_cut else None
            if cut is None:
                start = len(buffer)
                continue
            c = cut.start()  # the last cut point: there is none after it
            yield from self.encode(buffer[:c], allowed_special)
            buffer, start = buffer[c:], len(buffer) - c
        yield from self.encode(buffer, allowed_special)

    def _splits_at_whitespace(self) -> bool:
        """True when no token runs from a non-whitespace character into whitespace, so that
        :meth:`encode_iterable` may cut the text where whitespace follows other text."""
        return True

    # ------------------------------------------------------------------- special tokens
    def with_special_tokens(self, tokens: Iterable[str]) -> Tokenizer:
        """A new tokenizer of the same kind with ``tokens`` appended as special tokens.

        ``tok.with_special_tokens(["<|im_start|>", "<|im_end|>"])`` gives them the ids
        ``tok.vocab_size`` and ``tok.vocab_size + 1``; every other id is unchanged. The
        original tokenizer is not modified.

        Raises:
            TypeError: ``tokens`` is one str instead of a list of them, or holds a non-str.
            ValueError: an empty string, a token listed twice, or one that is already a
                special token of this tokenizer.
        """
        if isinstance(tokens, str):
            raise TypeError(f"with_special_tokens takes a list of strings, e.g. [{tokens!r}], "
                            f"not one str")
        tokens = list(tokens)
        for s in tokens:
            if s in self.special_tokens:
                raise ValueError(f"{s!r} is already a special token (id "
                                 f"{self.special_tokens[s]})")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"a special token is listed twice in {tokens}")
        new = {s: self.vocab_size + j for j, s in enumerate(tokens)}
        _checked_special_tokens(new)
        d = self.to_dict()
        d["special_tokens"] = {**self.special_tokens, **new}
        return type(self).from_dict(d)

    # ---------------------------------------------------------------------- decode
    def _id_list(self, ids) -> list[int]:
        """``ids`` (list, tuple, iterator, 1-D tensor or array of ints) as a list of ints.

        Raises:
            TypeError: ``ids`` is a str, bytes or a single number, or holds a non-integer.
            ValueError: ``ids`` is not 1-D, or an id is outside ``0..vocab_size-1``.
        """
        if hasattr(ids, "ndim") and hasattr(ids, "tolist"):  # a torch tensor or NumPy array
            if ids.ndim != 1:
                raise ValueError(f"token ids must be 1-D, got shape {tuple(ids.shape)}; "
                                 f"decode one sequence at a time (e.g. ids[0])")
            ids = ids.tolist()
        elif isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"token ids must be a list or 1-D tensor of ints, got "
                            f"{type(ids).__name__}" + (f"; wrap one id in a list: [{ids}]"
                                                       if isinstance(ids, int) else ""))
        ids = list(ids)
        try:
            ids = [operator.index(i) for i in ids]
        except TypeError:
            pos, bad = next((p, i) for p, i in enumerate(ids) if not hasattr(i, "__index__"))
            raise TypeError(f"token ids must be integers, got {bad!r} "
                            f"({type(bad).__name__}) at position {pos}") from None
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise ValueError(f"id {bad} is outside the vocabulary (0..{n - 1})")
        return ids

    # ------------------------------------------------------------------- save / load
    def to_dict(self) -> dict:
        """A JSON-ready dict: ``kind``, the subclass's fields, ``special_tokens``.
        Checkpoints store tokenizers in this form; :meth:`from_dict` reads it back."""
        return {"kind": self.kind, **self._fields(), "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`'s output (also from dicts saved before
        tokenizers had special tokens). Called on :class:`Tokenizer` it returns whichever kind
        ``d`` holds; called on a subclass it requires that kind.

        Raises:
            ValueError: ``d`` is not a dict, has an unknown ``kind`` or the wrong one, or
                misses a field.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a saved tokenizer is a dict made by to_dict(), got "
                             f"{type(d).__name__}")
        kinds = _KINDS
        kind = d.get("kind")
        if cls is not Tokenizer and kind != cls.kind:
            raise ValueError(f"not a {cls.__name__} dict (kind {cls.kind!r}): its kind is "
                             f"{kind!r}")
        if kind not in kinds:
            hint = "; import course_utils.bpe first" if kind == "bpe" else ""
            raise ValueError(f"unknown tokenizer kind {kind!r} (expected one of "
                             f"{sorted(kinds)}){hint}")
        try:
            return kinds[kind]._from_fields(d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed {kind!r} tokenizer dict ({type(e).__name__}: {e}); "
                             f"was it made by to_dict()?") from None

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to a JSON file, atomically (all or nothing; see
        :func:`course_utils.utils.atomic_write`). Read it back with :meth:`load`."""
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer written by :meth:`save` (any kind when called on
        :class:`Tokenizer`); the result equals the saved one.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not JSON (e.g. truncated) or not a tokenizer of this kind;
                the message names the path.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}; write one with "
                                    f"tokenizer.save(path)")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path} is not a tokenizer file: it is not valid JSON text "
                             f"({e}); it may be truncated: save the tokenizer again") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


class CharTokenizer(Tokenizer):
    """Maps each distinct character of a text to an integer id and back.

    Ids are assigned in sorted character order, so the same text always gives the same
    vocabulary; special tokens (see :class:`Tokenizer`) take the ids after the characters.
    ``encode`` of a character outside the vocabulary raises ``ValueError`` naming the
    character and its position.
    """

    kind = "char"

    def __init__(self, chars: list[str], special_tokens: dict[str, int] | None = None):
        """``chars[i]`` is the character with id ``i``; ``special_tokens`` (``{string: id}``)
        must use the ids ``len(chars), len(chars) + 1, ...``.

        Raises:
            ValueError: an entry of ``chars`` is not one character, or is repeated; special
                tokens as in :meth:`Tokenizer.with_special_tokens`.
        """
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer: every vocabulary entry must be one "
                                 f"character, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has repeated characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.special_tokens = _checked_special_tokens(special_tokens, first_id=len(chars))
        self.itos = chars + sorted(self.special_tokens, key=self.special_tokens.get)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character of ``text``.

        Raises ``TypeError`` if ``text`` is not a str, ``ValueError`` if it is empty."""
        _check_text(text)
        if not text:
            raise ValueError("CharTokenizer.from_text: the text is empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of characters plus special tokens."""
        return len(self.itos)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> list of ids, one per character; special-token strings are plain characters.

        Raises ``ValueError`` on a character not in the vocabulary (naming it and its
        position), ``TypeError`` if ``text`` is not a str."""
        _check_text(text)
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"character {text[pos]!r} at position {pos} is not in the tokenizer's "
                f"vocabulary of {len(self.chars)} characters; remove it from the text or "
                f"build the tokenizer from a text that contains it"
            ) from None

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> text; a special token's id gives its string.

        Raises ``ValueError`` on an id out of range, ``TypeError`` on a non-integer id."""
        itos = self.itos
        return "".join(itos[i] for i in self._id_list(ids))

    def _fields(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def _from_fields(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"], d.get("special_tokens"))


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


class WordTokenizer(Tokenizer):
    """Maps each word (or punctuation mark) of a vocabulary to an id; other words to ``<unk>``.

    The text is split by :func:`split_words`. Id 0 is ``<unk>`` (:attr:`unk_id`), the token
    every word outside the vocabulary becomes; ids 1, 2, ... are the vocabulary's words, most
    frequent first (ties in alphabetical order). ``<unk>`` never comes out of the splitter
    (``<`` and ``>`` are tokens of their own), so it cannot collide with a word of the text.

    Decoding joins tokens with single spaces: word-level tokenization forgets the original
    whitespace, and unknown words come back as ``<unk>``. Special tokens (see
    :class:`Tokenizer`) take the ids after the words.
    """

    kind = "word"
    unk_token = "<unk>"
    unk_id = 0

    def __init__(self, words: list[str], lowercase: bool = False,
                 special_tokens: dict[str, int] | None = None):
        """``words[i]`` is the token with id ``i``; ``words[0]`` must be ``"<unk>"``;
        ``special_tokens`` (``{string: id}``) must use the ids ``len(words), ...``.

        Raises:
            ValueError: ``words[0]`` is not ``"<unk>"``, a word is repeated or is not a
                non-empty string; special tokens as in :meth:`Tokenizer.with_special_tokens`.
        """
        words = list(words)
        if not words or words[0] != self.unk_token:
            raise ValueError(f"WordTokenizer: words[0] must be {self.unk_token!r}")
        for w in words:
            if not isinstance(w, str) or not w:
                raise ValueError(f"WordTokenizer: every word must be a non-empty string, "
                                 f"got {w!r}")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: the vocabulary has repeated words")
        self.words = words
        self.lowercase = bool(lowercase)
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.special_tokens = _checked_special_tokens(special_tokens, first_id=len(words))
        self.itos = words + sorted(self.special_tokens, key=self.special_tokens.get)

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
            TypeError: ``text`` is not a str.
            ValueError: ``text`` has no words, ``max_vocab < 2`` or ``min_count < 1``.
        """
        _check_text(text)
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
        """Number of tokens, ``<unk>`` and special tokens included."""
        return len(self.itos)

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` as strings, unknown words replaced by ``<unk>``."""
        _check_text(text)
        return [w if w in self.stoi else self.unk_token
                for w in split_words(text, self.lowercase)]

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> list of ids; a word not in the vocabulary becomes :attr:`unk_id` (0).
        Special-token strings are plain text (``<|im_end|>`` -> ``<``, ``|``, ...)."""
        _check_text(text)
        stoi = self.stoi
        return [stoi.get(w, self.unk_id) for w in split_words(text, self.lowercase)]

    def decode(self, ids) -> str:
        """Ids (list or 1-D tensor) -> the tokens joined by single spaces.

        Raises ``ValueError`` on an id outside ``0..vocab_size-1``, ``TypeError`` on a
        non-integer id."""
        itos = self.itos
        return " ".join(itos[i] for i in self._id_list(ids))

    def _fields(self) -> dict:
        return {"words": self.words, "lowercase": self.lowercase}

    @classmethod
    def _from_fields(cls, d: dict) -> WordTokenizer:
        return cls(d["words"], d.get("lowercase", False), d.get("special_tokens"))
