"""The checks of notebook 06 (GPT model): ``param_count``, ``convert_hf_state_dict``.

Each check is registered with :func:`~course_utils.check.core._exercise`, which puts in its
place a function that prints one line; the learner calls it as ``check.NAME(NAME)``. Solutions:
``course_utils/solutions/nb06_gpt_model.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from .core import Wrong, _exercise, _number, _tensor


@_exercise("06", (
    "Per block: attention c_attn (C x 3C + 3C) and c_proj (C x C + C); MLP c_fc (C x 4C + 4C) "
    "and c_proj (4C x C + C); two LayerNorms (2C each). Outside: wte, wpe and ln_f.",
    "vocab_size*C + block_size*C + n_layer*(12*C*C + 13*C) + 2*C: the LM head adds nothing, "
    "it is wte (weight tying).",
))
def param_count(fn):
    """``param_count(vocab_size, block_size, n_layer, n_embd) -> int``, tied head, biases on."""
    from ..model import GPTConfig
    from ..scaling import count_params

    for V, T, L, C in ((65, 64, 4, 128), (50257, 1024, 12, 768), (10, 1, 1, 2)):
        call = f"param_count(vocab_size={V}, block_size={T}, n_layer={L}, n_embd={C})"
        got = fn(V, T, L, C)
        # the course's count (equal to sum(p.numel()) of its GPT and of Hugging Face's GPT-2)
        n = count_params(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=1, n_embd=C))
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, (int, np.integer)) or isinstance(got, bool):
            raise Wrong(f"{call} returned a {type(got).__name__}; return an int")
        _number(got, n, call, [
            (n + V * C, f"{call}: the LM head was counted separately; it is wte's matrix "
             f"(weight tying) and adds nothing"),
            (n - 9 * C * L, f"{call}: the biases of the four linear layers per block "
             f"(9 * n_embd) are missing"),
            (n - 4 * C * L - 2 * C, f"{call}: the LayerNorms (weight and bias, n_embd each; "
             f"two per block and ln_f) are missing"),
            (n - 2 * C, f"{call}: the final LayerNorm ln_f (2 * n_embd) is missing"),
            (n - T * C, f"{call}: the position embedding wpe (block_size * n_embd) is "
             f"missing"),
        ], rel=0)


@_exercise("06", (
    "Keep every name; only the four Conv1D weights of each block (attn.c_attn, attn.c_proj, "
    "mlp.c_fc, mlp.c_proj, the .weight only) are stored (in, out) and need a transpose.",
    "conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', "
    "'mlp.c_proj.weight'); return {k: v.t() if k.endswith(conv1d) else v for k, v in "
    "hf_state_dict.items()}",
))
def convert_hf_state_dict(fn):
    """``convert_hf_state_dict(hf_state_dict) -> dict`` that the course's GPT loads."""
    import transformers

    from ..model import GPT, GPTConfig

    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=16, vocab_size=50, bos_token_id=49,
        eos_token_id=49, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_sd = hf.state_dict()
    got = fn({k: v.clone() for k, v in hf_sd.items()})
    call = "convert_hf_state_dict(GPT2LMHeadModel(...).state_dict())"
    if not isinstance(got, dict):
        raise Wrong(f"{call} returned a {type(got).__name__}; return a dict name -> tensor")
    ours = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=32)).eval()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = ours.state_dict()
    for name, target in state.items():
        if name == "lm_head.weight" or name not in hf_sd:
            continue  # the head is tied: it is transformer.wte.weight
        if name not in got:
            raise Wrong(f"{call}: {name!r} is missing; keep Hugging Face's names")
        t, source = got[name], hf_sd[name]
        transposed = name.endswith(conv1d)
        if not isinstance(t, torch.Tensor) or t.shape != target.shape:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            advice = ("transpose the Conv1D weights" if transposed else
                      "only the four Conv1D weights per block are transposed")
            raise Wrong(f"{call}: {name} has shape {shape} but our GPT needs "
                        f"{tuple(target.shape)}; {advice}")
        expected = source.t() if transposed else source
        if transposed and not torch.equal(t, expected) and torch.equal(t, source):
            raise Wrong(f"{call}: {name} is square, so a missing transpose does not change "
                        f"its shape; transpose it too")
        _tensor(t, expected, f"{call}[{name!r}]", "the Hugging Face tensor", atol=0, rtol=0)
        with torch.no_grad():
            target.copy_(t)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        _tensor(ours(idx)[0], hf(idx).logits, "the logits of our GPT with these weights",
                "GPT2LMHeadModel's logits")
