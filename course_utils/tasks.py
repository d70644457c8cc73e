"""What the training loop trains on: the :class:`Task` interface, and plain language modelling,
the task of pretraining (notebook 07).

The loop (:func:`course_utils.train.train`) knows no dataset: it asks a task for batches and
for the loss of a batch, and does the rest (optimizer, schedule, clipping, evaluation,
checkpoints, resume) the same way for every task. Each kind of training data is one class:

- :class:`LMTask` (here): random windows of a token sequence, next-token cross-entropy;
- :class:`course_utils.sft.ChatTask`: padded ChatML conversations, the loss on the
  assistant's replies only (notebook 13);
- :class:`course_utils.preference.DPOTask`: preference pairs and the DPO loss (notebook 14),
  and :class:`course_utils.instructions.InstructionDPOTask`, the same on pairs of replies to
  instructions a program checks;
- :class:`course_utils.rl.GRPOTask`: completions sampled from the model being trained, scored
  by a verifier, and GRPO's loss (notebook 15).

Adding a task is writing one such class; the loop does not change.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn as nn

from .datasets import get_batch, load_corpus

SPLITS = ("train", "val")


class Task:
    """The interface between the training loop and its data.

    A task has a ``tokenizer`` (the model's ``vocab_size`` is its size) and answers three calls:

    - ``batch(split, generator, model)``: the next batch of ``split`` (``"train"`` or
      ``"val"``), drawn at random with ``generator`` (a ``torch.Generator``: seeded, its state
      saved in checkpoints, so a resumed run draws the same batches), on ``model``'s device.
      Most tasks ignore ``model``; GRPO samples its batch from it.
    - ``loss(model, batch)``: ``(loss, metrics)``: the scalar the loop minimises and a dict of
      detached scalar tensors to log (e.g. GRPO's mean reward); the loop reads them back from
      the device only when it logs.
    - ``tokens(batch)``: how many tokens the batch holds (for tokens/s).

    ``chat`` is True for tasks whose data are ChatML conversations (the command line then
    samples a chat reply at the end of a run). A task class also has ``build(cfg, tokenizer,
    device)``: the task a run's settings (a :class:`course_utils.config.TrainConfig`)
    describe, where ``tokenizer`` is the tokenizer of the model the run starts from (a
    fine-tuned or resumed model), or ``None`` for a model trained from scratch.

    A task may also answer ``fingerprint()``: the sha256 of what it trains on beyond the run's
    settings (its data, and settings it keeps itself, such as GRPO's ``beta``), or ``None``
    (the default) when the settings say it all. A run trained on a task given to
    :func:`~course_utils.train.train` keeps it, so that a finished run is reused and a run is
    resumed only on the same task.
    """

    tokenizer = None
    chat = False

    def fingerprint(self) -> str | None:
        return None

    @classmethod
    def build(cls, cfg, tokenizer=None, device: str = "cpu") -> Task:
        raise NotImplementedError

    def batch(self, split: str, generator: torch.Generator, model: nn.Module):
        raise NotImplementedError

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def tokens(self, batch) -> int:
        return batch[0].numel()


def data_sha256(*parts) -> str:
    """The sha256 hex digest of ``parts``: tensors and arrays by dtype, shape and bytes,
    modules by their ``state_dict``, lists, tuples and dicts item by item, functions by
    module and qualified name, anything else by ``repr`` (which must not hold a memory
    address: give an object's data instead). Equal data give equal digests in every
    process."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, nn.Module):
            x = x.state_dict()
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous()
            h.update(f"tensor {x.dtype} {tuple(x.shape)};".encode())
            h.update(x.flatten().view(torch.uint8).numpy().data)
        elif isinstance(x, np.ndarray):
            h.update(f"array {x.dtype} {x.shape};".encode())
            h.update(np.ascontiguousarray(x).data)  # no copy of a memmap's file
        elif isinstance(x, (list, tuple, dict)):
            items = list(x.items()) if isinstance(x, dict) else x
            h.update(f"{type(x).__name__} {len(items)};".encode())
            for item in items:
                feed(item)
        elif callable(x) and hasattr(x, "__qualname__"):
            h.update(f"function {x.__module__}.{x.__qualname__};".encode())
        else:
            h.update(f"{repr(x)};".encode())

    feed(parts)
    return h.hexdigest()


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where its batches go)."""
    return next(model.parameters()).device


class LMTask(Task):
    """Language modelling (pretraining): random windows of ``block_size`` tokens of a token
    sequence, and the model's next-token cross-entropy (nats/token).

    ``train`` and ``val`` are 1-D token sequences (tensors, or NumPy memmaps of token files);
    a batch is ``(x, y)``, each ``(batch_size, block_size)``
    (:func:`course_utils.datasets.get_batch`). Raises ``ValueError`` when a split is too short
    for one window.
    """

    def __init__(self, tokenizer, train, val, block_size: int, batch_size: int):
        for name, data in (("train", train), ("val", val)):
            if len(data) <= block_size:
                raise ValueError(f"the {name} split has {len(data)} tokens, too few for one "
                                 f"window of block_size {block_size} plus its target; use a "
                                 f"smaller --block-size or more data")
        self.tokenizer, self.block_size, self.batch_size = tokenizer, block_size, batch_size
        self.data = {"train": train, "val": val}

    @classmethod
    def build(cls, cfg, tokenizer=None, device: str = "cpu") -> LMTask:
        """The corpus or token folder ``cfg.dataset`` (:func:`course_utils.datasets.
        load_corpus`). A model fine-tuned on it (``tokenizer`` given) must share its
        tokenizer. Raises ``ValueError`` when it does not, and the errors of
        ``load_corpus``."""
        try:
            tok, train, val = load_corpus(cfg.dataset, cfg.bpe_vocab_size)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}; a dataset of another kind of training (chat, "
                                    f"preference pairs) is trained on through its task, e.g. "
                                    f"train(cfg, task=ChatTask); the command line picks it by "
                                    f"the dataset's name") from None
        if tokenizer is not None and tokenizer.to_dict() != tok.to_dict():
            raise ValueError(f"the tokenizer of dataset {cfg.dataset} differs from the one the "
                             f"model was trained with; train on data encoded the same way")
        return cls(tok, train, val, cfg.model.block_size, cfg.batch_size)

    def fingerprint(self):
        return data_sha256(self.data, self.block_size, self.batch_size)

    def batch(self, split, generator, model):
        return get_batch(self.data[split], self.block_size, self.batch_size, generator,
                         device_of(model))

    def loss(self, model, batch):
        x, y = batch
        return model(x, y)[1], {}
