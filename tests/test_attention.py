"""CausalSelfAttention at the layer level, against nn.MultiheadAttention and
F.scaled_dot_product_attention, for shapes test_model.py does not cover; dropout in eval and
train mode; the KV cache (prefill, chunks, one token at a time) against full attention.

test_model.py already checks n_head=4, n_embd=32, T=block_size=16 against
nn.MultiheadAttention and the two attention paths against each other at that one shape.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.attention import CausalSelfAttention, KVCache

TOL = dict(atol=1e-6, rtol=1e-5)
IMPLS = ["sdpa", "manual"]


def make(n_embd=48, n_head=3, block_size=12, attn_impl="sdpa", seed=0, **kw):
    torch.manual_seed(seed)
    return CausalSelfAttention(n_embd, n_head, block_size, attn_impl=attn_impl, **kw).eval()


def torch_mha(ours: CausalSelfAttention, bias: bool) -> nn.MultiheadAttention:
    """PyTorch's own multi-head attention with our weights (both store nn.Linear (out, in))."""
    ref = nn.MultiheadAttention(ours.n_embd, ours.n_head, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(ours.c_attn.bias)
            ref.out_proj.bias.copy_(ours.c_proj.bias)
    return ref.eval()


def sdpa_reference(ours: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Queries, keys, values from our c_attn weights, attention by PyTorch's fused kernel."""
    B, T, C = x.shape
    nh = ours.n_head
    q, k, v = F.linear(x, ours.c_attn.weight, ours.c_attn.bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, T, nh, C // nh).permute(0, 2, 1, 3) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.linear(y.permute(0, 2, 1, 3).reshape(B, T, C), ours.c_proj.weight, ours.c_proj.bias)


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("n_head", [1, 3, 8])
@pytest.mark.parametrize("B,T", [(1, 1), (5, 7), (2, 12)])
def test_equals_torch_multihead_attention_and_sdpa(attn_impl, n_head, B, T):
    ours = make(n_head=n_head, attn_impl=attn_impl)
    x = torch.randn(B, T, 48)
    mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)  # -inf above diagonal
    expected, _ = torch_mha(ours, bias=True)(x, x, x, attn_mask=mask, need_weights=False)
    with torch.no_grad():
        y = ours(x)
        torch.testing.assert_close(y, expected, **TOL)
        torch.testing.assert_close(y, sdpa_reference(ours, x), **TOL)


@pytest.mark.parametrize("attn_impl", IMPLS)
def test_without_bias_equals_torch_multihead_attention(attn_impl):
    ours = make(n_embd=32, n_head=2, block_size=10, attn_impl=attn_impl, bias=False)
    assert ours.c_attn.bias is None and ours.c_proj.bias is None
    x = torch.randn(3, 10, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(10)
    expected, _ = torch_mha(ours, bias=False)(x, x, x, attn_mask=mask, need_weights=False)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, **TOL)


def test_gradients_of_both_paths_are_equal():
    x = torch.randn(2, 12, 48)
    grads = []
    for impl in IMPLS:
        layer = make(attn_impl=impl)
        xi = x.clone().requires_grad_()
        (layer(xi) ** 2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn_impl", IMPLS)
def test_layer_is_causal(attn_impl):
    layer = make(attn_impl=attn_impl)
    x = torch.randn(2, 12, 48)
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 6, 48)
    with torch.no_grad():
        a, b = layer(x), layer(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("attn_impl", IMPLS)
def test_dropout_is_off_in_eval_mode_and_on_in_train_mode(attn_impl):
    with_dropout = make(attn_impl=attn_impl, dropout=0.5)
    without = make(attn_impl=attn_impl, dropout=0.0)
    without.load_state_dict(with_dropout.state_dict())
    x = torch.randn(2, 12, 48)
    with torch.no_grad():
        torch.testing.assert_close(with_dropout.eval()(x), without(x))
        with_dropout.train()
        a, b = with_dropout(x), with_dropout(x)
    assert not torch.allclose(a, without(x)), "dropout=0.5 changed nothing in train mode"
    assert not torch.allclose(a, b), "two train-mode calls should draw different masks"


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("n_head", [1, 4])
def test_kv_cache_prefill_chunk_and_decode_equal_full_attention(attn_impl, n_head):
    layer = make(n_embd=32, n_head=n_head, block_size=12, attn_impl=attn_impl)
    x = torch.randn(3, 12, 32)
    with torch.no_grad():
        full = layer(x)
        cache = KVCache(3, n_head, 12, 32 // n_head)
        parts = [layer(x[:, :5], cache), layer(x[:, 5:8], cache)]  # prefill, then a chunk
        parts += [layer(x[:, t:t + 1], cache) for t in range(8, 12)]  # then one by one
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)
    # the cache holds exactly the keys and values of the full sequence
    _, k, v = F.linear(x, layer.c_attn.weight, layer.c_attn.bias).chunk(3, dim=-1)
    torch.testing.assert_close(cache.k, k.view(3, 12, n_head, -1).transpose(1, 2), **TOL)
    torch.testing.assert_close(cache.v, v.view(3, 12, n_head, -1).transpose(1, 2), **TOL)


def test_kv_cache_overflow_and_bad_settings():
    layer = make(n_embd=16, n_head=2, block_size=4)
    cache = KVCache(1, 2, 4, 8)
    with torch.no_grad():
        layer(torch.randn(1, 3, 16), cache)
        with pytest.raises(ValueError, match="KV cache overflow: 5 positions"):
            layer(torch.randn(1, 2, 16), cache)
    with pytest.raises(ValueError, match=r"n_embd \(10\) must be divisible by n_head \(3\)"):
        CausalSelfAttention(10, 3, 4)
    with pytest.raises(ValueError, match="attn_impl"):
        CausalSelfAttention(16, 2, 4, attn_impl="flash")
