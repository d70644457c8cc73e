"""The transformer block's pieces against PyTorch's own: LayerNorm vs nn.LayerNorm, the MLP
vs torch ops, the Block vs nn.TransformerEncoderLayer (pre-norm) and a composition of torch
modules; the modern pieces: RMSNorm vs nn.RMSNorm and Llama's, SwiGLU vs Llama's MLP."""

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils.attention import KVCache
from course_utils.block import MLP, Block, LayerNorm, RMSNorm, SwiGLU, norm_layer, swiglu_hidden
from course_utils.model import GPTConfig


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (LayerNorm gains/biases included), so that a swapped
    or skipped parameter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return module


@pytest.mark.parametrize("shape", [(7,), (3, 16), (2, 5, 32), (2, 3, 4, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_equals_torch(shape, bias):
    ndim = shape[-1]
    ours = randomize_(LayerNorm(ndim, bias=bias), seed=ndim)
    ref = nn.LayerNorm(ndim, bias=bias)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape) * 5 + 3
    torch.testing.assert_close(ours(x), ref(x))
    assert (ours.bias is None) == (not bias)


def test_layernorm_eps_and_statistics():
    x = torch.randn(4, 64) * 1e-3  # tiny variance: eps matters
    for eps in (1e-5, 1e-2):
        ours = LayerNorm(64, eps=eps)
        torch.testing.assert_close(ours(x), F.layer_norm(x, (64,), eps=eps))
    y = LayerNorm(64)(torch.randn(4, 64) * 7 - 2)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_equals_torch_ops(bias):
    mlp = randomize_(MLP(24, bias=bias), seed=1).eval()
    assert mlp.c_fc.weight.shape == (4 * 24, 24) and mlp.c_proj.weight.shape == (24, 4 * 24)
    x = torch.randn(2, 5, 24)
    h = x @ mlp.c_fc.weight.T + (mlp.c_fc.bias if bias else 0)
    h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    expected = h @ mlp.c_proj.weight.T + (mlp.c_proj.bias if bias else 0)
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=1e-5)
    gelu = F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate="tanh")
    torch.testing.assert_close(mlp(x), F.linear(gelu, mlp.c_proj.weight, mlp.c_proj.bias))


def test_mlp_dropout_only_in_training():
    mlp = MLP(16, dropout=0.5)
    x = torch.randn(4, 8, 16)
    mlp.train()
    y = mlp(x)
    assert (y == 0).float().mean() > 0.3  # about half the outputs dropped
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp.c_proj(mlp.gelu(mlp.c_fc(x))))


def encoder_layer_like(block: Block, n_embd: int, n_head: int, bias: bool):
    """PyTorch's pre-norm nn.TransformerEncoderLayer holding ``block``'s weights."""
    ref = nn.TransformerEncoderLayer(
        n_embd, n_head, dim_feedforward=4 * n_embd, dropout=0.0,
        activation=functools.partial(F.gelu, approximate="tanh"), layer_norm_eps=1e-5,
        batch_first=True, norm_first=True, bias=bias)
    with torch.no_grad():  # nn.Linear and MultiheadAttention both store (out, in)
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        ref.self_attn.out_proj.weight.copy_(block.attn.c_proj.weight)
        ref.linear1.weight.copy_(block.mlp.c_fc.weight)
        ref.linear2.weight.copy_(block.mlp.c_proj.weight)
        ref.norm1.weight.copy_(block.ln_1.weight)
        ref.norm2.weight.copy_(block.ln_2.weight)
        if bias:
            ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
            ref.self_attn.out_proj.bias.copy_(block.attn.c_proj.bias)
            ref.linear1.bias.copy_(block.mlp.c_fc.bias)
            ref.linear2.bias.copy_(block.mlp.c_proj.bias)
            ref.norm1.bias.copy_(block.ln_1.bias)
            ref.norm2.bias.copy_(block.ln_2.bias)
    return ref.eval()


