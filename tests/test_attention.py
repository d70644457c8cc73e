"""CausalSelfAttention at the layer level, against nn.MultiheadAttention and
F.scaled_dot_product_attention, for shapes test_model.py does not cover; dropout in eval and
train mode; the KV cache (prefill, chunks, one token at a time) against full attention.

test_model.py already checks n_head=4, n_embd=32, T=block_size=16 against
nn.MultiheadAttention and the two attention paths against each other at that one shape.

Grouped-query attention (n_kv_head < n_head) and RoPE: against multi-head attention with
the K/V heads repeated (and so against nn.MultiheadAttention), against Hugging Face's
LlamaAttention with copied weights, and its KV cache, which is n_head / n_kv_head times
smaller.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.attention import CausalSelfAttention, KVCache
from course_utils.model import GPT, GPTConfig
from course_utils.positions import rope_tables

TOL = dict(atol=1e-6, rtol=1e-5)
IMPLS = ["sdpa", "manual"]


def make(n_embd=48, n_head=3, block_size=12, attn_impl="sdpa", seed=0, **kw):
    torch.manual_seed(seed)
    config = GPTConfig(n_embd=n_embd, n_head=n_head, block_size=block_size, attn_impl=attn_impl,
                       **kw)
    return CausalSelfAttention(config).eval()


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
        CausalSelfAttention(GPTConfig(n_embd=10, n_head=3, block_size=4))
    with pytest.raises(ValueError, match="attn_impl"):
        CausalSelfAttention(GPTConfig(n_embd=16, n_head=2, block_size=4, attn_impl="flash"))


# --- grouped-query attention (notebook 11) -------------------------------------------------

def repeated_kv_twin(gqa: CausalSelfAttention) -> CausalSelfAttention:
    """A multi-head layer (n_kv_head == n_head) whose every query head gets its own copy of
    the K/V head that ``gqa`` shares within the group: Ainslie et al.'s definition of GQA
    (query head i uses K/V head i // group) written as ordinary multi-head attention."""
    nh, nkv, C = gqa.n_head, gqa.n_kv_head, gqa.n_embd
    hs = C // nh
    mha = CausalSelfAttention(GPTConfig(n_embd=C, n_head=nh, bias=gqa.c_attn.bias is not None,
                                        attn_impl=gqa.attn_impl))
    head_of = torch.arange(nh) // (nh // nkv)  # the K/V head of each query head

    def expand(t):  # rows q | k | v of the grouped layer -> q | k | v with nh heads each
        q, k, v = t.split([nh * hs, nkv * hs, nkv * hs])
        k, v = (x.view(nkv, hs, *x.shape[1:])[head_of].reshape(nh * hs, *x.shape[1:])
                for x in (k, v))
        return torch.cat([q, k, v])

    with torch.no_grad():
        mha.c_attn.weight.copy_(expand(gqa.c_attn.weight))
        if gqa.c_attn.bias is not None:
            mha.c_attn.bias.copy_(expand(gqa.c_attn.bias))
        mha.c_proj.load_state_dict(gqa.c_proj.state_dict())
    return mha.eval()


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("n_head,n_kv_head", [(4, 2), (4, 1), (6, 3), (6, 2)])
def test_gqa_equals_multi_head_attention_with_repeated_kv_heads(attn_impl, n_head, n_kv_head):
    gqa = make(n_embd=48, n_head=n_head, n_kv_head=n_kv_head, attn_impl=attn_impl)
    hs = 48 // n_head
    assert gqa.c_attn.weight.shape == ((n_head + 2 * n_kv_head) * hs, 48)
    mha = repeated_kv_twin(gqa)
    x = torch.randn(3, 12, 48)
    mask = nn.Transformer.generate_square_subsequent_mask(12)
    expected, _ = torch_mha(mha, bias=True)(x, x, x, attn_mask=mask, need_weights=False)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), **TOL)
        torch.testing.assert_close(gqa(x), expected, **TOL)


def test_gqa_with_as_many_kv_heads_as_query_heads_is_multi_head_attention():
    ours = make(n_embd=48, n_head=3, n_kv_head=3)
    plain = make(n_embd=48, n_head=3)
    assert ours.c_attn.weight.shape == plain.c_attn.weight.shape == (3 * 48, 48)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x))


