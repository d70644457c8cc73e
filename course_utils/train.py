"""The training loop (notebook 07): AdamW, warmup + cosine schedule, gradient clipping,
evaluation, checkpoints that load safely and resume exactly, and a loss-curve plot.

Notable features:

- One source of settings: :class:`TrainConfig` holds the training settings and, in its field
  ``model``, the model's :class:`~course_utils.model.GPTConfig`. Presets and the command line
  use flat names (``n_layer=2, batch_size=4``); :meth:`TrainConfig.from_settings` sorts them.
  ``vocab_size`` is not a setting: it comes from the tokenizer.
- A checkpoint (``ckpt.pt``) holds only tensors and plain Python values, and
  :func:`load_checkpoint`, the one function that reads it, loads with
  ``torch.load(weights_only=True)``: a file that holds anything else (a pickle can carry
  code) is refused. Checkpoints are written with :func:`course_utils.utils.atomic_write`, so
  an interrupted save never leaves half a file; leftovers of a killed process are deleted
  when the next run starts in that folder.
- A run folder is never overwritten silently: training into a folder that holds a checkpoint
  needs ``resume=True`` or ``overwrite=True``, and a lock file (``train.lock``, the
  ``filelock`` package) keeps a second process out while one trains there.
- Resume is the same run: the checkpoint's settings are used; only the settings in
  :data:`RESUMABLE` may differ. Losses after a resume equal those of an uninterrupted run,
  bit for bit (on the same device): the checkpoint holds the optimizer's moments and the
  random generators' states.
- A loss that becomes NaN or infinite stops the run at that step, before anything is saved.
- Fine-tuning (notebook 12): ``init_from`` starts a run from a pretrained checkpoint's weights
  and model shape. On a chat dataset (:data:`course_utils.sft.CHAT_DATASETS`) the tokenizer
  gains the ChatML tokens, the token embedding a row for each (:func:`load_init_weights`),
  and the batches are padded conversations whose loss counts the assistant's replies only.
  It is the same loop: only the data and the first weights differ.
- Preference tuning (notebook 13): on a preference dataset
  (:data:`course_utils.preference.PREFERENCE_DATASETS`) the run is DPO (Rafailov et al.,
  2023). The ``init_from`` chat model is the reference: at the start of the run (a resumed
  run too) replies are sampled from it for prompts of the Shakespeare conversations, scored
  by :class:`~course_utils.preference.ReplyReward`, and paired (``pref_prompts``,
  ``pref_samples``, ``pref_margin``; seeded by ``seed``, so the same settings give the same
  pairs; :func:`preference_corpus`); the reference's log-probabilities of the pairs are
  computed once, so the loop holds a single model. A batch is then ``(idx, mask,
  ref_logps)`` instead of ``(x, y)`` and its loss is the DPO loss with ``beta``
  (:func:`batch_loss`); the reported train/val losses are DPO losses (log 2 = 0.693 at the
  start). Everything else (schedule, clipping, checkpoints, resume, NaN stop) is unchanged.

AdamW: Loshchilov & Hutter (2019), "Decoupled Weight Decay Regularization". Warmup + cosine
decay: Loshchilov & Hutter (2017), "SGDR"; the recipe (linear warmup, cosine decay to 10% of
the peak, weight decay 0.1, gradient clipping at 1.0) is GPT-3's (Brown et al. 2020,
appendix B), as nanoGPT uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import pickle
import time
import typing
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout

from .bpe import train_bpe
from .chat import IM_END, IM_START
from .corpora import REGISTRY, load_text
from .datasets import get_batch, read_token_file, train_val_split
from .model import GPT, GPTConfig
from .preference import PREFERENCE_DATASETS, PreferenceData, dpo_batch_loss, preference_pairs
from .presets import PRESETS
from .sft import CHAT_DATASETS, ChatData, chat_tokenizer, load_chat_data
from .tokenization import CharTokenizer, tokenizer_from_dict
from .utils import atomic_write, get_device, progress_bar, remove_stale_temp_files, set_seed

CHECKPOINT_NAME = "ckpt.pt"
PLOT_NAME = "loss.png"
LOCK_NAME = "train.lock"
# What a checkpoint holds (see train()); load_checkpoint refuses a file that lacks one.
CHECKPOINT_KEYS = ("config", "model", "optimizer", "scaler", "tokenizer", "step",
                   "best_val_loss", "history", "rng")
# The settings a resumed run may change: where the run lives and runs (a run moves to another
# folder or machine), how long it goes (a larger max_iters extends a run; the cosine decay is
# then stretched from the resume point on) and the sample printed at the end. Every other
# setting comes from the checkpoint.
RESUMABLE = ("out_dir", "max_iters", "max_seconds", "device", "dtype", "compile",
             "sample_tokens")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint: damaged, foreign, or unsafe."""


class TrainingError(RuntimeError):
    """A run that cannot go on as asked: its folder is busy, holds another run or cannot be
    written, or its loss became NaN/inf."""


class RunFinished(TrainingError):
    """Resume was asked of a run that already reached its ``max_iters``."""


