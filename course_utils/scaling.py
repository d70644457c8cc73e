"""How much compute training takes, and how much of the GPU it uses (notebook 10).

- :func:`count_params`: the parameter count of a GPT, from its config (no model built).
- :func:`flops_per_token`: floating-point operations to train on (or run) one token.
- :func:`gpu_peak_flops`: the datasheet peak of common GPUs, dense (no sparsity).
- :func:`mfu`: model FLOPs utilisation, the fraction of that peak a run achieves.

The estimate is the one of the PaLM paper (Chowdhery et al., 2022, "PaLM: Scaling Language
Modeling with Pathways", appendix B), which extends Kaplan et al. (2020, "Scaling Laws for
Neural Language Models", section 2.1): a matrix of ``N`` parameters costs ``2N`` FLOPs per
token forward (a multiply and an add per weight) and ``4N`` backward (gradients with respect
to the input and to the weights), so ``6N`` in all; attention adds ``12 * n_layer * n_embd *
T`` for a context of ``T`` tokens. MFU is defined in the same appendix: it counts the FLOPs
the model needs, not what the hardware happens to execute (recomputation, padding), so it
compares fairly across implementations.
"""

from __future__ import annotations

import re

from .block import swiglu_hidden
from .model import GPTConfig

__all__ = ["count_params", "flops_per_token", "gpu_peak_flops", "mfu"]


