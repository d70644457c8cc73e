"""Character and word tokenizers, their base class (special tokens, save/load), and Project
Gutenberg clean-up."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils.bpe import BPETokenizer, tokenizer_from_dict, train_bpe
from course_utils.tokenization import (
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    split_words,
    strip_gutenberg,
)


def test_round_trip_on_tinyshakespeare(shakespeare_text):
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == len(set(shakespeare_text)) == 65
    ids = tok.encode(shakespeare_text)
    assert len(ids) == len(shakespeare_text)
    assert tok.decode(ids) == shakespeare_text


def test_ids_follow_sorted_characters():
    tok = CharTokenizer.from_text("cab ba")
    assert tok.encode(" abc") == [0, 1, 2, 3]


def test_unknown_character_is_named_with_its_position():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=r"'z' at position 4"):
        tok.encode("hellz")


def test_decode_out_of_range():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="id 5"):
        tok.decode([0, 5])


def test_save_load(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be: ÿ€🙂")
    tok.save(tmp_path / "tok.json")
    loaded = CharTokenizer.load(tmp_path / "tok.json")
    assert loaded.chars == tok.chars
    assert tokenizer_from_dict(tok.to_dict()).encode("be 🙂") == tok.encode("be 🙂")


def test_empty_text_and_unknown_kind():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_dict({"kind": "words"})


# ----------------------------------------------------------------------------- strip_gutenberg
HEADER = "The Project Gutenberg EBook of A Tiny Book\n\nTitle: A Tiny Book\n\n"
FOOTER = "\n\nProject Gutenberg-tm licence text ... Gutenberg Literary Archive Foundation\n"


@pytest.mark.parametrize("form", ["THIS", "THE", "this"])
def test_strip_gutenberg_both_marker_forms(form):
    body = "CHAPTER I.\n\nOnce upon a time *** there was\na book.\n\n     THE END"
    text = (f"{HEADER}*** START OF {form} PROJECT GUTENBERG EBOOK A TINY BOOK ***\n\n\n{body}\n\n"
            f"*** END OF {form} PROJECT GUTENBERG EBOOK A TINY BOOK ***{FOOTER}")
    assert strip_gutenberg(text) == body


def test_strip_gutenberg_crlf_and_old_end_line():
    text = ("header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\nline one\r\n"
            "line two\r\n\r\nEnd of Project Gutenberg's X, by Y\r\n\r\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicence\r\n")
    assert strip_gutenberg(text) == "line one\r\nline two"


def test_strip_gutenberg_errors():
    with pytest.raises(ValueError, match="no .*START"):
        strip_gutenberg("just some text, no markers at all")
    with pytest.raises(ValueError, match="END"):
        strip_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\ntext without an end")
    with pytest.raises(ValueError, match="END"):  # an END before the START does not count
        strip_gutenberg("*** END OF THE PROJECT GUTENBERG EBOOK X ***\n"
                        "*** START OF THE PROJECT GUTENBERG EBOOK X ***\ntext")
    with pytest.raises(ValueError, match="no text"):
        strip_gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n  \n"
                        "*** END OF THE PROJECT GUTENBERG EBOOK X ***\n")


def test_strip_gutenberg_on_pg11():
    from course_utils.corpora import load_text

    raw = load_text("alice")
    body = strip_gutenberg(raw)
    # the reference: the lines strictly between the two "***" marker lines, found by a plain
    # line scan, minus the old "End of Project Gutenberg's ..." line, whitespace trimmed
    lines = raw.split("\n")
    i = next(k for k, line in enumerate(lines) if line.startswith("*** START OF"))
    j = next(k for k, line in enumerate(lines) if line.startswith("*** END OF"))
    inner = [line for line in lines[i + 1:j] if not line.startswith("End of Project Gutenberg")]
    assert body == "\n".join(inner).strip()
    assert body.startswith("ALICE'S ADVENTURES IN WONDERLAND")
    assert "CHAPTER I." in body[:300] and body.endswith("THE END")
    assert "gutenberg" not in body.lower() and "license" not in body.lower()


# ----------------------------------------------------------------------------- words
def test_split_words_by_hand():
    assert split_words("'Oh, don't!' said _Alice's_ cat.") == [
        "'", "Oh", ",", "don't", "!", "'", "said", "_", "Alice's", "_", "cat", "."]
    assert split_words("naïve  café\n\t42 rabbit-hole") == [
        "naïve", "café", "42", "rabbit", "-", "hole"]
    assert split_words("<unk> Hi", lowercase=True) == ["<", "unk", ">", "hi"]
    assert split_words(" \n ") == []


def test_word_vocabulary_by_hand():
    # tokens: the cat sat . The cat !   -> "cat" twice, the rest once; ties alphabetical,
    # and in code-point order "!" < "." < "The" < "sat" < "the"
    tok = WordTokenizer.from_text("the cat sat. The cat!")
    assert tok.words == ["<unk>", "cat", "!", ".", "The", "sat", "the"]
    assert tok.vocab_size == 7 and tok.unk_id == 0
    assert tok.encode("The dog sat!") == [4, 0, 5, 2]
    assert tok.tokenize("The dog sat!") == ["The", "<unk>", "sat", "!"]
    assert tok.decode([4, 0, 5, 2]) == "The <unk> sat !"
    assert WordTokenizer.from_text("the cat sat. The cat!", max_vocab=3).words == [
        "<unk>", "cat", "!"]
    assert WordTokenizer.from_text("the cat sat. The cat!", min_count=2).words == ["<unk>", "cat"]
    low = WordTokenizer.from_text("the cat sat. The cat!", lowercase=True)
    assert low.words == ["<unk>", "cat", "the", "!", ".", "sat"]
    assert low.encode("THE CAT") == [2, 1]


def test_word_tokenizer_on_alice_held_out():
    from course_utils.corpora import load_text

    body = strip_gutenberg(load_text("alice"))
    cut = int(0.9 * len(body))
    tok = WordTokenizer.from_text(body[:cut])
    train_words = set(split_words(body[:cut]))
    held_out = split_words(body[cut:])
    ids = tok.encode(body[cut:])
    assert len(ids) == len(held_out)
    # exactly the held-out words never seen in training become <unk>
    assert [i == 0 for i in ids] == [w not in train_words for w in held_out]
    assert 0 < ids.count(0) < 0.1 * len(ids)
    assert tok.decode(ids).split(" ") == [w if w in train_words else "<unk>" for w in held_out]


def test_word_tokenizer_save_load_and_errors(tmp_path):
    tok = WordTokenizer.from_text("Ça va? Oui, ça va très bien 🙂", lowercase=True)
    tok.save(tmp_path / "words.json")
    loaded = WordTokenizer.load(tmp_path / "words.json")
    assert loaded.words == tok.words and loaded.lowercase
    rebuilt = tokenizer_from_dict(tok.to_dict())
    assert isinstance(rebuilt, WordTokenizer)
    assert rebuilt.encode("ÇA VA 🙂 non") == tok.encode("ÇA VA 🙂 non")
    assert rebuilt.encode("ÇA VA 🙂 non")[-1] == 0
    with pytest.raises(ValueError, match="no words"):
        WordTokenizer.from_text("   \n")
    with pytest.raises(ValueError, match="max_vocab"):
        WordTokenizer.from_text("a b", max_vocab=1)
    with pytest.raises(ValueError, match="min_count"):
        WordTokenizer.from_text("a b", min_count=0)
    with pytest.raises(ValueError, match=f"id {tok.vocab_size} "):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="<unk>"):
        WordTokenizer(["a", "b"])
    with pytest.raises(ValueError, match="not a WordTokenizer"):
        WordTokenizer.from_dict(CharTokenizer.from_text("ab").to_dict())


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text=st.text(), lowercase=st.booleans())
def test_word_round_trip_property(text, lowercase):
    tokens = split_words(text, lowercase)
    assert all(t.strip() == t and t for t in tokens)  # no whitespace inside or around a token
    if not tokens:
        return
    tok = WordTokenizer.from_text(text, lowercase=lowercase)
    ids = tok.encode(text)
    assert len(ids) == len(tokens) and 0 not in ids  # every word of the text is in the vocab
    assert tok.decode(ids) == " ".join(tokens)
    assert split_words(" ".join(tokens)) == tokens  # splitting the decoded text is stable


# ----------------------------------------------------------------------------- special tokens
CHATML = ["<|im_start|>", "<|im_end|>"]


def test_char_special_tokens_and_injection(tmp_path):
    base = CharTokenizer.from_text("<|im_start|><|im_end|> abc\n")  # 17 characters
    n = base.vocab_size
    chat = base.with_special_tokens(CHATML)
    assert n == 17 and base.special_tokens == {}
    assert chat.special_tokens == {"<|im_start|>": 17, "<|im_end|>": 18}
    assert chat.vocab_size == 19 and chat.chars == base.chars
    convo = "<|im_start|>a\nb c<|im_end|>\n"
    ids = chat.encode(convo, allowed_special="all")
    assert ids == [17, *base.encode("a\nb c"), 18, base.stoi["\n"]]
    assert chat.encode(convo, allowed_special=set(CHATML)) == ids
    assert chat.decode(ids) == convo and chat.decode([18]) == "<|im_end|>"
    # text from a user: the same characters are plain text, never the special token
    user = "a <|im_end|>"
    with pytest.raises(ValueError, match=r"special token '<\|im_end\|>' \(at position 2\)"):
        chat.encode(user)
    with pytest.raises(ValueError, match="not allowed"):
        chat.encode(convo, allowed_special={"<|im_start|>"})
    plain = chat.encode_ordinary(user)
    assert plain == chat.encode(user, allowed_special="none") == base.encode(user)
    assert len(plain) == len(user) and max(plain) < n and chat.decode(plain) == user
    # without '<' and '|' in the vocabulary such text cannot be encoded as plain text
    small = CharTokenizer.from_text("abc \n").with_special_tokens(CHATML)
    with pytest.raises(ValueError, match=r"character '<' at position 2 is not in"):
        small.encode_ordinary(user)
    # ids: "\n" 0, " " 1, a 2, b 3, c 4, then <|im_start|> 5, <|im_end|> 6
    assert small.encode(convo.replace("b c", "bc"), "all") == [5, 2, 0, 3, 4, 6, 0]
    # saved and loaded, directly and through the base class
    chat.save(tmp_path / "chat.json")
    for loaded in (CharTokenizer.load(tmp_path / "chat.json"),
                   Tokenizer.load(tmp_path / "chat.json"), tokenizer_from_dict(chat.to_dict())):
        assert isinstance(loaded, CharTokenizer)
        assert loaded.special_tokens == chat.special_tokens and loaded.chars == chat.chars
        assert loaded.encode(convo, "all") == ids


def test_word_special_tokens():
    tok = WordTokenizer.from_text("the cat sat", lowercase=True).with_special_tokens(CHATML)
    assert tok.special_tokens == {"<|im_start|>": 4, "<|im_end|>": 5}
    ids = tok.encode("<|im_start|>The dog<|im_end|>", allowed_special="all")
    assert ids == [4, tok.stoi["the"], 0, 5]
    assert tok.decode(ids) == "<|im_start|> the <unk> <|im_end|>"
    # as text: the 7 unknown tokens < | im _ end | >
    assert tok.encode_ordinary("<|im_end|>") == [0] * 7
    assert tokenizer_from_dict(tok.to_dict()).special_tokens == tok.special_tokens


def test_special_token_bad_input():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TypeError, match="list of strings"):
        tok.with_special_tokens("<|im_end|>")
    with pytest.raises(ValueError, match="non-empty"):
        tok.with_special_tokens([""])
    with pytest.raises(TypeError, match="must be a str"):
        tok.with_special_tokens([3])
    with pytest.raises(ValueError, match="listed twice"):
        tok.with_special_tokens(["<|x|>", "<|x|>"])
    with pytest.raises(ValueError, match="already a special token"):
        tok.with_special_tokens(["<|x|>"]).with_special_tokens(["<|x|>"])
    with pytest.raises(ValueError, match="follow the 3 ordinary tokens"):
        CharTokenizer(["a", "b", "c"], special_tokens={"<|x|>": 7})
    with pytest.raises(ValueError, match="'<|x|>', which is not a special token"):
        tok.encode("abc", allowed_special={"<|x|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        tok.encode("abc", allowed_special="everything")


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind", ["char", "word"])
def test_decode_accepts_tensors_and_rejects_bad_ids(kind):
    text = "the cat sat on the mat"
    tok = CharTokenizer.from_text(text) if kind == "char" else WordTokenizer.from_text(text)
    ids = tok.encode(text)
    expected = tok.decode(ids)
    assert tok.decode(torch.tensor(ids)) == tok.decode(np.array(ids)) == expected
    assert tok.decode(tuple(ids)) == tok.decode(iter(ids)) == expected
    with pytest.raises(ValueError, match=r"1-D, got shape \(1, "):
        tok.decode(torch.tensor([ids]))
    with pytest.raises(TypeError, match=r"integers, got \d+\.0 \(float\) at position 0"):
        tok.decode(torch.tensor(ids, dtype=torch.float32))
    with pytest.raises(TypeError, match="got str"):
        tok.decode("the")
    with pytest.raises(TypeError, match=r"\[3\]"):
        tok.decode(3)
    with pytest.raises(ValueError, match="id -1 is outside"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(text.encode())
    with pytest.raises(TypeError, match="text must be a str"):
        type(tok).from_text(["the", "cat"])


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="one character, got 'ab'"):
        CharTokenizer(["a", "ab"])
    with pytest.raises(ValueError, match="one character, got 3"):
        CharTokenizer(["a", 3])
    with pytest.raises(ValueError, match="non-empty string, got ''"):
        WordTokenizer(["<unk>", ""])


# ----------------------------------------------------------------------------- encode_iterable
@pytest.mark.parametrize("kind", ["char", "word"])
def test_encode_iterable_char_and_word(kind, shakespeare_text):
    text = shakespeare_text[:3000] + "<|im_end|>  \n x"
    tok = CharTokenizer.from_text(text) if kind == "char" else WordTokenizer.from_text(text)
    tok = tok.with_special_tokens(CHATML)
    for size in (1, 7, 100):
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        assert list(tok.encode_iterable(pieces, "all")) == tok.encode(text, "all")
        assert list(tok.encode_iterable(pieces, "none")) == tok.encode_ordinary(text)
        with pytest.raises(ValueError, match="im_end"):
            list(tok.encode_iterable(pieces))


# ----------------------------------------------------------------------------- save / load
def three_tokenizers():
    text = "To be, or not to be: that is the question. 🙂"
    return [CharTokenizer.from_text(text), WordTokenizer.from_text(text),
            train_bpe(text, 270, special_tokens=["<|endoftext|>"])]


@pytest.mark.parametrize("tok", three_tokenizers(), ids=["char", "word", "bpe"])
def test_save_load_errors_name_the_path(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    assert type(tok).load(path).to_dict() == tok.to_dict() == Tokenizer.load(path).to_dict()
    with pytest.raises(FileNotFoundError, match="no tokenizer file at .*missing.json"):
        type(tok).load(tmp_path / "missing.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.json is not a tokenizer file.*truncated"):
        type(tok).load(truncated)
    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="model.pt is not a tokenizer file"):
        type(tok).load(binary)
    foreign = tmp_path / "foreign.json"
    for content, message in [([1, 2, 3], "got list"), ({"hello": 1}, "its kind is None"),
                             ({"kind": "bpe", "format": "other"}, "format 'other'"),
                             ({k: v for k, v in tok.to_dict().items()
                               if k not in ("chars", "words", "merges")}, "malformed")]:
        foreign.write_text(json.dumps(content))
        if content == {"kind": "bpe", "format": "other"} and tok.kind != "bpe":
            message = "its kind is 'bpe'"
        with pytest.raises(ValueError, match=f"foreign.json: .*{message}"):
            type(tok).load(foreign)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'words'"):
        Tokenizer.from_dict({"kind": "words"})


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    old = CharTokenizer.from_text("abc")
    old.save(path)
    before = path.read_bytes()

    def failing_dumps(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(json, "dumps", failing_dumps)
    with pytest.raises(RuntimeError, match="disk full"):
        CharTokenizer.from_text("xyz").save(path)
    assert path.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temporary file left


def test_dicts_saved_before_special_tokens_still_load():
    # literal dicts in the form checkpoints saved before the base class existed
    char = tokenizer_from_dict({"kind": "char", "chars": ["\n", " ", "a", "b"]})
    assert char.encode("ab a\n") == [2, 3, 1, 2, 0] and char.special_tokens == {}
    word = tokenizer_from_dict({"kind": "word", "words": ["<unk>", "cat", "the"],
                                "lowercase": True})
    assert word.encode("The dog cat") == [2, 0, 1]
    bpe = tokenizer_from_dict({"kind": "bpe", "format": "course-bpe-v1", "pattern": None,
                               "byte_ids": list(range(256)), "merges": [[97, 98, 256]],
                               "special_tokens": {"<|endoftext|>": 257}})
    assert isinstance(bpe, BPETokenizer)
    assert bpe.encode("abc<|endoftext|>", "all") == [256, 99, 257]
