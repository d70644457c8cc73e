"""Byte-level BPE tokenization, from scratch: the finished piece of notebook 01.

Byte pair encoding (BPE) for subwords comes from Sennrich et al. 2016, "Neural Machine
Translation of Rare Words with Subword Units": start from single symbols and repeatedly merge
the most frequent adjacent pair into a new symbol. GPT-2 (Radford et al. 2019, "Language
Models are Unsupervised Multitask Learners") runs BPE on UTF-8 *bytes* instead of characters,
so any string can be encoded with no unknown token, and first splits text into chunks with a
regex ("pre-tokenization") so that merges never cross a word/number/punctuation boundary.

What is here:

- :data:`GPT2_SPLIT_PATTERN`, :func:`bytes_to_unicode`: GPT-2's regex and its byte <-> char map.
- :func:`get_pair_counts`, :func:`merge`: the two list helpers of the algorithm.
- :func:`train_bpe_naive`: the plain algorithm (recount every pair after every merge).
- :func:`train_bpe`: the fast trainer (distinct chunks counted once, incremental pair counts).
- :class:`BPETokenizer`: encode / ``encode_iterable`` (lazy, for text larger than memory) /
  decode; save / load and special tokens come from the base class
  :class:`course_utils.tokenization.Tokenizer`. Released tokenizers load with
  :meth:`BPETokenizer.from_byte_level_vocab` (GPT-2-style vocab and merges, e.g. SmolLM2's
  from a GGUF file) and :meth:`BPETokenizer.from_gpt2_files` / :func:`gpt2_tokenizer` (ids
  equal to GPT-2's and tiktoken's).

Token ids of a tokenizer we train: ``0..255`` are the single bytes, ``256 + k`` is the token made
by the ``k``-th merge, and special tokens come last. Training breaks ties between equally
frequent pairs by the pairs' bytes, not their ids, so the merges learned do not depend on the
order in which tokens were created.
"""

from __future__ import annotations

import functools
import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import regex

from .tokenization import Tokenizer, _check_text, _checked_special_tokens
from .utils import progress_bar

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "BPETokenizer",
    "bytes_to_unicode",
    "get_pair_counts",
    "gpt2_tokenizer",
    "merge",
    "train_bpe",
    "train_bpe_naive",
]

# GPT-2's pre-tokenization regex (Radford et al. 2019; the `pat` of OpenAI's encoder.py).
# Alternatives are tried left to right at each position:
#   's 't 're 've 'm 'll 'd     English contractions (case-sensitive: "WE'RE" is not one)
#    ?\p{L}+                    a run of letters, with at most one leading space
#    ?\p{N}+                    a run of digits, with at most one leading space
#    ?[^\s\p{L}\p{N}]+          a run of punctuation/symbols, with at most one leading space
#   \s+(?!\S)                   whitespace, leaving the last space to the next word
#   \s+                         any remaining whitespace (e.g. at the end of the text)
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

