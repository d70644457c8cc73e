"""The settings of a training run (notebook 07): :class:`TrainConfig`, which holds the model's
:class:`~course_utils.model.GPTConfig`, and the rules for the settings of a resumed run and of
a run that starts from another model's weights.

- One source of settings: presets (:mod:`course_utils.presets`) and the command line use flat
  names (``n_layer=2, batch_size=4``); :meth:`TrainConfig.from_settings` sorts them into the
  training's and the model's. ``vocab_size`` is not a setting: it comes from the tokenizer.
- Resume is the same run: a resumed run takes the checkpoint's settings, and only those in
  :data:`RESUMABLE` may differ (:func:`resumed_config`).
- Fine-tuning (``init_from``) takes the model's shape from the model it starts from
  (:func:`init_config`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field

import torch

from .model import GPTConfig
from .presets import PRESETS

# The settings a resumed run may change: where the run lives and runs (a run moves to another
# folder or machine), how long it goes (a larger max_iters extends a run; the cosine decay is
# then stretched from the resume point on) and the sample printed at the end. Every other
# setting comes from the checkpoint.
RESUMABLE = ("out_dir", "max_iters", "max_seconds", "device", "dtype", "compile",
             "sample_tokens")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OPTIMIZERS = ("adamw", "muon")
DEVICE_TYPES = ("cpu", "cuda", "mps")

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
    lora_rank: int = 0  # fine-tuning: rank of the LoRA adapters trained; 0 trains every weight
    lora_alpha: float = 16.0  # LoRA: the adapters' update is scaled by lora_alpha / lora_rank
    loss_mask: bool = True  # chat datasets: loss on the replies only; False: on every token
    beta: float = 0.1  # preference datasets (DPO): how far from the reference; smaller: farther
    pref_prompts: int = 256  # preference datasets: training prompts to sample replies for
    pref_samples: int = 8  # preference datasets: replies sampled per prompt (>= 2)
    pref_margin: float = 0.1  # preference datasets: least reward gap of a pair kept (0..1]
    pref_max_tokens: int = 64  # preference datasets: longest sampled reply, in tokens
    pref_temperature: float = 1.0  # preference datasets: sampling temperature of the replies
    out_dir: str = "runs/default"  # the run folder: ckpt.pt, loss.png, train.lock
    model: GPTConfig = field(default_factory=GPTConfig)  # the model's shape
    batch_size: int = 32  # sequences per micro-batch (B)
    grad_accum_steps: int = 1  # micro-batches whose gradients add up to one step
    max_iters: int = 2000  # optimizer steps of the whole run
    max_seconds: float = 0.0  # training-time budget in s (evaluations not counted); 0: none
    optimizer: str = "adamw"  # adamw; muon: Muon for the blocks' matrices, AdamW for the rest
    learning_rate: float = 1e-3  # peak learning rate, reached at the end of the warmup
    muon_lr: float = 0.02  # muon: peak learning rate of the blocks' matrices (Muon's)
    muon_momentum: float = 0.95  # muon: decay rate of Muon's running mean of the gradients
    muon_weight_decay: float = 0.0  # muon: decoupled weight decay of the blocks' matrices
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
            ("lora_rank", self.lora_rank >= 0, ">= 0 (0: no LoRA, train every weight)"),
            ("lora_alpha", 0 < self.lora_alpha < math.inf, "finite and > 0"),
            ("learning_rate", 0 < lr < inf, "finite and > 0"),
            ("optimizer", self.optimizer in OPTIMIZERS, "one of " + ", ".join(OPTIMIZERS)),
            ("muon_lr", 0 < self.muon_lr < inf, "finite and > 0"),
            ("muon_momentum", 0 <= self.muon_momentum < 1, "in [0, 1)"),
            ("muon_weight_decay", 0 <= self.muon_weight_decay < inf, "finite and >= 0"),
            ("beta", 0 < self.beta < inf, "finite and > 0 (DPO's beta, typically 0.1 to 0.5)"),
            ("pref_prompts", self.pref_prompts >= 1, ">= 1"),
            ("pref_samples", self.pref_samples >= 2, ">= 2 (a pair needs two replies)"),
            ("pref_margin", 0 < self.pref_margin <= 1, "in (0, 1] (rewards lie in [0, 1])"),
            ("pref_max_tokens", self.pref_max_tokens >= 1, ">= 1"),
            ("pref_temperature", 0 < self.pref_temperature < inf, "finite and > 0"),
            ("min_lr", 0 <= self.min_lr <= lr, "in [0, learning_rate]"),
            ("weight_decay", 0 <= self.weight_decay < inf, "finite and >= 0"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("grad_clip", 0 <= self.grad_clip < inf, "finite and >= 0 (0: no clipping)"),
            ("dtype", self.dtype in DTYPES, "one of " + ", ".join(DTYPES)),
            ("device", is_device_name(self.device), "auto, cpu, cuda, cuda:N or mps"),
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


def is_device_name(name: str) -> bool:
    """Whether ``name`` names a device the course can run on: ``auto``, ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps`` (whether this machine has it is :func:`course_utils.utils.
    resolve_device`'s question)."""
    if name == "auto":
        return True
    try:
        return torch.device(name).type in DEVICE_TYPES
    except (RuntimeError, TypeError):
        return False


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


def init_config(cfg: TrainConfig, start_model: dict, requested: dict | None = None
                ) -> TrainConfig:
    """The settings of a run that starts from another model's weights (``cfg.init_from``):
    ``cfg`` with that model's shape, ``start_model`` (its :class:`GPTConfig` as a dict).
    ``dropout`` stays ``cfg``'s and ``vocab_size`` is set from the tokenizer later. A model
    with rotary positions may be fine-tuned with a shorter context than its own (its
    positions are computed, not learned): ``block_size`` is then the smaller of ``cfg``'s and
    the model's (SmolLM2's 8,192 tokens would make every KV cache of a CPU run huge).

    Raises ``ValueError`` naming each model setting in ``requested`` (flat names, e.g. the
    flags typed on the command line) that differs from the start model's."""
    model = GPTConfig(**start_model)
    if model.pos_emb == "rope":
        model = dataclasses.replace(model, block_size=min(cfg.model.block_size,
                                                          model.block_size))
        if (requested or {}).get("block_size", 0) <= start_model["block_size"]:
            requested = {k: v for k, v in (requested or {}).items() if k != "block_size"}
    conflicts = [f"{_flag(k)} {v!r} (the model has {getattr(model, k)!r})"
                 for k, v in (requested or {}).items()
                 if k in _SHAPE and v != getattr(model, k)]
    if conflicts:
        raise ValueError(f"the model's shape comes from --init-from {cfg.init_from}, and "
                         f"these differ: {'; '.join(conflicts)}; drop them")
    return dataclasses.replace(cfg, model=dataclasses.replace(model, dropout=cfg.model.dropout))
