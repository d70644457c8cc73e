"""The one module of per-token log-probabilities and masked means, against PyTorch's
log_softmax/gather and cross_entropy, and against a hand computation."""

import pytest
import torch

from course_utils.logprobs import (
    masked_mean,
    masked_sum,
    sequence_logprobs,
    target_logprobs,
    target_nll,
    token_logprobs,
)
from course_utils.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=16)).eval()


def test_token_logprobs_equal_log_softmax_and_gather(model):
    idx = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = token_logprobs(model, idx)
        logp = torch.log_softmax(model(idx)[0], dim=-1)
    want = logp[:, :-1].gather(2, idx[:, 1:, None])[..., 0]
    assert torch.equal(got[:, 0], torch.zeros(3))  # no context for the first token
    torch.testing.assert_close(got[:, 1:], want)


def test_the_two_forms_agree_and_the_mean_is_the_models_own_loss(model):
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 11, (4, 10), generator=g)
    x, y = idx[:, :-1], idx[:, 1:].clone()
    y[torch.rand(y.shape, generator=g) < 0.4] = -1  # a loss mask
    with torch.no_grad():
        torch.testing.assert_close(target_logprobs(model, x, y),
                                   torch.where(y != -1, token_logprobs(model, idx)[:, 1:], 0.0))
        total, count = target_nll(model, x, y)
        loss = model(x, y)[1]  # F.cross_entropy(ignore_index=-1)
    assert count == int((y != -1).sum())
    assert total / count == pytest.approx(loss.item(), rel=1e-5)


def test_masked_sums_and_means_by_hand():
    v = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
    m = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_sum(v, m).item() == 3.0  # the NaN and inf left out count for nothing
    torch.testing.assert_close(masked_mean(v, m, dim=1), torch.tensor([1.5, 0.0]))
    assert masked_mean(v, m).item() == 1.5


def test_sequence_logprobs_sum_the_masked_positions(model):
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 3:6], mask[1, 5:] = True, True
    with torch.no_grad():
        per_token = token_logprobs(model, idx)
        torch.testing.assert_close(sequence_logprobs(model, idx, mask),
                                   torch.stack([per_token[0, 3:6].sum(), per_token[1, 5:].sum()]))
    with pytest.raises(ValueError, match="first token has no context"):
        sequence_logprobs(model, idx, torch.ones(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        sequence_logprobs(model, idx, mask.float())