GPT2_ENDOFTEXT = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    OpenAI's ``encoder.json`` and ``vocab.bpe`` store tokens as strings, one character per
    byte, chosen so that no character is whitespace or a control character. Printable bytes
    (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other 68 bytes, in
    increasing order, get ``chr(256)``, ``chr(257)``, ... (so a space, byte 32, is ``"Ġ"``).

    Returns:
        ``{byte value (0..255): one-character str}``, 256 distinct characters, ordered as
        GPT-2 orders its first 256 tokens (printable bytes first).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


def get_pair_counts(
    ids: list[int], counts: dict[tuple[int, int], int] | None = None
) -> dict[tuple[int, int], int]:
    """Count adjacent pairs in ``ids``: ``[1, 2, 3, 1, 2] -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}``.

    Overlapping pairs all count (``[7, 7, 7]`` has ``(7, 7)`` twice). Pass ``counts`` to add
    to an existing dict (it is updated in place and returned), e.g. to sum over many chunks.
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, scanning left to right.

    ``merge([7, 7, 7, 1], (7, 7), 9) -> [9, 7, 1]``. Returns a new list; ``ids`` is unchanged.
    """
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _split_chunks(text: str, pattern: str | None, special_tokens: Iterable[str] = ()) -> list[str]:
    """Pre-tokenize ``text`` for training: drop special tokens, then split with ``pattern``."""
    pieces = [text]
    specials = sorted(special_tokens, key=len, reverse=True)
    if specials:
        pieces = regex.split("|".join(regex.escape(s) for s in specials), text)
    if pattern is None:  # no pre-tokenization: each piece is one chunk
        return [p for p in pieces if p]
    compiled = regex.compile(pattern)
    return [chunk for piece in pieces for chunk in compiled.findall(piece)]


def _check_vocab_size(vocab_size: int, n_special: int = 0) -> int:
    """Number of merges for ``vocab_size``; ``TypeError`` if it is not an int, ``ValueError``
    if it is too small."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 256 + n_special:
        raise ValueError(
            f"vocab_size must be at least 256 (one token per byte) plus the number of special "
            f"tokens ({n_special}), got {vocab_size}"
        )
    return vocab_size - 256 - n_special


def _check_special_list(special_tokens) -> list[str]:
    """``special_tokens`` for training as a list without repeats; clear errors for bad ones."""
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens must be a list of strings, e.g. [{special_tokens!r}], "
                        f"not one str")
    special_tokens = list(dict.fromkeys(special_tokens or []))
    _checked_special_tokens({s: i for i, s in enumerate(special_tokens)})
    return special_tokens


class _Reversed:
    """Wraps a key so that it sorts in reverse: heapq, a min-heap, then pops the greatest."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __lt__(self, other: _Reversed) -> bool:
        return self.key > other.key


def train_bpe_naive(
    text: str, vocab_size: int, pattern: str | None = GPT2_SPLIT_PATTERN
) -> dict[tuple[int, int], int]:
    """Learn BPE merges the plain way: after each merge, recount every pair in every chunk.

    Algorithm of Sennrich et al. 2016 on bytes with GPT-2's regex pre-tokenization (Radford et
    al. 2019). Slow (each merge costs a pass over the whole text); the reference for
    :func:`train_bpe`, which must return exactly the same merges.

    Args:
        text: training text.
        vocab_size: 256 byte tokens plus the number of merges to learn.
        pattern: pre-tokenization regex (``regex`` syntax); ``None`` keeps the text one chunk.

    Returns:
        ``{(id_a, id_b): new_id}`` in the order learned, with ``new_id = 256, 257, ...``.
        The most frequent pair wins; a tie goes to the pair whose bytes compare greatest,
        ``(bytes of a, bytes of b)`` as a tuple of byte strings, so that the result does not
        depend on the order in which tokens got their ids (the rule of Stanford CS336's BPE
        assignment, 2025). Training stops early if no pair is left.

    Raises:
        TypeError: ``text`` is not a str or ``vocab_size`` not an int.
        ValueError: ``vocab_size < 256``.
    """
    _check_text(text)
    num_merges = _check_vocab_size(vocab_size)
    chunks = [list(chunk.encode("utf-8")) for chunk in _split_chunks(text, pattern)]
    vocab = {i: bytes([i]) for i in range(256)}  # id -> bytes, to break ties
    merges = {}
    for k in range(num_merges):
        counts = {}
        for ids in chunks:
            get_pair_counts(ids, counts)
        if not counts:
            break
        # the highest count; among equal counts, the greatest pair of byte strings
        pair = max(counts, key=lambda p: (counts[p], vocab[p[0]], vocab[p[1]]))
        merges[pair] = 256 + k
        vocab[256 + k] = vocab[pair[0]] + vocab[pair[1]]
        chunks = [merge(ids, pair, 256 + k) for ids in chunks]
    return merges


def train_bpe(
    text: str,
    vocab_size: int,
    pattern: str | None = GPT2_SPLIT_PATTERN,
    special_tokens: Iterable[str] | None = None,
    progress: bool = False,
) -> BPETokenizer:
    """Learn a byte-level BPE tokenizer, fast; same merges as :func:`train_bpe_naive`.

    Three ideas make it fast (the same algorithm as Sennrich et al. 2016, with GPT-2's
    byte-level twist from Radford et al. 2019):

    1. Count each distinct chunk once. After pre-tokenization "the" may occur 20,000 times;
       we keep it once with frequency 20,000, and every pair count is weighted by it.
    2. Keep an index ``pair -> set of chunks containing it``. A merge only touches those
       chunks, and only their pair counts change (by the difference before/after the merge).
    3. Find the most frequent pair with a heap of ``(-count, pair's bytes reversed, pair)``
       entries. Changed counts are pushed again; outdated entries are skipped when they reach
       the top.

    Ties between equally frequent pairs go to the greatest pair of byte strings, exactly as
    in :func:`train_bpe_naive`. Training stops early if no pair is left.

    Args:
        text: training text. Special tokens in it are cut out before training.
        vocab_size: size of the final vocabulary: 256 byte tokens + merges + special tokens.
        pattern: pre-tokenization regex (``regex`` syntax); ``None`` keeps the text one chunk.
        special_tokens: strings such as ``"<|endoftext|>"``; they get the last ids.
        progress: show a progress bar over the merges.

    Returns:
        a :class:`BPETokenizer` (``tokenizer.vocab_size == vocab_size`` unless stopped early).

    Raises:
        TypeError: ``text`` is not a str, ``vocab_size`` not an int, ``special_tokens`` one
            str instead of a list or holding a non-str.
        ValueError: ``vocab_size`` smaller than 256 + the number of special tokens, or an
            empty special token.
    """
    _check_text(text)
    special_tokens = _check_special_list(special_tokens)
    num_merges = _check_vocab_size(vocab_size, len(special_tokens))

    # 1. distinct chunks, as lists of byte ids, with their frequencies
    chunk_freqs = Counter(_split_chunks(text, pattern, special_tokens))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_freqs]
    freqs = list(chunk_freqs.values())

    # 2. pair counts weighted by chunk frequency, and where each pair occurs
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for i, (ids, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(ids):
            pair_counts[pair] += freq
            where[pair].add(i)

    # 3. a max-heap: heapq is a min-heap, so counts are negated and the pairs' bytes wrapped
    #    in _Reversed; equal counts then pop the greatest pair of byte strings first
    vocab = {i: bytes([i]) for i in range(256)}  # id -> bytes

    def entry(pair: tuple[int, int], count: int):
        return -count, _Reversed((vocab[pair[0]], vocab[pair[1]])), pair

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: dict[tuple[int, int], int] = {}
    for k in progress_bar(range(num_merges), desc="BPE merges", disable=not progress):
        while heap and pair_counts.get(heap[0][2], 0) != -heap[0][0]:
            heapq.heappop(heap)  # outdated entry: the pair's count has changed since
        if not heap:
            break
        pair = heapq.heappop(heap)[2]
        new_id = 256 + k
        merges[pair] = new_id
        vocab[new_id] = vocab[pair[0]] + vocab[pair[1]]

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in where.pop(pair):
            old, freq = words[i], freqs[i]
            new = merge(old, pair, new_id)
            old_pairs, new_pairs = list(pairwise(old)), list(pairwise(new))
            for p in old_pairs:
                delta[p] -= freq
            for p in new_pairs:
                delta[p] += freq
            for p in set(old_pairs) - set(new_pairs):
                if p != pair:
                    where[p].discard(i)
            for p in new_pairs:
                where[p].add(i)
            words[i] = new
        for p, d in delta.items():
            if d == 0:
                continue
            pair_counts[p] += d
            if pair_counts[p] > 0:
                heapq.heappush(heap, entry(p, pair_counts[p]))
            else:  # the pair is gone everywhere
                del pair_counts[p]
                where.pop(p, None)

    first_special = 256 + len(merges)
    specials = {s: first_special + j for j, s in enumerate(special_tokens)}
    return BPETokenizer(merges, pattern=pattern, special_tokens=specials)


class BPETokenizer(Tokenizer):
    """A byte-level BPE tokenizer: text <-> list of token ids.

    Special tokens, ``encode`` (with ``allowed_special``), ``encode_iterable``,
    ``with_special_tokens`` and save / load come from the base class
    :class:`course_utils.tokenization.Tokenizer`; this class adds byte-level BPE.

    Attributes:
        merges: ``{(id_a, id_b): new_id}`` in rank order (dict order; the first merge learned
            has rank 0 and is applied first).
        vocab: ``{id: bytes}`` for every token, special tokens included (their UTF-8 bytes).
        pattern: the pre-tokenization regex, or ``None`` for none.
        special_tokens: ``{string: id}``, e.g. ``{"<|endoftext|>": 50256}``.
        byte_ids: ``byte_ids[b]`` is the id of the single-byte token ``b`` (``0..255`` for
            our tokenizers; GPT-2 orders its byte tokens differently), or ``None`` when the
            vocabulary has no token for byte ``b`` (SmolLM2 lacks 21 bytes; text that needs
            one cannot be encoded).

    Ids must be exactly ``0..vocab_size-1``.
    """

    kind = "bpe"
    format = "course-bpe-v1"  # saved by to_dict, checked by from_dict

    def __init__(
        self,
        merges: dict[tuple[int, int], int],
        pattern: str | None = GPT2_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        byte_ids: list[int | None] | None = None,
        cache_size: int = 1 << 16,
    ):
        """Build the vocabulary from the byte tokens, the merges and the special tokens.

        Raises:
            TypeError: ``merges`` is not a dict, ``pattern`` neither a str nor ``None``, or
                a special token is not a str.
            ValueError: ``pattern`` is not a valid regex, ``byte_ids`` is not 256 entries, a
                merge uses an id not defined before it, an id is used twice, or the ids are
                not exactly ``0..vocab_size-1``.
        """
        if not isinstance(merges, dict):
            raise TypeError(f"merges must be a dict {{(id_a, id_b): new_id}} in rank order, got "
                            f"{type(merges).__name__}")
        if pattern is not None and not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regex str or None, got {type(pattern).__name__}")
        self.merges = {(int(a), int(b)): int(new) for (a, b), new in merges.items()}
        self.pattern = pattern
        self.special_tokens = _checked_special_tokens(special_tokens)
        self.byte_ids = (list(range(256)) if byte_ids is None
                         else [None if i is None else int(i) for i in byte_ids])
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {len(self.byte_ids)}")

        self.vocab: dict[int, bytes] = {}

        def define(i: int, token: bytes) -> None:
            if i in self.vocab:
                raise ValueError(f"id {i} is used twice: for {self.vocab[i]!r} and {token!r}")
            self.vocab[i] = token

        for b, i in enumerate(self.byte_ids):
            if i is not None:
                define(i, bytes([b]))
        for (a, b), new in self.merges.items():
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge ({a}, {b}) -> {new} uses an id not defined before it")
            define(new, self.vocab[a] + self.vocab[b])
        for s, i in self.special_tokens.items():
            define(i, s.encode("utf-8"))
        missing = set(range(len(self.vocab))) - self.vocab.keys()
        if missing:
            raise ValueError(f"token ids must be exactly 0..vocab_size-1 = "
                             f"0..{len(self.vocab) - 1}, but id {min(missing)} is missing")

        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        try:
            self._split = regex.compile(pattern) if pattern is not None else None
        except regex.error as e:
            raise ValueError(f"pattern is not a valid regular expression: {e}") from None
        # one chunk ("the", " and", ...) recurs over and over: remember its ids
        self._encode_chunk = functools.lru_cache(maxsize=cache_size)(self._bpe)

    @property
    def vocab_size(self) -> int:
        """Number of tokens: byte tokens + merges + special tokens (= largest id + 1)."""
        return len(self.vocab)

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={self.special_tokens})"
        )

    # ----------------------------------------------------------------------------- encode
    def _bpe(self, chunk: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized chunk: apply merges, lowest rank first, until none fits."""
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        if None in ids:
            char = next(c for c in chunk if None in [self.byte_ids[b] for b in c.encode()])
            raise ValueError(f"character {char!r} cannot be encoded: the vocabulary has no "
                             f"token for its UTF-8 byte(s) {char.encode().hex(' ')}; remove "
                             f"it from the text")
        ranks = self._ranks
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break  # no adjacent pair is a merge any more
            ids = merge(ids, pair, self.merges[pair])
        return tuple(ids)

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` as ordinary text: special-token strings in it are encoded as
        plain text (``<|im_end|>`` -> ``<``, ``|``, ``im``, ...), never as their ids.

        The text is pre-tokenized with :attr:`pattern`, and each chunk is encoded by applying
        merges in rank order (a cache remembers chunks already seen). Same as
        ``encode(text, allowed_special="none")`` and tiktoken's ``encode_ordinary``.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: a character whose bytes have no token (see :attr:`byte_ids`).
        """
        _check_text(text)
        chunks = self._split.findall(text) if self._split is not None else [text]
        ids: list[int] = []
        for chunk in chunks:
            ids.extend(self._encode_chunk(chunk))
        return ids

    def _splits_at_whitespace(self) -> bool:
        # Without a pattern the whole text is one chunk: no place to cut it. GPT-2's pattern
        # (and SmolLM2's) never continues a chunk from a non-space into whitespace.
        return self._split is not None

    # ----------------------------------------------------------------------------- decode
    def decode_bytes(self, ids) -> bytes:
        """The bytes that ``ids`` (list or 1-D tensor) stand for, concatenated.

        Raises:
            TypeError: ``ids`` is not a sequence of integers.
            ValueError: an id that is not in the vocabulary (the message names it).
        """
        vocab = self.vocab
        return b"".join([vocab[i] for i in self._id_list(ids)])

    def decode(self, ids, errors: str = "replace") -> str:
        """Decode token ids (list or 1-D tensor) back to text; a special id gives its string.

        A token holds bytes, not characters, so an id sequence may end in the middle of a
        multi-byte UTF-8 character (e.g. the first byte of an emoji alone). ``errors`` says
        what happens then, exactly as in ``bytes.decode``:

        - ``"replace"`` (default): each invalid byte sequence becomes U+FFFD (``"�"``);
        - ``"strict"``: raise ``UnicodeDecodeError`` (a subclass of ``ValueError``).

        Raises:
            TypeError, ValueError: bad ids (see :meth:`decode_bytes`).
            UnicodeDecodeError: invalid UTF-8 with ``errors="strict"``.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------------ save / load
    def _fields(self) -> dict:
        # format, pattern, byte_ids (the id of each byte 0..255, null for none), merges as
        # [id_a, id_b, new_id] in rank order; the base class adds kind and special_tokens
        return {
            "format": self.format,
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [[a, b, new] for (a, b), new in self.merges.items()],
        }

    @classmethod
    def _from_fields(cls, d: dict) -> BPETokenizer:
        if d.get("format") != cls.format:
            raise ValueError(f"not a BPETokenizer dict: format {d.get('format')!r}, expected "
                             f"{cls.format!r}")
        merges = {(a, b): new for a, b, new in d["merges"]}
        return cls(merges, d["pattern"], d.get("special_tokens"), d["byte_ids"])

    # ----------------------------------------------------------------- released tokenizers
    @classmethod
    def from_byte_level_vocab(
        cls,
        vocab: dict[str, int],
        merges: list[tuple[str, str]],
        pattern: str,
        special_tokens: dict[str, int] | None = None,
    ) -> BPETokenizer:
        """A released byte-level BPE tokenizer from its vocabulary and merge list.

        GPT-2 introduced this format, and many models reuse it (SmolLM2, Llama 3, ...):
        ``vocab`` maps each token, written one character per byte with
        :func:`bytes_to_unicode` (a space is ``"Ġ"``), to its id, as in GPT-2's
        ``encoder.json`` or a GGUF file's ``tokenizer.ggml.tokens`` (token at index ``i``
        has id ``i``); ``merges`` lists the merges in rank order as pairs of such strings, as
        in ``vocab.bpe`` or ``tokenizer.ggml.merges`` split on the space. Each merge becomes
        ``(id_a, id_b) -> id of a + b``; the byte tokens' ids are read from ``vocab`` too, so
        they need not follow byte order, and bytes missing from ``vocab`` get no token.

        Args:
            vocab: ``{token string: id}``, special tokens included or not.
            merges: ``[(a, b), ...]`` in rank order (the first is applied first).
            pattern: the pre-tokenization regex (``regex`` syntax).
            special_tokens: ``{string: id}``, e.g. ``{"<|im_start|>": 1, "<|im_end|>": 2}``.

        Raises:
            TypeError: a merge that is not a pair of strings (e.g. ``"Ġ t"`` not yet split).
            ValueError: a merge whose parts or result are not in ``vocab`` (the message names
                the merge), a merge listed twice, a special token whose id disagrees with
                ``vocab``, or a token of ``vocab`` that is neither a byte, a merge's result
                nor a special token.
        """
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab must be a dict {{token string: id}}, got "
                            f"{type(vocab).__name__}")
        byte_to_char = bytes_to_unicode()
        byte_ids = [vocab.get(byte_to_char[b]) for b in range(256)]
        merge_ids: dict[tuple[int, int], int] = {}
        for rank, m in enumerate(merges):
            if not (isinstance(m, (tuple, list)) and len(m) == 2
                    and all(isinstance(part, str) for part in m)):
                raise TypeError(f"merge {rank} must be a pair of strings such as ('Ġ', 't'), "
                                f"got {m!r}" + (" (split it on the space)"
                                                if isinstance(m, str) else ""))
            a, b = m
            absent = next((t for t in (a, b, a + b) if t not in vocab), None)
            if absent is not None:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}): {absent!r} is not in the "
                                 f"vocabulary")
            pair = (vocab[a], vocab[b])
            if pair in merge_ids:
                raise ValueError(f"merge {rank} ({a!r}, {b!r}) is listed twice")
            merge_ids[pair] = vocab[a + b]
        special_tokens = dict(special_tokens or {})
        for s, i in special_tokens.items():
            if s in vocab and vocab[s] != i:
                raise ValueError(f"special token {s!r} has id {i}, but vocab gives it "
                                 f"{vocab[s]}")
        known = set(byte_ids) | set(merge_ids.values()) | set(special_tokens.values())
        unknown = [(t, i) for t, i in vocab.items() if i not in known]
        if unknown:
            t, i = unknown[0]
            raise ValueError(f"{len(unknown)} token(s) of vocab, e.g. {t!r} (id {i}), are "
                             f"neither a byte, a merge's result nor a special token; pass "
                             f"added tokens such as {t!r} in special_tokens")
        return cls(merge_ids, pattern, special_tokens, byte_ids)

    @classmethod
    def from_gpt2_files(
        cls, encoder_json_path: str | Path, vocab_bpe_path: str | Path
    ) -> BPETokenizer:
        """GPT-2's tokenizer from OpenAI's released ``encoder.json`` and ``vocab.bpe``.

        ``encoder.json`` maps each token, written with :func:`bytes_to_unicode`, to its id;
        ``vocab.bpe`` lists the 50,000 merges in rank order as two such strings per line,
        after a ``#version`` line. Both go to :meth:`from_byte_level_vocab`; GPT-2's first
        256 ids are the bytes in :func:`bytes_to_unicode` order, not byte value order.
        ``<|endoftext|>`` (50256) is a special token. The resulting ids equal GPT-2's (and
        tiktoken's ``gpt2``) exactly.

        Raises:
            ValueError: the files do not fit together (see :meth:`from_byte_level_vocab`).
        """
        encoder: dict[str, int] = json.loads(Path(encoder_json_path).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe_path).read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split(" ")) for line in lines
                  if line and not line.startswith("#version")]
        if GPT2_ENDOFTEXT not in encoder:
            raise ValueError(f"{encoder_json_path} has no {GPT2_ENDOFTEXT!r} token")
        special = {GPT2_ENDOFTEXT: encoder[GPT2_ENDOFTEXT]}
        return cls.from_byte_level_vocab(encoder, merges, GPT2_SPLIT_PATTERN, special)


def gpt2_tokenizer() -> BPETokenizer:
    """GPT-2's tokenizer (50,257 tokens), from the files fetched by :mod:`course_utils.corpora`.

    Raises:
        course_utils.corpora.DataError: a file could not be found, downloaded or verified.
    """
    from course_utils.corpora import fetch

    return BPETokenizer.from_gpt2_files(fetch("gpt2-encoder"), fetch("gpt2-vocab-bpe"))


def tiktoken_gpt2():
    """tiktoken's ``gpt2`` encoding (the reference our GPT-2 tokenizer is checked against),
    built from the same two files as :func:`gpt2_tokenizer`, so it works offline.

    tiktoken looks for its files in ``$TIKTOKEN_CACHE_DIR``, each named by the sha1 hex digest
    of its URL, and checks their sha256. When that variable is unset we point it at
    ``tiktoken/`` in the course's data cache and copy the fetched files there.

    Raises:
        ImportError: tiktoken is not installed (``pip install tiktoken``).
    """
    import hashlib
    import os
    import shutil

    import tiktoken

    from course_utils.corpora import REGISTRY, cache_dir, fetch
    from course_utils.utils import atomic_write

    cache = Path(os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(cache_dir() / "tiktoken")))
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("gpt2-encoder", "gpt2-vocab-bpe"):
        target = cache / hashlib.sha1(REGISTRY[name].url.encode()).hexdigest()
        if not target.exists():
            with atomic_write(target) as tmp:
                shutil.copyfile(fetch(name), tmp)
    return tiktoken.get_encoding("gpt2")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a saved tokenizer (as stored in checkpoints) from its ``to_dict()`` form, of
    whichever kind it is: ``"char"``, ``"word"`` (:mod:`course_utils.tokenization`) or
    ``"bpe"``; same as :meth:`Tokenizer.from_dict`, here where every kind is defined. Dicts
    saved by earlier versions of the course load too.

    Raises ``ValueError`` for an unknown ``kind`` or a malformed dict."""
    return Tokenizer.from_dict(d)
