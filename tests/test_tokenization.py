"""Character and word tokenizers, and Project Gutenberg clean-up."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils.tokenization import (
    CharTokenizer,
    WordTokenizer,
    split_words,
    strip_gutenberg,
    tokenizer_from_dict,
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
    with pytest.raises(ValueError, match="not a word tokenizer"):
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