def count_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of ``GPT(config)``, counted from the shapes (a tied head counted once).

    With ``C = n_embd``, ``hs = C // n_head``, ``kv = n_kv_head`` (default ``n_head``) and
    ``H`` the MLP width (``mlp_hidden``, by default ``4C`` for GELU and Llama's rule for
    SwiGLU, :func:`course_utils.block.swiglu_hidden`), each block holds: ``c_attn``
    ``C x (n_head + 2 kv) hs`` (``C x 3C`` without GQA) and ``c_proj`` ``C x C``; the MLP's
    ``C x H`` and ``H x C`` (SwiGLU: a third matrix, the gate, ``C x H``); their biases if
    ``bias``; two norms of ``C`` gains (and ``C`` biases for a LayerNorm with bias). Then the
    token embedding ``V x C``, the position embedding ``block_size x C`` (learned positions
    only), the final norm, and an untied output layer ``V x C``. For GPT-2 (the defaults) a
    block is ``12 C^2 + 13 C``.

    ``non_embedding=True`` leaves out the tables that are only looked up, as
    :meth:`course_utils.model.GPT.num_params` does: the position embedding, and the token
    embedding when the output layer has its own weight (a tied one is also the output
    layer, a real matrix multiply).
    """
    c = config
    C, L, V = c.n_embd, c.n_layer, c.vocab_size
    hs, kv = C // c.n_head, c.n_kv_head or c.n_head
    gated = c.mlp == "swiglu"
    H = c.mlp_hidden or (swiglu_hidden(C) if gated else 4 * C)
    attn = C * (c.n_head + 2 * kv) * hs + C * C
    mlp = (3 if gated else 2) * C * H
    if c.bias:
        attn += (c.n_head + 2 * kv) * hs + C
        mlp += (2 if gated else 1) * H + C
    norm = 2 * C if c.norm == "layernorm" and c.bias else C
    n = L * (attn + mlp + 2 * norm) + norm + V * C  # blocks, ln_f, the output layer
    if not c.tie_weights and not non_embedding:
        n += V * C  # the token embedding, a table apart from the output layer
    if c.pos_emb == "learned" and not non_embedding:
        n += c.block_size * C
    return n


def flops_per_token(config: GPTConfig, seq_len: int | None = None,
                    training: bool = True) -> float:
    """FLOPs to process one token, PaLM's estimate (appendix B): ``6N + 12 * L * C * T``.

    ``N`` is :func:`count_params` without the tables that are only looked up (position
    embedding, untied token embedding: no arithmetic); ``L = n_layer``, ``C = n_embd``,
    ``T = seq_len`` (default ``block_size``), the number of keys each query is scored
    against. Per layer and token, the attention scores ``q k^T`` and the weighted sum of
    values each take ``2 * T * C`` FLOPs forward, hence ``4 L C T`` forward and three times
    that with the backward pass. The causal mask makes half of those scores unnecessary on
    average; like PaLM (and nanoGPT) we count them all, which is what dense attention
    kernels compute. Grouped-query attention changes ``N`` (a smaller ``c_attn``) but not
    this term: every query head still scores ``T`` keys. Elementwise work (norms, GELU or
    SiLU, RoPE, softmax, the optimizer) is left out, and biases and norm gains are counted
    as if they were weights: both are below 1% for real model sizes.

    ``training=False`` gives the forward pass alone: ``2N + 4 * L * C * T``.

    Raises ``ValueError`` for ``seq_len < 1``.
    """
    T = config.block_size if seq_len is None else seq_len
    if T < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {T}")
    N = count_params(config, non_embedding=True)
    forward = 2 * N + 4 * config.n_layer * config.n_embd * T
    return float(3 * forward if training else forward)


def mfu(tokens_per_s: float, config: GPTConfig, peak_flops: float,
        seq_len: int | None = None) -> float:
    """Model FLOPs utilisation: ``tokens_per_s * flops_per_token(config) / peak_flops``.

    ``tokens_per_s`` counts training tokens per second (forward and backward); ``peak_flops``
    is the hardware's peak in FLOP/s for the precision used (see :func:`gpu_peak_flops`).
    Returns a fraction (0.4 means 40%).

    Raises ``ValueError`` when ``peak_flops`` is missing or not positive (no known peak, e.g.
    a CPU: pass one by hand) or ``tokens_per_s`` is negative.
    """
    if peak_flops is None or not peak_flops > 0:
        raise ValueError(
            f"peak_flops must be a positive number of FLOP/s, got {peak_flops!r}; "
            f"gpu_peak_flops() knows common GPUs, otherwise look it up in the datasheet"
        )
    if tokens_per_s < 0:
        raise ValueError(f"tokens_per_s must be >= 0, got {tokens_per_s}")
    return tokens_per_s * flops_per_token(config, seq_len) / peak_flops


# Dense datasheet peaks in FLOP/s (tensor cores for bf16/fp16, without the 2x "sparsity"
# figures; plain fp32 without TF32). Patterns are tried in order against the name that
# torch.cuda.get_device_name() reports; the first that matches wins.
_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*(PCIe)", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    (r"H100.*NVL", {"bf16": 835e12, "fp16": 835e12, "fp32": 60e12}),
    (r"H100|H200|GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),  # SXM
    (r"A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    (r"\bT4\b", {"fp16": 65e12, "fp32": 8.1e12}),  # Turing: no bfloat16 tensor cores
    (r"V100.*PCIE", {"fp16": 112e12, "fp32": 14e12}),
    (r"V100", {"fp16": 125e12, "fp32": 15.7e12}),  # SXM2; Volta: no bfloat16
]

_DTYPE_ALIASES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
                  "half": "fp16", "fp32": "fp32", "float32": "fp32", "float": "fp32"}


def gpu_peak_flops(device_name: str | None = None, dtype: str = "bf16") -> float | None:
    """The datasheet peak FLOP/s of a GPU for ``dtype`` (dense), or ``None`` if not known.

    ``device_name`` is a name as ``torch.cuda.get_device_name()`` reports it (e.g.
    ``"NVIDIA A100-SXM4-40GB"``, ``"Tesla T4"``); by default the current CUDA device, or
    ``None`` (no peak) when there is no CUDA GPU. ``dtype`` is ``"bf16"``, ``"fp16"`` or
    ``"fp32"`` (``"bfloat16"``, ``"float16"``, ``"float32"`` also accepted). ``None`` is
    returned for a CPU, an unknown GPU, or a precision the GPU has no fast path for (bf16 on
    a T4 or V100). The table covers A100, H100 (SXM, PCIe, NVL), H200, L4, T4 and V100.

    Raises ``ValueError`` for an unknown ``dtype``.
    """
    if dtype not in _DTYPE_ALIASES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPE_ALIASES)}, got {dtype!r}")
    if device_name is None:
        import torch

        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for pattern, peaks in _PEAKS:
        if re.search(pattern, device_name, re.I):
            return peaks.get(_DTYPE_ALIASES[dtype])
    return None
