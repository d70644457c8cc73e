"""ParallelLinear computes nn.Linear: values and gradients, on and off its split path; and
use_parallel_linear turns the plain GPT into the fast variant without changing its weights."""

import pytest
import torch
import torch.nn as nn

from course_utils.linear import (
    MAX_ROWS,
    MIN_WEIGHT,
    ParallelLinear,
    split_linear,
    use_parallel_linear,
)
from course_utils.model import GPT, GPTConfig


def pair(in_features, out_features, bias=True, seed=0):
    """An nn.Linear and a ParallelLinear with the same weights."""
    torch.manual_seed(seed)
    ref = nn.Linear(in_features, out_features, bias=bias)
    ours = ParallelLinear(in_features, out_features, bias=bias)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("n_threads", [2, 3])
@pytest.mark.parametrize("shape", [(1, 257), (1, 1, 257), (5, 257), (2, 32, 257)])
@pytest.mark.parametrize("bias", [True, False])
def test_split_path_equals_nn_linear_with_gradients(threads, split_calls, n_threads, shape,
                                                    bias):
    threads(n_threads)
    ref, ours = pair(257, 1031, bias)  # 1031 is prime: rows are left over for every split
    assert ours.weight.numel() >= MIN_WEIGHT
    x = torch.randn(shape, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert split_calls == [n_threads]
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)
    if bias:
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-5, rtol=1e-5)


def test_plain_path_when_splitting_does_not_pay(threads, split_calls):
    threads(2)
    big_ref, big = pair(257, 1031)
    small_ref, small = pair(64, 256)  # 16k weights: fits in cache
    many_rows = torch.randn(MAX_ROWS + 1, 257)
    torch.testing.assert_close(big(many_rows), big_ref(many_rows))
    x = torch.randn(1, 64)
    torch.testing.assert_close(small(x), small_ref(x))
    threads(1)
    one = torch.randn(1, 257)
    torch.testing.assert_close(big(one), big_ref(one))
    assert split_calls == []


@pytest.mark.parametrize("chunks", [1, 2, 4, 7, 40])
def test_split_linear_any_chunk_count(chunks):
    ref, _ = pair(24, 30)
    x = torch.randn(3, 24)
    torch.testing.assert_close(split_linear(x, ref.weight, ref.bias, chunks), ref(x))


def test_split_linear_rejects_zero_chunks():
    ref, _ = pair(4, 4)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        split_linear(torch.randn(1, 4), ref.weight, ref.bias, 0)


def test_state_dict_is_nn_linear_s():
    ref, ours = pair(8, 6)
    assert isinstance(ours, nn.Linear)
    assert {k: v.shape for k, v in ours.state_dict().items()} == \
        {k: v.shape for k, v in ref.state_dict().items()}


def test_split_path_keeps_the_autocast_dtype(threads, split_calls):
    threads(2)
    ref, ours = pair(257, 1031)
    x = torch.randn(2, 257)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x), ref(x)
    assert split_calls == [2]
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_use_parallel_linear_keeps_the_weights_and_the_logits(threads, split_calls, tie_weights):
    """Every nn.Linear becomes a ParallelLinear holding the very same tensors (tying kept,
    state dict unchanged); a one-token decoding step then takes the split path and gives the
    plain model's logits up to float rounding."""
    threads(2)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=1031, block_size=8, n_layer=1, n_head=4, n_embd=256,
                    tie_weights=tie_weights)
    plain = GPT(cfg).eval()
    fast = GPT(cfg).eval()
    fast.load_state_dict(plain.state_dict())
    before = fast.state_dict()
    assert use_parallel_linear(fast) is fast
    after = fast.state_dict()
    assert list(after) == list(before)
    assert all(after[k].data_ptr() == before[k].data_ptr() for k in before)  # not copied
    linears = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is ParallelLinear for m in linears)
    assert (fast.lm_head.weight is fast.transformer.wte.weight) == tie_weights
    idx = torch.randint(0, 1031, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        caches = [plain.new_kv_caches(1), fast.new_kv_caches(1)]
        plain(idx[:, :5], kv_caches=caches[0])
        fast(idx[:, :5], kv_caches=caches[1])
        split_calls.clear()
        step_plain = plain(idx[:, 5:], kv_caches=caches[0])[0]
        step_fast = fast(idx[:, 5:], kv_caches=caches[1])[0]
    assert split_calls and set(split_calls) == {2}
    torch.testing.assert_close(step_fast, step_plain, atol=1e-5, rtol=1e-5)
