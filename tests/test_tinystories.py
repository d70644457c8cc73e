"""TinyStories preparation on the offline sample, checked against tiktoken's GPT-2 encoding."""

import json

import numpy as np
import pytest

from course_utils.bpe import gpt2_tokenizer, tiktoken_gpt2
from course_utils.corpora import fetch
from course_utils.datasets import read_token_file
from course_utils.tinystories import EOT_ID, iter_stories, prepare_tinystories

SEP = "<|endoftext|>"


@pytest.fixture(scope="module")
def sample():
    """The sample file's path and its stories, split here by plain str.split."""
    path = fetch("tinystories-sample")
    text = path.read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split(SEP) if s.strip()]
    assert len(stories) >= 3
    return path, stories


@pytest.fixture(scope="module")
def enc():
    return tiktoken_gpt2()


def split_at_eot(ids):
    """Token ids -> one list per story; every story must end with the separator."""
    ids = [int(i) for i in ids]
    assert ids and ids[-1] == EOT_ID, "the file must end with the separator"
    out, cur = [], []
    for i in ids:
        if i == EOT_ID:
            out.append(cur)
            cur = []
        else:
            cur.append(i)
    return out


def test_iter_stories_matches_plain_split(sample, tmp_path):
    path, stories = sample
    assert list(iter_stories(path)) == stories
    # blank stories are skipped; a last story without a separator is kept
    f = tmp_path / "odd.txt"
    f.write_text(f"one\n{SEP}\n\n{SEP}\ntwo\nlines\n{SEP}\nthree", encoding="utf-8")
    assert list(iter_stories(f)) == ["one", "two\nlines", "three"]
    # a separator inside a line separates too: a story never contains it
    f.write_text(f"one {SEP} two\nlines{SEP}{SEP}\nthree {SEP}", encoding="utf-8")
    assert list(iter_stories(f)) == ["one", "two\nlines", "three"]


def test_prepare_split_round_trips_through_tiktoken(sample, enc, tmp_path):
    # our tokenizer: the stories stream through encode_iterable
    path, stories = sample
    meta = prepare_tinystories(tmp_path / "ts", "tinystories-sample", None, val_fraction=0.25,
                               progress=False, encoder=gpt2_tokenizer())
    n_val = round(len(stories) * 0.25)
    folder = tmp_path / "ts"
    train_ids, val_ids = read_token_file(folder / "train.bin"), read_token_file(folder / "val.bin")
    assert train_ids.dtype == np.uint16 and val_ids.dtype == np.uint16
    assert (folder / "train.bin").stat().st_size == 2 * len(train_ids)
    # ids equal tiktoken's, story by story, in order, each followed by <|endoftext|>
    train_stories, val_stories = split_at_eot(train_ids), split_at_eot(val_ids)
    assert train_stories == [enc.encode_ordinary(s) for s in stories[:-n_val]]
    assert val_stories == [enc.encode_ordinary(s) for s in stories[-n_val:]]
    assert [enc.decode(s) for s in train_stories + val_stories] == stories
    assert int((np.asarray(train_ids) == EOT_ID).sum()) == len(stories) - n_val
    assert meta["train"]["tokens"] == len(train_ids) and meta["val"]["stories"] == n_val
    # the saved tokenizer is GPT-2's
    saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert saved == gpt2_tokenizer().to_dict()


def test_separate_files_and_max_stories(sample, enc, tmp_path):
    path, stories = sample
    prepare_tinystories(tmp_path / "ts", path, "tinystories-sample", max_stories=2,
                        progress=False)  # default encoder: tiktoken's, in batches
    for split in ("train", "val"):
        ids = read_token_file(tmp_path / "ts" / f"{split}.bin")
        assert split_at_eot(ids) == [enc.encode_ordinary(s) for s in stories[:2]]


def test_folder_trains_directly(tmp_path):
    from course_utils.config import TrainConfig
    from course_utils.train import train

    prepare_tinystories(tmp_path / "ts", "tinystories-sample", None, progress=False)
    cfg = TrainConfig.from_settings(
        dataset=str(tmp_path / "ts"), out_dir=str(tmp_path / "run"), n_layer=1, n_head=2,
        n_embd=16, block_size=16, batch_size=2, max_iters=2, eval_interval=2, eval_iters=1,
        warmup_iters=1, device="cpu")
    r = train(cfg, progress=False)
    assert r["tokenizer"].vocab_size == enc_vocab_size()
    assert r["model"].config.vocab_size == enc_vocab_size()


def enc_vocab_size():
    return tiktoken_gpt2().n_vocab


def test_reuse_and_no_half_written_files(tmp_path):
    out = tmp_path / "ts"
    first = prepare_tinystories(out, "tinystories-sample", None, progress=False)
    assert first["reused"] is False
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def boom(batch):
        raise RuntimeError("encoder failed")

    # same settings: reused, nothing is encoded
    again = prepare_tinystories(out, "tinystories-sample", None, encoder=boom,
                                progress=False)
    assert again["reused"] is True and again["train"] == first["train"]
    # other settings: prepared again; a failure leaves the old files exactly as they were
    with pytest.raises(RuntimeError, match="encoder failed"):
        prepare_tinystories(out, "tinystories-sample", None, max_stories=3, encoder=boom,
                            progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts"]  # no temporary folder left

    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        prepare_tinystories(fresh, "tinystories-sample", None, encoder=boom,
                            progress=False)
    assert not fresh.exists() or not any(fresh.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts"]


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_tinystories(tmp_path / "a", "tinystories-sample", None, val_fraction=1.0)
    with pytest.raises(ValueError, match="max_stories"):
        prepare_tinystories(tmp_path / "a", "tinystories-sample", max_stories=0)
    with pytest.raises(KeyError, match="unknown data file"):
        prepare_tinystories(tmp_path / "a", "no-such-corpus")
    one = tmp_path / "one.txt"
    one.write_text("a single story\n" + SEP + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 2"):
        prepare_tinystories(tmp_path / "a", one, None, progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text(SEP + "\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no stories"):
        prepare_tinystories(tmp_path / "a", empty, one, progress=False)
    with pytest.raises(ValueError, match="one list of ids per story"):
        prepare_tinystories(tmp_path / "a", one, one, encoder=lambda b: [],
                            progress=False)
    assert not (tmp_path / "a").exists()
