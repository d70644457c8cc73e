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
- :class:`BPETokenizer`: encode / decode / save / load, and GPT-2's released tokenizer
  (:meth:`BPETokenizer.from_gpt2_files`, :func:`gpt2_tokenizer`) with ids equal to GPT-2's.

Token ids of a tokenizer we train: ``0..255`` are the single bytes, ``256 + k`` is the token made
by the ``k``-th merge, and special tokens come last.
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
from tqdm import tqdm  # text bars: the same in terminals, notebooks and CI logs

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
    """Number of merges for ``vocab_size``; ``ValueError`` if it is too small."""
    if vocab_size < 256 + n_special:
        raise ValueError(
            f"vocab_size must be at least 256 (one token per byte) plus the number of special "
            f"tokens ({n_special}), got {vocab_size}"
        )
    return vocab_size - 256 - n_special


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
        The most frequent pair wins; ties go to the smallest pair (tuple order). Training stops
        early if no pair is left.

    Raises:
        ValueError: ``vocab_size < 256``.
    """
    num_merges = _check_vocab_size(vocab_size)
    chunks = [list(chunk.encode("utf-8")) for chunk in _split_chunks(text, pattern)]
    merges = {}
    for k in range(num_merges):
        counts = {}
        for ids in chunks:
            get_pair_counts(ids, counts)
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))  # max count, then smallest pair
        merges[pair] = 256 + k
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
    3. Find the most frequent pair with a heap of ``(-count, pair)`` entries. Changed counts
       are pushed again; outdated entries are skipped when they reach the top.

    Ties between equally frequent pairs go to the smallest pair (tuple order), exactly as in
    :func:`train_bpe_naive`. Training stops early if no pair is left.

    Args:
        text: training text. Special tokens in it are cut out before training.
        vocab_size: size of the final vocabulary: 256 byte tokens + merges + special tokens.
        pattern: pre-tokenization regex (``regex`` syntax); ``None`` keeps the text one chunk.
        special_tokens: strings such as ``"<|endoftext|>"``; they get the last ids.
        progress: show a tqdm progress bar over the merges.

    Returns:
        a :class:`BPETokenizer` (``tokenizer.vocab_size == vocab_size`` unless stopped early).

    Raises:
        ValueError: ``vocab_size`` smaller than 256 + the number of special tokens.
    """
    special_tokens = list(dict.fromkeys(special_tokens or []))
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

    # 3. a max-heap (heapq is a min-heap, so counts are negated; equal counts pop the
    #    smallest pair first, which is the tie-break)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: dict[tuple[int, int], int] = {}
    for k in tqdm(range(num_merges), desc="BPE merges", disable=not progress):
        while heap and pair_counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # outdated entry: the pair's count has changed since
        if not heap:
            break
        _, pair = heapq.heappop(heap)
        new_id = 256 + k
        merges[pair] = new_id

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
                heapq.heappush(heap, (-pair_counts[p], p))
            else:  # the pair is gone everywhere
                del pair_counts[p]
                where.pop(p, None)

    first_special = 256 + len(merges)
    specials = {s: first_special + j for j, s in enumerate(special_tokens)}
    return BPETokenizer(merges, pattern=pattern, special_tokens=specials)


