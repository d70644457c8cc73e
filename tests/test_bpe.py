"""Tests of course_utils.bpe: hand-worked merges, fast == naive trainer, round trips, and
GPT-2 ids equal to tiktoken's ``gpt2`` encoding (a reference nobody here wrote)."""

from __future__ import annotations

import pytest
import regex

from course_utils.bpe import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    get_pair_counts,
    gpt2_tokenizer,
    merge,
    train_bpe,
    train_bpe_naive,
)
from course_utils.bpe import tiktoken_gpt2 as tiktoken_gpt2_encoding
from course_utils.corpora import load_text

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None

GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"

# Strings that tend to break tokenizers: accents (composed and combining), emoji with
# zero-width joiners and skin tones, CJK, right-to-left text, \r\n, runs of spaces/tabs/newlines,
# digits, contractions (lower and upper case), a lone special-looking fragment.
TRICKY = [
    "",
    " ",
    "a",
    "Café naïve façade — déjà vu; e\u0301 (combining accent)",
    "emoji: 🙂👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flag 🇫🇷",
    "CJK: 你好\uff0c世界。日本語のテキスト 한국어",
    "RTL: مرحبا بالعالم שלום",
    "Windows\r\nline\r\nends\r\n",
    "spaces:    four, tabs:\t\t two, newlines:\n\n\n three   \n  ",
    "digits 0123456789 3.14159 1,000,000 ½ ² Ⅻ",
    "I'm sure they'll say it's fine, WE'RE SURE YOU'VE SEEN IT'D",
    "zero\u200bwidth\u200cjoiners\u200d and \ufeffBOM",
    "<| endoftext |> and <|endoftext",
    "\x00\x01\x7f control bytes \U0010ffff",
]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def shakespeare() -> str:
    return load_text("tinyshakespeare")


@pytest.fixture(scope="session")
def alice() -> str:
    return load_text("alice")


@pytest.fixture(scope="session")
def small_tok(shakespeare) -> BPETokenizer:
    """A small tokenizer trained on 30 KB of Tiny Shakespeare, with one special token."""
    return train_bpe(shakespeare[:30_000], 400, special_tokens=["<|endoftext|>"])


@pytest.fixture(scope="session")
def gpt2() -> BPETokenizer:
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiktoken_gpt2():
    """tiktoken's ``gpt2`` encoding, offline (see :func:`course_utils.bpe.tiktoken_gpt2`)."""
    return tiktoken_gpt2_encoding()


# ----------------------------------------------------------------------------- helpers
def test_bytes_to_unicode():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256))
    assert len(set(m.values())) == 256
    assert not any(c.isspace() for c in m.values())
    # printable bytes stand for themselves
    assert m[ord("A")] == "A" and m[ord("!")] == "!" and m[ord("é")] == "é"
    # the non-printable bytes, in order, are 0..32, 127..160, 173; they get chr(256 + n).
    # byte 10 (newline) is the 11th of them -> chr(266) = "Ċ"; space (32) -> chr(288) = "Ġ";
    # 127 is the 34th -> chr(289); 173 (soft hyphen) is the last (68th) -> chr(323) = "Ń"
    assert m[10] == "Ċ" and m[32] == "Ġ" and m[127] == chr(289) and m[173] == "Ń"


def test_get_pair_counts_and_merge():
    assert get_pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert get_pair_counts([7, 7, 7]) == {(7, 7): 2}  # overlapping pairs both count
    counts = {(1, 2): 5}
    assert get_pair_counts([1, 2], counts) is counts and counts == {(1, 2): 6}
    assert get_pair_counts([]) == {} and get_pair_counts([4]) == {}
    assert merge([7, 7, 7, 1], (7, 7), 9) == [9, 7, 1]  # left to right, no overlap
    assert merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert merge([1, 2], (2, 1), 9) == [1, 2]


