"""Checkpoints (notebook 07): save, load safely, rebuild the model, and the model a fine-tuning
run starts from. Everything that reads a trained model goes through here (``sample``,
``chat``, ``serve``, ``eval``, a resumed run), and this module imports no training code.

Notable features:

- A checkpoint (``ckpt.pt``) holds only tensors and plain Python values, and
  :func:`load_checkpoint` loads it with ``torch.load(weights_only=True)``: a file that holds
  anything else (a pickle can carry code) is refused. :func:`save_checkpoint` writes through
  :func:`course_utils.utils.atomic_write`, so an interrupted save never leaves half a file.
- The model is built from the checkpoint's settings only after the tensors the file holds
  were checked against the shapes those settings declare (on PyTorch's ``meta`` device, which
  allocates nothing), so a small crafted file cannot make the loader allocate gigabytes; the
  weights must be finite.
- A fine-tuning run starts from a run folder or from a released model
  (``smollm2-135m-instruct``, :mod:`course_utils.pretrained`): :func:`start_model`. Its file's
  sha256 is stored in the run (``init_sha256``), so a resumed run or a LoRA checkpoint can
  tell when the model it builds on has changed.
- The run folder (its lock, no silent overwrite) is :mod:`course_utils.runs`'s.
- LoRA runs (``lora_rank > 0``) store only the adapters; :func:`model_from_checkpoint`
  rebuilds the base model they were trained on, checks its sha256, and adds them.
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

from . import pretrained
from .bpe import tokenizer_from_dict
from .config import TrainConfig
from .lora import apply_lora, merge_lora
from .model import GPT, GPTConfig
from .utils import atomic_write, check_finite, first_line, sha256_of

CHECKPOINT_NAME = "ckpt.pt"
# What a checkpoint holds (see course_utils.train.train); load_checkpoint refuses a file that
# lacks one of these. Optional: "init_sha256", the sha256 of the model the run started from.
CHECKPOINT_KEYS = ("config", "model", "optimizer", "scaler", "tokenizer", "step",
                   "best_val_loss", "history", "rng")


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint: damaged, foreign, or unsafe."""


def checkpoint_file(path: str | Path) -> Path:
    """``path`` itself, or the ``ckpt.pt`` inside it when it is a run folder."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors and plain Python values only, so that
    :func:`load_checkpoint` can read it back safely) with ``torch.save``, atomically
    (:func:`course_utils.utils.atomic_write`): readers see the old file or the new one."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint file, or the ``ckpt.pt`` inside a run folder, safely.

    ``torch.load(weights_only=True)`` rebuilds only tensors and plain Python values (dict,
    list, tuple, str, int, float, bool, None); a file that holds anything else is refused,
    since unpickling it could run code. Returns the dict the training loop saved (keys
    :data:`CHECKPOINT_KEYS`).

    Raises ``FileNotFoundError`` naming the path when there is none, and
    :class:`CheckpointError` naming it for a damaged, foreign or unsafe file: one whose
    archive entries are compressed (``torch.save`` stores them as they are; a small
    compressed file could unpack to gigabytes), or whose values are not what the training
    loop writes (types, ranges, a tokenizer that cannot be rebuilt or does not fit the model).
    """
    path = checkpoint_file(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}; train first (python -m course_utils train ...) or "
            f"pass the run folder that holds {CHECKPOINT_NAME}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint: it is not a complete zip archive, the "
            f"format torch.save writes (cut short by an interrupted copy? another file?)")
    try:  # torch.save stores its entries as they are: a compressed one could unpack to GBs
        with zipfile.ZipFile(path) as archive:
            packed = [i.filename for i in archive.infolist()
                      if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged: {type(e).__name__}: {first_line(e)}") from None
    if packed:
        raise CheckpointError(f"{path} is not a checkpoint torch.save wrote: its entries are "
                              f"compressed ({packed[0]} ...), which torch.save never does (a "
                              f"small compressed file can unpack to gigabytes)")
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
        raise CheckpointError(f"{path} is damaged: {first_line(e)}") from None
    except Exception as e:  # a damaged archive fails in many ways (RuntimeError, EOFError ...)
        raise CheckpointError(f"{path} is damaged: {type(e).__name__}: "
                              f"{first_line(e)}") from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint written by course_utils.train: "
                              f"it lacks {', '.join(missing)}")
    try:
        TrainConfig.from_dict(ckpt["config"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} holds settings this version of course_utils cannot "
                              f"use: {first_line(e)}") from None
    problem = _malformed(ckpt)
    if problem:
        raise CheckpointError(f"{path} is damaged or was edited: {problem}; use another copy "
                              f"or start a new run")
    return ckpt


