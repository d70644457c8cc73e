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
- A run folder is never overwritten silently (:func:`previous_run`), and a lock file
  (``train.lock``, the ``filelock`` package) keeps a second process out of a folder one is
  training into (:func:`run_folder`).
- LoRA runs (``lora_rank > 0``) store only the adapters; :func:`model_from_checkpoint`
  rebuilds the base model they were trained on, checks its sha256, and adds them.
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from . import pretrained
from .bpe import tokenizer_from_dict
from .config import TrainConfig
from .lora import apply_lora, merge_lora
from .model import GPT, GPTConfig
from .utils import atomic_write, first_line, remove_stale_temp_files, sha256_of

CHECKPOINT_NAME = "ckpt.pt"
LOCK_NAME = "train.lock"
# What a checkpoint holds (see course_utils.train.train); load_checkpoint refuses a file that
# lacks one of these. Optional: "init_sha256", the sha256 of the model the run started from.
CHECKPOINT_KEYS = ("config", "model", "optimizer", "scaler", "tokenizer", "step",
                   "best_val_loss", "history", "rng")


class CheckpointError(ValueError):
    """A file that cannot be loaded as a checkpoint: damaged, foreign, or unsafe."""


class TrainingError(RuntimeError):
    """A run that cannot go on as asked: its folder is busy, holds another run or cannot be
    written, or its loss became NaN/inf."""


class RunFinished(TrainingError):
    """Resume was asked of a run that already reached its ``max_iters``."""


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
    :class:`CheckpointError` naming it for a damaged, foreign or unsafe file.
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
    return ckpt


def build_model(config: GPTConfig, state: dict, device: str = "cpu", what: str = "checkpoint",
                strict: bool = True) -> GPT:
    """A :class:`GPT` of ``config`` on ``device`` holding the weights ``state`` (a state dict).

    The shapes ``config`` declares are compared with the tensors of ``state`` on the ``meta``
    device first, which allocates no memory, so a config that claims a huge model is refused
    before anything is built. With ``strict=False`` the keys of ``state`` may be a subset (the
    rest keeps its initialisation). ``what`` names the source in messages.

    Raises :class:`CheckpointError` when a tensor is missing, unexpected, of another shape,
    or not finite.
    """
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    missing = sorted(set(expected) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (the settings make {tuple(expected[k])})"
             for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + wrong[:3]
        raise CheckpointError(f"the {what}'s weights do not fit its model settings: "
                              f"{'; '.join(parts)}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"the {what} holds weights that are NaN or infinite "
                              f"({', '.join(bad[:3])}): the run that wrote it diverged or the "
                              f"file is damaged; use an earlier checkpoint")
    model = GPT(config)
    model.load_state_dict(state, strict=strict)
    return model.to(device)


def _adapters(model: GPT) -> dict:
    return {k: v for k, v in model.state_dict().items() if ".lora_" in k}


def model_from_checkpoint(ckpt: dict, device: str = "cpu"):
    """``(model, tokenizer)`` rebuilt from a checkpoint dict (:func:`load_checkpoint`), the
    model in eval mode on ``device``.

    A LoRA run's checkpoint holds only its adapters: the model it was trained on is rebuilt
    from its ``init_from`` (:func:`start_model`, whose sha256 must equal the one the run
    stored), the adapters are added and merged into the weights.

    Raises :class:`CheckpointError` when the weights do not fit the model the checkpoint's
    settings describe, or a LoRA run's base model changed; ``FileNotFoundError`` when that
    base model is gone.
    """
    cfg = TrainConfig.from_dict(ckpt["config"])
    tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    what = "checkpoint"
    if not cfg.lora_rank:
        model = build_model(cfg.model, ckpt["model"], device, what)
        return model.eval(), tokenizer
    start = start_model(cfg.init_from, expect_sha256=ckpt.get("init_sha256"))
    base = GPTConfig(**start["config"]["model"])
    same = {k: v for k, v in asdict(base).items() if k not in ("vocab_size", "dropout")}
    if any(getattr(cfg.model, k) != v for k, v in same.items() if k != "block_size") or not (
            base.vocab_size <= cfg.model.vocab_size <= base.vocab_size + 16
            and cfg.model.block_size <= base.block_size):
        raise CheckpointError(f"the {what}'s model settings do not match the model it was "
                              f"fine-tuned from ({cfg.init_from})")
    model = build_model(cfg.model, {}, device, what, strict=False)
    load_init_weights(model, start["model"])
    apply_lora(model, r=cfg.lora_rank, alpha=cfg.lora_alpha)
    expected = _adapters(model)
    if set(ckpt["model"]) != set(expected) or any(
            ckpt["model"][k].shape != v.shape for k, v in expected.items()):
        raise CheckpointError(f"the {what}'s LoRA adapters do not fit its settings (rank "
                              f"{cfg.lora_rank} on the model of {cfg.init_from})")
    model.load_state_dict(ckpt["model"], strict=False)
    return merge_lora(model).eval(), tokenizer


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
        raise CheckpointError(
            f"--init-from {init_from} is not the model this run started from (its sha256 "
            f"changed: it was trained again or replaced); point --init-from at the original "
            f"model, or start a new run")
    if init_from in pretrained.MODELS:
        p = pretrained.load_pretrained(init_from, source="gguf" if sha != "hub" else "hub")
        model, tok = p.model, p.tokenizer
    else:
        model, tok = model_from_checkpoint(load_checkpoint(init_from))
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


# ------------------------------------------------------------------ the run folder
@contextlib.contextmanager
def run_folder(out_dir: Path):
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


def previous_run(out_dir: Path, resume: bool, overwrite: bool) -> dict | None:
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
