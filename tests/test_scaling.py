"""FLOP estimates against PyTorch's own FLOP counter, parameter counts against the models
(ours and Hugging Face's), MFU arithmetic, and the GPU peak table against a measured matmul
(on a CUDA machine) and its lookup rules."""

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
# The Llama-style options change the matrices: a smaller c_attn (GQA), a third MLP matrix
# (SwiGLU, of its own width), an untied output layer, no biases, no position table.
LLAMA = GPTConfig.llama(vocab_size=100, block_size=128, n_layer=2, n_head=4, n_embd=64,
                        n_kv_head=2, mlp_hidden=96, tie_weights=False, attn_impl="manual")


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
    """The estimate counts biases and norm gains as if they were matmul weights (2 FLOPs each
    per token forward); the counter sees only matmuls. This is the whole difference."""
    vectors = sum(p.numel() for p in GPT(cfg).parameters() if p.dim() == 1)
    return (6 if training else 2) * vectors


@pytest.mark.parametrize("cfg", [CFG, LLAMA], ids=["gpt2", "llama"])
@pytest.mark.parametrize("training", [True, False])
def test_flops_per_token_matches_pytorch_flop_counter(cfg, training):
    counted = counted_flops_per_token(cfg, training)
    estimate = flops_per_token(cfg, training=training)
    # The estimate exceeds the matmul count by exactly the bias/norm parameters' share
    # (about 1.3% here); allow 2%, which still catches any missing or doubled term.
    assert estimate >= counted
    assert estimate == pytest.approx(counted, rel=0.02)
    assert estimate - bias_and_norm_flops(cfg, training) == pytest.approx(counted, rel=1e-6)


def test_attention_term_scales_with_context_length():
    short = counted_flops_per_token(GPTConfig(**{**CFG.to_dict(), "block_size": 32}), True)
    long = counted_flops_per_token(CFG, True)
    # growing T from 32 to 128 adds 12 * L * C * (128 - 32) FLOPs per token
    assert flops_per_token(CFG) - flops_per_token(CFG, seq_len=32) == pytest.approx(
        long - short, rel=1e-6)


@pytest.mark.parametrize("fields", [
    dict(bias=True), dict(bias=False), dict(mlp="swiglu", bias=True),
    dict(norm="rmsnorm", pos_emb="rope", n_kv_head=1, tie_weights=False),
    dict(mlp="swiglu", mlp_hidden=50, n_kv_head=2, bias=False),
])
def test_count_params_matches_the_model(fields):
    cfg = GPTConfig(vocab_size=123, block_size=40, n_layer=3, n_head=2, n_embd=48, **fields)
    model = GPT(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    assert count_params(cfg, non_embedding=True) == model.num_params(non_embedding=True)


@pytest.mark.parametrize("tie", [True, False])
def test_count_params_matches_hugging_face_models(tie):
    """GPT-2 and Llama configs counted from shapes equal the parameter count of Hugging
    Face's GPT2LMHeadModel and LlamaForCausalLM of the same shape."""
    transformers = pytest.importorskip("transformers")
    gpt2 = transformers.GPT2Config(vocab_size=99, n_positions=24, n_embd=48, n_layer=2, n_head=4)
    ours = GPTConfig(vocab_size=99, block_size=24, n_embd=48, n_layer=2, n_head=4)
    assert count_params(ours) == transformers.GPT2LMHeadModel(gpt2).num_parameters()
    llama = transformers.LlamaConfig(
        vocab_size=99, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=24,
        tie_word_embeddings=tie)
    ours = GPTConfig.llama(vocab_size=99, block_size=24, n_embd=64, mlp_hidden=80, n_layer=2,
                           n_head=4, n_kv_head=2, tie_weights=tie)
    assert count_params(ours) == transformers.LlamaForCausalLM(llama).num_parameters()


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


# One device name per row of the table, as torch.cuda.get_device_name() reports them.
ONE_NAME_PER_ROW = ["NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3",
                    "NVIDIA A100-SXM4-80GB", "NVIDIA L4", "Tesla T4", "Tesla V100-PCIE-16GB",
                    "Tesla V100-SXM2-16GB"]


def test_gpu_peak_flops_lookup_rules():
    # no row shadows another: variants of one GPU (H100 PCIe/NVL/SXM, V100 PCIe/SXM2) are
    # told apart, whatever order the patterns are tried in
    peaks = [gpu_peak_flops(name, "fp16") for name in ONE_NAME_PER_ROW]
    assert None not in peaks and len(set(peaks)) == len(ONE_NAME_PER_ROW)
    # the dtype aliases TrainConfig uses give the same figures
    for name in ONE_NAME_PER_ROW:
        assert gpu_peak_flops(name, "float16") == gpu_peak_flops(name, "half") == \
            gpu_peak_flops(name, "fp16")
        assert gpu_peak_flops(name, "float32") == gpu_peak_flops(name, "fp32")
        assert gpu_peak_flops(name, "bfloat16") == gpu_peak_flops(name, "bf16")
    assert gpu_peak_flops("Some Future GPU") is None
    if not torch.cuda.is_available():
        assert gpu_peak_flops() is None
    with pytest.raises(ValueError, match="dtype"):
        gpu_peak_flops("NVIDIA A100-SXM4-40GB", "int8")


def measured_matmul_flops(dtype: torch.dtype, n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul on the current CUDA device (best of ``repeats``)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bf16"), (torch.float32, "fp32")])
def test_gpu_peak_flops_bounds_a_measured_matmul(dtype, name, monkeypatch):
    """The datasheet peak is an upper bound that a large matmul gets near: measured FLOP/s
    on this GPU lie between 20% and 100% of the table's figure. (fp32 without TF32, which
    the table's fp32 figures assume.)"""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    peak = gpu_peak_flops(dtype=name)
    if peak is None:
        pytest.skip(f"{torch.cuda.get_device_name()} has no {name} row in the table")
    measured = measured_matmul_flops(dtype)
    assert 0.2 * peak < measured <= peak
