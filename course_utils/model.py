"""The GPT: embeddings, a stack of transformer blocks, final LayerNorm, tied LM head
(notebook 06).

The architecture is GPT-2's (Radford et al., 2019, "Language Models are Unsupervised
Multitask Learners"): learned token and position embeddings, pre-norm blocks, a final
LayerNorm, and an output layer that shares its weights with the token embedding
(Press & Wolf, 2017, "Using the Output Embedding to Improve Language Models").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache
from .block import Block, LayerNorm
from .linear import ParallelLinear


@dataclass
class GPTConfig:
    """Shape of a GPT. ``block_size`` is the longest context (tokens) the model can see."""

    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    attn_impl: str = "sdpa"  # "sdpa" or "manual"; both compute the same thing

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head "
                f"gets n_embd // n_head dimensions; e.g. use n_embd={self.n_head * 32}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.attn_impl not in ("sdpa", "manual"):
            raise ValueError(f"attn_impl must be 'sdpa' or 'manual', got {self.attn_impl!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class GPT(nn.Module):
    """A decoder-only transformer language model.

    Module names follow GPT-2 (``transformer.wte``, ``transformer.h.0.attn.c_attn`` ...) so
    that Hugging Face GPT-2 weights load one to one (see :mod:`course_utils.gpt2`).
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.transformer = nn.ModuleDict(dict(
            # sparse=True: the lookup's gradient is kept as the B*T rows that were used, not
            # a dense (vocab_size, n_embd) matrix of zeros; the tied lm_head's gradient is
            # dense, so the sum the optimizer sees is an ordinary dense gradient.
            wte=nn.Embedding(c.vocab_size, c.n_embd, sparse=True),
            wpe=nn.Embedding(c.block_size, c.n_embd),
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList(
                Block(c.n_embd, c.n_head, c.block_size, c.dropout, c.bias, c.attn_impl)
                for _ in range(c.n_layer)
            ),
            ln_f=LayerNorm(c.n_embd, bias=c.bias),
        ))
        self.lm_head = ParallelLinear(c.n_embd, c.vocab_size, bias=False)
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
        """Parameter count (tied weights counted once); ``non_embedding`` drops ``wpe``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None):
        """Token ids ``idx`` ``(B, T)`` -> ``(logits, loss)``.

        ``logits`` is ``(B, T, vocab_size)``. ``loss`` is the mean cross-entropy (nats per
        token) against ``targets`` ``(B, T)`` (positions set to -1 are ignored), or ``None``
        without targets. With ``kv_caches`` (one per layer, see :meth:`new_kv_caches`),
        ``idx`` holds only the new tokens and positions continue after the cached ones.

        Raises ``ValueError`` when the sequence is longer than ``block_size`` or an id is
        outside the vocabulary.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        B, T = idx.shape
        past = kv_caches[0].length if kv_caches else 0
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than block_size "
                f"{self.config.block_size}; crop the context to its last "
                f"{self.config.block_size} tokens"
            )
        if T and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}); got "
                f"min {int(idx.min())}, max {int(idx.max())}"
            )
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_caches[i] if kv_caches else None)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def new_kv_caches(self, batch_size: int, device=None, dtype=None) -> list[KVCache]:
        """Empty KV caches, one per layer, each holding up to ``block_size`` positions."""
        c = self.config
        w = self.transformer.wte.weight
        return [KVCache(batch_size, c.n_head, c.block_size, c.n_embd // c.n_head,
                        device=device or w.device, dtype=dtype or w.dtype)
                for _ in range(c.n_layer)]

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on matrices (embeddings and linear weights),
        none on biases and LayerNorm gains, as in GPT-2/nanoGPT."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


def param_table(model: GPT) -> list[tuple[str, int]]:
    """Parameter counts of a :class:`GPT` by component, as ``(component, count)`` rows.

    Rows: token embedding ``wte`` (``vocab_size * n_embd``), position embedding ``wpe``
    (``block_size * n_embd``), then summed over all ``n_layer`` blocks: attention
    (``c_attn`` + ``c_proj``), MLP (``c_fc`` + ``c_proj``) and the two LayerNorms; the final
    LayerNorm ``ln_f``; and the LM head, which counts 0 when tied to ``wte`` (weight tying).
    Each parameter is counted once, so the counts add up to ``sum(p.numel() for p in
    model.parameters())``. Raises ``ValueError`` for a parameter outside these components.
    """
    rows = {"token embedding (wte)": 0, "position embedding (wpe)": 0,
            "attention (all blocks)": 0, "MLP (all blocks)": 0,
            "LayerNorms (all blocks)": 0, "final LayerNorm (ln_f)": 0, "LM head": 0}
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
            row = "LayerNorms (all blocks)"
        elif name.startswith("transformer.ln_f."):
            row = "final LayerNorm (ln_f)"
        elif name.startswith("lm_head."):
            row = "LM head"
        else:
            raise ValueError(f"parameter {name!r} belongs to no known GPT component")
        rows[row] += p.numel()
    if model.lm_head.weight is model.transformer.wte.weight:
        rows["LM head (tied to wte)"] = rows.pop("LM head")
    return list(rows.items())
