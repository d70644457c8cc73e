"""The bigram language model: the first baseline (notebook 03).

Each token predicts the next from a table of logits: the classic n-gram baseline (Shannon,
1948), trained here by gradient descent as in nanoGPT's ``bigram.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets import check_ids, get_batch
from .utils import eval_mode, progress_bar


class BigramLanguageModel(nn.Module):
    """The bigram language model: the next token's logits depend only on the current token.

    The whole model is one ``(vocab_size, vocab_size)`` table, stored as an ``nn.Embedding``:
    row ``i`` holds the logits of the token that follows token ``i``. It is the baseline
    every model with more context has to beat.

    Initialised like the GPT's embeddings (normal, std 0.02), so the initial logits are
    nearly equal and the loss at initialisation is close to ``ln(vocab_size)`` (4.17 nats for
    the 65 characters of Tiny Shakespeare).

    The baseline of the course (notebook 03, compared against in notebook 07) is
    ``train_bigram(train_ids, val_ids)`` with its defaults: character-level Tiny
    Shakespeare, 90/10 split by position, 3000 AdamW steps at learning rate 1e-2, batches
    of 32 windows of 8 tokens, seed 1337; the validation loss is the exact mean
    cross-entropy over every pair of consecutive validation tokens (:func:`bigram_loss`).
    """

    def __init__(self, vocab_size: int):
        super().__init__()
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size}")
        self.vocab_size = vocab_size
        self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)
        nn.init.normal_(self.token_embedding_table.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Token ids ``idx`` ``(B, T)`` -> ``(logits, loss)``, like :class:`course_utils.model.GPT`.

        ``logits`` is ``(B, T, vocab_size)``; ``loss`` is the mean cross-entropy (nats per
        token) against ``targets`` ``(B, T)``, or ``None`` without targets.

        Raises ``ValueError`` for an id outside ``[0, vocab_size)`` on the CPU, where the
        check is free; on a GPU it would make the host wait at every step, so ids are
        checked where they enter instead (:meth:`generate`, :func:`train_bigram`,
        :func:`bigram_loss`), as the GPT does.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.device.type == "cpu":
            check_ids(idx, self.vocab_size)
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, self.vocab_size), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend ``idx`` ``(B, T)`` by ``max_new_tokens`` sampled tokens ->
        ``(B, T + max_new_tokens)``. Only the last token matters to a bigram. Each token is
        drawn from ``softmax(logits / temperature)`` with ``generator``; temperature 0 takes
        the most likely one (greedy). (Top-k and top-p come in notebook 08.)

        Raises ``ValueError`` for an empty prompt, an id outside the vocabulary or a negative
        temperature."""
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError("generate needs a (B, T) prompt of at least one token")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        check_ids(idx, self.vocab_size)
        for _ in range(max_new_tokens):
            logits = self(idx[:, -1:])[0][:, -1, :]  # (B, vocab_size)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
        return idx


@torch.no_grad()
def bigram_loss(model: nn.Module, ids: torch.Tensor, chunk_size: int = 65536) -> float:
    """Mean cross-entropy (nats per token) of ``model`` over every consecutive pair
    ``(ids[t], ids[t + 1])`` of the 1-D tensor ``ids``.

    Exact (no sampled batches) and deterministic, but only meaningful for a model whose
    prediction depends on the current token alone, such as :class:`BigramLanguageModel`:
    ``ids`` is fed as long sequences of ``chunk_size`` tokens (to bound memory), and no
    prediction looks further back than one token.

    Raises ``ValueError`` when ``ids`` is not 1-D or has fewer than two tokens.
    """
    if ids.dim() != 1 or len(ids) < 2:
        raise ValueError(f"ids must be a 1-D tensor of at least 2 tokens, got {tuple(ids.shape)}")
    device = next(model.parameters()).device
    total = 0.0
    with eval_mode(model):
        for start in range(0, len(ids) - 1, chunk_size):
            chunk = ids[start:start + chunk_size + 1].long().to(device)  # overlaps by one token
            logits, _ = model(chunk[None, :-1])
            total += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
    return total / (len(ids) - 1)


def train_bigram(train_ids: torch.Tensor, val_ids: torch.Tensor, steps: int = 3000,
                 batch_size: int = 32, block_size: int = 8, learning_rate: float = 1e-2,
                 seed: int = 1337, vocab_size: int | None = None,
                 model: nn.Module | None = None, device: str = "cpu",
                 progress: bool = True) -> float:
    """Train a bigram model with AdamW; return its validation loss (nats per token).

    The recipe of the course's bigram baseline: ``torch.manual_seed(seed)`` then a fresh
    :class:`BigramLanguageModel` of ``vocab_size`` tokens (default: the largest id in the
    data plus one), unless ``model`` is given: it is then trained in place, so the caller
    keeps it. Then a batch generator seeded with ``seed`` for
    :func:`course_utils.datasets.get_batch`, ``steps`` AdamW steps (PyTorch defaults
    besides ``learning_rate``) on ``(batch_size, block_size)`` batches of ``train_ids``,
    then :func:`bigram_loss` on ``val_ids``. The same arguments give the same loss on the
    same machine.

    ``train_ids`` and ``val_ids`` are 1-D int64 tensors of token ids. Raises ``ValueError``
    for ``steps < 1``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    if model is None:
        if vocab_size is None:
            vocab_size = int(max(train_ids.max(), val_ids.max())) + 1
        model = BigramLanguageModel(vocab_size)
    if hasattr(model, "vocab_size"):
        check_ids(torch.as_tensor(train_ids)[None], model.vocab_size)
        check_ids(torch.as_tensor(val_ids)[None], model.vocab_size)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    batch_gen = torch.Generator().manual_seed(seed)
    for _ in progress_bar(range(steps), disable=not progress, desc="bigram", unit="step"):
        x, y = get_batch(train_ids, block_size, batch_size, batch_gen, device)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return bigram_loss(model, val_ids)