def _malformed(ckpt: dict) -> str | None:
    """What is wrong with the values of a loaded checkpoint (types, ranges, the tokenizer), or
    ``None``. Weights are checked by :func:`build_model`, optimizer states on resume
    (:func:`check_optimizer_state`)."""
    def tensors(d) -> bool:
        return isinstance(d, dict) and all(isinstance(k, str) and torch.is_tensor(v)
                                           for k, v in d.items())

    def numbers(values) -> bool:
        return isinstance(values, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)
            for x in values)

    step, h, rng = ckpt["step"], ckpt["history"], ckpt["rng"]
    h = h if isinstance(h, dict) and isinstance(h.get("metrics", {}), dict) else {}
    rng = rng if isinstance(rng, dict) and isinstance(rng.get("cuda", []), list) else {}
    checks = [  # (fine?, what is wrong)
        (tensors(ckpt["model"]), "its model is not a dict of named tensors"),
        (isinstance(step, int) and not isinstance(step, bool) and step >= 0,
         f"its step is {step!r}, not a whole number >= 0"),
        (numbers([ckpt["best_val_loss"]]), f"its best_val_loss is {ckpt['best_val_loss']!r}"),
        ({"step", "loss", "eval_step", "train", "val"} <= set(h) and all(
            numbers(v) for v in [*(v for k, v in h.items() if k != "metrics"),
                                 *h.get("metrics", {}).values()]),
         "its loss history is not lists of numbers"),
        (all(torch.is_tensor(t) and t.dtype == torch.uint8 for t in
             [rng.get("torch"), rng.get("batch"), *rng.get("cuda", [])]),  # cuda: one per GPU
         "its random generators' states are not byte tensors"),
        (isinstance(ckpt["optimizer"], dict) and isinstance(ckpt["scaler"], dict),
         "its optimizer or loss scaler state is not a dict"),
        (isinstance(ckpt.get("init_sha256"), (str, type(None))), "its init_sha256 is no text"),
    ]
    problems = [problem for fine, problem in checks if not fine]
    if problems:
        return problems[0]
    try:
        vocab_size = tokenizer_from_dict(ckpt["tokenizer"]).vocab_size
    except Exception as e:  # noqa: BLE001 - a malformed dict fails in many ways
        return f"its tokenizer cannot be rebuilt ({type(e).__name__}: {first_line(e)})"
    if vocab_size > ckpt["config"]["model"]["vocab_size"]:  # ids the model has no row for
        return (f"its tokenizer has {vocab_size} tokens, more than its model's "
                f"{ckpt['config']['model']['vocab_size']}")
    return None