@pytest.mark.parametrize("attn_impl", ["sdpa", "manual"])
@pytest.mark.parametrize("bias", [True, False])
def test_block_equals_torch_transformer_encoder_layer(attn_impl, bias):
    config = GPTConfig(n_embd=32, n_head=4, block_size=16, bias=bias, attn_impl=attn_impl)
    block = randomize_(Block(config), seed=2).eval()
    ref = encoder_layer_like(block, 32, 4, bias)
    x = torch.randn(3, 16, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(16)
    with torch.no_grad():
        expected = ref(x, src_mask=mask, is_causal=True)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_block_equals_composition_of_torch_modules():
    n_embd, n_head, T = 48, 6, 10
    block = randomize_(Block(GPTConfig(n_embd=n_embd, n_head=n_head, block_size=T)), seed=3).eval()
    ln_1, ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
    ln_1.load_state_dict(block.ln_1.state_dict())
    ln_2.load_state_dict(block.ln_2.state_dict())
    mha = nn.MultiheadAttention(n_embd, n_head, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.attn.c_attn.weight)
        mha.in_proj_bias.copy_(block.attn.c_attn.bias)
        mha.out_proj.weight.copy_(block.attn.c_proj.weight)
        mha.out_proj.bias.copy_(block.attn.c_proj.bias)
    fc, proj = block.mlp.c_fc, block.mlp.c_proj
    causal = nn.Transformer.generate_square_subsequent_mask(T)

    x = torch.randn(2, T, n_embd)
    with torch.no_grad():
        h = ln_1(x)
        x1 = x + mha(h, h, h, attn_mask=causal, need_weights=False)[0]
        expected = x1 + F.linear(F.gelu(F.linear(ln_2(x1), fc.weight, fc.bias),
                                        approximate="tanh"), proj.weight, proj.bias)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_block_with_kv_cache_equals_full_sequence():
    block = randomize_(Block(GPTConfig(n_embd=32, n_head=4, block_size=16)), seed=4).eval()
    x = torch.randn(2, 12, 32)
    cache = KVCache(2, 4, 16, 8)
    with torch.no_grad():
        full = block(x)
        parts = [block(x[:, :5], cache), block(x[:, 5:6], cache), block(x[:, 6:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_block_dropout_train_vs_eval():
    torch.manual_seed(0)
    block = Block(GPTConfig(n_embd=32, n_head=4, block_size=16, dropout=0.2))
    no_dropout = Block(GPTConfig(n_embd=32, n_head=4, block_size=16, dropout=0.0))
    no_dropout.load_state_dict(block.state_dict())
    x = torch.randn(2, 16, 32)
    block.train()
    assert not torch.allclose(block(x), block(x))  # a new dropout mask on each call
    block.eval()
    torch.testing.assert_close(block(x), no_dropout.eval()(x))


# --- RMSNorm and SwiGLU (notebook 11) ------------------------------------------------------

@pytest.mark.parametrize("shape", [(7,), (3, 16), (2, 5, 32)])
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-2])
def test_rmsnorm_equals_torch(shape, eps):
    ndim = shape[-1]
    ours = randomize_(RMSNorm(ndim, eps=eps), seed=ndim)
    ref = nn.RMSNorm(ndim, eps=eps)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape) * 3 + 1
    torch.testing.assert_close(ours(x), ref(x))
    assert [n for n, _ in ours.named_parameters()] == ["weight"]  # a gain, no bias
    assert not torch.allclose(ours(x), F.layer_norm(x, (ndim,), ours.weight))  # not LayerNorm


def test_rmsnorm_equals_hugging_face_llama_in_bfloat16():
    """In bfloat16 both compute the statistics in float32 and cast back before the gain."""
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    ours = randomize_(RMSNorm(64, eps=1e-5), seed=5).to(torch.bfloat16)
    ref = llama.LlamaRMSNorm(64, eps=1e-5).to(torch.bfloat16)
    ref.load_state_dict(ours.state_dict())
    x = (torch.randn(2, 9, 64) * 4).to(torch.bfloat16)
    assert torch.equal(ours(x), ref(x))


def test_norm_layer_builds_either_norm():
    assert type(norm_layer("layernorm", 8, bias=False)) is LayerNorm
    assert norm_layer("layernorm", 8, bias=False).bias is None
    assert type(norm_layer("rmsnorm", 8, bias=True)) is RMSNorm
    with pytest.raises(ValueError, match="norm must be 'layernorm' or 'rmsnorm', got 'batch'"):
        norm_layer("batch", 8)


def llama_mlp_like(ours: SwiGLU, n_embd: int, hidden: int):
    """transformers' LlamaMLP holding ``ours``'s weights."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = transformers.LlamaConfig(hidden_size=n_embd, intermediate_size=hidden,
                                      num_attention_heads=4, num_key_value_heads=4)
    ref = LlamaMLP(config)
    with torch.no_grad():
        ref.gate_proj.weight.copy_(ours.c_gate.weight)
        ref.up_proj.weight.copy_(ours.c_fc.weight)
        ref.down_proj.weight.copy_(ours.c_proj.weight)
    return ref.eval()


@pytest.mark.parametrize("n_embd,hidden", [(32, None), (48, 40), (64, 200)])
def test_swiglu_equals_hugging_face_llama_mlp(n_embd, hidden):
    ours = randomize_(SwiGLU(n_embd, hidden=hidden), seed=n_embd).eval()
    width = hidden or swiglu_hidden(n_embd)
    assert ours.c_gate.weight.shape == ours.c_fc.weight.shape == (width, n_embd)
    assert ours.c_proj.weight.shape == (n_embd, width)
    ref = llama_mlp_like(ours, n_embd, width)
    x = torch.randn(2, 7, n_embd)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        # the gate and the "up" projection are not interchangeable
        swapped = F.linear(F.silu(ours.c_fc(x)) * ours.c_gate(x), ours.c_proj.weight)
        assert not torch.allclose(ours(x), swapped, atol=1e-3)


@pytest.mark.parametrize("n_embd,expected", [(4096, 11008), (5120, 13824), (8192, 22016)])
def test_swiglu_width_follows_llama(n_embd, expected):
    """Meta's LLaMA 7B, 13B and 65B: dim 4096, 5120, 8192 have intermediate_size 11008,
    13824, 22016 in their released configs (2/3 of 4 * dim, rounded up to 256)."""
    assert swiglu_hidden(n_embd) == expected


def test_llama_block_wiring_and_options():
    block = Block(GPTConfig(n_embd=32, n_head=4, block_size=16, bias=False, n_kv_head=2,
                            norm="rmsnorm", mlp="swiglu", mlp_hidden=48, norm_eps=1e-6))
    assert isinstance(block.ln_1, RMSNorm) and isinstance(block.ln_2, RMSNorm)
    assert block.ln_1.eps == block.ln_2.eps == 1e-6
    assert isinstance(block.mlp, SwiGLU) and block.mlp.c_fc.out_features == 48
    assert block.attn.c_attn.out_features == (4 + 2 * 2) * 8
    randomize_(block, seed=6).eval()
    x = torch.randn(2, 10, 32)
    with torch.no_grad():  # pre-norm: x + attn(ln_1(x)), then + mlp(ln_2(.))
        h = x + block.attn(block.ln_1(x))
        torch.testing.assert_close(block(x), h + block.mlp(block.ln_2(h)))
    with pytest.raises(ValueError, match="mlp must be 'gelu' or 'swiglu'"):
        Block(GPTConfig(n_embd=32, n_head=4, block_size=16, mlp="geglu"))
    config = GPTConfig(n_embd=32, n_head=4, block_size=16)
    object.__setattr__(config, "mlp", "geglu")  # past GPTConfig's own check: Block checks too
    with pytest.raises(ValueError, match="mlp must be 'gelu' or 'swiglu'"):
        Block(config)
