"""Next-token data: split by position, batches of shifted windows, the Dataset of windows,
token files on disk. References: plain slicing of the corpus, torch's DataLoader, NumPy's
own file reading (np.fromfile)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from course_utils.datasets import (
    TokenWindows,
    get_batch,
    read_token_file,
    train_val_split,
    write_token_file,
)


def corpus(n=1000, vocab=50, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def test_split_is_by_position():
    data = corpus(1003)
    train, val = train_val_split(data, 0.1)
    assert len(train) == int(1003 * 0.9)
    torch.testing.assert_close(torch.cat([train, val]), data)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(data, 1.0)


def test_batches_are_windows_of_the_corpus_shifted_by_one():
    data = corpus()
    B, T = 6, 9
    x, y = get_batch(data, T, B, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (B, T) and x.dtype == y.dtype == torch.int64
    windows = data.unfold(0, T + 1, 1)  # every (T + 1)-token slice, (N - T, T + 1)
    for b in range(B):
        row = torch.cat([x[b], y[b, -1:]])
        assert (windows == row).all(dim=1).any(), "a batch row is not a slice of the corpus"
    torch.testing.assert_close(x[:, 1:], y[:, :-1])


def test_memmap_batches_equal_tensor_batches(tmp_path):
    data = corpus(2000, vocab=60000)
    write_token_file([data[:700].tolist(), data[700:].numpy()], tmp_path / "d.bin",
                     progress=False)
    mm = read_token_file(tmp_path / "d.bin")
    a = get_batch(data, 16, 8, torch.Generator().manual_seed(1))
    b = get_batch(mm, 16, 8, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)


def test_token_file_size_dtype_and_contents(tmp_path):
    ids = corpus(777, vocab=50257)
    path = write_token_file([ids], tmp_path / "a.bin", progress=False)
    assert path.stat().st_size == 777 * 2  # uint16: two bytes per token
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.uint16), ids.numpy())
    wide = write_token_file([ids], tmp_path / "b.bin", dtype=np.int64, progress=False)
    assert wide.stat().st_size == 777 * 8
    np.testing.assert_array_equal(read_token_file(wide, dtype=np.int64), ids.numpy())


def test_token_file_errors_leave_nothing_behind(tmp_path):
    with pytest.raises(ValueError, match="does not fit in uint16"):
        write_token_file([[1, 2], [70000]], tmp_path / "bad.bin", progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_token_file(tmp_path / "missing.bin")


def test_token_windows_items_are_shifted_slices():
    data = corpus(50)
    ds = TokenWindows(data, 8)
    assert len(ds) == 42
    for i in (0, 17, 41, -1):
        x, y = ds[i]
        start = i % 42
        torch.testing.assert_close(x, data[start:start + 8])
        torch.testing.assert_close(y, data[start + 1:start + 9])
    with pytest.raises(IndexError, match="out of range"):
        ds[42]


def test_token_windows_do_not_alias_the_corpus():
    data = corpus(20)
    x, _ = TokenWindows(data, 4)[0]
    x += 1
    torch.testing.assert_close(TokenWindows(data, 4)[0][0], corpus(20)[:4])


def test_dataloader_gives_batches_and_visits_every_window_once(tmp_path):
    data = torch.arange(100)  # distinct ids: a window is known by its first token
    loader = DataLoader(TokenWindows(data, 10), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    firsts = []
    for x, y in loader:
        assert x.shape[1] == 10 and x.dtype == torch.int64
        torch.testing.assert_close(y, x + 1)
        firsts += x[:, 0].tolist()
    assert sorted(firsts) == list(range(90))
    assert firsts != list(range(90)), "shuffle=True should change the order"


def test_token_windows_on_a_memmap_equal_the_tensor(tmp_path):
    data = corpus(300, vocab=1000)
    write_token_file([data], tmp_path / "w.bin", progress=False)
    from_disk = TokenWindows(read_token_file(tmp_path / "w.bin"), 12)
    in_memory = TokenWindows(data, 12)
    for i in (0, 100, len(in_memory) - 1):
        torch.testing.assert_close(from_disk[i], in_memory[i])


def test_token_windows_bad_input():
    with pytest.raises(ValueError, match="too few"):
        TokenWindows(torch.arange(8), 8)
    with pytest.raises(ValueError, match="1-D"):
        TokenWindows(torch.zeros(4, 10, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="block_size"):
        TokenWindows(torch.arange(8), 0)