# The model settings a run started from a checkpoint (init_from) takes from that checkpoint.
_SHAPE = frozenset(f.name for f in dataclasses.fields(GPTConfig)) - {"vocab_size", "dropout"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class TrainConfig:
    """Every setting of a training run. Presets (:mod:`course_utils.presets`) fill it in.

    The model's settings live in ``model`` (a :class:`GPTConfig`); its ``vocab_size`` is
    replaced by the tokenizer's when training starts. Raises ``TypeError`` for a setting of
    the wrong type and ``ValueError`` naming every setting out of range.
    """

    dataset: str = "tinyshakespeare"  # a registry corpus, a chat/preference dataset, a token folder
    bpe_vocab_size: int = 0  # registry corpora: 0 one token per character; N a BPE of N tokens
    init_from: str = ""  # run folder or ckpt.pt to fine-tune (its weights and model shape)
    loss_mask: bool = True  # chat datasets: loss on the replies only; False: on every token
    beta: float = 0.1  # preference datasets (DPO): how far from the reference; smaller: farther
    pref_prompts: int = 256  # preference datasets: training prompts to sample replies for
    pref_samples: int = 8  # preference datasets: replies sampled per prompt (>= 2)
    pref_margin: float = 0.1  # preference datasets: least reward gap of a pair kept (0..1]
    out_dir: str = "runs/default"  # the run folder: ckpt.pt, loss.png, train.lock
    model: GPTConfig = field(default_factory=GPTConfig)  # the model's shape
    batch_size: int = 32  # sequences per micro-batch (B)
    grad_accum_steps: int = 1  # micro-batches whose gradients add up to one step
    max_iters: int = 2000  # optimizer steps of the whole run
    max_seconds: float = 0.0  # training-time budget in s (evaluations not counted); 0: none
    learning_rate: float = 1e-3  # peak learning rate, reached at the end of the warmup
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_iters: int = 100  # steps of linear warmup; 0: none
    weight_decay: float = 0.1  # AdamW's decoupled weight decay of the weight matrices
    beta1: float = 0.9  # AdamW: decay rate of the running mean of the gradients
    beta2: float = 0.99  # AdamW: decay rate of the running mean of the squared gradients
    grad_clip: float = 1.0  # largest global gradient norm; 0 switches clipping off
    eval_interval: int = 250  # steps between evaluations (each one saves a checkpoint)
    eval_iters: int = 20  # batches per split in each evaluation
    sample_tokens: int = 300  # length of the sample the command line prints at the end
    seed: int = 1337  # seeds the initial weights, the batches and dropout
    device: str = "auto"  # cpu, cuda, cuda:N, mps; auto picks cuda, then mps, then cpu
    dtype: str = "auto"  # auto: bfloat16 autocast on GPUs that have it, else float32
    compile: bool = False  # torch.compile the model (a minute or so of compiling first)

    def __post_init__(self):
        for name, kind in typing.get_type_hints(TrainConfig).items():
            value = getattr(self, name)
            allowed = (int, float) if kind is float else kind  # 3 is a fine learning rate
            if not isinstance(value, allowed) or (isinstance(value, bool) and kind is not bool):
                raise TypeError(f"TrainConfig.{name} must be of type {kind.__name__}, got "
                                f"{value!r}")
        lr, inf = self.learning_rate, math.inf
        rules = [  # (setting, valid?, what it must be); a NaN fails every comparison
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("grad_accum_steps", self.grad_accum_steps >= 1, ">= 1"),
            ("max_iters", self.max_iters >= 1, ">= 1"),
            ("max_seconds", 0 <= self.max_seconds < math.inf, "finite and >= 0 (0: no limit)"),
            ("eval_interval", self.eval_interval >= 1, ">= 1"),
            ("eval_iters", self.eval_iters >= 1, ">= 1"),
            ("warmup_iters", self.warmup_iters >= 0, ">= 0"),
            ("sample_tokens", self.sample_tokens >= 0, ">= 0"),
            ("bpe_vocab_size", self.bpe_vocab_size == 0 or self.bpe_vocab_size >= 256,
             "0 (characters) or >= 256 (the 256 bytes, then merges)"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            ("learning_rate", 0 < lr < inf, "finite and > 0"),
            ("beta", 0 < self.beta < inf, "finite and > 0 (DPO's beta, typically 0.1 to 0.5)"),
            ("pref_prompts", self.pref_prompts >= 1, ">= 1"),
            ("pref_samples", self.pref_samples >= 2, ">= 2 (a pair needs two replies)"),
            ("pref_margin", 0 < self.pref_margin <= 1, "in (0, 1] (rewards lie in [0, 1])"),
            ("min_lr", 0 <= self.min_lr <= lr, "in [0, learning_rate]"),
            ("weight_decay", 0 <= self.weight_decay < inf, "finite and >= 0"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("grad_clip", 0 <= self.grad_clip < inf, "finite and >= 0 (0: no clipping)"),
            ("dtype", self.dtype in DTYPES, "one of " + ", ".join(DTYPES)),
            ("device", _is_device_name(self.device), "auto, cpu, cuda, cuda:N or mps"),
        ]
        rules += [(name, math.isfinite(value), "finite")  # the model's float settings
                  for name, value in dataclasses.asdict(self.model).items()
                  if isinstance(value, float)]
        values = self.settings()
        bad = [f"{name}={values[name]!r} (must be {rule})" for name, ok, rule in rules if not ok]
        if bad:
            raise ValueError("invalid setting(s): " + ", ".join(bad))

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The model's :class:`GPTConfig` with the tokenizer's ``vocab_size``."""
        return dataclasses.replace(self.model, vocab_size=vocab_size)

    def settings(self) -> dict:
        """Every setting under its flat name (the command line's flags): the training
        settings, then the model's, without ``vocab_size``."""
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "model"}
        flat.update((k, v) for k, v in dataclasses.asdict(self.model).items()
                    if k != "vocab_size")
        return flat

    @classmethod
    def from_settings(cls, **settings) -> TrainConfig:
        """A config from flat names, e.g. ``from_settings(n_layer=2, batch_size=4)``: the
        names of :class:`GPTConfig`'s fields go into ``model``, the rest are training
        settings; the others keep their defaults. Raises ``TypeError`` for an unknown name."""
        model_names = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
        train_names = {f.name for f in dataclasses.fields(cls)} - {"model"}
        unknown = sorted(set(settings) - model_names - train_names)
        if unknown:
            why = " (vocab_size comes from the tokenizer)" if "vocab_size" in unknown else ""
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}{why}; the settings are: "
                            f"{', '.join(sorted(model_names | train_names))}")
        model = GPTConfig(**{k: v for k, v in settings.items() if k in model_names})
        return cls(model=model, **{k: v for k, v in settings.items() if k in train_names})

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TrainConfig:
        """A preset with some settings replaced (flat names, as in :meth:`from_settings`).
        Raises ``KeyError`` for an unknown preset and ``TypeError`` for an unknown setting."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        return cls.from_settings(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of ``dataclasses.asdict`` (the form a checkpoint stores)."""
        return cls(**{**d, "model": GPTConfig(**d["model"])})


def _is_device_name(name: str) -> bool:
    if name == "auto":
        return True
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_device(name: str = "auto") -> str:
    """The device to run on: ``name``, or for ``"auto"`` the best one there is (cuda, then
    mps, then cpu; :func:`course_utils.utils.get_device`).

    Raises ``ValueError`` for a name that is no device, or a device this machine lacks."""
    device = get_device(name)
    if not _is_device_name(device):
        raise ValueError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch finds no CUDA GPU on this "
                         f"machine; use --device cpu, or auto for the best device there is")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has "
                         f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0 ...)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} asked for, but MPS (Apple GPUs) is not available "
                         f"here; use --device cpu, or auto for the best device there is")
    return device


