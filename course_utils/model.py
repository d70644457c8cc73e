"""The GPT: embeddings, a stack of transformer blocks, a final norm, the LM head (notebook 06),
with the modern Llama-style block as options (notebook 11).

Notable features, so that every departure from the textbook model is stated up front:

- By default this is GPT-2 (Radford et al., 2019, "Language Models are Unsupervised
  Multitask Learners"), the model notebook 06 builds: learned token and position
  embeddings (``wte``, ``wpe``), pre-norm blocks (LayerNorm, multi-head attention, GELU
  MLP), a final LayerNorm, and an output layer that shares its weight with the token
  embedding (Press & Wolf, 2017, "Using the Output Embedding to Improve Language Models").
  Plain ``nn.Embedding`` and ``nn.Linear`` layers throughout. Equal to Hugging Face's
  ``GPT2LMHeadModel`` with the same weights (``tests/test_gpt2.py``).
- Module names follow GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn`` ...), so
  GPT-2 weights load one to one (:mod:`course_utils.gpt2`).
- The Llama block as options of the same model, one :class:`GPTConfig` field each:
  ``norm="rmsnorm"``, ``pos_emb="rope"`` (rotary positions; no ``wpe`` then),
  ``mlp="swiglu"``, ``n_kv_head`` (grouped-query attention), ``tie_weights=False`` (an
  output layer of its own). ``GPTConfig.llama(...)`` switches on the first three and drops
  the biases; the result equals Hugging Face's ``LlamaForCausalLM`` with the same weights
  (``tests/test_llama.py``). Embeddings, blocks, KV cache and generation are shared.
- Two options of the speedrun (notebook 16), from modded-nanogpt's records: ``qk_norm=True``
  (queries and keys RMS-normalised per head before the scores: Dehghani et al., 2023,
  "Scaling Vision Transformers to 22 Billion Parameters"; Wortsman et al., 2023) and
  ``mlp="relu2"`` (the MLP's activation is ReLU squared: So et al., 2021, "Primer").
- ``forward`` takes a KV cache per layer (notebook 08): the new tokens' positions continue
  after the cached ones.
- Token ids are checked only on a CPU: on a GPU, reading them back would make the host
  wait for the device at every forward pass, every decoding step included, so
  :func:`course_utils.sampling.generate` checks them once where they enter.
- GPT-2's initialisation: normal(0, 0.02), and the projections that write into the
  residual stream (``c_proj``) scaled by ``1/sqrt(2 * n_layer)``.
- Not here: the CPU decoding speed-up of notebook 08 is an opt-in exhibit,
  :func:`course_utils.linear.use_parallel_linear`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache
from .block import Block, norm_layer
from .datasets import check_ids
from .positions import rope_tables

# The longest context a model may have, in tokens (Llama 3's 131,072): a sanity bound, so that
# a file claiming a context of 10**8 tokens is refused before a KV cache of that length is made.
MAX_BLOCK_SIZE = 1 << 17


@dataclass
class GPTConfig:
    """Shape of a GPT. ``block_size`` is the longest context (tokens) the model can see.

    The defaults give GPT-2's architecture; :meth:`llama` gives Llama's. Raises
    ``ValueError`` for a setting that cannot work, saying which.
    """

    vocab_size: int = 65  # tokens in the vocabulary
    block_size: int = 256  # the longest context, in tokens
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention (query) heads per block
    n_embd: int = 128  # width of the residual stream (C)
    dropout: float = 0.0  # dropout probability in training; 0 turns it off
    bias: bool = True  # biases in the linear layers and LayerNorms
    attn_impl: str = "sdpa"  # "sdpa" or "manual"; both compute the same thing
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    norm_eps: float = 1e-5  # epsilon added to the variance (mean square) in every norm
    pos_emb: str = "learned"  # "learned" position table wpe (GPT-2) or "rope" (Llama)
    rope_theta: float = 10000.0  # RoPE base: wavelengths from 2*pi up to about 2*pi*theta
    mlp: str = "gelu"  # "gelu" MLP (GPT-2), "swiglu" gated MLP (Llama) or "relu2" (ReLU squared)
    mlp_hidden: int | None = None  # MLP width; None: 4*n_embd (gelu), Llama's rule (swiglu)
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    tie_weights: bool = True  # lm_head shares wte's weight; False: lm_head has its own
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.block_size > MAX_BLOCK_SIZE:
            raise ValueError(f"GPTConfig.block_size must be at most {MAX_BLOCK_SIZE:,} tokens "
                             f"(MAX_BLOCK_SIZE), got {self.block_size:,}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head "
                f"gets n_embd // n_head dimensions; e.g. use n_embd={self.n_head * 32}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        choices = {"attn_impl": ("sdpa", "manual"), "norm": ("layernorm", "rmsnorm"),
                   "pos_emb": ("learned", "rope"), "mlp": ("gelu", "swiglu", "relu2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got "
                                 f"{getattr(self, name)!r}")
        for name in ("norm_eps", "rope_theta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int)
                                            or self.mlp_hidden < 1):
            raise ValueError(f"mlp_hidden must be a positive integer or None, got "
                             f"{self.mlp_hidden!r}")
        if self.n_kv_head is not None and (not isinstance(self.n_kv_head, int)
                                           or self.n_kv_head < 1
                                           or self.n_head % self.n_kv_head != 0):
            raise ValueError(f"n_kv_head ({self.n_kv_head!r}) must be a positive divisor of "
                             f"n_head ({self.n_head}), or None for one K/V head per query head")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos_emb='rope' needs an even head size, got n_embd // n_head = "
                             f"{self.n_embd // self.n_head}; change n_embd or n_head")

    @classmethod
    def llama(cls, **fields) -> GPTConfig:
        """A Llama-style config: RMSNorm, RoPE, SwiGLU and no biases (Touvron et al., 2023,
        "LLaMA: Open and Efficient Foundation Language Models"); ``fields`` sets any other
        field or overrides these, e.g. ``GPTConfig.llama(n_kv_head=2, tie_weights=False)``."""
        return cls(**{"norm": "rmsnorm", "pos_emb": "rope", "mlp": "swiglu", "bias": False,
                      **fields})

    def to_dict(self) -> dict:
        return asdict(self)


class GPT(nn.Module):
    """A decoder-only transformer language model; see the module docstring for its features.

    Modules: ``transformer.wte`` (token embedding), ``transformer.wpe`` (learned positions
    only), ``transformer.drop``, ``transformer.h.{i}`` (:class:`~course_utils.block.Block`:
    ``ln_1``, ``attn.c_attn``, ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj`` and,
    for SwiGLU, ``mlp.c_gate``), ``transformer.ln_f`` and ``lm_head``.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),
            **({"wpe": nn.Embedding(c.block_size, c.n_embd)} if c.pos_emb == "learned" else {}),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList(Block(c) for _ in range(c.n_layer)),
            ln_f=norm_layer(c.norm, c.n_embd, c.bias, c.norm_eps),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: scale the layers that write into the residual stream by 1/sqrt(2 * n_layer),
        # since each block adds two of them and the stream's variance grows with every add.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights counted once). ``non_embedding`` leaves out the
        tables that are only looked up: ``wpe``, and ``wte`` when the output layer has its
        own weight (a tied ``wte`` is also the output layer, a real matrix multiply)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if self.lm_head.weight is not self.transformer.wte.weight:
                n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None):
        """Token ids ``idx`` ``(B, T)`` -> ``(logits, loss)``.

        ``logits`` is ``(B, T, vocab_size)``. ``loss`` is the mean cross-entropy (nats per
        token) against ``targets`` ``(B, T)`` (positions set to -1 are ignored), or ``None``
        without targets. With ``kv_caches`` (one per layer, see :meth:`new_kv_caches`),
        ``idx`` holds only the new tokens and positions continue after the cached ones.

        Raises ``ValueError`` when the sequence (cached tokens included) is longer than
        ``block_size``, and, for ids on the CPU, when an id is outside the vocabulary.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.shape
        c = self.config
        past = kv_caches[0].length if kv_caches else 0
        if past + T > c.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than block_size {c.block_size}; "
                f"crop the context to its last {c.block_size} tokens"
            )
        if idx.device.type == "cpu":  # free on the CPU; on a GPU generate checks once
            check_ids(idx, c.vocab_size)
        pos = torch.arange(past, past + T, device=idx.device)  # absolute positions (T,)
        pad = kv_caches[0].pad if kv_caches else None
        if pad is not None:  # left-padded rows: positions count from each row's first token
            pos = (pos[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if c.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        else:  # rotary: nothing added here; each attention layer rotates q and k
            rope = rope_tables(pos, c.n_embd // c.n_head, c.rope_theta)
            if pos.dim() == 2:  # (B, T, hs) -> (B, 1, T, hs): the same angles for every head
                rope = tuple(t.unsqueeze(1) for t in rope)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            cache = kv_caches[i] if kv_caches else None
            x = block(x, cache) if rope is None else block(x, cache, rope)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def new_kv_caches(self, batch_size: int, device=None, dtype=None,
                      length: int | None = None, pad=None) -> list[KVCache]:
        """Empty KV caches, one per layer, each ``(batch_size, n_kv_head, length, hs)`` for
        keys and the same for values, on the model's device and dtype by default. ``length``
        (the positions a cache holds) defaults to ``block_size``; a generation that knows it
        needs fewer positions allocates less. ``pad`` ``(batch_size,)``: the left padding of
        each row (:class:`~course_utils.attention.KVCache`). Raises ``ValueError`` for a
        ``length`` outside ``[1, block_size]``."""
        c = self.config
        length = c.block_size if length is None else length
        if not 1 <= length <= c.block_size:
            raise ValueError(f"a KV cache holds 1 to block_size ({c.block_size}) positions, "
                             f"got length {length}")
        w = self.transformer.wte.weight
        return [KVCache(batch_size, c.n_kv_head or c.n_head, length, c.n_embd // c.n_head,
                        device=device or w.device, dtype=dtype or w.dtype, pad=pad)
                for _ in range(c.n_layer)]

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on matrices (embeddings and linear weights),
        none on biases and norm gains, as nanoGPT's ``configure_optimizers`` does (GPT-1,
        Radford et al. 2018, section 4.1, exempts "bias or gain weights")."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


def param_table(model: GPT) -> list[tuple[str, int]]:
    """Parameter counts of a :class:`GPT` by component, as ``(component, count)`` rows.

    Rows: token embedding ``wte`` (``vocab_size * n_embd``), position embedding ``wpe``
    (``block_size * n_embd``; no row with RoPE), then summed over all ``n_layer`` blocks:
    attention (``c_attn`` + ``c_proj``), MLP (``c_fc`` + ``c_proj``, and ``c_gate`` for
    SwiGLU) and the two norms (``LayerNorms`` or ``RMSNorms``); the final norm ``ln_f``;
    and the LM head, which counts 0 when tied to ``wte`` (weight tying). Each parameter is
    counted once, so the counts add up to ``sum(p.numel() for p in model.parameters())``.
    Raises ``ValueError`` for a parameter outside these components.
    """
    norm = "RMSNorm" if model.config.norm == "rmsnorm" else "LayerNorm"
    rows = {"token embedding (wte)": 0, "position embedding (wpe)": 0,
            "attention (all blocks)": 0, "MLP (all blocks)": 0,
            f"{norm}s (all blocks)": 0, f"final {norm} (ln_f)": 0, "LM head": 0}
    for name, p in model.named_parameters():  # tied parameters are listed once
        if name.startswith("transformer.wte."):
            row = "token embedding (wte)"
        elif name.startswith("transformer.wpe."):
            row = "position embedding (wpe)"
        elif name.startswith("transformer.h.") and ".attn." in name:
            row = "attention (all blocks)"
        elif name.startswith("transformer.h.") and ".mlp." in name:
            row = "MLP (all blocks)"
        elif name.startswith("transformer.h.") and (".ln_1." in name or ".ln_2." in name):
            row = f"{norm}s (all blocks)"
        elif name.startswith("transformer.ln_f."):
            row = f"final {norm} (ln_f)"
        elif name.startswith("lm_head."):
            row = "LM head"
        else:
            raise ValueError(f"parameter {name!r} belongs to no known GPT component")
        rows[row] += p.numel()
    if "wpe" not in model.transformer:
        del rows["position embedding (wpe)"]
    if model.lm_head.weight is model.transformer.wte.weight:
        rows["LM head (tied to wte)"] = rows.pop("LM head")
    return list(rows.items())