def test_gpt2_pretokenization_by_hand():
    # "  123": \s+(?!\S) cannot take both spaces (a digit follows), so it backtracks to one
    # space, and the second space joins the number as " 123". Trailing "\n\n" is one chunk.
    text = "Hello world's  123!!\n\n"
    assert regex.findall(GPT2_SPLIT_PATTERN, text) == [
        "Hello", " world", "'s", " ", " 123", "!!", "\n\n"
    ]
    # contractions are case-sensitive: "'RE" is punctuation followed by letters
    assert regex.findall(GPT2_SPLIT_PATTERN, "WE'RE we're") == ["WE", "'", "RE", " we", "'re"]


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("trainer", ["naive", "fast"])
def test_merges_worked_by_hand(trainer):
    # "aaabdaaabac" as one chunk, bytes a=97 b=98 c=99 d=100:  a a a b d a a a b a c
    # counts: (a,a)=4 (overlapping, two in each "aaa"), (a,b)=2, the others 1
    #   merge 1: (97,97)->256        256 a b d 256 a b a c
    # counts: (256,a)=2, (a,b)=2, others 1. Tie at 2 -> the smaller pair (97,98) wins
    #   merge 2: (97,98)->257        256 257 d 256 257 a c
    # counts: (256,257)=2, others 1
    #   merge 3: (256,257)->258      258 d 258 a c      and token 258 is b"aaab"
    text = "aaabdaaabac"
    expected = {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    if trainer == "naive":
        merges = train_bpe_naive(text, 259, pattern=None)
    else:
        tok = train_bpe(text, 259, pattern=None)
        merges = tok.merges
        assert tok.vocab[258] == b"aaab"
        assert tok.encode(text) == [258, 100, 258, 97, 99]
        assert tok.decode([258, 100, 258, 97, 99]) == text
    assert list(merges.items()) == list(expected.items())


def test_pretokenization_blocks_merges_across_chunks():
    # With GPT-2's regex "ab ab" is the chunks "ab", " ab": (a,b)=2, (space,a)=1.
    #   (97,98)->256, then chunks [256], [32,256]: (32,256)->257, then no pair is left, so
    #   training stops early even though 4 merges were asked for.
    assert list(train_bpe_naive("ab ab", 260).items()) == [((97, 98), 256), ((32, 256), 257)]
    assert list(train_bpe("ab ab", 260).merges.items()) == [((97, 98), 256), ((32, 256), 257)]
    # As a single chunk: (a,b)=2 -> 256; [256,32,256] has (256,32)=1 and (32,256)=1, the tie
    # goes to the smaller pair (32,256) -> 257; [256,257] -> 258.
    expected = [((97, 98), 256), ((32, 256), 257), ((256, 257), 258)]
    assert list(train_bpe_naive("ab ab", 260, pattern=None).items()) == expected
    assert list(train_bpe("ab ab", 260, pattern=None).merges.items()) == expected


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe("hello", 255)
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe_naive("hello", 100)
    with pytest.raises(ValueError, match="special"):
        train_bpe("hello", 257, special_tokens=["<|a|>", "<|b|>"])
    assert train_bpe("hello", 256).merges == {}


def test_fast_equals_naive(shakespeare):
    texts = [
        (shakespeare[:30_000], 356, GPT2_SPLIT_PATTERN),
        (shakespeare[-20_000:], 320, r"\S+|\s+"),
        (" ".join(TRICKY) * 3, 330, GPT2_SPLIT_PATTERN),
        ("abcdefghij" * 5 + "the cat the hat a bat", 300, None),  # many ties
    ]
    for text, vocab_size, pattern in texts:
        naive = train_bpe_naive(text, vocab_size, pattern=pattern)
        fast = train_bpe(text, vocab_size, pattern=pattern).merges
        assert list(fast.items()) == list(naive.items())


def test_trained_tokenizer_basics(small_tok, shakespeare):
    assert small_tok.vocab_size == 400
    assert small_tok.special_tokens == {"<|endoftext|>": 399}
    assert list(small_tok.merges.values()) == list(range(256, 399))
    # every token is the concatenation of its pair; the text compresses
    for (a, b), new in small_tok.merges.items():
        assert small_tok.vocab[new] == small_tok.vocab[a] + small_tok.vocab[b]
    ids = small_tok.encode(shakespeare[:30_000])
    assert len(ids) < 0.6 * len(shakespeare[:30_000].encode())
    assert small_tok.decode(ids) == shakespeare[:30_000]


def test_special_tokens_excluded_from_training():
    tok = train_bpe("<|endoftext|>" * 50 + "hi hi", 300, special_tokens=["<|endoftext|>"])
    # only " hi"/"hi" pairs exist once the special token is cut out: (h,i) then (space,hi)
    assert list(tok.merges) == [(104, 105), (32, 256)]
    assert tok.special_tokens == {"<|endoftext|>": 258}


# ----------------------------------------------------------------------------- encode / decode
def test_special_tokens_policy(small_tok):
    eot = small_tok.special_tokens["<|endoftext|>"]
    text = "First Citizen:<|endoftext|>Before we proceed"
    with pytest.raises(ValueError, match=regex.escape("<|endoftext|>")):
        small_tok.encode(text)  # default: not allowed -> raise, naming the token
    with pytest.raises(ValueError, match="allowed_special"):
        small_tok.encode(text, allowed_special="sometimes")
    for allowed in ["all", {"<|endoftext|>"}]:
        ids = small_tok.encode(text, allowed_special=allowed)
        assert ids.count(eot) == 1
        i = ids.index(eot)
        assert small_tok.decode(ids[:i]) == "First Citizen:"
        assert small_tok.decode(ids[i + 1:]) == "Before we proceed"
        assert small_tok.decode(ids) == text
    plain = small_tok.encode(text, allowed_special="none")
    assert eot not in plain and small_tok.decode(plain) == text
    assert small_tok.encode("no special here") == small_tok.encode("no special here", "all")


@pytest.mark.parametrize("which", ["small", "gpt2"])
def test_round_trip_tricky(which, small_tok, gpt2):
    tok = small_tok if which == "small" else gpt2
    for s in TRICKY:
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids, errors="strict") == s
        assert tok.decode_bytes(ids) == s.encode("utf-8")