def resumed_config(saved: TrainConfig, requested: dict) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's (``saved``), with the ``requested``
    settings (flat names) applied where they may change on resume (:data:`RESUMABLE`).

    Raises ``ValueError`` naming each other requested setting whose value differs from the
    checkpoint's, with both values."""
    current = saved.settings()
    conflicts = [f"{_flag(k)} {v!r} (the checkpoint has {current[k]!r})"
                 for k, v in requested.items()
                 if k in current and k not in RESUMABLE and v != current[k]]
    if conflicts:
        raise ValueError(
            f"a resumed run keeps the settings it started with, and these differ: "
            f"{'; '.join(conflicts)}. Drop them, or start a new run in another --out-dir "
            f"(only {', '.join(map(_flag, RESUMABLE))} may change on resume)")
    changes = {k: v for k, v in requested.items() if k in RESUMABLE or k not in current}
    return TrainConfig.from_settings(**{**current, **changes})


def get_lr(step: int, max_lr: float, min_lr: float, warmup_iters: int, max_iters: int) -> float:
    """Learning rate at ``step``: linear warmup to ``max_lr`` over ``warmup_iters`` steps
    (``max_lr * (step + 1) / warmup_iters``), then cosine decay to ``min_lr`` at
    ``max_iters``, then ``min_lr``."""
    if step < warmup_iters:
        return max_lr * (step + 1) / warmup_iters
    if step >= max_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def load_corpus(name: str, bpe_vocab_size: int = 0):
    """A dataset -> ``(tokenizer, train_ids, val_ids)``.

    ``name`` is either a registry text corpus (e.g. ``"tinyshakespeare"``; 90/10 split by
    position) or a folder holding ``train.bin`` and ``val.bin`` (token files from
    :func:`course_utils.datasets.write_token_file`, uint16) and ``tokenizer.json`` (a saved
    tokenizer). A registry corpus is character-level, or with ``bpe_vocab_size`` N encoded by
    a byte-level BPE of N tokens learned from its training split (:func:`course_utils.bpe.
    train_bpe`); the split is then made in the text, at the same character as for characters.

    Raises ``FileNotFoundError`` for a folder missing one of those files, or a name that is
    neither, and ``ValueError`` for an unreadable ``tokenizer.json``, a ``bpe_vocab_size``
    given for a token folder, or an evaluation set of the registry (``held_out``).
    """
    folder = Path(name)
    if folder.is_dir() and bpe_vocab_size:
        raise ValueError(f"bpe_vocab_size applies to registry corpora; the token folder "
                         f"{folder} has its own tokenizer: drop --bpe-vocab-size")
    if folder.is_dir():
        missing = [f for f in ("train.bin", "val.bin", "tokenizer.json")
                   if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"dataset folder {folder} lacks {', '.join(missing)}; a token folder holds "
                f"train.bin, val.bin and tokenizer.json, e.g. made by "
                f"python -m course_utils.tinystories {folder}")
        try:
            tok = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text("utf-8")))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read the tokenizer {folder / 'tokenizer.json'}: "
                             f"{e}") from None
        return tok, read_token_file(folder / "train.bin"), read_token_file(folder / "val.bin")
    if name in REGISTRY and REGISTRY[name].held_out:
        raise ValueError(f"{name!r} is an evaluation set (held out): the course never trains on "
                         f"the items it measures with; pick a training corpus")
    if name not in REGISTRY:
        raise FileNotFoundError(
            f"dataset {name!r} is neither a folder nor a corpus of the registry "
            f"({', '.join(sorted(REGISTRY))}); the TinyStories presets need their token "
            f"folder made first: python -m course_utils.tinystories {name}")
    if bpe_vocab_size:
        return _bpe_corpus(name, bpe_vocab_size)
    text = load_text(name)
    tok = CharTokenizer.from_text(text)
    data = torch.tensor(tok.encode(text), dtype=torch.int64)
    train, val = train_val_split(data, 0.1)
    return tok, train, val