class BPETokenizer:
    """A byte-level BPE tokenizer: text <-> list of token ids.

    Attributes:
        merges: ``{(id_a, id_b): new_id}`` in rank order (dict order; the first merge learned
            has rank 0 and is applied first).
        vocab: ``{id: bytes}`` for every token, special tokens included (their UTF-8 bytes).
        pattern: the pre-tokenization regex, or ``None`` for none.
        special_tokens: ``{string: id}``, e.g. ``{"<|endoftext|>": 50256}``.
        byte_ids: ``byte_ids[b]`` is the id of the single-byte token ``b`` (``0..255`` for
            our tokenizers; GPT-2 orders its byte tokens differently).

    Ids must be exactly ``0..vocab_size-1``. Special tokens must not be in ``merges``.
    """

    def __init__(
        self,
        merges: dict[tuple[int, int], int],
        pattern: str | None = GPT2_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        byte_ids: list[int] | None = None,
        cache_size: int = 1 << 16,
    ):
        """Build the vocabulary from the byte tokens and the merges.

        Raises:
            ValueError: ``byte_ids`` is not 256 ids, a merge uses an id not defined before it,
                or the ids are not exactly ``0..vocab_size-1``.
        """
        self.merges = {(int(a), int(b)): int(new) for (a, b), new in merges.items()}
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self.byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        if len(self.byte_ids) != 256:
            raise ValueError(f"byte_ids must have 256 entries, got {len(self.byte_ids)}")

        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), new in self.merges.items():
            if a not in self.vocab or b not in self.vocab:
                raise ValueError(f"merge ({a}, {b}) -> {new} uses an id not defined before it")
            self.vocab[new] = self.vocab[a] + self.vocab[b]
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        n_defined = 256 + len(self.merges) + len(self.special_tokens)
        if len(self.vocab) != n_defined or set(self.vocab) != set(range(n_defined)):
            raise ValueError("token ids must be distinct and exactly 0..vocab_size-1")

        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._split = regex.compile(pattern) if pattern is not None else None
        # one chunk ("the", " and", ...) recurs over and over: remember its ids
        self._encode_chunk = functools.lru_cache(maxsize=cache_size)(self._bpe)

    @property
    def vocab_size(self) -> int:
        """Number of tokens: 256 bytes + merges + special tokens (= largest id + 1)."""
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
        ranks = self._ranks
        while len(ids) >= 2:
            pair = min(pairwise(ids), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break  # no adjacent pair is a merge any more
            ids = merge(ids, pair, self.merges[pair])
        return tuple(ids)

    def _encode_ordinary(self, text: str) -> list[int]:
        """Encode text that contains no special tokens (any there are treated as plain text)."""
        chunks = self._split.findall(text) if self._split is not None else [text]
        ids: list[int] = []
        for chunk in chunks:
            ids.extend(self._encode_chunk(chunk))
        return ids

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none_raise") -> list[int]:
        """Encode ``text`` into a list of token ids.

        Special tokens are split out first (when allowed), each remaining piece is
        pre-tokenized with :attr:`pattern`, and each chunk is encoded by applying merges in
        rank order (a cache remembers chunks already seen).

        Args:
            text: the string to encode.
            allowed_special: what to do with special-token strings found in ``text``:

                - ``"none_raise"`` (default): raise ``ValueError`` if any is present. Like
                  tiktoken's default: text from users should not be able to inject, say,
                  ``<|endoftext|>`` by accident.
                - ``"all"``: each becomes its special id.
                - a set of strings: those become their ids; any other special token raises.
                - ``"none"``: treat them as ordinary text (``<|`` ``endoftext`` ``|>`` ...).

        Returns:
            list of ints in ``0..vocab_size-1``.

        Raises:
            ValueError: a special token not allowed is in ``text`` (the message names it),
                or ``allowed_special`` is an unknown string.
        """
        if allowed_special == "none":
            return self._encode_ordinary(text)
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none_raise":
            allowed = set()
        elif isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'all', 'none', 'none_raise' or a set of strings, "
                f"got {allowed_special!r}"
            )
        else:
            allowed = set(allowed_special)
        for s in self.special_tokens:
            if s not in allowed and s in text:
                raise ValueError(
                    f"text contains the special token {s!r}, which is not allowed; pass "
                    f"allowed_special={{{s!r}}} (or 'all') to encode it as its id, or "
                    f"allowed_special='none' to encode it as plain text"
                )
        allowed &= set(self.special_tokens)
        if not allowed:
            return self._encode_ordinary(text)
        # a capturing group makes regex.split keep the special tokens between the pieces
        longest_first = sorted(allowed, key=len, reverse=True)
        special_re = "(" + "|".join(regex.escape(s) for s in longest_first) + ")"
        ids: list[int] = []
        for piece in regex.split(special_re, text):
            if piece in allowed:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self._encode_ordinary(piece))
        return ids

    # ----------------------------------------------------------------------------- decode
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes that ``ids`` stand for, concatenated.

        Raises:
            ValueError: an id that is not in the vocabulary (the message names it).
        """
        vocab = self.vocab
        try:
            return b"".join([vocab[i] for i in ids])
        except KeyError as e:
            raise ValueError(
                f"unknown token id {e.args[0]!r} (vocab_size is {self.vocab_size})"
            ) from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Decode token ids back to text.

        A token holds bytes, not characters, so an id sequence may end in the middle of a
        multi-byte UTF-8 character (e.g. the first byte of an emoji alone). ``errors`` says
        what happens then, exactly as in ``bytes.decode``:

        - ``"replace"`` (default): each invalid byte sequence becomes U+FFFD (``"�"``);
        - ``"strict"``: raise ``UnicodeDecodeError`` (a subclass of ``ValueError``).

        Raises:
            ValueError: an unknown id (see :meth:`decode_bytes`).
            UnicodeDecodeError: invalid UTF-8 with ``errors="strict"``.
        """
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # ------------------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        """A JSON-ready dict: ``pattern``, ``byte_ids`` (the id of each byte 0..255),
        ``merges`` as a list of ``[id_a, id_b, new_id]`` in rank order, ``special_tokens``.
        Checkpoints store tokenizers in this form."""
        return {
            "kind": "bpe",
            "format": "course-bpe-v1",
            "pattern": self.pattern,
            "byte_ids": self.byte_ids,
            "merges": [[a, b, new] for (a, b), new in self.merges.items()],
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict) -> BPETokenizer:
        """Rebuild a tokenizer from :meth:`to_dict`'s output; it equals the original exactly.

        Raises:
            ValueError: ``data`` is not a dict made by :meth:`to_dict`.
        """
        if not isinstance(data, dict) or data.get("format") != "course-bpe-v1":
            raise ValueError("not a BPETokenizer dict (format 'course-bpe-v1')")
        merges = {(a, b): new for a, b, new in data["merges"]}
        return cls(merges, data["pattern"], data["special_tokens"], data["byte_ids"])

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to a JSON file (see :meth:`to_dict`; read it with :meth:`load`)."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by :meth:`save`; the result equals the saved one exactly.

        Raises:
            ValueError: the file is not a tokenizer saved by :meth:`save` (names the path).
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_gpt2_files(
        cls, encoder_json_path: str | Path, vocab_bpe_path: str | Path
    ) -> BPETokenizer:
        """GPT-2's tokenizer from OpenAI's released ``encoder.json`` and ``vocab.bpe``.

        ``encoder.json`` maps each token, written with :func:`bytes_to_unicode`, to its id;
        ``vocab.bpe`` lists the 50,000 merges in rank order as two such strings per line. We
        turn each merge into ``(id_a, id_b) -> id of the concatenation``, and take the byte
        tokens' ids from ``encoder.json`` as well: GPT-2's first 256 ids are the bytes in
        :func:`bytes_to_unicode` order, not byte value order. ``<|endoftext|>`` (50256) is a
        special token. The resulting ids equal GPT-2's (and tiktoken's ``gpt2``) exactly.

        Raises:
            ValueError: the files do not fit together (a token missing from encoder.json).
        """
        encoder: dict[str, int] = json.loads(Path(encoder_json_path).read_text(encoding="utf-8"))
        lines = Path(vocab_bpe_path).read_text(encoding="utf-8").split("\n")
        byte_to_char = bytes_to_unicode()
        try:
            byte_ids = [encoder[byte_to_char[b]] for b in range(256)]
            merges = {}
            for line in lines:
                if not line or line.startswith("#version"):
                    continue
                a, b = line.split(" ")
                merges[(encoder[a], encoder[b])] = encoder[a + b]
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} from vocab.bpe is not in encoder.json") from None
        special = {GPT2_ENDOFTEXT: encoder[GPT2_ENDOFTEXT]}
        return cls(merges, GPT2_SPLIT_PATTERN, special, byte_ids)


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