def build_model(config: GPTConfig, state: dict, device: str = "cpu",
                what: str = "the checkpoint", strict: bool = True) -> GPT:
    """A :class:`GPT` of ``config`` on ``device`` holding the weights ``state`` (a state dict).

    Nothing is built before the sizes ``config`` declares were checked against the tensors
    ``state`` holds: first the number of layers (each layer is many modules, so a config
    claiming a million layers would take minutes and gigabytes to build even without
    weights), then every shape, on the ``meta`` device, which allocates no memory. A small
    crafted file can thus not make the loader allocate gigabytes. The weights must be finite.
    With ``strict=False`` the keys of ``state`` may be a subset (the rest keeps its
    initialisation). ``what`` names the source in messages (``"the checkpoint runs/x"``).

    Raises :class:`CheckpointError` when a tensor is missing, unexpected, of another shape,
    or not finite.
    """
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    if strict and max(layers, default=-1) + 1 != config.n_layer:
        raise CheckpointError(f"{what}: its weights do not fit its model settings: they are "
                              f"of {max(layers, default=-1) + 1} layers, the settings declare "
                              f"n_layer {config.n_layer}")
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    missing = sorted(set(expected) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (the settings make {tuple(expected[k])})"
             for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + wrong[:3]
        raise CheckpointError(f"{what}: its weights do not fit its model settings: "
                              f"{'; '.join(parts)}")
    check_finite(state, what, CheckpointError)
    model = GPT(config)
    model.load_state_dict(state, strict=strict)
    return model.to(device)


def adapters(model: GPT) -> dict:
    """The LoRA adapters of ``model`` (name -> tensor): what a LoRA run's checkpoint keeps."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def load_adapters(model: GPT, state: dict, what: str) -> None:
    """Load a LoRA run's adapters ``state`` into ``model`` (which has its adapters, see
    :func:`course_utils.lora.apply_lora`). Raises :class:`CheckpointError` naming ``what``
    when they do not fit or are not finite."""
    expected = adapters(model)
    if set(state) != set(expected) or any(state[k].shape != v.shape
                                          for k, v in expected.items()):
        raise CheckpointError(f"{what}: its LoRA adapters do not fit its settings (rank, "
                              f"model)")
    check_finite(state, what, CheckpointError)
    model.load_state_dict(state, strict=False)


def model_from_checkpoint(ckpt: dict, device: str = "cpu", what: str = "the checkpoint"):
    """``(model, tokenizer)`` rebuilt from a checkpoint dict (:func:`load_checkpoint`), the
    model in eval mode on ``device``; ``what`` names it in messages (e.g.
    ``"the checkpoint runs/x"``).

    A LoRA run's checkpoint holds only its adapters: the model it was trained on is rebuilt
    from its ``init_from`` (:func:`start_model`, whose sha256 must equal the one the run
    stored), the adapters are added and merged into the weights.

    Raises :class:`CheckpointError` when the weights do not fit the model the checkpoint's
    settings describe or are not finite, or a LoRA run's base model changed;
    ``FileNotFoundError`` when that base model is gone.
    """
    cfg = TrainConfig.from_dict(ckpt["config"])
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    if not cfg.lora_rank:
        model = build_model(cfg.model, ckpt["model"], device, what)
        return model.eval(), tokenizer
    start = start_model(cfg.init_from, expect_sha256=ckpt.get("init_sha256"))
    base = GPTConfig(**start["config"]["model"])
    same = {k: v for k, v in asdict(base).items() if k not in ("vocab_size", "dropout")}
    if any(getattr(cfg.model, k) != v for k, v in same.items() if k != "block_size") or not (
            base.vocab_size <= cfg.model.vocab_size <= base.vocab_size + 16
            and cfg.model.block_size <= base.block_size):
        raise CheckpointError(f"{what}: its model settings do not match the model it was "
                              f"fine-tuned from ({cfg.init_from})")
    model = build_model(cfg.model, {}, device, what, strict=False)
    load_init_weights(model, start["model"])
    apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha)
    load_adapters(model, ckpt["model"], what)
    return merge_lora(model).eval(), tokenizer


def check_optimizer_state(optimizer: torch.optim.Optimizer, what: str) -> None:
    """Raise :class:`CheckpointError` naming ``what`` unless every tensor of the state loaded
    into ``optimizer`` (AdamW's moments) is finite and, unless a scalar (its step), of its
    parameter's shape. ``load_state_dict`` checks only the number of parameters per group; a
    moment of the wrong shape would fail at the first step, a NaN one make the weights NaN."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for name, v in optimizer.state.get(p, {}).items():
                if not torch.is_tensor(v) or (v.dim() and v.shape != p.shape) or (
                        v.is_floating_point() and not torch.isfinite(v).all()):
                    raise CheckpointError(f"the optimizer state of {what} is damaged (its "
                                          f"{name!r} does not fit a weight of shape "
                                          f"{tuple(p.shape)} or is not finite); use another "
                                          f"copy or start a new run")


def pinned_init_from(ckpt: dict, init_from: str | None = None) -> str:
    """The model a resumed fine-tuning run starts from: the checkpoint's ``init_from``, or
    ``init_from`` when given (its new place, after the folder moved). Either must be the model
    the run started from: the sha256 the run stored (``init_sha256``) is checked here, before
    anything uses the model (a DPO run samples its pairs from it). Returns ``""`` for a run
    trained from scratch.

    Raises :class:`CheckpointError` when the model changed (trained again or replaced),
    ``FileNotFoundError`` when it is gone (the message says how to point at its new place).
    """
    saved = ckpt["config"]["init_from"]
    path = init_from or saved
    if not saved or path == saved and ckpt.get("init_sha256") is None:
        return saved  # from scratch, or a checkpoint of a version that stored no sha256
    if ckpt.get("init_sha256") is None:
        raise CheckpointError(f"--init-from {path} cannot be checked against the model this "
                              f"run started from ({saved}: the checkpoint stored no sha256); "
                              f"resume with --init-from {saved}")
    try:
        sha = init_sha256(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"the model this run started from is gone from --init-from "
                                f"{path}; if it moved, resume with --init-from NEW_PLACE (its "
                                f"sha256 must equal the one the run stored)") from None
    if sha != ckpt["init_sha256"]:
        raise _changed(path)
    return path


def _changed(init_from: str) -> CheckpointError:
    return CheckpointError(f"--init-from {init_from} is not the model this run started from "
                           f"(its sha256 changed: it was trained again or replaced); point "
                           f"--init-from at the original model, or start a new run")


def init_sha256(init_from: str) -> str:
    """The sha256 of the file a fine-tuning run starts from: the run's ``ckpt.pt``, or a
    released model's GGUF file (``"hub"`` when it would come from the Hugging Face hub, which
    is not pinned). Raises ``FileNotFoundError`` when there is no such run or model."""
    if init_from in pretrained.MODELS:
        try:
            return sha256_of(pretrained.gguf_path(init_from))
        except FileNotFoundError:
            return "hub"
    path = checkpoint_file(init_from)
    if not path.is_file():
        load_checkpoint(path)  # raises the course's "no checkpoint at ..." error
    return sha256_of(path)


def start_model(init_from: str, expect_sha256: str | None = None) -> dict:
    """The model a fine-tuning run starts from, as a dict like a checkpoint's: ``config``
    (with ``model``, its :class:`GPTConfig` as a dict), ``model`` (its state dict, every
    weight), ``tokenizer`` (its ``to_dict()`` form) and ``sha256`` (of the file it came from).

    ``init_from`` is a run folder or ``ckpt.pt`` (a LoRA run's adapters merged into its base),
    or the name of a released model (:data:`course_utils.pretrained.MODELS`, e.g.
    ``"smollm2-135m-instruct"``: its GGUF file when installed, else the hub).

    Raises ``FileNotFoundError`` when there is no such run or model, :class:`CheckpointError`
    for a damaged one, or when ``expect_sha256`` is given and the file's differs (the model
    was trained again or replaced since the run started).
    """
    sha = init_sha256(init_from)
    if expect_sha256 is not None and sha != expect_sha256:
        raise _changed(init_from)
    if init_from in pretrained.MODELS:
        p = pretrained.load_pretrained(init_from, source="gguf" if sha != "hub" else "hub")
        model, tok = p.model, p.tokenizer
    else:
        model, tok = model_from_checkpoint(load_checkpoint(init_from),
                                           what=f"the --init-from checkpoint {init_from}")
    return {"config": {"model": asdict(model.config)}, "model": model.state_dict(),
            "tokenizer": tok.to_dict(), "sha256": sha}


def load_init_weights(model: GPT, state: dict) -> None:
    """Copy a start model's weights (``state``, a state dict) into ``model``.

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
                              f"{first_line(e)}") from None