if given is not None:

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(s=st.text())
    def test_round_trip_hypothesis(s, small_tok, gpt2):
        for tok in (small_tok, gpt2):
            assert tok.decode(tok.encode(s, allowed_special="none"), errors="strict") == s

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(s=st.text())
    def test_gpt2_equals_tiktoken_hypothesis(s, gpt2, tiktoken_gpt2):
        assert gpt2.encode(s, allowed_special="none") == tiktoken_gpt2.encode_ordinary(s)


def test_decode_invalid_utf8(small_tok, gpt2):
    # "€" is the three bytes E2 82 AC; the first byte alone is not valid UTF-8
    assert small_tok.decode([0xE2]) == "\ufffd"
    assert small_tok.decode([0xE2, ord("a")], errors="replace") == "\ufffda"
    with pytest.raises(UnicodeDecodeError):
        small_tok.decode([0xE2], errors="strict")
    assert small_tok.decode([0xE2, 0x82, 0xAC], errors="strict") == "€"
    # the same through GPT-2's ids, whose byte tokens are not numbered by byte value
    ids = [gpt2.byte_ids[b] for b in "€".encode()]
    assert gpt2.decode(ids, errors="strict") == "€"
    assert gpt2.decode(ids[:1]) == "\ufffd"
    with pytest.raises(UnicodeDecodeError):
        gpt2.decode(ids[:2], errors="strict")


def test_decode_unknown_id(small_tok):
    with pytest.raises(ValueError, match="12345"):
        small_tok.decode([1, 2, 12345])
    with pytest.raises(ValueError, match="400"):
        small_tok.decode_bytes([400])


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("which", ["small", "gpt2"])
def test_save_load_round_trip(which, small_tok, gpt2, tmp_path):
    tok = small_tok if which == "small" else gpt2
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert list(loaded.merges.items()) == list(tok.merges.items())  # rank order kept
    assert loaded.vocab == tok.vocab
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.pattern == tok.pattern
    assert loaded.byte_ids == tok.byte_ids
    text = "Before we proceed any further, hear me speak. 🙂<|endoftext|>"
    assert loaded.encode(text, "all") == tok.encode(text, "all")


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a BPETokenizer"):
        BPETokenizer.load(path)


# ----------------------------------------------------------------------------- GPT-2 vs tiktoken
def test_gpt2_vocab_equals_tiktoken(gpt2, tiktoken_gpt2):
    assert gpt2.vocab_size == tiktoken_gpt2.n_vocab == 50257
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}
    assert gpt2.byte_ids[ord("!")] == 0  # GPT-2's first token is "!", not byte 0
    for i in range(gpt2.vocab_size):
        assert gpt2.vocab[i] == tiktoken_gpt2.decode_single_token_bytes(i)


def test_gpt2_equals_tiktoken_on_corpora(gpt2, tiktoken_gpt2, shakespeare, alice):
    for text in (shakespeare, alice):
        ids = gpt2.encode(text)
        assert ids == tiktoken_gpt2.encode(text)
        assert gpt2.decode(ids) == text


def test_gpt2_equals_tiktoken_on_tricky_strings(gpt2, tiktoken_gpt2):
    for s in [*TRICKY, "".join(TRICKY)]:
        assert gpt2.encode(s) == tiktoken_gpt2.encode(s)
    s = "Hello<|endoftext|> world<|endoftext|>"
    assert gpt2.encode(s, allowed_special="all") == tiktoken_gpt2.encode(s, allowed_special="all")
    assert gpt2.encode(s, allowed_special="all").count(50256) == 2
    assert gpt2.encode(s, "none") == tiktoken_gpt2.encode(s, disallowed_special=())
    with pytest.raises(ValueError):
        tiktoken_gpt2.encode(s)  # the reference has the same default policy
    with pytest.raises(ValueError, match=regex.escape("<|endoftext|>")):
        gpt2.encode(s)