@functools.lru_cache(maxsize=2)  # the command line asks before training; learned once
def _bpe_corpus(name: str, vocab_size: int):
    text = load_text(name)
    cut = int(len(text) * 0.9)  # train_val_split's cut, in characters
    tok = train_bpe(text[:cut], vocab_size)
    return (tok, *(torch.tensor(tok.encode_ordinary(part), dtype=torch.int64)
                   for part in (text[:cut], text[cut:])))


def training_data(cfg: TrainConfig, tokenizer=None):
    """The data of a run: ``(tokenizer, train, val)``.

    For a chat dataset (:data:`course_utils.sft.CHAT_DATASETS`) the conversations are encoded
    with ``tokenizer`` (the pretrained model's) plus the ChatML tokens, fitted to
    ``block_size`` and masked as ``cfg.loss_mask`` says: two
    :class:`~course_utils.sft.ChatData`. Anything else is :func:`load_corpus`.

    For a preference dataset (:data:`course_utils.preference.PREFERENCE_DATASETS`) the data
    are pairs sampled from the ``init_from`` chat model (:func:`preference_corpus`; the
    ``tokenizer`` given is not used: the pairs come with the model's own): two
    :class:`~course_utils.preference.PreferenceData`.

    Raises ``ValueError`` for a chat or preference dataset without a model to start from
    (``init_from``) or with ``bpe_vocab_size``, and the errors of :func:`load_corpus` and
    :func:`preference_corpus`.
    """
    if cfg.dataset in PREFERENCE_DATASETS:
        if not cfg.init_from:
            raise ValueError(f"dataset {cfg.dataset} holds pairs of replies sampled from a chat "
                             f"model, the start of the run: give it with --init-from RUN_DIR "
                             f"(init_from=...)")
        if cfg.bpe_vocab_size:
            raise ValueError(f"dataset {cfg.dataset} uses the --init-from model's tokenizer: "
                             f"drop --bpe-vocab-size")
        return preference_corpus(cfg)
    if cfg.dataset not in CHAT_DATASETS:
        return load_corpus(cfg.dataset, cfg.bpe_vocab_size)
    if tokenizer is None:
        raise ValueError(f"dataset {cfg.dataset} fine-tunes a pretrained model for chat: give "
                         f"the model to start from with --init-from RUN_DIR (init_from=...)")
    if cfg.bpe_vocab_size:
        raise ValueError(f"dataset {cfg.dataset} uses the --init-from model's tokenizer: "
                         f"drop --bpe-vocab-size")
    return load_chat_data(cfg.dataset, tokenizer, cfg.model.block_size, cfg.loss_mask)


def preference_corpus(cfg: TrainConfig):
    """The pairs of a DPO run: ``(tokenizer, train, val)``, two
    :class:`~course_utils.preference.PreferenceData` sampled from the chat model
    ``cfg.init_from`` (:func:`course_utils.preference.preference_pairs` with
    ``cfg.pref_prompts``, ``pref_samples``, ``pref_margin`` and ``seed``, on ``cfg.device``),
    with that model as the reference.

    Sampling takes a while, so the result is kept for the process: the command line's check
    before training, a resumed run and the runs of a beta sweep with the same init checkpoint
    (same file, same modification time) and settings sample once.

    Raises ``FileNotFoundError``/:class:`CheckpointError` for the checkpoint, ``ValueError``
    when it is not a chat model or no pair has the margin.
    """
    path = Path(cfg.init_from)
    path = path / CHECKPOINT_NAME if path.is_dir() else path
    if not path.is_file():
        load_checkpoint(path)  # raises the course's "no checkpoint at ..." error
    stat = path.stat()
    return _sampled_pairs(str(path.resolve()), stat.st_mtime_ns, stat.st_size, cfg.init_from,
                          cfg.pref_prompts, cfg.pref_samples, cfg.pref_margin, cfg.seed,
                          resolve_device(cfg.device))


