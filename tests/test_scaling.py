"""FLOP estimates against PyTorch's own FLOP counter, MFU arithmetic, the GPU peak table."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from course_utils.model import GPT, GPTConfig
from course_utils.scaling import count_params, flops_per_token, gpu_peak_flops, mfu

# Small, but with a long context so attention is a large share of the FLOPs (about a quarter):
# an estimate that left attention out, or counted it like Kaplan et al.'s 6*L*C*T (half of
# PaLM's), would miss by far more than the tolerance below.
CFG = GPTConfig(vocab_size=100, block_size=128, n_layer=2, n_head=4, n_embd=64,
                attn_impl="manual")  # manual attention: plain matmuls the counter sees


def counted_flops_per_token(cfg, training):
    """Matmul FLOPs per token that torch's FlopCounterMode records for a real GPT."""
    torch.manual_seed(0)
    model = GPT(cfg)
    B, T = 2, cfg.block_size
    idx = torch.randint(cfg.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        if training:
            _, loss = model(idx, idx)
            loss.backward()
        else:
            with torch.no_grad():
                model(idx)
    return counter.get_total_flops() / (B * T)


def bias_and_norm_flops(cfg, training):
    """The estimate counts biases and LayerNorm gains as if they were matmul weights (2 FLOPs
    each per token forward); the counter sees only matmuls. This is the whole difference."""
    extra = cfg.n_layer * 13 * cfg.n_embd + 2 * cfg.n_embd
    return (6 if training else 2) * extra


@pytest.mark.parametrize("training", [True, False])
def test_flops_per_token_matches_pytorch_flop_counter(training):
    counted = counted_flops_per_token(CFG, training)
    estimate = flops_per_token(CFG, training=training)
    # The estimate exceeds the matmul count by exactly the bias/LayerNorm parameters' share
    # (about 1.3% here); allow 2%, which still catches any missing or doubled term.
    assert estimate >= counted
    assert estimate == pytest.approx(counted, rel=0.02)
    assert estimate - bias_and_norm_flops(CFG, training) == pytest.approx(counted, rel=1e-6)


def test_attention_term_scales_with_context_length():
    short = counted_flops_per_token(GPTConfig(**{**CFG.to_dict(), "block_size": 32}), True)
    long = counted_flops_per_token(CFG, True)
    # growing T from 32 to 128 adds 12 * L * C * (128 - 32) FLOPs per token
    assert flops_per_token(CFG) - flops_per_token(CFG, seq_len=32) == pytest.approx(
        long - short, rel=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_count_params_matches_the_model(bias):
    cfg = GPTConfig(vocab_size=123, block_size=40, n_layer=3, n_head=2, n_embd=48, bias=bias)
    model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg, non_embedding=True) == model.num_params(non_embedding=True)


def test_mfu_arithmetic():
    counted = counted_flops_per_token(CFG, True)
    peak = 1e12
    tokens_per_s = 2000.0
    assert mfu(tokens_per_s, CFG, peak) == pytest.approx(tokens_per_s * counted / peak,
                                                         rel=0.02)
    assert mfu(2 * tokens_per_s, CFG, peak) == pytest.approx(2 * mfu(tokens_per_s, CFG, peak))
    assert mfu(tokens_per_s, CFG, 2 * peak) == pytest.approx(mfu(tokens_per_s, CFG, peak) / 2)
    assert mfu(0.0, CFG, peak) == 0.0
    for bad in (None, 0, -1.0):
        with pytest.raises(ValueError, match="peak_flops"):
            mfu(tokens_per_s, CFG, bad)
    with pytest.raises(ValueError, match="tokens_per_s"):
        mfu(-1.0, CFG, peak)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(CFG, seq_len=0)


def test_gpu_peak_flops_table():
    # NVIDIA datasheets, dense tensor-core figures
    assert gpu_peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == 312e12
    assert gpu_peak_flops("Tesla T4", "fp16") == 65e12
    sxm = gpu_peak_flops("NVIDIA H100 80GB HBM3")
    pcie = gpu_peak_flops("NVIDIA H100 PCIe")
    assert sxm > pcie  # the two H100s are told apart
    # aliases as TrainConfig spells dtypes
    assert gpu_peak_flops("NVIDIA L4", "bfloat16") == gpu_peak_flops("NVIDIA L4", "bf16")
    # no bfloat16 tensor cores on Turing/Volta; unknown devices; CPUs
    assert gpu_peak_flops("Tesla T4", "bf16") is None
    assert gpu_peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    assert gpu_peak_flops("Some Future GPU") is None
    if not torch.cuda.is_available():
        assert gpu_peak_flops() is None
    with pytest.raises(ValueError, match="dtype"):
        gpu_peak_flops("NVIDIA A100-SXM4-40GB", "int8")
