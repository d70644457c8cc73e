"""Sinusoidal positions against the paper's formula in plain Python; the bigram model against
one-hot products, F.cross_entropy and the count-based (maximum-likelihood) bigram."""

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.bigram import BigramLanguageModel, bigram_loss, train_bigram
from course_utils.positions import sinusoidal_positions


@pytest.mark.parametrize("block_size,n_embd", [(1, 2), (7, 4), (33, 16), (64, 10)])
def test_sinusoidal_positions_follow_the_formula(block_size, n_embd):
    pe = sinusoidal_positions(block_size, n_embd)
    assert pe.shape == (block_size, n_embd) and pe.dtype == torch.float32
    expected = [[0.0] * n_embd for _ in range(block_size)]
    for pos in range(block_size):
        for i in range(n_embd // 2):
            angle = pos / 10000 ** (2 * i / n_embd)
            expected[pos][2 * i] = math.sin(angle)
            expected[pos][2 * i + 1] = math.cos(angle)
    torch.testing.assert_close(pe, torch.tensor(expected), atol=1e-6, rtol=0)


def test_sinusoidal_dot_product_depends_only_on_the_offset():
    pe = sinusoidal_positions(40, 8).double()
    for k in (1, 5):
        # sin a sin b + cos a cos b = cos(a - b): a sum of cos(k * w_i) over frequencies
        expected = sum(math.cos(k / 10000 ** (2 * i / 8)) for i in range(4))
        dots = (pe[:-k] * pe[k:]).sum(dim=1)
        torch.testing.assert_close(dots, torch.full_like(dots, expected), atol=1e-5, rtol=0)


def test_sinusoidal_positions_bad_sizes():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positions(8, 5)
    with pytest.raises(ValueError, match="positive"):
        sinusoidal_positions(0, 4)


def test_bigram_logits_are_one_hot_times_the_table_and_loss_is_cross_entropy():
    torch.manual_seed(0)
    model = BigramLanguageModel(11)
    idx = torch.randint(0, 11, (3, 5))
    targets = torch.randint(0, 11, (3, 5))
    logits, loss = model(idx, targets)
    W = model.token_embedding_table.weight
    torch.testing.assert_close(logits, F.one_hot(idx, 11).float() @ W)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)))
    assert model(idx)[1] is None


def test_bigram_loss_at_init_is_near_ln_vocab():
    torch.manual_seed(0)
    model = BigramLanguageModel(65)
    idx = torch.randint(0, 65, (4, 64))
    _, loss = model(idx, torch.randint(0, 65, (4, 64)))
    assert abs(loss.item() - math.log(65)) < 0.02


def test_bigram_greedy_generation_follows_the_table():
    torch.manual_seed(0)
    model = BigramLanguageModel(9)
    out = model.generate(torch.tensor([[3], [5]]), 6, temperature=0)
    assert out.shape == (2, 7)
    table = model.token_embedding_table.weight
    for row in out.tolist():
        for a, b in zip(row, row[1:]):
            assert b == int(table[a].argmax())


def test_bigram_bad_ids():
    model = BigramLanguageModel(5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model(torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model(torch.tensor([1, 2]))


def markov_chain(n, vocab=6, seed=0):
    """Tokens from a random first-order Markov chain: a bigram model can learn it fully."""
    g = torch.Generator().manual_seed(seed)
    P = torch.softmax(2 * torch.randn(vocab, vocab, generator=g), dim=1)
    ids = [0]
    for _ in range(n - 1):
        ids.append(int(torch.multinomial(P[ids[-1]], 1, generator=g)))
    return torch.tensor(ids)


def count_bigram_loss(train, val, vocab):
    """Cross-entropy on val of the maximum-likelihood bigram estimated from train by counting
    (add-one smoothing)."""
    counts = torch.ones(vocab, vocab)
    for a, b in zip(train[:-1].tolist(), train[1:].tolist()):
        counts[a, b] += 1
    probs = counts / counts.sum(dim=1, keepdim=True)
    return -probs[val[:-1], val[1:]].log().mean().item()


def test_bigram_loss_is_the_mean_cross_entropy_of_consecutive_pairs():
    torch.manual_seed(0)
    model = BigramLanguageModel(6)
    ids = markov_chain(200)
    W = model.token_embedding_table.weight.detach()
    expected = F.cross_entropy(W[ids[:-1]], ids[1:]).item()
    assert bigram_loss(model, ids) == pytest.approx(expected, rel=1e-6)
    assert bigram_loss(model, ids, chunk_size=7) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="1-D"):
        bigram_loss(model, ids[None])


def test_train_bigram_reaches_the_counting_estimate_and_is_reproducible():
    data = markov_chain(6000)
    train, val = data[:5000], data[5000:]
    best = count_bigram_loss(train, val, 6)
    model = BigramLanguageModel(6)
    loss = train_bigram(train, val, steps=50, learning_rate=0.3,
                        batch_size=128, model=model, progress=False)
    assert loss == pytest.approx(bigram_loss(model, val))  # trained in place
    assert abs(loss - best) < 0.03, (loss, best)
    runs = [train_bigram(train, val, steps=10, vocab_size=6, progress=False) for _ in range(2)]
    assert runs[0] == runs[1]
    with pytest.raises(ValueError, match="steps"):
        train_bigram(train, val, steps=0)