@functools.lru_cache(maxsize=4)
def _sampled_pairs(path: str, mtime_ns: int, size: int, name: str, n_prompts: int,
                   samples: int, margin: float, seed: int, device: str):
    init = load_checkpoint(path)
    _chat_model_tokenizer(init, name)
    reference, tok = model_from_checkpoint(init, device)
    train, val = preference_pairs(reference, tok, n_prompts, samples, margin, seed)
    pad = tok.special_tokens[IM_END]
    return tok, PreferenceData(train, pad, reference), PreferenceData(val, pad, reference)


def _chat_model_tokenizer(init: dict, name: str):
    """The tokenizer of checkpoint ``init`` (from ``--init-from name``); ``ValueError`` unless
    it has the ChatML tokens (the model was fine-tuned for chat)."""
    tok = tokenizer_from_dict(init["tokenizer"])
    missing = [t for t in (IM_START, IM_END) if t not in tok.special_tokens]
    if missing:
        raise ValueError(f"--init-from {name} is not a chat model: its tokenizer has no "
                         f"{' and no '.join(missing)} token; preference tuning starts from a "
                         f"chat fine-tuned run (e.g. python -m course_utils train --preset "
                         f"shakespeare-chat)")
    return tok


def init_config(cfg: TrainConfig, init: dict, requested: dict | None = None) -> TrainConfig:
    """The settings of a run that starts from the checkpoint dict ``init``
    (:func:`load_checkpoint` of ``cfg.init_from``): ``cfg`` with the checkpoint's model
    shape; ``dropout`` stays ``cfg``'s, ``vocab_size`` is set from the tokenizer later.

    Raises ``ValueError`` naming each model setting in ``requested`` (flat names, e.g. the
    flags typed on the command line) that differs from the checkpoint's, when
    ``cfg.dataset`` is a chat dataset whose format the checkpoint's tokenizer cannot write
    (:func:`course_utils.sft.chat_tokenizer`), and when it is a preference dataset and the
    checkpoint is not a chat model."""
    model = GPTConfig(**init["config"]["model"])
    conflicts = [f"{_flag(k)} {v!r} (the checkpoint has {getattr(model, k)!r})"
                 for k, v in (requested or {}).items()
                 if k in _SHAPE and v != getattr(model, k)]
    if conflicts:
        raise ValueError(f"the model's shape comes from --init-from {cfg.init_from}, and "
                         f"these differ: {'; '.join(conflicts)}; drop them")
    if cfg.dataset in CHAT_DATASETS:
        try:
            chat_tokenizer(tokenizer_from_dict(init["tokenizer"]))
        except ValueError as e:
            raise ValueError(f"--init-from {cfg.init_from}: {e}") from None
    if cfg.dataset in PREFERENCE_DATASETS:
        _chat_model_tokenizer(init, cfg.init_from)
    return dataclasses.replace(cfg, model=dataclasses.replace(model, dropout=cfg.model.dropout))


def load_init_weights(model: GPT, state: dict) -> None:
    """Copy a checkpoint's weights (``state``, a state dict) into ``model``.

    When ``model`` has a larger vocabulary (tokens added to the tokenizer after pretraining,
    such as ChatML's), the token embedding (and an untied output layer) get one new row per
    new token, set to the mean of the pretrained rows: a start that changes no other token's
    probabilities much (Hewitt, 2021, "Initializing New Word Embeddings for Pretrained
    Language Models"). Raises :class:`CheckpointError` when the weights do not fit.
    """
    state = dict(state)
    V = model.config.vocab_size
    for key in ("transformer.wte.weight", "lm_head.weight"):
        w = state.get(key)
        if w is not None and w.dim() == 2 and w.shape[0] < V:  # (old vocab_size, n_embd)
            state[key] = torch.cat([w, w.mean(dim=0, keepdim=True).expand(V - len(w), -1)])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"the --init-from weights do not fit the model: "
                              f"{_first_line(e)}") from None


