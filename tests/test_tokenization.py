"""Character tokenizer."""

import pytest

from course_utils.tokenization import CharTokenizer, tokenizer_from_dict


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