def test_gqa_paths_agree_with_gradients():
    x = torch.randn(2, 12, 48)
    grads = []
    for impl in IMPLS:
        layer = make(n_head=6, n_kv_head=2, attn_impl=impl)
        xi = x.clone().requires_grad_()
        (layer(xi) ** 2).sum().backward()
        grads.append([xi.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def llama_attention_like(ours: CausalSelfAttention, theta: float):
    """transformers' LlamaAttention holding ``ours``'s weights (c_attn split into q, k, v)."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    nh, nkv, C = ours.n_head, ours.n_kv_head, ours.n_embd
    hs = C // nh
    config = transformers.LlamaConfig(hidden_size=C, num_attention_heads=nh,
                                      num_key_value_heads=nkv, rope_theta=theta,
                                      max_position_embeddings=64)
    config._attn_implementation = "eager"
    ref = LlamaAttention(config, layer_idx=0).eval()
    q, k, v = ours.c_attn.weight.split([nh * hs, nkv * hs, nkv * hs])
    with torch.no_grad():
        ref.q_proj.weight.copy_(q)
        ref.k_proj.weight.copy_(k)
        ref.v_proj.weight.copy_(v)
        ref.o_proj.weight.copy_(ours.c_proj.weight)
    return ref, LlamaRotaryEmbedding(config)


@pytest.mark.parametrize("attn_impl", IMPLS)
@pytest.mark.parametrize("n_head,n_kv_head", [(4, 4), (4, 2), (8, 1)])
def test_gqa_with_rope_equals_hugging_face_llama_attention(attn_impl, n_head, n_kv_head):
    theta = 500.0
    ours = make(n_embd=64, n_head=n_head, n_kv_head=n_kv_head, block_size=12, bias=False,
                attn_impl=attn_impl)
    ref, rotary = llama_attention_like(ours, theta)
    x = torch.randn(2, 12, 64)
    positions = torch.arange(12)
    causal = torch.full((12, 12), float("-inf")).triu(1)[None, None]  # additive mask
    with torch.no_grad():
        expected, _ = ref(x, position_embeddings=rotary(x, positions[None]),
                          attention_mask=causal)
        got = ours(x, rope=rope_tables(positions, 64 // n_head, theta))
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("attn_impl", IMPLS)
def test_gqa_kv_cache_with_rope_equals_full_attention(attn_impl):
    layer = make(n_embd=48, n_head=6, n_kv_head=2, block_size=12, attn_impl=attn_impl)
    x = torch.randn(2, 12, 48)
    tables = rope_tables(torch.arange(12), 8)
    with torch.no_grad():
        full = layer(x, rope=tables)
        cache = KVCache(2, 2, 12, 8)
        parts = []
        for a, b in [(0, 5), (5, 8), (8, 9), (9, 10), (10, 11), (11, 12)]:
            parts.append(layer(x[:, a:b], cache, rope=tuple(t[a:b] for t in tables)))
    assert cache.k.shape == (2, 2, 12, 8) and cache.length == 12
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_bytes_shrink_by_n_head_over_n_kv_head(n_kv_head):
    B, block_size, n_head, n_embd, n_layer = 3, 20, 4, 32, 2
    cfg = GPTConfig.llama(vocab_size=10, block_size=block_size, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, n_kv_head=n_kv_head)
    caches = GPT(cfg).new_kv_caches(B)
    nbytes = sum(c.k.nbytes + c.v.nbytes for c in caches)
    mha_bytes = n_layer * 2 * B * n_head * block_size * (n_embd // n_head) * 4  # float32
    assert nbytes * (n_head // n_kv_head) == mha_bytes
    assert all(c.k.shape == (B, n_kv_head, block_size, n_embd // n_head) for c in caches)


def test_gqa_settings_errors():
    with pytest.raises(ValueError, match=r"n_kv_head \(3\) must be a positive divisor of "
                                         r"n_head \(4\)"):
        CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=8, n_kv_head=3))
    with pytest.raises(ValueError, match="n_kv_head"):
        CausalSelfAttention(GPTConfig(n_embd=32, n_head=4, block_size=8, n_kv_head=0))
    model = GPT(GPTConfig(vocab_size=8, n_embd=16, n_head=2, block_size=4, n_layer=1))
    with pytest.raises(ValueError, match="sequence of 5 tokens is longer than block_size 4"):
        model(torch.zeros(1, 5, dtype=torch.long))  # the model checks the length, once