def autocast_context(device: str, dtype: str):
    """The mixed-precision context for ``device``: bf16 autocast on GPUs that support it
    (``dtype="auto"``), fp16 when asked, plain float32 otherwise."""
    if device.startswith("cuda"):
        if dtype == "auto":  # bf16 natively from Ampere (compute capability 8) on; a T4
            # reports bf16 "supported" but only emulates it, slowly: use float16 there
            major, _ = torch.cuda.get_device_capability(device)
            dtype = "bfloat16" if major >= 8 else "float32"
        if dtype in ("bfloat16", "float16"):
            return torch.autocast("cuda", dtype=getattr(torch, dtype))
    elif dtype in ("bfloat16", "float16"):
        return torch.autocast(device.split(":")[0], dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(model, splits: dict, cfg: TrainConfig, device: str, ctx) -> dict:
    """Mean loss (nats/token; DPO runs: the DPO loss, :func:`batch_loss`) over
    ``cfg.eval_iters`` batches of each split, in eval mode
    (no dropout). The batches come from a generator seeded the same way at every
    evaluation, so they do not disturb the training batches and successive evaluations are
    comparable."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = []
        next_batch = batch_source(data, cfg, g, device)
        for _ in range(cfg.eval_iters):
            batch = next_batch()
            with ctx:
                loss = batch_loss(model, batch, cfg)
            losses.append(loss.item())
        out[name] = float(np.mean(losses))
    model.train(was_training)
    return out


def batch_source(data, cfg: TrainConfig, generator: torch.Generator, device: str):
    """The batches of a split: a function that returns the next ``(x, y)``, each ``(B, T)``,
    drawn with ``generator``: random windows of a token sequence
    (:func:`course_utils.datasets.get_batch`), or for :class:`~course_utils.sft.ChatData`
    random conversations padded to the longest (``T <= block_size``, padding targets -1).
    For :class:`~course_utils.preference.PreferenceData` a batch is ``(idx, mask,
    ref_logps)``: ``batch_size`` random pairs, chosen rows then rejected rows."""
    if isinstance(data, (ChatData, PreferenceData)):
        return lambda: data.batch(cfg.batch_size, generator, device)
    return lambda: get_batch(data, cfg.model.block_size, cfg.batch_size, generator, device)


def batch_loss(model, batch: tuple, cfg: TrainConfig) -> torch.Tensor:
    """The loss the run minimises on one batch (:func:`batch_source`): the DPO loss with
    ``cfg.beta`` for a preference dataset (:func:`course_utils.preference.dpo_batch_loss`),
    else the model's next-token cross-entropy of ``(x, y)``."""
    if cfg.dataset in PREFERENCE_DATASETS:
        idx, mask, ref_logps = batch
        return dpo_batch_loss(model, idx, mask, ref_logps, cfg.beta)
    x, y = batch
    return model(x, y)[1]


def _rng_state(batch_gen: torch.Generator) -> dict:
    # The loop draws random numbers only from torch: the batches (batch_gen) and dropout (the
    # global generator of the device).
    state = {"torch": torch.get_rng_state(), "batch": batch_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, batch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    batch_gen.set_state(state["batch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain Python values only, so that
    :func:`load_checkpoint` can read it back safely) with ``torch.save``, atomically
    (:func:`course_utils.utils.atomic_write`): readers see the old file or the new one."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint file, or the ``ckpt.pt`` inside a run folder, safely.

    Everything that reads a checkpoint goes through here. ``torch.load(weights_only=True)``
    rebuilds only tensors and plain Python values (dict, list, tuple, str, int, float, bool,
    None); a file that holds anything else is refused, since unpickling it could run code.
    Returns the dict :func:`train` saved (keys :data:`CHECKPOINT_KEYS`).

    Raises ``FileNotFoundError`` naming the path when there is none, and
    :class:`CheckpointError` naming it for a damaged, foreign or unsafe file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train first (python -m course_utils train ...) or "
            f"pass the run folder that holds {CHECKPOINT_NAME}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: it is not a complete zip archive, the "
            f"format torch.save writes (cut short by an interrupted copy? another file?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - a damaged file: report the load error below
            unsafe = []
        if unsafe:
            raise CheckpointError(
                f"refusing to load {path}: besides tensors and plain values it holds "
                f"{', '.join(unsafe)}, which loading would import and call (a way to run "
                f"code). Load only checkpoints written by course_utils.train; those of "
                f"earlier versions of the course held NumPy arrays: train them again") from None
        raise CheckpointError(f"{path} is damaged: {_first_line(e)}") from None
    except Exception as e:  # a damaged archive fails in many ways (RuntimeError, EOFError ...)
        raise CheckpointError(f"{path} is damaged: {type(e).__name__}: "
                              f"{_first_line(e)}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by course_utils.train: "
                              f"it lacks {', '.join(missing)}")
    try:
        TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds settings this version of course_utils cannot "
                              f"use: {_first_line(e)}") from None
    return ckpt


def model_from_checkpoint(ckpt: dict, device: str = "cpu"):
    """``(model, tokenizer)`` rebuilt from a checkpoint dict (:func:`load_checkpoint`),
    model in eval mode on ``device``. Raises :class:`CheckpointError` when the weights do
    not fit the model the checkpoint's settings describe."""
    model = GPT(GPTConfig(**ckpt["config"]["model"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit its model settings: "
                              f"{_first_line(e)}") from None
    model.to(device).eval()
    return model, tokenizer_from_dict(ckpt["tokenizer"])


def plot_losses(history: dict, path: str | Path) -> Path:
    """Save a PNG of per-step training loss and the periodic train/val estimates."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    steps, losses = history["step"], history["loss"]
    if steps:
        ax.plot(steps, losses, color="0.75", lw=0.8, label="train (per batch)")
    if history["eval_step"]:
        ax.plot(history["eval_step"], history["train"], "o-", label="train (estimate)")
        ax.plot(history["eval_step"], history["val"], "o-", label="val (estimate)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


@contextlib.contextmanager
def _run_folder(out_dir: Path):
    """Create ``out_dir`` and hold its lock file for the ``with`` block; delete what
    interrupted saves left there. Raises :class:`TrainingError` when the folder is a file,
    cannot be written, or another process holds the lock."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TrainingError(f"--out-dir {out_dir} is a file, not a folder; choose a folder "
                            f"for the run")
    lock = FileLock(out_dir / LOCK_NAME, timeout=0)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:  # before OSError: filelock's Timeout is a TimeoutError
        raise TrainingError(f"another process is training into {out_dir} (it holds "
                            f"{out_dir / LOCK_NAME}); wait for it to finish or choose "
                            f"another --out-dir") from None
    except OSError as e:
        raise TrainingError(f"cannot write to --out-dir {out_dir}: {e.strerror or e}; "
                            f"choose a folder you can write to") from None
    try:
        remove_stale_temp_files(out_dir)
        yield
    finally:
        lock.release()


def _previous_run(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint to continue (``resume``), or ``None`` for a new run. Raises
    :class:`TrainingError` when a new run would silently replace a checkpoint."""
    if resume:
        return load_checkpoint(out_dir)
    if (out_dir / CHECKPOINT_NAME).exists() and not overwrite:
        raise TrainingError(
            f"{out_dir} already holds a run ({CHECKPOINT_NAME}); continue it with --resume, "
            f"replace it with --overwrite (resume=True / overwrite=True in Python), or choose "
            f"another --out-dir")
    return None


def train(cfg: TrainConfig, resume: bool = False, stop_at: int | None = None,
          progress: bool = True, overwrite: bool = False) -> dict:
    """Train a GPT as ``cfg`` says; return a summary dict.

    Writes ``ckpt.pt`` (settings, model, optimizer, tokenizer, step, random generators'
    states, best val loss, loss history) at every evaluation and ``loss.png`` at the end into
    ``cfg.out_dir``. A folder that already holds a checkpoint needs ``resume=True``
    (continue it; the checkpoint's settings are used, and ``cfg`` may differ from them only
    in :data:`RESUMABLE`) or ``overwrite=True`` (start over). ``stop_at`` ends the run early
    at that step (after saving), e.g. to continue later with ``resume``.

    Returns a dict with ``model``, ``tokenizer``, ``config`` (the settings used),
    ``device``, ``train_loss``, ``val_loss``, ``best_val_loss``, ``tokens_per_s``,
    ``steps`` (trained in this call), ``wall_s``, ``checkpoint``, ``plot`` and ``history``.

    Raises :class:`TrainingError` (busy, unwritable or occupied folder; NaN/inf loss, which
    stops the run before anything is saved at that step), :class:`RunFinished` (resuming a
    run that reached ``max_iters``), ``ValueError`` (settings that contradict the checkpoint
    or each other, a device this machine lacks, an ``init_from`` checkpoint whose tokenizer
    does not fit the data), ``FileNotFoundError`` (no checkpoint to resume or to start from,
    a missing dataset) and :class:`CheckpointError`.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: resume continues the run "
                         "in out_dir, overwrite replaces it")
    if stop_at is not None and stop_at < 0:
        raise ValueError(f"stop_at must be >= 0, got {stop_at}")
    out_dir = Path(cfg.out_dir)
    with _run_folder(out_dir):
        ckpt = _previous_run(out_dir, resume, overwrite)
        if ckpt is not None:
            requested = cfg.settings()
            if cfg.init_from:  # the model's shape came from that checkpoint, not from cfg
                requested = {k: v for k, v in requested.items() if k not in _SHAPE}
            cfg = resumed_config(TrainConfig.from_dict(ckpt["config"]), requested)
            if ckpt["step"] >= cfg.max_iters:
                raise RunFinished(
                    f"the run in {out_dir} is finished: it trained {ckpt['step']} of "
                    f"max_iters {cfg.max_iters} steps. To train it further, resume with a "
                    f"larger --max-iters (e.g. --max-iters {2 * ckpt['step']})")
            if stop_at is not None and stop_at <= ckpt["step"]:
                raise ValueError(f"--stop-at {stop_at} is not after the checkpoint's step "
                                 f"{ckpt['step']}; choose a later step")
        return _train(cfg, ckpt, stop_at, progress)


def _train(cfg: TrainConfig, ckpt: dict | None, stop_at: int | None, progress: bool) -> dict:
    """The loop of :func:`train`, in a folder it has locked; ``ckpt`` is the checkpoint to
    continue, or ``None``."""
    device = resolve_device(cfg.device)
    set_seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    init = load_checkpoint(cfg.init_from) if cfg.init_from and ckpt is None else None
    if init is not None:
        cfg = init_config(cfg, init)
    start = ckpt if ckpt is not None else init  # the tokenizer a chat dataset builds on
    tok, train_data, val_data = training_data(
        cfg, None if start is None else tokenizer_from_dict(start["tokenizer"]))
    if ckpt is not None and tokenizer_from_dict(ckpt["tokenizer"]).to_dict() != tok.to_dict():
        raise ValueError(f"the tokenizer of dataset {cfg.dataset} differs from the one the "
                         f"checkpoint was trained with; resume on the same data")
    if init is not None and cfg.dataset not in CHAT_DATASETS and (
            tokenizer_from_dict(init["tokenizer"]).to_dict() != tok.to_dict()):
        raise ValueError(f"the tokenizer of dataset {cfg.dataset} differs from the one "
                         f"--init-from {cfg.init_from} was trained with; fine-tune on data "
                         f"encoded the same way")
    cfg = dataclasses.replace(cfg, model=cfg.model_config(tok.vocab_size))
    model = GPT(cfg.model).to(device)
    if init is not None:
        load_init_weights(model, init["model"])
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2),
                                  fused=device.startswith("cuda") or None)
    scaler = torch.amp.GradScaler("cuda", enabled=device.startswith("cuda")
                                  and cfg.dtype == "float16")
    step, best_val, saved_step = 0, float("inf"), None
    history = {"step": [], "loss": [], "eval_step": [], "train": [], "val": [], "train_s": []}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:  # empty when saved from a run without float16 loss scaling
            scaler.load_state_dict(ckpt["scaler"])
        step, best_val, history = ckpt["step"], ckpt["best_val_loss"], ckpt["history"]
        history.setdefault("train_s", [])
        saved_step = step
        _set_rng_state(ckpt["rng"], batch_gen)
    next_batch = batch_source(train_data, cfg, batch_gen, device)
    fwd_model = torch.compile(model) if cfg.compile else model
    ctx = autocast_context(device, cfg.dtype)
    splits = {"train": train_data, "val": val_data}
    out_dir = Path(cfg.out_dir)
    ckpt_path, plot_path = out_dir / CHECKPOINT_NAME, out_dir / PLOT_NAME
    train_time, trained_tokens, tok_s, losses = 0.0, 0, 0.0, {}
    time_before = history["train_s"][-1] if history["train_s"] else 0.0  # of a resumed run
    start_step, t_start = step, time.perf_counter()
    stop = cfg.max_iters if stop_at is None else min(stop_at, cfg.max_iters)

    def diverged(what: str, value: float) -> TrainingError:
        kept = (f"{ckpt_path} still holds step {saved_step}" if saved_step is not None
                else "nothing was saved")
        return TrainingError(
            f"the {what} became {value} at step {step}: the run diverged and stopped ({kept}). "
            f"Try a lower --learning-rate (now {cfg.learning_rate}) or a longer warmup")

    model.train()
    # a live bar in a terminal (redrawn about every 1% of the steps), one line in a notebook
    bar = progress_bar(total=stop, initial=step, disable=not progress, desc="train",
                       unit="step", miniters=max(1, (stop - step) // 100))
    try:
        while True:
            if (step % cfg.eval_interval == 0 or step == stop) and step != saved_step:
                losses = estimate_loss(fwd_model, splits, cfg, device, ctx)
                for name, value in losses.items():
                    if not math.isfinite(value):
                        raise diverged(f"{name} loss estimate", value)
                history["eval_step"].append(step)
                history["train"].append(losses["train"])
                history["val"].append(losses["val"])
                history["train_s"].append(time_before + train_time)
                best_val = min(best_val, losses["val"])
                save_checkpoint(ckpt_path, {
                    "config": dataclasses.asdict(cfg), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                    "tokenizer": tok.to_dict(), "step": step, "best_val_loss": best_val,
                    "history": history, "rng": _rng_state(batch_gen),
                })
                saved_step = step
                bar.write(f"step {step}: train loss {losses['train']:.4f}, "
                          f"val loss {losses['val']:.4f}")
            if step >= stop:
                break
            t0 = time.perf_counter()
            lr = get_lr(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for _ in range(cfg.grad_accum_steps):
                batch = next_batch()
                trained_tokens += batch[0].numel()  # (B, T); T is shorter for padded batches
                with ctx:
                    loss = batch_loss(fwd_model, batch, cfg)
                loss = loss / cfg.grad_accum_steps  # the step's gradient is the batches' mean
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            # The one place the loop waits for the GPU: the step's loss, read back for the
            # history and to stop before a NaN/inf reaches the weights.
            loss_value = loss_sum.item()
            if not math.isfinite(loss_value):
                raise diverged("training loss", loss_value)
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            train_time += time.perf_counter() - t0
            tok_s = trained_tokens / train_time
            history["step"].append(step)
            history["loss"].append(loss_value)
            step += 1
            if cfg.max_seconds and train_time >= cfg.max_seconds:
                stop = step  # out of time: evaluate and save here, then end
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                            refresh=False)
    finally:
        bar.close()
    plot_losses(history, plot_path)
    model.eval()
    return {
        "model": model, "tokenizer": tok, "config": cfg, "device": device,
        "train_loss": losses.get("train"), "val_loss": losses.get("val"),
        "best_val_loss": best_val, "tokens_per_s": tok_s, "steps": step - start_step,
        "wall_s": time.perf_counter() - t_start, "checkpoint": ckpt_path, "plot": plot_path,
        "history": history,
    }
