"""Character-level tokenization (notebook 01).

The byte-level BPE tokenizer and GPT-2's tokenizer live in :mod:`course_utils.bpe`.
"""

from __future__ import annotations

import json
from pathlib import Path


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
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
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


def tokenizer_from_dict(d: dict):
    """Rebuild a saved tokenizer (as stored in checkpoints) from its ``to_dict()`` form.

    Raises ``ValueError`` for an unknown ``kind``."""
    kind = d.get("kind")
    if kind == CharTokenizer.kind:
        return CharTokenizer.from_dict(d)
    if kind == "bpe":
        from .bpe import BPETokenizer

        return BPETokenizer.from_dict(d)
    raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'char' or 'bpe')")
